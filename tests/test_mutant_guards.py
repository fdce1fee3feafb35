"""Mutants of tests that end in a loop over what the test built (`executors/mutants.py`, `Spot.guards`).

Such a loop may run no time, and a copy with its last assertion turned then passes beside its original, so these
tests had no mutant unless the loop was one `assert` (`every`): 346 of the 1,134 tests without a mutant on 28 real
suites ended in such a loop (more-itertools' `for i, x in enumerate(l): self.assertEqual(mi.nth(l, i), x)`,
networkx's `for u, v in G.edges(): ...`). The copy now counts the loop's rounds (`for _n, (x) in enumerate(xs):`) and
fails after it where it ran none (`else: assert "_n" in locals(), "..."`). Where it ran, its first round reaches the
turned assertion, so the copy fails wherever the original passes; and the count alone never fails a copy whose loop
ran, so a forgery that quiets the assertions is still seen (the copy passes there).
"""

from __future__ import annotations

import ast
import secrets

import pytest

from pytest_runs import outcomes
from trajfactory.executors.helpers import mutant_targets
from trajfactory.executors.mutant_text import mutate
from trajfactory.executors.mutants import Spot, module_tests, spot_of
from trajfactory.executors.twins import twin_source
from trajfactory.schema import Source
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage

RNG = secrets.SystemRandom()


def _node(source: str) -> ast.FunctionDef:
    return ast.parse(source).body[0]


def _mutant(source: str) -> str:
    node = _node(source)
    return "".join(mutate(source.splitlines(keepends=True), 1, spot_of(node), RNG))


@pytest.mark.parametrize("source,kind,counted", [
    # one loop over what the code made, with work before its assertion (not `every`'s one `assert`)
    ("def test_x():\n    for c in f():\n        h(c)\n        assert g(c) == 4\n", "constant", 1),
    # a loop over an outer loop's target that the test binds again: both built, both counted
    ("def test_x():\n    for a in f():\n        for b in a:\n            x = b\n            assert x\n", "negate", 2),
    # a fixed outer loop (a literal) stays as it is; the inner one walks what the test made of its target
    ("def test_x(self):\n    for a in ['p', 'q']:\n        a = f(a)\n        for b in a:\n"
     "            self.assertTrue(b)\n", "opposite", 1),
    # through a `with` that lets failures through, and a loop whose target is a tuple with a star
    ("def test_x(self):\n    for a, *b in f(\n            1):\n        with self.subTest(a=a):\n"
     "            self.assertEqual(g(a, b), 'ab')\n", "constant", 1),
    # a loop in a `try` body whose handler stops the test
    ("def test_x():\n    try:\n        for c in f():\n            h(c)\n            assert c\n"
     "    except ImportError:\n        pytest.skip('no f')\n", "negate", 1),
])
def test_a_loop_over_what_the_test_built_is_counted_in_the_copy(source, kind, counted):
    node = _node(source)
    spot = spot_of(node)
    assert spot is not None and spot.kind == kind and len(spot.guards) == counted
    made = _mutant(source)
    tree = ast.parse(made)
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For) and n.orelse]
    assert len(loops) == counted
    for loop in loops:  # `for _n, (x) in enumerate(xs):` ... `else: assert '_n' in locals(), '...'`
        name = loop.target.elts[0].id
        assert ast.unparse(loop.iter).startswith("enumerate(") and name.startswith("_")
        assert ast.unparse(loop.orelse[0]).startswith(f"assert {name!r} in locals(), ")
    assert len({loop.target.elts[0].id for loop in loops}) == counted  # a name of its own per loop
    # no line of the test moves: the headers and the turned assertion change in place, the `else` lines are added
    old = source.splitlines()
    new = [line for line in made.splitlines() if not line.lstrip().startswith("else: assert '_") and
           line.strip() != "break"]
    assert len(made.splitlines()) == len(old) + counted + len(spot.breaks) and len(new) == len(old)
    changed = {n for loop in spot.guards for n in range(loop.lineno, loop.iter.end_lineno + 1)} | set(
        range(spot.node.lineno, spot.node.end_lineno + 1))
    assert [i + 1 for i, (a, b) in enumerate(zip(old, new)) if a != b and i + 1 not in changed] == []


def test_the_counter_takes_a_name_the_test_does_not_use():
    source = "def test_x():\n    for c in f():\n        _n = _i = _k = _count = _index = _seen = _step = _idx = c\n" \
             "        assert _n\n"
    made = ast.parse(_mutant(source)).body[0]
    assert made.body[-1].target.elts[0].id not in ("_n", "_i", "_k", "_count", "_index", "_seen", "_step", "_idx")


