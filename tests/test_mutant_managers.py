"""Mutants of tests whose last assertion sits in a `with` block of the project's own context manager, or in a loop
that walks what an outer loop's target holds (`executors/mutants.py`, `executors/helpers.py`).

argcomplete 3.7.2 ends its completion tests in `with TempDir(prefix=...):`, a class of its test module whose
`__exit__` changes back to the old directory and returns nothing: a failure in the block goes through. docutils 0.23.1
ends nearly every test in `for name, cases in totest.items(): for case in cases: with self.subTest(...):`, the
inner loop walking what the outer one's target holds, data of the module that no patch changes. Both got no mutant,
so the shaped forgery passed verification on their tasks (`bench/verifier_audit.py --forgery`, sweep 37). A manager
whose definition may swallow the failure (an `__exit__` that returns True, a `@contextmanager` that catches what is
thrown in at its `yield` or returns from a `finally`) still gets none: there, a passing original does not show that
the assertion held."""

from __future__ import annotations

import ast
import secrets

import pytest

from trajfactory.executors.helpers import mutant_targets
from trajfactory.executors.mutant_text import mutate
from trajfactory.executors.mutants import module_tests, spot_of
from trajfactory.schema import Source
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage

RNG = secrets.SystemRandom()

SUPPORT = '''
import contextlib
import os
from contextlib import contextmanager


class TempDir:
    def __init__(self, prefix="tmp"):
        self.old_dir = os.getcwd()

    def __enter__(self):
        return self.old_dir

    def __exit__(self, *err):
        os.chdir(self.old_dir)


class Quiet:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is AssertionError


class Installed(SomethingInstalled):
    pass


class Inherits(TempDir):
    pass


@contextmanager
def cwd(path):
    old = os.getcwd()
    try:
        yield path
    finally:
        os.chdir(old)


@contextmanager
def swallowing():
    try:
        yield
    except AssertionError:
        pass


@contextmanager
def quitting():
    try:
        yield
    finally:
        return


@contextlib.contextmanager
def nested():
    with contextlib.suppress(AssertionError):
        yield
'''
TESTS = '''
import unittest
from .support import TempDir, Quiet, Installed, Inherits, cwd, swallowing, quitting, nested

TOTEST = {"a": [("x", "X")], "b": [("y", "Y"), ("z", "Z")]}


class TestThings(unittest.TestCase):
    def test_temp_dir(self):
        with TempDir(prefix="t"):
            expected = (("a", 1), ("b", 2))
            for name, want in expected:
                self.assertEqual(f(name), want)

    def test_inherited_exit(self):
        with Inherits():
            self.assertTrue(f())

    def test_cwd(self):
        with cwd("x"):
            assert f() == g()

    def test_self_manager(self):
        with self.inside():
            assert f() == g()

    def test_quiet(self):
        with Quiet():
            assert f() == g()

    def test_installed_base(self):
        with Installed():
            assert f() == g()

    def test_swallowing(self):
        with swallowing():
            assert f() == g()

    def test_quitting(self):
        with quitting():
            assert f() == g()

    def test_nested(self):
        with nested():
            assert f() == g()

    def test_cases_of_cases(self):
        for name, cases in TOTEST.items():
            for number, (given, want) in enumerate(cases):
                with self.subTest(id=f"{name}[{number}]"):
                    self.assertEqual(f(given), want)

    def test_rebound_target(self):
        for name, cases in TOTEST.items():
            cases = f(cases)
            for given in cases:
                self.assertTrue(given)

    @contextmanager
    def inside(self):
        yield
'''
FILES = {"tests/support.py": SUPPORT, "tests/test_x.py": TESTS}


