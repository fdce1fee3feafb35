"""Mutants (`executors/mutants.py`): which assertion of a test a mutant turns against it, and that it changes only
that."""

from __future__ import annotations

import ast
import secrets

import pytest

from trajfactory.executors.mutant_text import mutate
from trajfactory.executors.mutants import spot_of

RNG = secrets.SystemRandom()


def _node(source: str) -> ast.FunctionDef:
    return ast.parse(source).body[0]


def _mutant(source: str) -> str:
    return "".join(mutate(source.splitlines(keepends=True), 1, spot_of(_node(source)), RNG))


@pytest.mark.parametrize("source,value", [
    ("def test_x():\n    assert f(1) == g()\n    assert g() == 'ab'\n", "ab"),  # the last assertion
    ("def test_x(self):\n    self.assertEqual(f(1), b'\\x00')\n    x = 1\n", b"\x00"),
    ("def test_x():\n    assert 2.5 == f()\n", 2.5),  # the constant on either side
    ("def test_x():\n    assert f() == True\n", True),
])
def test_an_expected_constant_is_changed(source, value):
    spot = spot_of(_node(source))
    assert spot.kind == "constant" and spot.node.value == value and type(spot.node.value) is type(value)
    changed = ast.parse(_mutant(source)).body[0]
    assert ast.dump(changed) != ast.dump(_node(source))
    assert [ast.dump(s) for s in changed.body[:-1]] == [ast.dump(s) for s in _node(source).body[:-1]] or value == b"\x00"


@pytest.mark.parametrize("source,mutant", [
    ("def test_x():\n    assert f(1) == g(1)\n", "assert not f(1) == g(1)"),
    ("def test_x():\n    assert 1 == 1\n", "assert not 1 == 1"),  # constants on both sides: negated
    ("def test_x():\n    assert (\n        key in table\n    ), 'lost'\n", "assert not key in table, 'lost'"),
    ("def test_x():\n    assert f() < 4\n", "assert not f() < 4"),
    ("def test_x(self):\n    self.assertTrue(\n        f())\n", "self.assertFalse(f())"),
    ("def test_x(self):\n    self.assertNotIn(k, d)\n", "self.assertIn(k, d)"),
    ("def test_x(self):\n    self.assertEqual(f(), g(), msg='no')\n", "self.assertNotEqual(f(), g(), msg='no')"),
    ("def test_x(self):\n    self.assertAlmostEqual(f(), 0.5, places=3)\n", "self.assertNotAlmostEqual(f(), 0.5, "
                                                                                 "places=3)"),
    # a block that expects an exception: no longer caught
    ("def test_x():\n    with pytest.raises(ValueError, match='bad') as info:  # why\n        f(-1)\n",
     "if True:\n    f(-1)"),
    ("def test_x(self):\n    with self.assertRaises(KeyError):\n        d['k']\n", "if True:\n    d['k']"),
])
def test_else_the_last_assertion_is_negated(source, mutant):
    assert spot_of(_node(source)).kind in ("negate", "opposite", "raises")
    assert ast.unparse(ast.parse(_mutant(source)).body[0].body[-1]) == mutant


