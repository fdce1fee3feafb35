"""Mutants of tests that end in a helper of their own module whose arguments no rule changes (`mutants._copied`,
`helpers.own_helper`, `twin_source.twin_source`).

python-dateutil 2.9.0 ends 227 tests of `test_rrule.py` in `self._rrulestr_reverse_test(rule)`, a method of the
test's class that builds both sides of its `self.assertEqual(list(rule), list(rrulestr_rrule))` from its argument:
no changed argument fails it, so those tests got no mutant. The mutant now calls a copy of the helper, written
beside the twins, whose last assertion is turned against it: the call ended the test, so in a passing original the
helper ran to its end and that assertion held. A helper that may return before its end, has a decorator, uses
`super()`, or whose name the module binds twice keeps the test from a mutant."""

from __future__ import annotations

import ast
import secrets
import subprocess
import sys

import pytest

from pytest_runs import outcomes
from trajfactory.executors.helpers import mutant_targets
from trajfactory.executors.mutant_text import mutate
from trajfactory.executors.mutants import module_tests, spot_of
from trajfactory.executors.twins import twin_source
from trajfactory.schema import Source
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage

RNG = secrets.SystemRandom()

LIB = '''
def parse(text):
    return int(text)


def show(value):
    return str(value)
'''
TESTS = '''
import unittest

from lib import parse, show

LIMIT = 100


def check_round_trip(text, want, limit=LIMIT):
    value = parse(text)
    assert show(value) == text
    for digit in (1, 2):
        assert value + digit > want


def check_early(text):
    if not text:
        return
    assert parse(text) > 0


@unittest.skipIf(False, "never")
def check_decorated(text):
    assert parse(text) > 0


def check_twice(text):
    assert parse(text) > 0


check_twice = check_early


class TestParse(unittest.TestCase):
    def _reverse(self, text):
        value = parse(text)
        self.assertEqual(parse(show(value)), value)

    def __private(self, text):
        self.assertEqual(parse(text), 1)

    def _with_super(self, text):
        super().setUp()
        self.assertEqual(parse(text), 1)

    def test_reverse(self):
        for text in ("12", "7"):
            self.assertTrue(text)
        self._reverse("12")

    def test_module_helper(self):
        check_round_trip("7", 6)

    def test_private(self):
        self.__private("1")

    def test_super(self):
        self._with_super("1")


def test_module_helper():
    check_round_trip("42", 40)


def test_early_return():
    check_early("3")


def test_decorated():
    check_decorated("3")


def test_bound_twice():
    check_twice("3")


def test_shadowed():
    check_round_trip = print
    check_round_trip("3")
'''
FILES = {"lib.py": LIB, "test_x.py": TESTS}
COPIED = [["TestParse", "test_reverse"], ["TestParse", "test_module_helper"], ["test_module_helper"]]


def _spot(names: list[str]):
    tree = ast.parse(TESTS)
    node = dict((tuple(p), n) for p, n in module_tests(tree))[tuple(names)]
    return spot_of(node, mutant_targets(tree, "test_x.py", FILES.get)(names))


@pytest.mark.parametrize("names,helper,inner", [
    (["TestParse", "test_reverse"], ["TestParse", "_reverse"], "opposite"),
    (["TestParse", "test_module_helper"], ["check_round_trip"], "negate"),  # a loop over a literal ends it
    (["test_module_helper"], ["check_round_trip"], "negate"),
    (["TestParse", "test_private"], None, None),  # mangled by its class
    (["TestParse", "test_super"], None, None),  # `super()` is bound to where it is defined
    (["test_early_return"], None, None),  # may return before its assertion
    (["test_decorated"], None, None),
    (["test_bound_twice"], None, None),  # the module binds the name again
    (["test_shadowed"], None, None),  # the test binds it itself
])
def test_a_helper_of_the_module_is_copied_where_its_own_body_shows_its_assertion_held(names, helper, inner):
    spot = _spot(names)
    if helper is None:
        assert spot is None
        return
    assert spot.kind == "copy" and spot.helper[0] == helper and spot.inner.kind == inner
    with pytest.raises(ValueError, match="twin_source"):  # only the twins' writer can put the copy beside it
        mutate(TESTS.splitlines(keepends=True), 1, spot, RNG)


