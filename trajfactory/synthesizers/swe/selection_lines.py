"""The lines a candidate's test selection reads (`validate.select_tests`): what the reference run's line probes
record (`executors/line_probe.py`), instead of coverage of whole files.

- A change to a function body: its `def` line (a change above the body runs when the function is defined), the
  first line of its body (every test that ran any line of the function ran it: that is who called it) and the
  changed lines (whether any of them ran outside a test, at import or in a fixture).
- A class-scope change: every line of the spans its attribution names (`attribution.py`, `base_removal.py`).
- A module-scope change reads nothing: it runs the whole suite.
"""

from __future__ import annotations

from trajfactory.schema import Candidate


def lines_read(candidate: Candidate) -> dict[str, set[int]]:
    """File -> the lines `select_tests` reads for this candidate."""
    lines: dict[str, set[int]] = {}
    if candidate.scope == "function" and candidate.changed_lines:
        entity = candidate.entity
        lines[entity.file] = {entity.lineno, entity.body_lineno or entity.lineno, *candidate.changed_lines}
    elif candidate.scope == "class":
        attribution = candidate.params.get("attribution") or {}
        spans: dict[str, list[list[int]]] = {}
        if attribution.get("lines"):
            spans.setdefault(candidate.entity.file, []).append(list(attribution["lines"]))
        for key in ("import_time", "refs"):
            for file, ranges in (attribution.get(key) or {}).items():
                spans.setdefault(file, []).extend(ranges)
        for file, ranges in spans.items():
            lines.setdefault(file, set()).update(n for first, last in ranges for n in range(first, last + 1))
    return lines


def probe_plan(candidates: list[Candidate]) -> dict[str, list[int]]:
    """File -> the lines the reference run probes: those every candidate's selection reads."""
    plan: dict[str, set[int]] = {}
    for c in candidates:
        for file, lines in lines_read(c).items():
            plan.setdefault(file, set()).update(lines)
    return {file: sorted(lines) for file, lines in sorted(plan.items())}


def probed_enough(candidate: Candidate, probed: dict[str, list[int]]) -> bool:
    """Whether the probes recorded every line this candidate's selection reads (a file no test imported, or one
    imported before the probes were in place, has none: its candidates run the whole suite)."""
    return all(lines <= set(probed.get(file, ())) for file, lines in lines_read(candidate).items())