@pytest.mark.parametrize("source", [
    "def test_x():\n    f()\n",  # no assertion
    "def test_x():\n    assert f() == 1\n    f()\n",  # the last statement is no assertion
    "def test_x():\n    if ok():\n        assert f() == 4\n",  # under an `if`: it may not have run
    "def test_x():\n    for c in f():\n        assert g(c) == 4\n",  # a loop over what the code makes: maybe empty
    "def test_x():\n    cases = f()\n    for c in cases:\n        assert g(c) == 4\n",
    "def test_x(cases):\n    for c in cases:\n        assert g(c) == 4\n",  # a fixture's
    "def test_x():\n    for c in ():\n        assert g(c) == 4\n",
    "def test_x():\n    for c in range(0):\n        assert g(c) == 4\n",
    "def test_x():\n    for c in CASES:\n        if c:\n            continue\n        assert g(c) == 4\n",
    "def test_x():\n    for c in CASES:\n        assert g(c) == 4\n    else:\n        f()\n",
    "def test_x():\n    for c in CASES:\n        assert g(c) == 4\n    f()\n",
    "def test_x():\n    for c in CASES:\n        for d in CASES:\n            if d:\n                break\n"
    "            assert g(d) == 4\n",
    # a collection the test writes as a literal but may change or empty: no mutant
    "def test_x():\n    cases = []\n    for c in cases:\n        assert g(c) == 4\n",
    "def test_x():\n    cases = [1]\n    cases.clear()\n    for c in cases:\n        assert g(c) == 4\n",
    "def test_x():\n    cases = [1]\n    cases = f()\n    for c in cases:\n        assert g(c) == 4\n",
    "def test_x():\n    if ok():\n        cases = [1]\n    for c in cases:\n        assert g(c) == 4\n",
    "def test_x():\n    cases = [*f()]\n    for c in cases:\n        assert g(c) == 4\n",
    "def test_x():\n    cases = {**f()}\n    for c in cases:\n        assert g(c) == 4\n",
    "def test_x():\n    for c in cases:\n        assert g(c) == 4\n    cases = [1]\n",
    "def test_x():\n    def check(c):\n        return g(c)\n    if check(1):\n        return\n    assert g() == 1\n",
    "def test_x():\n    with ctx():\n        assert f() == 4\n",  # a context manager may swallow the failure
    "def test_x():\n    with open(p), suppress(KeyError):\n        assert f() == 4\n",
    "def test_x():\n    with self.subTest(c):\n        assert f() == 4\n        g()\n",
    "def test_x():\n    if skip():\n        return\n    assert f() == 4\n",  # an early return
    "def test_x():\n    assert f() == 4\n    return f\n",  # a value returned
    "@pytest.mark.xfail\ndef test_x():\n    assert f() == 4\n",  # expected to fail
    # the call form of another `raises`
    "def test_x():\n    trio.raises(ValueError, f, -1)\n",
    # an exception that may end the whole run rather than fail the test, uncaught in the copy
    "def test_x():\n    pytest.raises(KeyboardInterrupt, f)\n",
    "def test_x(self):\n    self.assertRaises((ValueError, KeyboardInterrupt), f)\n",
    "def test_x():\n    with pytest.raises(asyncio.CancelledError):\n        f(-1)\n",
    "def test_x():\n    with pytest.raises(pytest.exit.Exception):\n        f(-1)\n",
    "def test_x(self):\n    self.assertEqual(*pair)\n",
    "def test_x():\n    assert_not_equal(f(), 'a')\n",  # a helper whose opposite of equality may hold for both
    "def test_x():\n    assert_raises(ValueError, f, 'a')\n",
    "def test_x(self):\n    self.assertLessEqual(depth(), 20)\n",  # an order: 27 may hold too
    "def test_x(self):\n    self.assertGreaterEqual(f(), 3)\n",
    "def test_x():\n    assert_equal(*pair)\n",
    "def test_x():\n    m.assert_called_once_with(x)\n",  # no constant, no equality
    "def test_x():\n    check_equal(f(), 'a')\n",  # no `assert` in its name: what it checks is unknown
    "def test_x(self):\n    self.assert_round_trip('a\\n')\n",  # nor equality: mistune's holds for 'a\\nq' too
    "def test_x():\n    with pytest.raises(ValueError): f(-1)\n",  # the block on the header's line
    "def test_x():\n    with pytest.raises(ValueError), ctx():\n        f(-1)\n",
    "def test_x():\n    with pytest.warns(UserWarning):\n        f(-1)\n",
])
def test_no_mutant_where_a_passing_original_does_not_show_the_assertion_held(source):
    """The assertion gets no mutant of its own. A last loop of one `assert` over what may be empty gets the mutant
    that asserts the opposite of all it asserts at once (`every`), which holds however many times it ran."""
    spot = spot_of(node := _node(source))
    assert spot is None or spot.kind == "all" and spot.node is node.body[-1] and not spot.guards, source


