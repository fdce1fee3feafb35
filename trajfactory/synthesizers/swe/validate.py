"""Validate bug candidates by running tests: against the one reference run per image (`reference.py`), each
candidate in a warm sandbox, tests selected by per-test coverage where the change is local to a function.

`validate_candidate` tests one candidate (reset, apply, `run_tests`); `validate_batch` tests many with one warm
worker process in the sandbox (`executors/batchrun.py`). Both select and judge through the same functions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from trajfactory.executors.base import Sandbox, apply_patch
from trajfactory.executors.batchrun import BatchInfo, BatchItem, ItemResult, run_batch
from trajfactory.executors.testrun import (EXIT_INTERRUPTED, EXIT_USAGE, FIXTURE, IMPORT_TIME, IMPORTED_BY, SCOPE,
                                           TestRun, cpu_seconds, run_tests, summary_line)
from trajfactory.schema import Candidate, ReferenceRun, Validation
from trajfactory.synthesizers.swe.reference import tail
from trajfactory.synthesizers.swe.selection_lines import probed_enough

VERSION = "8"
"""Bumped when the selection or the judgement of a candidate changes (2: every test that ran the changed function;
3: a removed method by the tests that ran its body; a body line is not attributed to the def line above it; a line a
wider-scoped fixture ran reaches the tests of its scope; 4: a candidate's time limit scales with its tests' time in
the reference run; a removed base class by the lines naming its class; 5: a valid candidate records the tests its
run reached, which its gold proof runs; 6: a candidate's tests also stop at a limit of their own CPU seconds; 7: a
line a test module's own code ran at its import reaches that module's tests, not the whole suite; 8: a bug that
breaks a conftest's import is `no_pass_to_pass`, not `error`)."""
TIMEOUT_FACTOR = 10.0
"""A candidate's tests may take this many times what they took in the reference run (`candidate_timeout`)."""
TIMEOUT_FLOOR_S = 15.0
"""...and at least this many seconds: a short suite's limit is not left at the mercy of a busy machine."""
CPU_FLOOR_S = 2.0
"""The limit counted in the tests' own CPU seconds (`candidate_cpu_limit`) has this floor instead: a busy machine does
not slow the CPU clock, so a bug that loops forever in a short suite costs about 2 s of CPU, not 15 s."""
PATCH_PATH = "/tmp/trajfactory-bug.diff"


def reference_time(reference: ReferenceRun, tests: list[str]) -> float:
    """Seconds these tests took in the reference run: their durations, plus their share (by count) of the run's time
    outside the tests (pytest's work between tests, collection)."""
    share = reference.overhead_s * len(tests) / max(1, len(reference.durations))
    return share + sum(reference.durations.get(t, 0.0) for t in tests)


def candidate_timeout(reference: ReferenceRun, tests: list[str], ceiling: float,
                      factor: float = TIMEOUT_FACTOR, floor: float = TIMEOUT_FLOOR_S) -> float:
    """How long a candidate's selected tests may run: `factor` times what they took in the reference run
    (`reference_time`), at least `floor` seconds and twice the whole suite's time outside its tests (a selection's
    start and collection never exceed the whole suite's), at most `ceiling`. A bug that makes the code loop forever
    then costs seconds, not the ceiling; a bug that only slows the tests tenfold is judged a timeout, as it would be
    against any fixed limit it crossed. `ceiling` alone when the reference run has no durations (an older cache
    entry) or `factor` is 0."""
    if factor <= 0 or not reference.durations:
        return ceiling
    return min(ceiling, max(floor, 2 * reference.overhead_s, factor * reference_time(reference, tests)))


def candidate_cpu_limit(reference: ReferenceRun, tests: list[str], ceiling: float,
                        factor: float = TIMEOUT_FACTOR, floor: float = CPU_FLOOR_S) -> float | None:
    """The CPU seconds a candidate's tests may use beside `candidate_timeout`'s wall clock: twice the whole suite's
    time outside its tests (a start and collection never exceed it) plus `factor` times the selected tests' own
    durations, at least `floor`, at most `ceiling`. The run stops at whichever limit comes first. None (no CPU limit)
    where `candidate_timeout` has no scale."""
    if factor <= 0 or not reference.durations:
        return None
    own = sum(reference.durations.get(t, 0.0) for t in tests)
    return min(ceiling, max(floor, 2 * reference.overhead_s + factor * own))


def select_tests(candidate: Candidate, reference: ReferenceRun, selection: str) -> tuple[list[str], str]:
    """Tests to run for a candidate and how they were chosen (`coverage` or `full`).

    Coverage selects every usable test that executed any line of the changed function, not only the changed lines:
    a function keeps state between calls (a cache it fills on its first call, as isodate's `build_date_regexps`
    does), so a test that only ran the function's other lines (the cache lookup) is broken by the bug all the same.
    Where coverage cannot tell, the whole suite runs: a change outside a function, in code that ran at import time
    (module tables built by calling the function, default values, decorators) or in a fixture's setup/teardown.
    Code a test module's own module-level code ran while pytest imported it (its constants, class bodies and
    parametrize lists: the line probes name that import, `IMPORTED_BY`) reaches that module's tests instead.
    A removed method is attributed by its body's lines (and by the lines naming it, where a test may notice it
    without running it), a removed base class by the lines naming the class and its subclasses
    (`base_removal.py`), and reordered methods that nothing in the class body sees select no test, where the
    candidate's params say so (`attribution.py`).
    """
    file_cov = reference.coverage.get(candidate.entity.file)
    full = list(reference.passing), "full"
    attribution = (candidate.params.get("attribution") or {}) if candidate.scope == "class" else {}
    early = attribution.get("import_time") or {}
    if reference.measured is not None and not {candidate.entity.file, *early, *(attribution.get("refs") or {})} \
            <= set(reference.measured):
        return full  # coverage did not measure a file the selection reads: it tells nothing there
    if reference.probed is not None and not probed_enough(candidate, reference.probed):
        return full  # the probes did not record a line the selection reads
    if selection == "coverage" and any(n in reference.coverage.get(f, {}) for f, spans in early.items()
                                       for a, b in spans for n in range(a, b + 1)):
        return full  # a use of the class or method at import or collection time that ran: it can reach any test
    if selection == "coverage" and "refs" in attribution:  # the lines naming a class, in any file
        return _tests_of_lines(attribution["refs"], reference) or full
    if selection != "coverage" or (not file_cov and reference.probed is None):
        return full  # (probes know their lines of a file where none ran; coverage without data knows nothing)
    file_cov = file_cov or {}
    if candidate.scope == "class":
        if "none" in attribution:
            return [], "coverage"
        lines = attribution.get("lines")
        if not lines:
            return full
        first, last = lines
        changed, span, body = range(first, last + 1), (first, last), first
    elif candidate.scope == "function" and candidate.changed_lines:
        entity = candidate.entity
        changed = candidate.changed_lines
        span = (entity.lineno, max(entity.end_lineno, *changed))
        body = entity.body_lineno or entity.lineno
    else:
        return full
    covered = _ran_changed(file_cov, changed, span, body, reference.probed is not None)
    if IMPORT_TIME in covered or FIXTURE in covered:
        # Import-time or fixture code reaches tests that coverage does not attribute it to.
        return full
    return _widened({t for n in range(span[0], span[1] + 1) for t in file_cov.get(n, ())}, reference)


def _ran_changed(file_cov: dict[int, list[str]], changed, span: tuple[int, int], body: int, probed: bool) -> set[str]:
    """The contexts (tests and markers) that ran the changed lines."""
    executed = sorted(file_cov)
    ran: set[str] = set()
    for line in changed:
        # coverage keys statements by their first line: a changed continuation line (or a statement no
        # test ran) is attributed to the nearest recorded line above it, which only widens the selection.
        # A body line looks no higher than the body: the def line above it ran at import time whether or not
        # anything ever called the function, and a body statement that never ran reaches no test.
        # Line probes record a changed line itself whenever its statement starts (`line_probe.py`).
        floor = body if line >= body else span[0]
        start = line if probed else max((n for n in executed if floor <= n <= line), default=line)
        ran.update(t for n in range(start, line + 1) for t in file_cov.get(n, ()))
    return ran


def _tests_of_lines(spans: dict[str, list[list[int]]], reference: ReferenceRun) -> tuple[list[str], str] | None:
    """The usable tests that ran any line of these spans (file -> [[first, last], ...]: whole statements), widened to
    a wider fixture's scope; None (the whole suite) where such a line ran at import time or in a fixture."""
    ran: set[str] = set()
    for file, ranges in spans.items():
        file_cov = reference.coverage.get(file, {})
        for first, last in ranges:
            ran.update(t for n in range(first, last + 1) for t in file_cov.get(n, ()))
    if IMPORT_TIME in ran or FIXTURE in ran:
        return None
    return _widened(ran, reference)


def _widened(ran: set[str], reference: ReferenceRun) -> tuple[list[str], str]:
    """The usable tests among the coverage contexts `ran`, and every usable test under the node of a class-, module-,
    package- or session-scoped fixture among them (the fixture ran the lines: every test of its scope shares it),
    or of a test module whose import ran them."""
    usable = set(reference.passing)
    tests = ran & usable
    for node in sorted(t[len(p):] for t in ran for p in (SCOPE, IMPORTED_BY) if t.startswith(p)):
        tests |= {t for t in usable if _under(t, node)}
    return sorted(tests), "coverage"


def imported_with(candidate: Candidate, reference: ReferenceRun) -> bool:
    """Whether a test module ran a changed line of the function while pytest imported it (`IMPORTED_BY`): its tests
    then need a pytest session that imports it again, with the bug, not the batch worker's collected one."""
    entity = candidate.entity
    if candidate.scope != "function" or not candidate.changed_lines:
        return False
    span = (entity.lineno, max(entity.end_lineno, *candidate.changed_lines))
    ran = _ran_changed(reference.coverage.get(entity.file, {}), candidate.changed_lines, span,
                       entity.body_lineno or entity.lineno, reference.probed is not None)
    return any(t.startswith(IMPORTED_BY) for t in ran)


def _under(test: str, node: str) -> bool:
    """Whether `test` is under the pytest node `node` ('' or '.': the session; a directory: a package)."""
    return node in ("", ".") or test.startswith(node + "::") or test.startswith(node.rstrip("/") + "/")


def _verdict(candidate: Candidate, tests: list[str], how: str, reference: ReferenceRun, *, timeout: float,
             duration: float, run: TestRun | None = None, patch_error: str | None = None,
             ceiling: float = 0.0, cpu_limit: float | None = None) -> Validation:
    """What the selected tests' run (or the patch's failure to apply) says of the candidate: one judgement for the
    one-candidate path and the batch path alike."""

    def result(status: str, **kw) -> Validation:
        return Validation(candidate_id=candidate.candidate_id, status=status, selection=how, duration_s=duration, **kw)

    if not tests:
        return result("no_fail_to_pass", detail=(candidate.params.get("attribution") or {}).get("none")
                      or "no passing test executes the changed function")
    if patch_error is not None:
        return result("patch_failed", detail=tail(patch_error, 5))
    assert run is not None
    if run.timed_out:
        limit, unit = (cpu_seconds(cpu_limit), " CPU seconds") if run.cpu_out and cpu_limit else (timeout, "s")
        scaled = ""
        if reference.durations and limit < ceiling:
            took = reference_time(reference, tests)
            scaled = f" ({limit / max(took, 1e-9):.0f}x the {took:.1f}s they took on the clean repository)"
        what = "used more than" if run.cpu_out else "did not finish within"
        return result("timeout", tests_run=len(tests), detail=f"tests {what} {limit:.0f}{unit}{scaled}")
    if conftest := run.conftest_failed:  # the maintainers' whole-suite run stops the same way
        return result("no_pass_to_pass", tests_run=len(tests), detail=(
            f"under the bug, {conftest} does not import, which stops pytest before it runs any test, the whole "
            f"suite's run too: no test passes ({tail(run.output, 1)})"))
    if not run.finished:  # a crash or kill: which tests the bug breaks cannot be told
        return result("error", tests_run=len(tests), detail=f"the test run was cut short (exit {run.exit_code}): "
                      + tail(run.output, 5))
    # A selected test that was not collected (its module broke under the bug) did not pass: it failed.
    f2p = sorted(t for t in tests if run.outcomes.get(t, "missing") in ("failed", "error", "missing"))
    p2p_seen = sorted(t for t in tests if run.outcomes.get(t) == "passed")
    stopped = bool(run.collect_errors) and run.exit_code in (EXIT_INTERRUPTED, EXIT_USAGE)
    if how == "coverage" and not stopped:
        # Tests that never execute the changed function cannot be affected by it.
        p2p = sorted(set(p2p_seen) | (set(reference.passing) - set(tests)))
    else:
        # (a test module that no longer imports stopped pytest at collection: so would the whole suite, the
        # maintainers' run, where then no test passes)
        p2p = [] if stopped else p2p_seen
    status = "valid" if f2p and p2p else ("no_fail_to_pass" if not f2p else "no_pass_to_pass")
    detail = summary_line(run.output)
    if stopped and status == "no_pass_to_pass":
        detail = (f"under the bug, a test module does not import ({', '.join(sorted(run.collect_errors))[:300]}), "
                  "which stops pytest's whole suite at collection: no test passes")
    # the gold proof runs what the change reached; the rest passed on the clean repository, also selected by id
    reached = sorted(tests) if status == "valid" and how == "coverage" and reference.by_id else []
    return result(status, FAIL_TO_PASS=f2p, PASS_TO_PASS=p2p, tests_run=len(tests), detail=detail, reached=reached)


def validate_candidate(
    sandbox: Sandbox,
    candidate: Candidate,
    reference: ReferenceRun,
    *,
    selection: str = "coverage",
    timeout: float = 120.0,
    timeout_factor: float = TIMEOUT_FACTOR,
) -> Validation:
    """Apply the candidate in a warm sandbox, run the selected tests, split them into F2P / P2P. `timeout` is the
    ceiling of the run's limit, which scales with the tests' reference time by `timeout_factor` (`candidate_timeout`)."""
    started = time.monotonic()
    tests, how = select_tests(candidate, reference, selection)
    limit = candidate_timeout(reference, tests, timeout, timeout_factor)
    cpu = candidate_cpu_limit(reference, tests, timeout, timeout_factor)
    judge = lambda **kw: _verdict(candidate, tests, how, reference, timeout=limit, ceiling=timeout,  # noqa: E731
                                  cpu_limit=cpu, duration=time.monotonic() - started, **kw)
    if not tests:
        return judge()
    sandbox.reset()
    if (err := apply_patch(sandbox, candidate.patch, PATCH_PATH)) is not None:
        return judge(patch_error=err)
    return judge(run=run_tests(sandbox, tests, timeout=limit, cpu_limit=cpu))


@dataclass
class BatchValidation:
    validations: list[Validation]
    items: dict[str, ItemResult] = field(default_factory=dict)
    """Candidate id -> the worker's record of it (where its CPU went); absent when no test was selected."""
    info: BatchInfo = field(default_factory=BatchInfo)


def validate_batch_detailed(sandbox: Sandbox, candidates: list[Candidate], reference: ReferenceRun, *,
                            selection: str = "coverage", timeout: float = 120.0, preload: bool = True,
                            timeout_factor: float = TIMEOUT_FACTOR, hot: bool = True) -> BatchValidation:
    """`validate_batch`, with the worker's records (the bench reads where each candidate's CPU went). `hot`: a
    candidate that changes a function body no test ran at import or collection time (coverage selected its tests)
    may be tested in the worker's collected session, without a pytest start and collection of its own."""
    chosen = [(c, *select_tests(c, reference, selection)) for c in candidates]
    limits = {c.candidate_id: candidate_timeout(reference, tests, timeout, timeout_factor) for c, tests, _ in chosen}
    cpus = {c.candidate_id: candidate_cpu_limit(reference, tests, timeout, timeout_factor) for c, tests, _ in chosen}
    items: dict[str, BatchItem] = {}
    for c, tests, how in chosen:
        if tests and c.candidate_id not in items:
            items[c.candidate_id] = BatchItem(c.candidate_id, c.patch, tests, limits[c.candidate_id],
                                              cpu_limit=cpus[c.candidate_id], ceiling=timeout,
                                              hot=hot and how == "coverage" and c.scope == "function"
                                              and not imported_with(c, reference))
    results, info = run_batch(sandbox, list(items.values()), preload=preload) if items else ([], BatchInfo())
    by_key = {r.key: r for r in results}
    validations = []
    for c, tests, how in chosen:
        r = by_key.get(c.candidate_id)
        validations.append(_verdict(c, tests, how, reference, timeout=limits[c.candidate_id], ceiling=timeout,
                                    cpu_limit=cpus[c.candidate_id],
                                    duration=r.run.duration_s if r and r.run else 0.0,
                                    run=r.run if r else None, patch_error=r.patch_error if r else None))
    return BatchValidation(validations, by_key, info)


def validate_batch(sandbox: Sandbox, candidates: list[Candidate], reference: ReferenceRun, *,
                   selection: str = "coverage", timeout: float = 120.0,
                   timeout_factor: float = TIMEOUT_FACTOR, hot: bool = True) -> list[Validation]:
    """Validate several candidates in one warm sandbox with one worker process (`executors/batchrun.py`): the
    same selection, time limits and judgement as `validate_candidate`, per candidate, in the candidates' order."""
    return validate_batch_detailed(sandbox, candidates, reference, selection=selection, timeout=timeout,
                                   timeout_factor=timeout_factor, hot=hot).validations
