"""Validate bug candidates by running tests: one reference run per image, then each candidate in a
warm sandbox, tests selected by per-test coverage where the change is local to a function."""

from __future__ import annotations

import re
import time

from trajfactory.executors.base import Sandbox, apply_patch
from trajfactory.executors.testrun import (
    EXIT_NO_TESTS,
    FIXTURE,
    IMPORT_TIME,
    TestRun,
    run_tests,
    summary_line,
)
from trajfactory.schema import Candidate, ReferenceRun, Validation

PATCH_PATH = "/tmp/trajfactory-bug.diff"
_NETWORK_ERRORS = re.compile(
    r"Network is unreachable|Temporary failure in name resolution|Name or service not known|"
    r"ConnectionRefusedError|gaierror|URLError"
)


class RepoRejected(Exception):
    """The repository cannot give tasks; `reason` is the quarantine code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _reject_reason(run: TestRun, timeout: float) -> RepoRejected | None:
    if run.timed_out:
        return RepoRejected(
            "suite_timeout",
            f"the test suite did not finish within {timeout:.0f}s (a hang, a sleep, or a fork bomb "
            f"held back by the pids limit); a usable suite finishes well inside the limit",
        )
    if run.exit_code == EXIT_NO_TESTS or (run.exit_code == 0 and not run.outcomes):
        return RepoRejected("no_tests", "pytest collected no tests; the repository needs a pytest-runnable suite")
    if "SyntaxError" in run.output and not any(o == "passed" for o in run.outcomes.values()):
        return RepoRejected("syntax_error", "a module does not parse:\n" + _tail(run.output))
    if run.collection_failed:
        return RepoRejected("collection_failed", "pytest could not collect the suite:\n" + _tail(run.output))
    return None


def reference_run(sandbox: Sandbox, *, runs: int = 2, timeout: float = 300.0) -> ReferenceRun:
    """Run the whole clean suite `runs` times; only tests that passed every time are usable.

    The first run records per-test coverage contexts (which test executed which line).
    Raises RepoRejected when the suite cannot serve as ground truth.
    """
    started = time.monotonic()
    sandbox.reset()
    first = run_tests(sandbox, None, timeout=timeout, coverage=True)
    if (rejected := _reject_reason(first, timeout)) is not None:
        raise rejected
    outcomes = [first.outcomes]
    for _ in range(runs - 1):
        sandbox.reset()
        again = run_tests(sandbox, None, timeout=timeout)
        if (rejected := _reject_reason(again, timeout)) is not None:
            raise rejected
        outcomes.append(again.outcomes)
    excluded: dict[str, str] = {}
    passing: list[str] = []
    for test, outcome in first.outcomes.items():
        seen = {o.get(test, "missing") for o in outcomes}
        if seen == {"passed"}:
            passing.append(test)
        elif len(seen) > 1:
            excluded[test] = "flaky: " + "/".join(sorted(seen))
        else:
            excluded[test] = outcome
    if not passing:
        detail = f"no test passes on the clean repository ({summary_line(first.output)})"
        if _NETWORK_ERRORS.search(first.output):
            raise RepoRejected("needs_network", detail + "; the tests try to reach the network, which sandboxes do not have")
        raise RepoRejected("no_passing_tests", detail + ":\n" + _tail(first.output))
    sandbox.reset()
    return ReferenceRun(
        image="",
        tests=first.outcomes,
        passing=sorted(passing),
        excluded=excluded,
        coverage=first.coverage,
        duration_s=time.monotonic() - started,
    )


def select_tests(candidate: Candidate, reference: ReferenceRun, selection: str) -> tuple[list[str], str]:
    """Tests to run for a candidate and how they were chosen (`coverage` or `full`)."""
    file_cov = reference.coverage.get(candidate.entity.file)
    if selection != "coverage" or candidate.scope != "function" or not file_cov or not candidate.changed_lines:
        return list(reference.passing), "full"
    usable = set(reference.passing)
    tests: set[str] = set()
    executed = sorted(file_cov)
    for line in candidate.changed_lines:
        # coverage keys statements by their first line: a changed continuation line (or a statement no
        # test ran) is attributed to the nearest recorded line above it, which only widens the selection.
        start = max((n for n in executed if candidate.entity.lineno <= n <= line), default=line)
        covered = [t for n in range(start, line + 1) for t in file_cov.get(n, ())]
        if IMPORT_TIME in covered or FIXTURE in covered:
            # Import-time or fixture code reaches tests that coverage does not attribute it to.
            return list(reference.passing), "full"
        tests.update(t for t in covered if t in usable)
    return sorted(tests), "coverage"


def validate_candidate(
    sandbox: Sandbox,
    candidate: Candidate,
    reference: ReferenceRun,
    *,
    selection: str = "coverage",
    timeout: float = 120.0,
) -> Validation:
    """Apply the candidate in a warm sandbox, run the selected tests, split them into F2P / P2P."""
    started = time.monotonic()
    tests, how = select_tests(candidate, reference, selection)

    def result(status: str, **kw) -> Validation:
        return Validation(
            candidate_id=candidate.candidate_id,
            status=status,
            selection=how,
            duration_s=time.monotonic() - started,
            **kw,
        )

    if not tests:
        return result("no_fail_to_pass", detail="no passing test executes the changed lines")
    sandbox.reset()
    if (err := apply_patch(sandbox, candidate.patch, PATCH_PATH)) is not None:
        return result("patch_failed", detail=_tail(err, 5))
    run = run_tests(sandbox, tests, timeout=timeout)
    if run.timed_out:
        return result("timeout", tests_run=len(tests), detail=f"tests did not finish within {timeout:.0f}s")
    # A selected test missing from the report did not run (its module broke): it failed.
    f2p = sorted(t for t in tests if run.outcomes.get(t, "error") in ("failed", "error"))
    p2p_seen = sorted(t for t in tests if run.outcomes.get(t) == "passed")
    if how == "coverage":
        # Tests that never execute the changed lines cannot be affected by them.
        p2p = sorted(set(p2p_seen) | (set(reference.passing) - set(tests)))
    else:
        p2p = p2p_seen
    status = "valid" if f2p and p2p else ("no_fail_to_pass" if not f2p else "no_pass_to_pass")
    return result(
        status,
        FAIL_TO_PASS=f2p,
        PASS_TO_PASS=p2p,
        tests_run=len(tests),
        detail=summary_line(run.output),
    )