def test_the_mutants_call_changed_copies_and_fail_where_the_originals_pass(tmp_path):
    """The twins' writer puts each helper's copy beside the mutants (a method's on its class, as the twins), and real
    pytest runs the originals, twins and mutants: the originals and twins pass, the mutants fail, and no copy of a
    helper is collected as a test. Each mutant fails on its copy's turned assertion, not on a copy it cannot
    reach (a method's copy left on the class's subclass would fail it with `AttributeError`)."""
    made = twin_source(TESTS, COPIED, RNG, read=FILES.get, file="test_x.py")
    assert made is not None
    source, twins, _, mutants = made
    assert set(mutants) == {tuple(p) for p in COPIED}
    (tmp_path / "lib.py").write_text(LIB)
    (tmp_path / "test_x.py").write_text(source)
    ids = {}
    for path in COPIED:
        prefix = "test_x.py::" + "".join(f"{p}::" for p in path[:-1])
        ids |= {prefix + path[-1]: "passed", prefix + twins[tuple(path)]: "passed",
                prefix + mutants[tuple(path)]: "failed on an assertion"}  # the copy's turned assertion
    assert {i: o for i, o in outcomes(tmp_path, list(ids)).items() if i in ids} == ids
    collected = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                                "test_x.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120).stdout
    assert "::_" not in collected and "test_module_helper" in collected


def test_dateutil_rrule_tests_that_end_in_their_helper_get_mutants(mirrors, tmp_path):
    """python-dateutil 2.9.0's `test_rrule.py`, read as `write_twins` reads it: the tests that end in
    `self._rrulestr_reverse_test(rule)` get a mutant that calls its copy, and the module with all of them still
    parses. `bench/mutant_audit.py pypi:python-dateutil==2.9.0.post0` runs them beside their originals
    (`bench/RESULTS.md`)."""
    source = harvest_repo("pypi:python-dateutil==2.9.0.post0", mirrors)
    assert isinstance(source, Source), source
    checkout = stage.checkout(source, tmp_path / "co")
    text = (checkout / "tests/test_rrule.py").read_text(encoding="utf-8")
    tree = ast.parse(text)
    targets = mutant_targets(tree, "tests/test_rrule.py", lambda p: (checkout / p).read_text(encoding="utf-8")
                             if (checkout / p).is_file() else None)
    ending = [names for names, node in module_tests(tree) if isinstance(node.body[-1], ast.Expr) and
              ast.unparse(node.body[-1]).startswith("self._rrulestr_reverse_test(")]
    copied = [names for names in ending if (spot := spot_of(dict((tuple(p), n) for p, n in module_tests(tree))[
        tuple(names)], targets(names))) is not None and spot.kind == "copy"]
    assert len(ending) >= 200 and len(copied) == len(ending), (len(ending), len(copied))
    made = twin_source(text, copied[:20], RNG, read=lambda p: (checkout / p).read_text(encoding="utf-8")
                       if (checkout / p).is_file() else None, file="tests/test_rrule.py")
    assert made is not None and len(made[3]) == 20
    assert made[0].count("def _") >= text.count("def _") + 20  # a copy of the helper per mutant


REBOUND = '''
import pytest


def parse(text):
    return int(text)


CASES = [("1", 1), ("2", 2)]


@pytest.mark.parametrize("value,want", CASES, ids=["a", "b"])
def test_first(value, want):
    assert parse(value) == want


CASES = [("1", 2), ("2", 1)]


@pytest.mark.parametrize("value,want", CASES, ids=["a", "b"])
def test_second(value, want):
    assert parse(value) != want
'''


def test_no_mutant_where_a_name_its_decorators_read_is_bound_again_after_it(tmp_path, monkeypatch):
    """python-dateutil 2.9.0's `test_isoparser.py` binds `DATETIMES` anew before each test it parametrizes. A copy
    written at the module's end reads the last binding: the same ids run other cases, and a mutant there passed
    beside its original (40 of them in `bench/mutant_audit.py`). Such a test keeps its twin and gets no mutant; with
    the rule off, its mutant passes beside the passing original, which is why."""
    import trajfactory.executors.twin_source as writer

    made = twin_source(REBOUND, [["test_first"]], RNG, read={"test_r.py": REBOUND}.get, file="test_r.py")
    assert made is not None and made[3] == {} and ("test_first",) in made[1]
    renamed = REBOUND.replace('CASES = [("1", 2)', 'OTHER = [("1", 2)').replace(
        'CASES, ids=["a", "b"])\ndef test_second', 'OTHER, ids=["a", "b"])\ndef test_second')
    assert renamed.count("OTHER") == 2
    assert twin_source(renamed, [["test_first"]], RNG, read={"test_r.py": renamed}.get, file="test_r.py")[3]
    monkeypatch.setattr(writer, "rebound", lambda *args: False)
    source, _, _, mutants = twin_source(REBOUND, [["test_first"]], RNG, read={"test_r.py": REBOUND}.get,
                                        file="test_r.py")
    (tmp_path / "test_r.py").write_text(source)
    ids = [f"test_r.py::{name}[{case}]" for name in ("test_first", mutants[("test_first",)]) for case in "ab"]
    assert outcomes(tmp_path, ids) == dict.fromkeys(ids, "passed")