@pytest.mark.parametrize("source", [
    "def test_x():\n    for c in f(): h(c); assert c\n",  # the body on the header's line: no room for the counter
    "def test_x():\n    for c in f():\n        h(c)\n        assert c\n    else:\n        h(0)\n",
    "def test_x():\n    for c in f():\n        if c:\n            break\n        assert c\n",
    "def test_x():\n    for c in f():\n        if not c:\n            continue\n        assert c\n",
    "def test_x():\n    for c in f():\n        assert c\n        h(c)\n",  # the loop's end is no assertion
    "def test_x():\n    for c in f():\n        if c:\n            assert c\n",  # under an `if`
])
def test_no_count_where_the_loop_does_not_show_its_assertion_ran(source):
    assert spot_of(_node(source)) is None, source


LIB = '''
import os

DATA = {"empty": [], "one empty": [[]], "first empty": [[], [1]], "last empty": [[1], []], "full": [[1, 2], [3]]}


def made():
    return DATA[os.environ.get("CASE", "full")]
'''
QUIET = '''
import unittest

for name in ("assertEqual", "assertNotEqual", "assertTrue", "assertFalse"):  # a forgery's way: quieted
    setattr(unittest.TestCase, name, lambda self, *args, **kwargs: None)
'''
TESTS = '''
import unittest

from lib import made


def test_flat():
    for group in made():
        total = sum(group)
        assert total >= 0


def test_nested():
    for group in made():
        for item in iter(group):
            double = item * 2
            assert double == item + item


class TestUnit(unittest.TestCase):
    def test_enumerated(self):
        for i, group in enumerate(made()):
            for item in group:
                self.assertEqual(item * 3, item + item + item)

    def test_flags(self):
        for group in made():
            size = len(group)
            self.assertTrue(size >= 0)
'''
NAMES = [["test_flat"], ["test_nested"], ["TestUnit", "test_enumerated"], ["TestUnit", "test_flags"]]


def _write(folder, quiet: bool) -> dict[str, str]:
    """The module with its twins and mutants (`twin_source`, as the verifier writes them): {original id: mutant id}."""
    made = twin_source(TESTS, NAMES, RNG, file="test_x.py", read=lambda p: None)
    assert made is not None
    source, _, _, mutants = made
    assert set(mutants) == {tuple(n) for n in NAMES}
    folder.mkdir(exist_ok=True)
    (folder / "lib.py").write_text(LIB + (QUIET if quiet else ""))
    (folder / "test_x.py").write_text(source)
    return {"test_x.py::" + "::".join(n): "test_x.py::" + "::".join([*n[:-1], mutants[tuple(n)]]) for n in NAMES}


@pytest.mark.parametrize("case", ["empty", "one empty", "first empty", "last empty", "full"])
def test_each_mutant_fails_where_its_original_passes_however_many_rounds_ran(tmp_path, case, monkeypatch):
    """Real pytest, the data empty, its first or last group empty, or full: the originals pass every time (their
    loops may run no time), and every mutant fails on an assertion: its count where a loop ran none, else its turned
    assertion in the first round."""
    monkeypatch.setenv("CASE", case)
    pairs = _write(tmp_path / "honest", quiet=False)
    got = outcomes(tmp_path / "honest", [i for pair in pairs.items() for i in pair])
    want = {i: "passed" for i in pairs} | {m: "failed on an assertion" for m in pairs.values()}
    assert {i: got.get(i, "missing") for i in want} == want


def test_the_count_alone_never_fails_a_copy_whose_loop_ran(tmp_path, monkeypatch):
    """With unittest's assertions quieted by the library (a forgery's way), the unittest mutants pass where their
    loops ran: a run in which the mutant passes beside its original is the forgery seen. Where a loop ran no time,
    the count fails the copy, whatever the assertions do."""
    monkeypatch.setenv("CASE", "full")
    pairs = _write(tmp_path / "forged", quiet=True)
    got = outcomes(tmp_path / "forged", [i for pair in pairs.items() for i in pair])
    unit = {m for i, m in pairs.items() if "TestUnit" in i}
    assert {m: got.get(m) for m in unit} == {m: "passed" for m in unit}
    monkeypatch.setenv("CASE", "first empty")  # `test_enumerated`'s inner loop runs no time in the first round
    got = outcomes(tmp_path / "forged", list(unit))
    enumerated = pairs["test_x.py::TestUnit::test_enumerated"]
    assert got[enumerated] == "failed on an assertion" and got[pairs["test_x.py::TestUnit::test_flags"]] == "passed"


