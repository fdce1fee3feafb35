"""Coverage-based test selection for a candidate (pure: a hand-built reference run)."""

import pytest

from trajfactory.executors.testrun import FIXTURE, IMPORT_TIME
from trajfactory.schema import Candidate, Entity, ReferenceRun
from trajfactory.synthesizers.swe.validate import select_tests

# m.py: f at lines 1-10 (line 3 runs on every call, line 6 only on the first: a cache it fills), g at lines 12-18
REF = ReferenceRun(
    image="img",
    tests={"t::a": "passed", "t::b": "passed", "t::c": "passed", "t::flaky": "failed"},
    passing=["t::a", "t::b", "t::c"],
    coverage={"m.py": {1: [IMPORT_TIME], 3: ["t::a", "t::b", "t::flaky"], 6: ["t::b"], 12: [IMPORT_TIME],
                       13: ["t::c"], 15: ["t::c", FIXTURE], 20: [IMPORT_TIME]}},
)


def _candidate(lines, scope="function", lineno=1, end=10, body=0):
    entity = Entity(file="m.py", name="f", kind="function", lineno=lineno, end_lineno=end, complexity=3,
                    body_lineno=body)
    return Candidate(candidate_id="x", source_id="s", repo="r", base_commit="0" * 40, family="change_operator",
                     scope=scope, entity=entity, patch="", changed_lines=lines)


def test_selects_the_passing_tests_that_ran_the_changed_function():
    assert select_tests(_candidate([6]), REF, "coverage") == (["t::a", "t::b"], "coverage")
    assert select_tests(_candidate([13], lineno=12, end=14), REF, "coverage") == (["t::c"], "coverage")


def test_a_test_that_ran_only_other_lines_of_the_function_is_selected():
    # isodate's build_date_regexps: the first test fills the cache (line 6); the others only look it up (line 3),
    # yet a bug in line 6 breaks them all
    assert select_tests(_candidate([6]), REF, "coverage")[0] == ["t::a", "t::b"]


def test_continuation_line_uses_its_statement_start():
    assert select_tests(_candidate([4, 5]), REF, "coverage") == (["t::a", "t::b"], "coverage")
    assert select_tests(_candidate([2]), REF, "coverage") == (REF.passing, "full")  # part of the def line: import time


def test_import_time_fixture_code_and_class_scope_fall_back_to_the_whole_suite():
    assert select_tests(_candidate([20], lineno=20, end=22), REF, "coverage") == (REF.passing, "full")
    assert select_tests(_candidate([15], lineno=12, end=18), REF, "coverage") == (REF.passing, "full")
    assert select_tests(_candidate([3], scope="class"), REF, "coverage") == (REF.passing, "full")
    assert select_tests(_candidate([3]), REF, "full") == (REF.passing, "full")


def test_a_body_that_never_ran_reaches_no_test_while_its_def_line_ran_at_import():
    # h: lines 20-24, its def (line 20) ran at import, its body (21-24) never: the whole suite is not needed
    assert select_tests(_candidate([22], lineno=20, end=24, body=21), REF, "coverage") == ([], "coverage")
    # unless the change is in the def statement itself (a default, a decorator), which did run at import
    assert select_tests(_candidate([20], lineno=20, end=24, body=21), REF, "coverage") == (REF.passing, "full")
    # or the body's start is not known
    assert select_tests(_candidate([22], lineno=20, end=24), REF, "coverage") == (REF.passing, "full")
    # a body that did run is attributed as before
    assert select_tests(_candidate([4, 5], body=2), REF, "coverage") == (["t::a", "t::b"], "coverage")


def _class_candidate(attribution, family="remove_methods"):
    entity = Entity(file="m.py", name="C", kind="class", lineno=1, end_lineno=22, complexity=3)
    return Candidate(candidate_id="y", source_id="s", repo="r", base_commit="0" * 40, family=family, scope="class",
                     entity=entity, patch="", changed_lines=list(range(12, 19)), params={"attribution": attribution})


def test_a_removed_method_selects_the_tests_that_ran_its_body():
    # the method's body is lines 3-10 (line 1, its def, ran at import time and is not part of the body)
    assert select_tests(_class_candidate({"lines": [3, 10]}), REF, "coverage") == (["t::a", "t::b"], "coverage")
    # a body that ran at import time or in a fixture reaches tests coverage does not name
    assert select_tests(_class_candidate({"lines": [12, 14]}), REF, "coverage") == (REF.passing, "full")
    assert select_tests(_class_candidate({"lines": [13, 18]}), REF, "coverage") == (REF.passing, "full")
    assert select_tests(_class_candidate({"full": "a reason"}), REF, "coverage") == (REF.passing, "full")
    assert select_tests(_class_candidate({"lines": [3, 10]}), REF, "full") == (REF.passing, "full")