def _mutant(name: str) -> tuple[str | None, str | None]:
    tree = ast.parse(TESTS)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    node = next(m for m in cls.body if getattr(m, "name", "") == name)
    spot = spot_of(node, mutant_targets(tree, "tests/test_x.py", FILES.get)(["TestThings", name]))
    if spot is None:
        return None, None
    lines = TESTS.splitlines(keepends=True)[node.lineno - 1:node.end_lineno]
    last = ast.parse("".join(mutate(lines, node.lineno, spot, RNG)).strip()).body[0].body[-1]
    while isinstance(last, (ast.With, ast.For)):  # a loop around a `subTest` ends in the `break` the copy adds
        last = last.body[-2] if isinstance(last.body[-1], ast.Break) else last.body[-1]
    return spot.kind, ast.unparse(last)


@pytest.mark.parametrize("name,kind,last", [
    # an `__exit__` that returns nothing, with a literal bound in the block before the loop that walks it
    ("test_temp_dir", "opposite", "self.assertNotEqual(f(name), want)"),
    ("test_inherited_exit", "opposite", "self.assertFalse(f())"),  # found on a base the checkout defines
    ("test_cwd", "negate", "assert not f() == g()"),  # `@contextmanager`, `try: yield finally: ...`
    ("test_self_manager", "negate", "assert not f() == g()"),  # a method of the test's class
    # docutils' suites: the inner loop walks what the outer one's target holds
    ("test_cases_of_cases", "opposite", "self.assertNotEqual(f(given), want)"),
    # a manager that may swallow the failure, or one the checkout does not define: no mutant
    ("test_quiet", None, None),
    ("test_installed_base", None, None),
    ("test_swallowing", None, None),
    ("test_quitting", None, None),
    ("test_nested", None, None),
    # the outer target bound again in the test: what the inner loop walks is built, so it gets an `else` that fails
    ("test_rebound_target", "opposite", "self.assertFalse(given)"),
])
def test_a_project_manager_or_an_inner_loop_gets_a_mutant_where_its_definition_shows_it_ran(name, kind, last):
    assert _mutant(name) == (kind, last)


def test_the_managers_do_what_their_definitions_show():
    """Run against the managers' own code: a failing assertion goes through those that get mutants, and the others
    swallow it (a passing original shows nothing there)."""
    scope: dict = {"SomethingInstalled": object}
    exec(compile(SUPPORT, "<support>", "exec"), scope)
    for through in (scope["TempDir"](), scope["Inherits"](), scope["cwd"](".")):
        with pytest.raises(AssertionError):
            with through:
                assert 1 == 2
    for swallows in (scope["Quiet"](), scope["swallowing"](), scope["quitting"](), scope["nested"]()):
        with swallows:
            assert 1 == 2


def test_docutils_suites_of_cases_get_mutants(mirrors, tmp_path):
    """docutils 0.23.1's own suite, read as `write_twins` reads it: the tests that end in a loop over what an outer
    loop's target holds (`for name, cases in totest.items(): for ... in enumerate(cases):`) get their mutants.
    `bench/mutant_audit.py pypi:docutils==0.23.1` runs them all beside their originals (`bench/RESULTS.md`)."""
    source = harvest_repo("pypi:docutils==0.23.1", mirrors)
    assert isinstance(source, Source), source
    checkout = stage.checkout(source, tmp_path / "co")
    nested, mutated = 0, 0
    for file in sorted(checkout.glob("test/**/test_*.py")):
        rel = file.relative_to(checkout).as_posix()
        tree = ast.parse(file.read_text(encoding="utf-8"))
        targets = mutant_targets(tree, rel, lambda p: (checkout / p).read_text(encoding="utf-8")
                                 if (checkout / p).is_file() else None)
        for names, node in module_tests(tree):
            last = node.body[-1]
            if isinstance(last, ast.For) and isinstance(last.body[-1], ast.For) and \
                    isinstance(last.target, ast.Tuple) and ast.unparse(last.body[-1].iter) == "enumerate(cases)":
                nested += 1
                mutated += spot_of(node, targets(names)) is not None
    # 110 of 117 on 0.23.1; the rest skip a case (`self.skipTest`), walk what the test built (`parts.keys()`), or
    # bind `cases` in two loops
    assert nested >= 100 and mutated >= 100, (nested, mutated)
