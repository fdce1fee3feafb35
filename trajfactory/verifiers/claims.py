"""Claims an agent makes against what it observed: a trajectory that says the tests pass right after an observation
showing them fail is a demonstration that teaches the wrong thing, whatever its final verdict.

A claim is an assistant turn that says the tests pass (or the fix works); the evidence it answers to is the last
test run the agent observed before it (an observation with a pytest summary line). `contradictions` lists every
claim whose evidence shows failures or errors; the SWE build quarantines such trajectories.
"""

from __future__ import annotations

import re

from trajfactory.schema import Trajectory

CLAIM = re.compile(r"\b(?:(?:the |all (?:of )?(?:the )?|failing |related )?tests? (?:now |all )?pass(?:es)?\b"
                   r"|(?:all|both) of them pass|everything passes|they (?:all )?pass(?: now)?\b|passes now"
                   r"|(?:is|are) (?:now )?fixed\b|fix(?:es)? (?:it|the (?:bug|problem))\b)", re.I)
"""Words that claim success (`The tests pass.`, `They pass now.`, `Everything passes.`, `This is fixed.`)."""
NEGATED = re.compile(r"\b(?:not|n't|still fail|no longer)\b", re.I)
_RESULT = re.compile(r"=+ .*\b(\d+) (passed|failed|errors?)\b.* =+$|^\d+ (?:passed|failed|errors?)\b.*$", re.M)
_COUNTS = re.compile(r"\b(\d+) (passed|failed|errors?)\b")


def _test_result(observation: str) -> dict[str, int] | None:
    """The counts of the last pytest summary line in an observation (None: the observation ran no tests)."""
    lines = [m.group(0) for m in _RESULT.finditer(observation)]
    if not lines:
        return None
    counts: dict[str, int] = {}
    for n, kind in _COUNTS.findall(lines[-1]):
        counts["error" if kind.startswith("error") else kind] = int(n)
    return counts


def contradictions(trajectory: Trajectory) -> list[str]:
    """`turn N claims ...` for each success claim made right after a test run that failed."""
    out: list[str] = []
    evidence: dict[str, int] | None = None
    for n, message in enumerate(trajectory.messages):
        text = message.content or ""
        if message.role in ("tool", "user"):
            counts = _test_result(text)
            if counts is not None:
                evidence = counts
            continue
        if message.role != "assistant" or evidence is None:
            continue
        claim = CLAIM.search(text)
        if claim is None or NEGATED.search(text[max(0, claim.start() - 30):claim.end() + 10]):
            continue
        failing = evidence.get("failed", 0) + evidence.get("error", 0)
        if failing:
            out.append(f"turn {n} says {claim.group(0)!r} right after a test run with {failing} failing")
    return out