def test_reordered_methods_that_nothing_sees_select_no_test_and_say_why():
    from trajfactory.synthesizers.swe.validate import validate_candidate

    candidate = _class_candidate({"none": "reordering changes nothing here"}, family="shuffle_methods")
    assert select_tests(candidate, REF, "coverage") == ([], "coverage")
    # judged without a sandbox: nothing is run
    v = validate_candidate(None, candidate, REF)
    assert (v.status, v.detail, v.tests_run) == ("no_fail_to_pass", "reordering changes nothing here", 0)


def test_a_file_the_reference_run_did_not_measure_tells_nothing():
    """Coverage of only the candidates' files (`stage.coverage_files`): a candidate whose file, or a file of the lines
    its attribution names, was not measured runs the whole suite, never no test at all."""
    from trajfactory.synthesizers.swe.stage import coverage_files

    measured = REF.model_copy(update={"measured": ["m.py"]})
    assert select_tests(_candidate([6]), measured, "coverage") == (["t::a", "t::b"], "coverage")
    elsewhere = _candidate([6]).model_copy(update={"entity": _candidate([6]).entity.model_copy(
        update={"file": "n.py"})})
    assert select_tests(elsewhere, measured, "coverage") == (REF.passing, "full")
    named = _class_candidate({"refs": {"m.py": [[3, 3]], "tests/t.py": [[40, 40]]}})
    assert select_tests(named, REF, "coverage") == (["t::a", "t::b"], "coverage")  # every file measured
    assert select_tests(named, measured, "coverage") == (REF.passing, "full")
    early = _class_candidate({"lines": [3, 10], "import_time": {"conf.py": [[7, 7]]}})
    assert select_tests(early, measured, "coverage") == (REF.passing, "full")
    # the files the pipeline measures are exactly those the selection reads
    assert coverage_files([_candidate([6]), named, early]) == ["conf.py", "m.py", "tests/t.py"]
    everything = REF.model_copy(update={"measured": coverage_files([_candidate([6]), named, early])})
    assert select_tests(named, everything, "coverage") == (["t::a", "t::b"], "coverage")
    assert select_tests(early, everything, "coverage") == (["t::a", "t::b"], "coverage")


def test_a_candidates_time_limit_scales_with_its_tests_reference_time():
    from trajfactory.synthesizers.swe.validate import candidate_timeout

    # 3 s of the run outside the tests: 1 s per test's share, and a limit never under 6 s
    timed = REF.model_copy(update={"durations": {"t::a": 0.5, "t::b": 2.0, "t::c": 30.0}, "overhead_s": 3.0})
    assert candidate_timeout(timed, ["t::a"], 120.0) == 15.0  # 10 x 1.5 s, raised to the 15 s floor
    assert candidate_timeout(timed, ["t::a", "t::b"], 120.0) == 45.0  # 10 x (0.5 + 2 + 2 x 1)
    assert candidate_timeout(timed, ["t::c"], 120.0) == 120.0  # 10 x 31 s, capped at the ceiling
    assert candidate_timeout(timed, ["t::a", "t::b"], 120.0, factor=4, floor=1) == 18.0
    assert candidate_timeout(timed, ["t::a"], 120.0, factor=1, floor=1) == 6.0  # twice the time outside the tests
    assert candidate_timeout(timed, ["t::a"], 120.0, factor=0) == 120.0  # 0: the fixed limit
    assert candidate_timeout(REF, ["t::a"], 120.0) == 120.0  # no durations recorded: the fixed limit
    # the CPU limit: twice the time outside the tests plus 10 x the tests' own time, at least 2 s (a busy machine does
    # not slow that clock)
    from trajfactory.synthesizers.swe.validate import candidate_cpu_limit

    assert candidate_cpu_limit(timed, ["t::a"], 120.0) == 11.0  # 2 x 3 s + 10 x 0.5 s
    assert candidate_cpu_limit(timed, ["t::a", "t::b"], 120.0) == 31.0  # 2 x 3 s + 10 x 2.5 s
    quick = timed.model_copy(update={"durations": {"t::a": 0.01, "t::b": 0.01, "t::c": 0.01}, "overhead_s": 0.3})
    assert candidate_cpu_limit(quick, ["t::a"], 120.0) == 2.0  # 0.6 s + 0.1 s, raised to the 2 s floor
    assert candidate_cpu_limit(quick, ["t::a", "t::b", "t::c"], 120.0, floor=0.5) == pytest.approx(0.9)
    assert candidate_timeout(quick, ["t::a"], 120.0) == 15.0  # the wall clock's floor stays 15 s
    assert candidate_cpu_limit(timed, ["t::c"], 120.0) == 120.0  # capped at the ceiling
    assert candidate_cpu_limit(timed, ["t::a"], 120.0, factor=0) is None  # 0: no CPU limit
    assert candidate_cpu_limit(REF, ["t::a"], 120.0) is None