def test_only_the_constant_changes_and_columns_count_bytes():
    source = "def test_x():\n    assert f('\u00e9\u00e9') == '\u00e9t\u00e9'  # caf\u00e9\n"
    for _ in range(20):
        out = _mutant(source)
        changed = ast.parse(out).body[0].body[0].test
        assert ast.unparse(changed.left) == "f('\u00e9\u00e9')" and out.endswith("  # caf\u00e9\n")
        assert changed.comparators[0].value.startswith("\u00e9t\u00e9") and changed.comparators[0].value != "\u00e9t\u00e9"
        number = ast.parse(_mutant("def test_x():\n    assert f() == 0\n")).body[0].body[0].test.comparators[0]
        assert number.value in range(1, 10)
    assert _mutant("def test_x():\n    assert f() == False\n").endswith("assert f() == True\n")
    negated = _mutant("def test_x():\n    assert f('\u00e9') in ('\u00e9', 'x')  # \u00e9\n")
    assert negated.endswith("assert not (f('\u00e9') in ('\u00e9', 'x'))  # \u00e9\n"), negated
    uncaught = _mutant("def test_x():\n    with pytest.raises(ValueError) as info:  # \u00e9\n        f('\u00e9')\n")
    assert uncaught == "def test_x():\n    if True:  # \u00e9\n        f('\u00e9')\n", uncaught


@pytest.mark.parametrize("source,mutant,kind", [
    # a project's own equality helper (tabulate's `assert_equal(expected, result)`): the second argument in a tuple
    ("def test_x():\n    expected = 'a'\n    assert_equal(expected, f())\n", "assert_equal(expected, (f(),))", "wrap"),
    ("def test_x(self):\n    self.assertXmlEqual(\n        a,\n        f(1))\n", "self.assertXmlEqual(a, (f(1),))",
     "wrap"),
    # an `assert...` helper with a constant argument: the constant changed
    ("def test_x():\n    m.assert_called_once_with(x, 'key')\n", None, "constant"),
    ("def test_x():\n    assert_in('b', f())\n", None, "constant"),
    # the last statement a loop over a fixed collection whose own last statement is the assertion
    ("def test_x():\n    for i in range(2):\n        assert f(i) == g(i)\n", "assert not f(i) == g(i)", "negate"),
    ("def test_x():\n    for k, v in CASES.items():\n        assert f(k) == v\n", "assert not f(k) == v", "negate"),
    ("def test_x():\n    for a in (1, 2):\n        self.assertEqual(f(a), 3)\n", None, "constant"),
    # under context managers that let a failure through
    ("def test_x(self):\n    for c in CASES:\n        with self.subTest(c=c):\n            self.assertTrue(f(c))\n",
     "self.assertFalse(f(c))", "opposite"),
    ("def test_x():\n    with open(p) as fh, mock.patch.object(m, 'x'):\n        assert fh.read() == g()\n",
     "assert not fh.read() == g()", "negate"),
    # a `return` in a function the test defines is not the test's own
    ("def test_x():\n    def check(c):\n        return c\n    assert f(check) == g()\n", "assert not f(check) == g()",
     "negate"),
    # loops nest: each walks a fixed collection (arrow's `for lang in ["cs"]: for unit in UNITS:`)
    ("def test_x():\n    for a in (1, 2):\n        for b in CASES:\n            assert f(a, b) == g()\n",
     "assert not f(a, b) == g()", "negate"),
    ("def test_x(self):\n    for a in (1, 2):\n        with self.subTest(a=a):\n            for b in range(3):\n"
     "                self.assertTrue(f(a, b))\n", "self.assertFalse(f(a, b))", "opposite"),
    # an inner loop over what the outer one's target holds (docutils' `for name, cases in totest.items():`)
    ("def test_x():\n    for c in CASES:\n        for d in c:\n            assert g(d)\n", "assert not g(d)", "negate"),
    # a bare `return` that ends the body is its end (argcomplete's `test_directory_completion`)
    ("def test_x():\n    with open(p):\n        assert f() == g()\n    return\n", "assert not f() == g()", "negate"),
    # a collection the test writes once, as a literal, and reads only in the loop's header
    ("def test_x():\n    units = ['s', 'm']\n    x = f()\n    for u in units:\n        assert x(u) == g(u)\n",
     "assert not x(u) == g(u)", "negate"),
    ("def test_x():\n    cases = {'a': 1}\n    for k, v in cases.items():\n        assert f(k) == v\n",
     "assert not f(k) == v", "negate"),
])
def test_helpers_and_loops_over_fixed_collections(source, mutant, kind):
    spot = spot_of(_node(source))
    assert spot is not None and spot.kind == kind, source
    out = ast.parse(_mutant(source)).body[0]
    last = out.body[-2] if isinstance(out.body[-1], ast.Return) else out.body[-1]
    while isinstance(last, (ast.For, ast.With)):  # a loop around a `subTest` ends in the `break` the copy adds
        last = last.body[-2] if isinstance(last.body[-1], ast.Break) else last.body[-1]
    if mutant is not None:
        assert ast.unparse(last) == mutant
    else:
        original = _node(source).body[-1]
        original = original.body[-1] if isinstance(original, ast.For) else original
        assert ast.dump(last) != ast.dump(original) and ast.unparse(last).split("(")[0] == \
            ast.unparse(original).split("(")[0]


