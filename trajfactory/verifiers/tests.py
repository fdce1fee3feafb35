"""Test-based verification: the verdict from the harness's record of test outcomes, as in SWE-bench.

A verdict passes when every FAIL_TO_PASS test and every PASS_TO_PASS test passed. The environment runs the
tests on the final state in a fresh sandbox (`executors/swe_env.py`); this module only judges the outcomes
it recorded, so nothing a patch can write decides the verdict here.
"""

from __future__ import annotations

import time

from trajfactory.schema import Checks, Evidence, Task, TestOutcome, Trajectory, Verdict, content_hash

VERIFIER = "tests"
VERSION = "2"
"""Bumped whenever the same patch could get another verdict: verdict ids and the cache keys of the verification and
gold-proof steps hold it, so no verdict of an earlier verifier is reused. 2: the canaries of two kinds
(`executors/canaries.py`), name-bound twins tried with the run's other tests."""


def gold_checks(task: Task) -> Checks:
    """The checks a task's gold proof runs. Every check, unless validation recorded the tests the bug's change reached
    (`Validation.reached`): then the FAIL_TO_PASS tests and the PASS_TO_PASS tests among those. The gold patch
    restores the clean repository exactly, and every other PASS_TO_PASS test passed there in the reference run, its
    id known to select it as here; running them again proves nothing more about the task and costs the whole suite."""
    reached = set(task.validation.reached) if task.validation is not None else set()
    if not reached:
        return task.checks
    return task.checks.model_copy(update={"PASS_TO_PASS": [t for t in task.checks.PASS_TO_PASS if t in reached]})


def share_tests(wanted: list[list[str]]) -> list[list[str]]:
    """The tests each of several gold proofs runs when they share their runs: each test once, in the first proof that
    wants it. Sound only where every proof's checkout is exactly the same clean commit (`swe_env.verify_gold_batch`
    requires it), so that a test's outcome is the clean repository's whichever proof ran it."""
    seen: set[str] = set()
    out = []
    for tests in wanted:
        out.append([t for t in tests if t not in seen])
        seen.update(tests)
    return out


def tests_of(checks: Checks) -> list[str]:
    """The tests a verdict runs: the FAIL_TO_PASS and PASS_TO_PASS tests of a task's `checks`."""
    return sorted(set(checks.FAIL_TO_PASS) | set(checks.PASS_TO_PASS))


def judge_outcomes(checks: Checks, outcomes: dict[str, str], summary: str = "") -> tuple[bool, Evidence]:
    """Whether every check passed, with each check's outcome (`missing`: the test did not run)."""
    get = lambda t: outcomes.get(t, "missing")  # noqa: E731
    f2p = [TestOutcome(test=t, outcome=get(t)) for t in checks.FAIL_TO_PASS]
    p2p = [TestOutcome(test=t, outcome=get(t)) for t in checks.PASS_TO_PASS]
    passed = all(o.outcome == "passed" for o in f2p + p2p)
    return passed, Evidence(FAIL_TO_PASS=f2p, PASS_TO_PASS=p2p, detail=summary)


def not_applied(detail: str, started: float, reverted: list[str] | None = None) -> tuple[bool, Evidence, float]:
    """A failed verdict's parts when the tests could not run (a patch that does not apply, a timeout)."""
    return False, Evidence(detail=detail, reverted=list(reverted or [])), time.monotonic() - started


def refused(reasons: list[str], reverted: list[str], started: float) -> tuple[bool, Evidence, float]:
    """A failed verdict's parts for a patch that tampered with the test machinery: no test outcome counts."""
    detail = "refused: " + "; ".join(reasons)
    return False, Evidence(detail=detail[:2000], reverted=list(reverted), refused=list(reasons)), \
        time.monotonic() - started


def _verdict(task: Task, trajectory_id: str | None, subject: str, passed: bool, evidence: Evidence,
             duration: float) -> Verdict:
    total = len(evidence.FAIL_TO_PASS) + len(evidence.PASS_TO_PASS)
    ok = sum(o.outcome == "passed" for o in evidence.FAIL_TO_PASS + evidence.PASS_TO_PASS)
    return Verdict(
        verdict_id=content_hash(VERIFIER, VERSION, task.task_id, trajectory_id, subject),
        task_id=task.task_id,
        trajectory_id=trajectory_id,
        subject=subject,
        verifier=VERIFIER,
        verifier_version=VERSION,
        passed=passed,
        score=ok / total if total else 0.0,
        evidence=evidence,
        duration_s=duration,
    )


def trajectory_verdict(task: Task, trajectory: Trajectory, passed: bool, evidence: Evidence,
                       duration: float) -> Verdict:
    """The verdict on a trajectory's final state; a trajectory that did not submit fails."""
    if trajectory.exit_status != "submitted":
        passed = False
        evidence.detail = f"not submitted ({trajectory.exit_status}); {evidence.detail}"
    return _verdict(task, trajectory.trajectory_id, "trajectory", passed, evidence, duration)


def gold_verdict(task: Task, passed: bool, evidence: Evidence, duration: float) -> Verdict:
    """The verdict on the task's own gold patch (against `gold_checks`)."""
    ran, of = len(gold_checks(task).PASS_TO_PASS), len(task.checks.PASS_TO_PASS)
    if ran < of and (evidence.FAIL_TO_PASS or evidence.PASS_TO_PASS):  # the tests ran
        evidence.detail = (f"{evidence.detail}; PASS_TO_PASS: the {ran} of {of} tests the bug's change reached (the "
                           "others passed on the clean repository in the reference run)").lstrip("; ")
    return _verdict(task, None, "gold", passed, evidence, duration)
