"""Coverage-based test selection for a candidate (pure: a hand-built reference run)."""

from trajfactory.executors.testrun import IMPORT_TIME
from trajfactory.schema import Candidate, Entity, ReferenceRun
from trajfactory.synthesizers.swe.validate import select_tests

REF = ReferenceRun(
    image="img",
    tests={"t::a": "passed", "t::b": "passed", "t::c": "passed", "t::flaky": "failed"},
    passing=["t::a", "t::b", "t::c"],
    coverage={"m.py": {1: [IMPORT_TIME], 3: ["t::a", "t::flaky"], 6: ["t::b"], 20: [IMPORT_TIME]}},
)


def _candidate(lines, scope="function", lineno=1):
    entity = Entity(file="m.py", name="f", kind="function", lineno=lineno, end_lineno=10, complexity=3)
    return Candidate(candidate_id="x", source_id="s", repo="r", base_commit="0" * 40, family="change_operator",
                     scope=scope, entity=entity, patch="", changed_lines=lines)


def test_selects_only_tests_that_ran_the_line_and_passed_in_reference():
    assert select_tests(_candidate([3]), REF, "coverage") == (["t::a"], "coverage")


def test_continuation_line_uses_its_statement_start():
    assert select_tests(_candidate([4, 5]), REF, "coverage") == (["t::a"], "coverage")
    assert select_tests(_candidate([3, 7]), REF, "coverage") == (["t::a", "t::b"], "coverage")


def test_import_time_code_and_class_scope_fall_back_to_the_whole_suite():
    assert select_tests(_candidate([2]), REF, "coverage") == (REF.passing, "full")  # only the def line ran
    assert select_tests(_candidate([20], lineno=20), REF, "coverage") == (REF.passing, "full")
    assert select_tests(_candidate([3], scope="class"), REF, "coverage") == (REF.passing, "full")
    assert select_tests(_candidate([3]), REF, "full") == (REF.passing, "full")