def test_a_wrapped_argument_fails_an_equality_helper_where_the_original_passes():
    """`x` and `(x,)` are never equal for the values tests compare: strings, lists, numbers, dicts, None, tuples."""
    def assert_equal(expected, result):
        assert expected == result
    source = "def test_x(value):\n    assert_equal(value, value)\n"
    namespace = {"assert_equal": assert_equal}
    exec(compile(_mutant(source), "<mutant>", "exec"), namespace)
    exec(compile(source, "<original>", "exec"), (original := {"assert_equal": assert_equal}))
    for value in ["ab", [1, 2], 3, {"a": 1}, None, (1,), ((),), b"x", 2.5]:
        original["test_x"](value)
        with pytest.raises(AssertionError):
            namespace["test_x"](value)


def test_a_last_loop_without_a_spot_leaves_the_assertion_before_it():
    source = "def test_x():\n    assert f() == g()\n    for c in f():\n        assert c\n        h(c)\n"
    assert ast.unparse(ast.parse(_mutant(source)).body[0].body[0]) == "assert not f() == g()"


@pytest.mark.parametrize("source,mutant", [
    # sqlparse 0.6.1's `test_stmt_tokens_parents`: a loop over what the test built, which may be empty
    ("def test_x():\n    stmt = parse(s)[0]\n    for token in stmt.tokens:\n        assert token.has_ancestor(stmt)\n",
     "assert not all((token.has_ancestor(stmt) for token in stmt.tokens))"),
    ("def test_x(self):\n    for a, (b, *c) in self.made():\n        for d in c:\n            assert a < d, 'why'\n",
     "assert not all((a < d for a, (b, *c) in self.made() for d in c))"),
])
def test_a_last_loop_over_built_data_asserts_the_opposite_of_all_at_once(source, mutant):
    """The copy fails wherever the loop passed, however many times it ran, none included."""
    spot = spot_of(_node(source))
    assert spot is not None and spot.kind == "all"
    made = ast.parse(_mutant(source)).body[0]
    assert ast.unparse(made.body[-1]) == mutant and len(made.body) == len(_node(source).body)

    def check(items):  # `for x in made(): assert x > 0` and its mutant, run
        scope = {"made": lambda: iter(items)}
        text = "def test_x():\n    for x in made():\n        assert x > 0\n"
        exec(compile(text, "<original>", "exec"), scope)
        exec(compile(_mutant(text).replace("def test_x", "def mutant_x"), "<mutant>", "exec"), scope)
        for name in ("test_x", "mutant_x"):
            try:
                scope[name]()
            except AssertionError:
                yield name, False
            else:
                yield name, True

    for items in ([], [1, 2], [3], [1, -1], [-1]):
        got = dict(check(items))
        assert got["test_x"] != got["mutant_x"], items  # one passes where the other fails
    assert spot_of(_node("def test_x():\n    for x in f():\n        assert x\n    else:\n        pass\n")) is None
    # where the generator expression could differ from the loop, the loop itself, with an `else` that fails
    for source in ("def test_x():\n    for self.x in f():\n        assert g()\n",  # no plain target
                   "def test_x():\n    for x in f():\n        assert super().g(x)\n",  # sees its own scope
                   "async def test_x():\n    for x in f():\n        assert await g(x)\n",
                   "def test_x():\n    for x in f():\n        assert (y := x)\n"):
        spot = spot_of(node := _node(source))
        assert spot is not None and spot.kind == "negate" and spot.guards == (node.body[-1],), source