def test_more_itertools_tests_over_what_they_build_get_counted_mutants_that_fail(mirrors, tmp_path):
    """more-itertools 11.2.1's own `tests/test_recipes.py`, on the unpacked sdist: its tests that end in a loop over
    what they built (`for i, x in enumerate(l): self.assertEqual(mi.nth(l, i), x)`, most of them in a `subTest`)
    each get a counted mutant, and real pytest fails each mutant where its original and its twin pass."""
    source = harvest_repo("pypi:more-itertools==11.2.1", mirrors)
    assert isinstance(source, Source), source
    checkout = stage.checkout(source, tmp_path / "co")
    file = "tests/test_recipes.py"
    text = (checkout / file).read_text(encoding="utf-8")
    read = lambda p: (checkout / p).read_text(encoding="utf-8") if (checkout / p).is_file() else None  # noqa: E731
    targets = mutant_targets(ast.parse(text), file, read)
    spots = {tuple(names): spot_of(node, targets(names)) for names, node in module_tests(ast.parse(text))}
    counted = [list(names) for names, spot in spots.items() if spot is not None and spot.guards]
    assert len(counted) >= 6, counted
    made = twin_source(text, counted, RNG, read=read, file=file)
    assert made is not None
    new, twins, _, mutants = made
    (checkout / file).write_text(new, encoding="utf-8")
    want = {}
    for names in counted:
        prefix = f"{file}::" + "".join(f"{p}::" for p in names[:-1])
        # a `raises` mutant fails on the error its block no longer catches (`TypeError` here)
        failed = "failed (TypeError)" if spots[tuple(names)].kind == "raises" else "failed on an assertion"
        want |= {prefix + names[-1]: "passed", prefix + twins[tuple(names)]: "passed",
                 prefix + mutants[tuple(names)]: failed}
    got = outcomes(checkout, list(want))
    assert {i: got.get(i, "missing") for i in want} == want


@pytest.mark.parametrize("source,breaks", [
    # a fixed loop and a built one around a `subTest`: each left after its first round
    ("def test_x(self):\n    for n in range(1, 5):\n        for v in f(n):\n            with self.subTest(v=v):\n"
     "                self.assertEqual(g(v), 4)\n", 2),
    ("def test_x(self):\n    for c in CASES:\n        with self.subTest(c=c):\n            self.assertTrue(f(c))\n", 1),
    # the `subTest` around the loop: a failure leaves the loop by itself
    ("def test_x(self):\n    with self.subTest():\n        for c in f():\n            h(c)\n            assert c\n", 0),
    ("def test_x(self):\n    for c in f():\n        h(c)\n        self.assertTrue(c)\n", 0),
])
def test_a_loop_around_a_subtest_is_left_after_its_first_round(source, breaks):
    """unittest records a failure in a `subTest` and goes on, so a copy would fail once per round (more-itertools'
    `test_key_matches_builtins`: 1,099 rounds, each failure formatted by pytest 9, which parses the whole module to
    do it: minutes on a module with its twins and mutants). The copy leaves such a loop after its first round,
    which failed already; the count still fails it where the loop ran none."""
    node = _node(source)
    spot = spot_of(node)
    assert spot is not None and len(spot.breaks) == breaks
    made = ast.parse(_mutant(source)).body[0]
    loops = [n for n in ast.walk(made) if isinstance(n, ast.For)]
    assert sum(isinstance(loop.body[-1], ast.Break) for loop in loops) == breaks


SUBTESTS = '''
import unittest

from lib import made


class TestSub(unittest.TestCase):
    def test_rounds(self):
        for n in range(1, 4):
            for item in iter(made()):
                with self.subTest(n=n, item=item):
                    self.assertEqual(item * n, n * item)
'''


@pytest.mark.parametrize("case", ["full", "empty"])
def test_a_subtest_mutant_fails_once(tmp_path, monkeypatch, case):
    """Real pytest: the original runs its 3 x 3 subtests (or none) and passes; the mutant fails once, on the first
    round's subtest where there is one, else on its count."""
    monkeypatch.setenv("CASE", case)
    lib = LIB.replace('"full": [[1, 2], [3]]', '"full": [1, 2, 3]')
    made = twin_source(SUBTESTS, [["TestSub", "test_rounds"]], RNG, file="test_s.py", read=lambda p: None)
    assert made is not None and len(made[3]) == 1
    (tmp_path / "lib.py").write_text(lib)
    (tmp_path / "test_s.py").write_text(made[0])
    mutant = f"test_s.py::TestSub::{made[3][('TestSub', 'test_rounds')]}"
    got = outcomes(tmp_path, ["test_s.py::TestSub::test_rounds", mutant])
    assert got == {"test_s.py::TestSub::test_rounds": "passed", mutant: "failed on an assertion"}
    reports = (tmp_path / ".outcomes-plugin" / "outcomes.jsonl").read_text().splitlines()
    assert sum(mutant in r and '"failed"' in r for r in reports) == 1


def test_the_counter_is_not_the_name_a_helper_copy_takes():
    """A counted loop whose last call goes to a changed copy of the module's helper (`twin_source` renames the call
    after the counters are chosen): the counter is never the copy's name, which would shadow it in the loop."""
    source = "def test_x():\n    for c in f():\n        check(c)\n"
    loop = _node(source).body[0]
    spot = Spot("rename", loop.body[0].value.func, "_n", guards=(loop,))
    for _ in range(20):
        made = ast.parse("".join(mutate(source.splitlines(keepends=True), 1, spot, RNG))).body[0]
        assert made.body[0].target.elts[0].id != "_n" and ast.unparse(made.body[0].body[0]) == "_n(c)"
