"""Test-based verification: the final repository state is tested in a fresh sandbox.

A verdict passes when every FAIL_TO_PASS test and every PASS_TO_PASS test passes, as in SWE-bench.
"""

from __future__ import annotations

import time

from trajfactory.executors.base import Sandbox
from trajfactory.executors.testrun import run_tests, summary_line
from trajfactory.schema import Evidence, Task, TestOutcome, Trajectory, Verdict, content_hash

VERIFIER = "tests"
VERSION = "1"


def _apply(sandbox: Sandbox, patch: str, path: str) -> str | None:
    """Apply a patch; the error text when it does not apply."""
    if not patch.strip():
        return None
    sandbox.write_file(path, patch if patch.endswith("\n") else patch + "\n")
    res = sandbox.execute(f"git apply --whitespace=nowarn {path}", timeout=60)
    return None if res.exit_code == 0 else res.output.strip()[-500:]


def verify_patch(sandbox: Sandbox, task: Task, patch: str, *, timeout: float = 300.0) -> tuple[bool, Evidence, float]:
    """Test `patch` applied on top of the task's buggy state in `sandbox` (fresh or reset)."""
    started = time.monotonic()
    sandbox.reset()
    if (err := _apply(sandbox, task.bug_patch, "/tmp/trajfactory-bug.diff")) is not None:
        return False, Evidence(detail=f"the task's bug patch does not apply: {err}"), time.monotonic() - started
    if (err := _apply(sandbox, patch, "/tmp/trajfactory-final.diff")) is not None:
        return False, Evidence(detail=f"the submitted patch does not apply: {err}"), time.monotonic() - started
    tests = sorted(set(task.checks.FAIL_TO_PASS) | set(task.checks.PASS_TO_PASS))
    run = run_tests(sandbox, tests, timeout=timeout)
    if run.timed_out:
        return False, Evidence(detail=f"tests did not finish within {timeout:.0f}s"), time.monotonic() - started
    get = lambda t: run.outcomes.get(t, "missing")  # noqa: E731
    f2p = [TestOutcome(test=t, outcome=get(t)) for t in task.checks.FAIL_TO_PASS]
    p2p = [TestOutcome(test=t, outcome=get(t)) for t in task.checks.PASS_TO_PASS]
    passed = all(o.outcome == "passed" for o in f2p + p2p)
    evidence = Evidence(FAIL_TO_PASS=f2p, PASS_TO_PASS=p2p, detail=summary_line(run.output))
    return passed, evidence, time.monotonic() - started


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


def verify_trajectory(sandbox: Sandbox, task: Task, trajectory: Trajectory, *, timeout: float = 300.0) -> Verdict:
    passed, evidence, duration = verify_patch(sandbox, task, trajectory.final.patch, timeout=timeout)
    if trajectory.exit_status != "submitted":
        passed = False
        evidence.detail = f"not submitted ({trajectory.exit_status}); {evidence.detail}"
    return _verdict(task, trajectory.trajectory_id, "trajectory", passed, evidence, duration)


def verify_gold(sandbox: Sandbox, task: Task, *, timeout: float = 300.0) -> Verdict:
    """Prove the task's gold patch passes its own checks."""
    passed, evidence, duration = verify_patch(sandbox, task, task.gold.patch, timeout=timeout)
    return _verdict(task, None, "gold", passed, evidence, duration)