@pytest.mark.parametrize("source,mutant", [
    ("def test_x(self):\n    self.assertRaises(KeyError, d.pop, '\u00e9')  # \u00e9\n", "(d.pop)('\u00e9')  # \u00e9"),
    ("def test_x():\n    pytest.raises(ValueError, f, -1, x)\n", "(f)(-1, x)"),
    ("def test_x(self):\n    self.assertRaises(ValueError, lambda: d[0])\n", "(lambda: d[0])()"),
    ("def test_x():\n    pytest.raises(SystemExit, main, ['--bad'])\n", "(main)(['--bad'])"),  # pytest: a failure
    # keywords go to the callable in the call form (pytest's `match` too), and the call may take several lines
    ("def test_x():\n    pytest.raises(ValueError, f, -1, match='bad')\n", "(f)(-1, match='bad')"),
    ("def test_x(self):\n    self.assertRaises(ValueError,\n                      f, -1)\n", "(f)(-1)"),
    # unittest's pattern comes before the callable (more-itertools' `assertRaisesRegex(ValueError, "...", f)`)
    ("def test_x(self):\n    self.assertRaisesRegex(ValueError, 'not divisible', f, 3)\n", "(f)(3)"),
    ("def test_x(self):\n    self.assertRaisesRegexp(ValueError, 'bad', f)\n", "(f)()"),
])
def test_a_raising_call_has_its_callable_called_on_its_own(source, mutant):
    """`self.assertRaises(E, f, x)` passed: `f(x)` raised `E`, which the copy no longer catches."""
    spot = spot_of(_node(source))
    assert spot is not None and spot.kind == "call"
    assert _mutant(source).splitlines()[1].strip() == mutant



def test_a_raising_call_over_several_lines_lets_the_exception_through():
    """networkx's `pytest.raises(\n NetworkXError, forge, G, ..., transformation="unknown", seed=seed)` over several
    lines, an argument of several lines and a comment among them: the copy calls the callable with the same
    arguments, and the exception the original caught fails it."""
    source = ("def test_x():\n    pytest.raises(\n        ValueError, forge, [1,\n                    2],  # why\n"
              "        kind='unknown',\n        seed=3,\n    )\n    return\n")
    assert spot_of(_node(source)).kind == "call"
    copy = _mutant(source)
    assert copy.splitlines()[1:3] == ["    (forge)([1,", "                    2], kind='unknown', seed=3)"]
    seen = []

    def forge(items, kind, seed):
        seen.append((items, kind, seed))
        raise ValueError(kind)
    scope = {"pytest": pytest, "forge": forge}
    exec(compile(source + copy.replace("def test_x", "def test_copy"), "<test>", "exec"), scope)
    scope["test_x"]()
    with pytest.raises(ValueError, match="unknown"):
        scope["test_copy"]()
    assert seen == [([1, 2], "unknown", 3)] * 2


def test_a_raises_block_whose_header_takes_several_lines_gets_its_mutant():
    """networkx writes `with pytest.raises(\n    nx.NetworkXError, match="..."\n):` (18 such last blocks had no
    mutant): the header becomes `if True:` and its other lines blank, so no line of the body moves."""
    source = "def test_x():\n    with pytest.raises(\n        ValueError, match='a long message'\n    ) as info:\n" \
             "        f(-1)\n"
    spot = spot_of(_node(source))
    assert spot is not None and spot.kind == "raises"
    made = _mutant(source)
    assert made == "def test_x():\n    if True:\n\n\n        f(-1)\n", made


def test_a_raising_call_with_a_pattern_lets_the_exception_through():
    """unittest's `self.assertRaisesRegex(ValueError, "not divisible", f, 3)`: the original passes where `f(3)`
    raises a matching error, and the copy, `(f)(3)`, fails on it."""
    import unittest

    source = "def test_x(self):\n    self.assertRaisesRegex(ValueError, 'not divisible', f, 3)\n"
    copy = _mutant(source).replace("def test_x", "def test_copy")

    def f(n):
        raise ValueError(f"{n} is not divisible")
    scope = {"f": f}
    exec(compile(source + copy, "<test>", "exec"), scope)
    case = unittest.TestCase()
    scope["test_x"](case)
    with pytest.raises(ValueError, match="not divisible"):
        scope["test_copy"](case)
