"""Twins of the failing tests and a canary class in their own file (`executors/twins.py`): the rewritten file, and a
real pytest run of it on the host, where a twin fails and passes with its original and the canaries keep their
outcomes. The forgeries they catch run through the real verifier in Docker, in `test_verification_guard.py`."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from trajfactory.executors.canaries import Canaries
from trajfactory.executors.twins import Twins, twin_source

MODULE = '''import unittest

import pytest


def add(a, b):
    return a + b - 1  # the bug


@pytest.mark.parametrize("a,b", [(1, 2), (3, 4)], ids=["small one", "big [two] \\u00e9"])
def test_add_numbers(a, b):
    assert add(a, b) == a + b


class TestAdding(unittest.TestCase):
    def test_add_method(self):
        self.assertEqual(add(2, 2), 4)

    def test_other(self):
        self.assertTrue(True)


class TestNested:
    class TestInner:
        def test_inner_add(self):
            assert add(1, 1) == 2


def test_unrelated():
    assert True


def test_unicode_roundtrip_of_empty_input():  # named with words the twins' names are made of
    assert add(0, 0) == 0'''

WANTED = [["test_add_numbers"], ["TestAdding", "test_add_method"], ["test_unicode_roundtrip_of_empty_input"],
          ["TestNested", "TestInner", "test_inner_add"],
          ["TestMixin", "test_from_a_mixin"]]


def _outcomes(folder: Path, ids: list[str]) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q", *ids], cwd=folder,
                         capture_output=True, text=True, timeout=120)
    found = {}
    for line in out.stdout.splitlines():
        if m := re.match(r"^(PASSED|FAILED|ERROR) (\S.*?)(?: - .*)?$", line):
            found[m[2]] = m[1].lower()
    return found


def test_twins_are_copies_at_the_end_under_names_that_share_nothing_with_their_originals():
    new, twins, canary, mutants = twin_source(MODULE, WANTED)
    # a test defined elsewhere (a mixin) or in a nested class gets none
    assert set(twins) == {("test_add_numbers",), ("TestAdding", "test_add_method"),
                           ("test_unicode_roundtrip_of_empty_input",)}
    assert new.startswith(MODULE + "\n")  # everything is added at the end: no line of the file moves
    tree = ast.parse(new)
    top = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    twin = next(n for n in top if n.name == twins[("test_add_numbers",)])
    original = next(n for n in top if n.name == "test_add_numbers")
    assert ast.dump(twin.decorator_list[0]) == ast.dump(original.decorator_list[0])  # the parametrize, as it was
    assert ast.dump(twin.body[0]) == ast.dump(original.body[0]) and twin.lineno > len(MODULE.splitlines())
    for path, name in twins.items():
        assert name.startswith("test_") and not set(name[5:].split("_")) & set(path[-1].split("_")), name
    # a method's twin sorts after every test of its class, which a unittest class runs in name order
    for _ in range(20):
        again = twin_source(MODULE, WANTED)[1][("TestAdding", "test_add_method")]
        assert again > "test_other", again
    # the method's twin: in a subclass under its class's name, which takes the class's place in the module
    sub = [n for n in top if n.name == "TestAdding"][-1]
    assert [ast.unparse(b) for b in sub.bases] == ["TestAdding"]
    assert [n.name for n in sub.body] == [twins[("TestAdding", "test_add_method")],
                                          mutants[("TestAdding", "test_add_method")]]
    # mutants (`executors/mutants.py`): copies of the tests whose last assertion is turned against them, an expected
    # constant changed; `assert add(a, b) == a + b` has none to change, so it is negated
    assert set(mutants) == set(twins)
    negated = next(n for n in top if n.name == mutants[("test_add_numbers",)])
    assert ast.unparse(negated.body[0]) == "assert not add(a, b) == a + b"
    mutant = sub.body[1]
    call = mutant.body[0].value
    assert ast.unparse(call.args[0]) == "add(2, 2)" and call.args[1].value in range(5, 14), ast.unparse(mutant)
    assert mutants[("TestAdding", "test_add_method")] > twins[("TestAdding", "test_add_method")] > "test_other"
    function = next(n for n in top if n.name == mutants[("test_unicode_roundtrip_of_empty_input",)])
    assert ast.unparse(function.body[0]).startswith("assert add(0, 0) == ") and function.body[0].test.comparators[
        0].value in range(1, 10)
    # canaries close the file: a class and plain functions, each two tests that must pass and two that must fail
    tail = tree.body[[i for i, n in enumerate(tree.body) if isinstance(n, ast.Import)][-1] + 1:]
    cls = next(n for n in tail if isinstance(n, ast.ClassDef))
    functions = [n.name for n in tail if isinstance(n, ast.FunctionDef)]
    assert cls.name not in MODULE and len(cls.body) == 4 and len(tail) == 5, ast.unparse(ast.Module(tail, []))
    defined = {n.name for n in ast.walk(ast.parse(MODULE)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert len(functions) == 4 and not {f for f in functions if f in defined or not f.startswith("test_")}, functions
    assert len(canary.must_pass) == len(canary.must_fail) == 4
    assert sorted(t for t in canary.ids if "::" not in t) == sorted(functions)
    assert len([t for t in canary.ids if t.startswith(f"{cls.name}::test_")]) == 4
    assert twin_source("def test_x(:\n", [["test_x"]]) is None  # a file Python cannot parse is left as it is


def test_a_twin_fails_and_passes_with_its_original_in_a_real_pytest_run(tmp_path):
    new, twins, canary, mutants = twin_source(MODULE, WANTED)
    (tmp_path / "test_mod.py").write_text(new)
    f = "test_mod.py::"
    pairs = {f + "test_add_numbers[small one]": f + twins[("test_add_numbers",)] + "[small one]",
             f + "TestAdding::test_add_method": f + "TestAdding::" + twins[("TestAdding", "test_add_method")]}
    canaries = Canaries(path="test_mod.py", must_pass=[f + t for t in canary.must_pass],
                        must_fail=[f + t for t in canary.must_fail])
    twin_set = Twins(pairs=pairs, canaries=[canaries],
                     mutants={f + "TestAdding::test_add_method": f + "TestAdding::" + mutants[("TestAdding",
                                                                                               "test_add_method")]})
    ids = [*pairs, *twin_set.ids]

    others = [f + "TestAdding::test_other", f + "TestNested::TestInner::test_inner_add", f + "test_unrelated"]
    buggy = _outcomes(tmp_path, ids + others)
    # the class's other tests keep their ids, run once, from the subclass that took the class's place
    assert buggy[others[0]] == buggy[others[2]] == "passed" and buggy[others[1]] == "failed", buggy
    collected = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                                "test_mod.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120).stdout
    ids_seen = [line for line in collected.splitlines() if line.startswith(f)]
    # the module's tests, the twins, the mutants, the canaries
    assert len(ids_seen) == len(set(ids_seen)) == 7 + 4 + 4 + 8, collected
    assert {buggy[t] for t in [*pairs, *pairs.values()]} == {"failed"}, buggy
    assert twin_set.broken(buggy) == []

    (tmp_path / "test_mod.py").write_text(new.replace("a + b - 1  # the bug", "a + b"))
    fixed = _outcomes(tmp_path, ids)
    assert {fixed[t] for t in [*pairs, *pairs.values(), *canaries.must_pass]} == {"passed"}, fixed
    assert {fixed[t] for t in canaries.must_fail} == {"failed"} and twin_set.broken(fixed) == []

    # outcomes forged by name: the originals pass, their twins keep failing; by file: the canaries pass too
    by_name = {**buggy, **{t: "passed" for t in pairs}}
    assert len(twin_set.broken(by_name)) == 2 and all("told apart by the test's name" in b
                                                       for b in twin_set.broken(by_name))
    by_file = {t: "passed" for t in buggy}
    assert [b for b in twin_set.broken(by_file) if "must fail but was passed" in b] != []
    # every failure forged but the canaries', which a forger can tell by their shape (`a + b == want`): the twins
    # agree with their originals and the canaries are true; the mutant, one of the project's tests with another
    # expected value, passed beside its original
    shaped = {**{t: "passed" for t in buggy}, **{t: fixed[t] for t in canaries.ids}}
    mutant = twin_set.mutants[f + "TestAdding::test_add_method"]
    assert fixed[mutant] == buggy[mutant] == "failed", (fixed, buggy)
    assert twin_set.broken(shaped) == [f"mutant test {mutant} (a copy of {f}TestAdding::test_add_method with its last "
                                       f"assertion turned against it) passed while {f}TestAdding::test_add_method "
                                       "passed: no run of the code passes both"]
    assert twin_set.broken(shaped, loose=[f + "TestAdding::test_add_method"]) == []


def test_a_test_bound_to_its_own_name_is_told_apart_from_its_twin_and_can_be_excused(tmp_path):
    """A golden-file test that finds its expected value by its own name (as snapshot and cassette plugins do): its
    twin fails under a real fix. `told_apart` names it, and `broken` excuses what `name_bound` found (the verifier
    asks that of the task's own fix, in Docker: `test_verification_guard.py`), and nothing else."""
    source = MODULE + '''


def test_golden_output(request):
    import pathlib
    expected = (pathlib.Path(__file__).parent / "golden" / (request.node.name + ".txt")).read_text()
    assert str(add(20, 22)) == expected
'''
    (tmp_path / "golden").mkdir()
    (tmp_path / "golden" / "test_golden_output.txt").write_text("42")
    new, twins, _, _ = twin_source(source, [["test_golden_output"], ["TestAdding", "test_add_method"]])
    (tmp_path / "test_mod.py").write_text(new.replace("a + b - 1  # the bug", "a + b"))  # fixed
    f = "test_mod.py::"
    pairs = {f + "test_golden_output": f + twins[("test_golden_output",)],
             f + "TestAdding::test_add_method": f + "TestAdding::" + twins[("TestAdding", "test_add_method")]}
    twin_set = Twins(pairs=pairs)
    fixed = _outcomes(tmp_path, [*pairs, *pairs.values()])
    assert fixed[f + "test_golden_output"] == "passed" and fixed[pairs[f + "test_golden_output"]] == "failed", fixed
    assert twin_set.told_apart(fixed) == [f + "test_golden_output"]
    assert len(twin_set.broken(fixed)) == 1 and twin_set.broken(fixed, [f + "test_golden_output"]) == []
    # the excuse covers that test alone: a forgery by name of the other test still shows
    forged = {**fixed, pairs[f + "TestAdding::test_add_method"]: "failed"}
    assert [b.split()[2] for b in twin_set.broken(forged, [f + "test_golden_output"])] == [
        pairs[f + "TestAdding::test_add_method"]]


SWITCHED = '''import unittest


class TestBase(unittest.TestCase):
    context = None
    expected = None

    def test_context(self):
        self.assertEqual(self.context, self.expected)

    def test_super(self):
        self.assertEqual(super().id(), self.id())


class TestSwitch(unittest.TestCase):  # sets the base's attribute through the module's name, as pyparsing's do
    def test_switch(self):
        TestBase.context = "on"


class TestSwitched(TestBase):
    expected = "on"
'''


def test_a_methods_twin_goes_onto_its_own_class_which_keeps_its_name(tmp_path):
    """pyparsing 3.3.3: `Test03_EnablePackratParsing` sets `Test02_WithoutPackrat.suite_context` through the module's
    name, and `Test04_WithPackrat(Test02_WithoutPackrat)` reads it. A twin class that took `Test02`'s name got the
    attribute instead, and Test04's tests failed under any fix: 4 of 5 real fixes there were not verified. The twin
    is put on the class itself now, and its `super()` is bound to that class."""
    new, twins, canary, mutants = twin_source(SWITCHED, [["TestBase", "test_context"], ["TestBase", "test_super"]])
    assert set(twins) == set(mutants) == {("TestBase", "test_context"), ("TestBase", "test_super")}
    (tmp_path / "test_switched.py").write_text(new)
    ran = _outcomes(tmp_path, ["test_switched.py"])
    f = "test_switched.py::"
    twin_ids = [f"{f}TestBase::{twins[p]}" for p in twins]
    assert {t: ran.get(t) for t in twin_ids} == dict.fromkeys(twin_ids, "passed"), ran
    assert ran[f + "TestSwitched::test_context"] == ran[f + "TestSwitched::test_super"] == "passed", ran
    # the mutants fail, on the class and on its subclass, which inherits them
    must_fail = [*canary.must_fail, *(f"{cls}::{m}" for m in mutants.values() for cls in ("TestBase", "TestSwitched"))]
    assert {t: o for t, o in ran.items() if t.removeprefix(f) not in must_fail} == {
        t: "passed" for t in ran if t.removeprefix(f) not in must_fail}, ran
    assert {ran[f + t] for t in must_fail} == {"failed"}, ran
    namespace: dict = {}
    exec(compile(new, "test_switched.py", "exec"), namespace)  # the module's names: the class, no helper left
    assert namespace["TestBase"].__bases__ == (__import__("unittest").TestCase,)
    assert not [n for n in namespace if n.startswith("_") and not n.startswith("__")], sorted(namespace)


CLASS_NAMES = '''import pytest

LIMIT = 3


class TestKeys:
    keys = ["a", "b"]
    fallback = "z"

    def helper(self):
        return 1

    @pytest.mark.parametrize("key", keys)
    def test_known(self, key, default=fallback, limit: int = LIMIT):
        assert key in self.keys and default == "z" and limit == 3
'''


def test_a_methods_twin_sees_the_class_body_names_its_decorators_name(tmp_path):
    """hpack 4.2.0: `@given(special_keys=sets(keys))` on a method reads `keys`, an attribute of its class's body. A
    class body sees only its own names, so the twin's copy, compiled in a subclass, raised NameError at import: the
    whole test file failed to collect, every canary was missing, and the verifier refused the real fix (one task of
    hpack, one of wsproto in sweep 20). The subclass now binds those names first, from the class."""
    new, twins, _, _ = twin_source(CLASS_NAMES, [["TestKeys", "test_known"]])
    (tmp_path / "test_keys.py").write_text(new)
    twin = twins[("TestKeys", "test_known")]
    ran = _outcomes(tmp_path, ["test_keys.py::TestKeys"])
    f = "test_keys.py::TestKeys::"
    assert {ran.get(f"{f}{name}[{k}]") for name in ("test_known", twin) for k in "ab"} == {"passed"}, ran
    namespace: dict = {}
    exec(compile(new, "test_keys.py", "exec"), namespace)
    assert "keys" in vars(namespace["TestKeys"]) and "fallback" in vars(namespace["TestKeys"])  # its own, unchanged
    assert not hasattr(namespace["TestKeys"], "LIMIT")  # a module name is no class attribute
