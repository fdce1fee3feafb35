"""Every bad-input cause is quarantined with its reason; none of them escapes the sandbox."""

from __future__ import annotations

import pytest

from conftest import copy_fixture
from trajfactory.settings import ValidationConfig
from trajfactory.settings import SandboxConfig
from trajfactory.synthesizers.swe.stage import build_environment
from trajfactory.schema import Quarantine, Source
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.executors.testrun import run_tests
from trajfactory.synthesizers.swe.reference import MARKED_FLAKY, TIMED

LIMITS = SandboxConfig(memory="512m", cpus=1, pids=64, command_timeout_s=60)
QUICK = ValidationConfig(reference_runs=1, suite_timeout_s=20)


def _through_reference(backend, tmp_path, name):
    source = harvest_repo(str(copy_fixture(name, tmp_path)), tmp_path / "mirrors")
    assert isinstance(source, Source), source
    env = build_environment(backend, source)
    if isinstance(env, Quarantine):
        return env
    return stage.reference(backend, env, source, QUICK, LIMITS)


def test_missing_repository_is_quarantined(tmp_path):
    for uri in (str(tmp_path / "nope"), "file:///nonexistent/repo.git", "pypi:trajfactory-no-such-package-xyz==1.0"):
        q = harvest_repo(uri, tmp_path / "mirrors")
        assert isinstance(q, Quarantine), uri
        assert q.reason == "not_found" and q.uri == uri and q.detail


@pytest.mark.docker
@pytest.mark.parametrize(
    "name, reason",
    [
        ("no_tests", "no_tests"),
        ("install_fails", "install_failed"),
        ("collection_fails", "collection_failed"),
        ("syntax_error", "syntax_error"),
        ("hangs", "suite_timeout"),
        ("sleeps", "suite_timeout"),
        ("fork_bomb", "suite_timeout"),
        ("disk_bomb", "disk_full"),
        ("network", "needs_network"),
        ("plugin_fails", "pytest_error"),
        ("tests_not_shipped", "no_tests"),
    ],
)
def test_bad_repository_is_quarantined_with_reason(docker_backend, tmp_path, name, reason):
    result = _through_reference(docker_backend, tmp_path, name)
    assert isinstance(result, Quarantine), result
    assert result.reason == reason, result.detail
    assert result.detail
    if name in ("plugin_fails", "tests_not_shipped"):  # pytest stopped in a plugin's pytest_configure: the error named
        assert "pytest stopped with an internal error (exit 3)" in result.detail, result.detail
        assert "ValueError: Profile 'ci' is not registered" in result.detail, result.detail
        assert ("ships no tests" in result.detail) == (name == "tests_not_shipped"), result.detail


@pytest.mark.docker
def test_a_suite_that_grows_the_harness_record_is_refused_not_read(docker_backend, tmp_path):
    result = _through_reference(docker_backend, tmp_path, "result_bomb")
    assert isinstance(result, Quarantine) and result.reason == "results_unreadable", result
    assert "over the read limit" in result.detail and "bytes" in result.detail


@pytest.mark.docker
def test_no_container_left_behind_after_runaway_suites(docker_backend, containers_left):
    assert containers_left() == []


@pytest.mark.docker
def test_sandbox_cannot_write_to_the_host(docker_backend, tmp_path):
    source = harvest_repo("builtin:textkit", tmp_path / "mirrors")
    env = build_environment(docker_backend, source)
    marker = tmp_path / "escape"
    with docker_backend.start(env, LIMITS) as sandbox:
        res = sandbox.execute(f"mkdir -p {tmp_path} && touch {marker} && ls {tmp_path}", timeout=30)
        assert res.exit_code == 0  # it writes inside its own filesystem...
    assert not marker.exists()  # ...which is not the host's


