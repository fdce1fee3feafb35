"""Mutants of tests that end in a `try` statement (`executors/mutants.py`, `_tried`).

Tests end in `try` two ways on real suites, and both got no mutant, so the shaped forgery passed a task whose failing
tests all ended that way:
- the body does the work and every handler stops the test (tabulate 0.10.0's `try: import pandas ... assert_equal(
  expected, result) except ImportError: skip(...)`, `skip` imported from pytest through its own `common` module;
  humanize 4.17.0's `try: activate(locale) except FileNotFoundError: pytest.skip(...) else: assert ... finally:
  deactivate()`): a passing original ran the body, and its `else`, to the end;
- the body ends in a stop and one handler checks the exception (jsonpointer 3.12's `resolve_pointer(doc, "/bar");
  self.fail(...)` then `except JsonPointerException as e: self.assertIn(repr(doc), str(e))`; toolz's `raise
  AssertionError(...)`; dateutil's `else: pytest.fail(...)`): a passing original ran that handler to its end.
A handler that lets the test go on (`except ValueError: pass`, a project's `skip` that only prints, a `self.fail`
that the test's class defines over) keeps the test from a mutant: there a passing original does not show that the
assertion ran, and such a copy passes beside it (shown here by running one)."""

from __future__ import annotations

import ast
import secrets

import pytest

from pytest_runs import outcomes
from trajfactory.executors.helpers import mutant_targets
from trajfactory.executors.mutant_text import mutate
from trajfactory.executors.mutants import Spot, module_tests, spot_of
from trajfactory.schema import Source
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage

RNG = secrets.SystemRandom()

LIB = '''
def parse(text):
    if not text.isdigit():
        raise ValueError(f"not a number: {text!r}")
    return int(text)
'''
COMMON = '''
from pytest import skip  # noqa: F401


def lenient_skip(reason):
    print(reason)
'''
TESTS = '''
import unittest

import pytest

from lib import parse
from common import skip, lenient_skip


def test_then_finally():
    try:
        assert parse("12") == 12
    finally:
        parse("1")


def test_skipped_without_a_module():
    try:
        import json
        assert parse("7") == len(json.dumps([1, 22]))
    except ImportError:
        skip("no json")


def test_else_after_a_skip():
    try:
        value = parse("3")
    except ValueError:
        pytest.skip("cannot parse")
    else:
        assert value == 3
    finally:
        value = None


def test_error_expected_raise():
    try:
        parse("x1")
        raise AssertionError("expected ValueError")
    except ValueError as e:
        assert "x1" in str(e)


def test_error_expected_else_fails():
    try:
        parse("x2")
    except ValueError as e:
        assert e.args[0] == "not a number: 'x2'"
    else:
        pytest.fail("no error")


def test_in_a_loop():
    for text in ("4", "5"):
        try:
            assert parse(text) > 3
        except ValueError:
            pytest.fail(text)


def test_handler_lets_it_go_on():
    try:
        assert parse("x4") == 4
    except ValueError:
        pass


def test_own_skip_prints():
    try:
        assert parse("x8") == 8
    except ValueError:
        lenient_skip("no")


def test_two_handlers():
    try:
        parse(5)
        raise AssertionError("expected ValueError")
    except ValueError as e:
        assert "5" in str(e)
    except AttributeError:
        pass


def test_no_check_in_the_handler():
    try:
        parse("x6")
    except ValueError:
        pass
    else:
        raise AssertionError("expected ValueError")


class TestUnit(unittest.TestCase):
    def test_error_expected_self_fail(self):
        try:
            parse("x3")
            self.fail("no error")
        except ValueError as e:
            self.assertIn("x3", str(e))

    def test_any_error_fails(self):
        try:
            self.assertEqual(parse("5"), 5)
        except Exception as e:
            self.fail(f"raised {e}")


class TestLenient(unittest.TestCase):
    def fail(self, msg=None):
        print(msg)

    def test_own_fail(self):
        try:
            assert parse("x7") == 7
        except ValueError:
            self.fail("x")
'''
FILES = {"lib.py": LIB, "common.py": COMMON, "test_x.py": TESTS}
NONE = ["test_handler_lets_it_go_on", "test_own_skip_prints", "test_two_handlers", "test_no_check_in_the_handler",
        "TestLenient.test_own_fail"]
"""The tests that get no mutant: each passes while its last assertion did not run, or ran in another clause."""


def _tests(text: str) -> dict[str, tuple[list[str], ast.FunctionDef]]:
    return {".".join(names): (names, node) for names, node in module_tests(ast.parse(text))}


def _copy(text: str, node: ast.FunctionDef, spot: Spot) -> str:
    """The module `text` with the test `node` changed at `spot` (a whole copy, run beside the original)."""
    lines = text.splitlines(keepends=True)
    return "".join(lines[:node.lineno - 1] + mutate(lines[node.lineno - 1:node.end_lineno], node.lineno, spot, RNG)
                   + lines[node.end_lineno:])