@pytest.mark.docker
def test_the_reference_proves_ids_round_trip_and_later_runs_exclude_flaky_tests(docker_backend, tmp_path):
    """One run (the default): the whole suite, then its passing tests collected again by id, nothing run; a test
    whose id does not select it is excluded, and so are one the project marks flaky and those that time code. Two
    runs: the second runs the passing tests by id, as validation and
    verification do, and a test that fails then is flaky and excluded too."""
    source = harvest_repo(str(copy_fixture("unsteady", tmp_path)), tmp_path / "mirrors")
    env = build_environment(docker_backend, source)
    once = stage.reference(docker_backend, env, source, ValidationConfig(suite_timeout_s=30), LIMITS)
    assert not isinstance(once, Quarantine), once
    assert once.by_id
    # one run cannot tell a test that passes only under the recorder's tracer: the gold proof gets its second chance
    assert once.passing == ["tests/test_calc.py::TestElapsed::test_dated", "tests/test_calc.py::test_add",
                            "tests/test_calc.py::test_clamp", "tests/test_calc.py::test_passes_only_under_a_tracer"], \
        once.excluded
    (changing, why), = [(t, r) for t, r in once.excluded.items() if "test_id_changes_every_run" in t]
    assert once.tests[changing] == "passed" and why.startswith("missing when selected by its id"), once.excluded
    # a test the project marks flaky passed, and is no check of any task
    marked = "tests/test_calc.py::test_times_its_code"
    assert once.tests[marked] == "passed" and once.excluded[marked] == MARKED_FLAKY, once.excluded
    # and so are those that time code, unmarked: a clock read in the test, its class's method or its module's helper
    for timed in ("test_takes_linear_time", "TestElapsed::test_fast"):
        assert once.excluded[f"tests/test_calc.py::{timed}"] == TIMED, once.excluded
    twice = stage.reference(docker_backend, env, source, ValidationConfig(reference_runs=2, suite_timeout_s=30),
                            LIMITS)
    assert not isinstance(twice, Quarantine), twice
    assert twice.by_id
    assert twice.passing == ["tests/test_calc.py::TestElapsed::test_dated", "tests/test_calc.py::test_add",
                             "tests/test_calc.py::test_clamp"]
    flaky = twice.excluded["tests/test_calc.py::test_passes_only_under_a_tracer"]
    assert flaky == "flaky: failed/passed", twice.excluded
    (changing, why), = [(t, r) for t, r in twice.excluded.items() if "test_id_changes_every_run" in t]
    assert twice.tests[changing] == "passed" and why.startswith("missing when selected by its id"), twice.excluded


@pytest.mark.docker
def test_the_tests_a_real_project_marks_flaky_are_no_checks(docker_backend, tmp_path):
    """zipp 4.1.2 marks its complexity tests flaky (`big_o` times the code): one failed a verified fix's run on a busy
    machine. One that passes in the reference run is excluded all the same."""
    source = harvest_repo("pypi:zipp==4.1.2", tmp_path / "mirrors")
    env = build_environment(docker_backend, source)
    with docker_backend.start(env, LIMITS) as sandbox:  # the harness records the project's own mark
        collected = run_tests(sandbox, None, timeout=300, collect_only=True)
    marked = sorted(collected.marked_flaky)
    assert marked == [f"tests/test_complexity.py::TestComplexity::test_{n}" for n in (
        "glob_depth", "glob_width", "glob_width_and_depth", "implied_dirs_performance")], marked
    ref = stage.reference(docker_backend, env, source, ValidationConfig(), LIMITS)
    assert not isinstance(ref, Quarantine), ref
    # each passed or failed as the machine's load had it (they time the code): none is a check either way
    assert {t: ref.excluded[t] for t in marked} == {t: MARKED_FLAKY if ref.tests[t] == "passed" else ref.tests[t]
                                                    for t in marked}, ref.excluded
    assert len(ref.passing) > 50 and not set(marked) & set(ref.passing)


def test_a_gold_patch_that_fails_is_quarantined_naming_the_tests_that_did_not_pass():
    """`gold_failed` says which tests failed under the gold patch (the first three, and how many more), so a harness
    cause shows in the reason (semver's documentation doctests, run before the tests that fill their namespace)."""
    from types import SimpleNamespace

    from trajfactory.verifiers.tests import judge_outcomes
    from trajfactory.schema import Checks

    checks = Checks(FAIL_TO_PASS=["tests/test_a.py::test_f"],
                    PASS_TO_PASS=[f"docs/{n}.rst::{n}.rst" for n in "abcde"] + ["tests/test_a.py::test_p"])
    outcomes = {"tests/test_a.py::test_f": "passed", "tests/test_a.py::test_p": "passed", "docs/a.rst::a.rst": "passed",
                "docs/b.rst::b.rst": "failed", "docs/c.rst::c.rst": "error", "docs/d.rst::d.rst": "failed"}
    passed, evidence = judge_outcomes(checks, outcomes, "3 failed, 3 passed")
    good = judge_outcomes(checks, dict.fromkeys(outcomes, "passed") | {"docs/e.rst::e.rst": "passed"})
    tasks = [SimpleNamespace(task_id="bad"), SimpleNamespace(task_id="good")]
    verdicts = [SimpleNamespace(passed=passed, evidence=evidence), SimpleNamespace(passed=good[0], evidence=good[1])]
    kept, rejected = stage.accept_proven(tasks, verdicts, SimpleNamespace(uri="pypi:semver==3.1.1"))
    assert [t.task_id for t in kept] == ["good"] and [q.item_id for q in rejected] == ["bad"]
    assert rejected[0].reason == "gold_failed" and rejected[0].detail == (
        "the gold patch does not pass the task's own checks: 3 failed, 3 passed; not passed: docs/b.rst::b.rst "
        "(failed), docs/c.rst::c.rst (error), docs/d.rst::d.rst (failed) and 1 more; each of them passed on the clean "
        "repository in the whole-suite reference run, and the gold patch restores that code: a test that passes there "
        "and fails run by its id depends on the tests that ran before it, or on the machine (its load, the time), not "
        "on the fix")