@pytest.mark.parametrize("name,kind,changed", [
    ("test_then_finally", "constant", "assert parse(\"12\") == "),  # 12 -> 13..21
    ("test_skipped_without_a_module", "negate", "assert not (parse(\"7\")"),  # `skip` from pytest through `common`
    ("test_else_after_a_skip", "constant", "assert value == "),  # the `else` ran after the body
    ("test_error_expected_raise", "negate", "assert not (\"x1\" in str(e))"),  # the one handler ran
    ("test_error_expected_else_fails", "constant", "assert e.args[0] == \"not a number: 'x2'"),
    ("test_in_a_loop", "negate", "assert not (parse(text) > 3)"),  # a `try` in a loop over a literal
    ("TestUnit.test_error_expected_self_fail", "opposite", "self.assertNotIn(\"x3\", str(e))"),
    ("TestUnit.test_any_error_fails", "constant", "self.assertEqual(parse(\"5\"), "),  # unittest's own `self.fail`
    *[(name, None, None) for name in NONE],
])
def test_a_try_that_ends_a_test_gets_a_mutant_where_a_passing_original_shows_its_clause_ran(name, kind, changed):
    names, node = _tests(TESTS)[name]
    spot = spot_of(node, mutant_targets(ast.parse(TESTS), "test_x.py", FILES.get)(names))
    assert (spot.kind if spot else None) == kind
    if spot is not None:
        line = spot.node.lineno - 1
        assert changed in _copy(TESTS, node, spot).splitlines()[line] != TESTS.splitlines()[line]


def test_each_mutant_fails_where_its_original_passes_and_the_left_out_ones_would_pass(tmp_path):
    """Real pytest on the originals and on a whole copy of the module per mutant. The tests left without a mutant
    pass too, and a copy with their last assertion negated all the same passes beside them: the reason they get
    none."""
    for file, text in FILES.items():
        (tmp_path / file).write_text(text)
    tree, ids, want = ast.parse(TESTS), [], {}
    targets = mutant_targets(tree, "test_x.py", FILES.get)
    for index, (name, (names, node)) in enumerate(_tests(TESTS).items()):
        spot = spot_of(node, targets(names))
        if spot is None:  # what a mutant of its last `assert` would be: `assert not (...)`
            if name not in NONE or name == "test_no_check_in_the_handler":  # that one asserts nothing
                continue
            spot = Spot("negate", next(n for n in ast.walk(node) if isinstance(n, ast.Assert)).test)
        copy = f"test_m{index}.py"
        (tmp_path / copy).write_text(_copy(TESTS, node, spot))
        test_id = "::".join(names)
        ids += [f"test_x.py::{test_id}", f"{copy}::{test_id}"]
        want[f"test_x.py::{test_id}"] = "passed"
        want[f"{copy}::{test_id}"] = "passed" if name in NONE else "failed on an assertion"
    got = outcomes(tmp_path, ids)
    assert {i: got.get(i, "missing") for i in want} == want
    assert sum(v == "failed on an assertion" for v in want.values()) == 8


def test_jsonpointer_tests_that_expect_an_error_get_mutants_that_fail(mirrors, tmp_path):
    """jsonpointer 3.12's own suite: `VerboseExceptionsTests` ends each test in `try: resolve_pointer(doc, "/bar");
    self.fail(...) except JsonPointerException as e: self.assertIn(...)`. Each gets a mutant of the handler's last
    assertion, and real pytest, run on the unpacked sdist, fails each where its original passes."""
    source = harvest_repo("pypi:jsonpointer==3.12", mirrors)
    assert isinstance(source, Source), source
    checkout = stage.checkout(source, tmp_path / "co")
    text = (checkout / "tests.py").read_text(encoding="utf-8")
    targets = mutant_targets(ast.parse(text), "tests.py", lambda p: (checkout / p).read_text(encoding="utf-8")
                             if (checkout / p).is_file() else None)
    ids, want = [], {}
    for index, (name, (names, node)) in enumerate(_tests(text).items()):
        if names[0] != "VerboseExceptionsTests" or not isinstance(node.body[-1], ast.Try):
            continue
        spot = spot_of(node, targets(names))
        assert spot is not None and spot.kind == "opposite", name
        (checkout / f"test_m{index}.py").write_text(_copy(text, node, spot), encoding="utf-8")
        ids += [f"tests.py::{'::'.join(names)}", f"test_m{index}.py::{'::'.join(names)}"]
        want |= {ids[-2]: "passed", ids[-1]: "failed on an assertion"}
    assert len(want) == 4
    got = outcomes(checkout, ids)
    assert {i: got.get(i, "missing") for i in want} == want
