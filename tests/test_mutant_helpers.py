"""Mutants of tests that end in a helper of the project whose name says nothing (`executors/helpers.py`): the helper's
definition, found in the test's module or a module of the checkout it imports, through the test class's bases, shows
which argument it only compares for equality; that argument is changed (a constant) or wrapped in a tuple. Where the
definition does not show it, or cannot be read, no mutant is made."""

from __future__ import annotations

import ast
import secrets

import pytest

from trajfactory.executors.helper_rules import compared_params, converted_params, counted_varargs, helper_target
from trajfactory.executors.helpers import mutant_targets
from trajfactory.executors.mutant_text import mutate
from trajfactory.executors.mutants import spot_of

RNG = secrets.SystemRandom()

# Python-Markdown's helper, as markdown/test_tools.py writes it
TOOLS = '''
import unittest
from markdown import Markdown


class TestCase(unittest.TestCase):
    default_kwargs = {}

    def assertMarkdownRenders(self, source, expected, expected_attrs=None, **kwargs):
        expected_attrs = expected_attrs or {}
        kws = self.default_kwargs.copy()
        kws.update(kwargs)
        md = Markdown(**kws)
        output = md.convert(source)
        self.assertMultiLineEqual(output, expected)
        for key, value in expected_attrs.items():
            self.assertEqual(getattr(md, key), value)
'''
TESTS = '''
from markdown.test_tools import TestCase
from .util import check_process, Base


def check(value, want):
    assert value * 2 == want, f"expected {want}"


class TestThings(TestCase):
    def test_renders(self):
        self.assertMarkdownRenders("*a*", "<p><em>a</em></p>")

    def test_renders_built(self):
        self.assertMarkdownRenders(self.dedent("""*a*"""), expected=self.dedent("""<p><em>a</em></p>"""))

    def test_source_only(self):
        self.assertMarkdownRenders(source="*a*", expected_attrs={"x": 1}, expected=SRC)


class TestOther(Base):
    def test_shadowed(self):
        self.assertMarkdownRenders("*a*", "<p><em>a</em></p>")


class TestLocal(TestThings):
    def assertMarkdownRenders(self, source, expected):
        assert source != expected

    def test_own(self):
        self.assertMarkdownRenders("a", "b")


def test_module_helper():
    check(f(2), 4)


def test_own_helper():
    def check(value, want):
        assert value != want
    check(f(2), 4)


def test_imported_helper():
    check_process(run(), 0)
'''
UTIL = '''
import unittest


def check_process(process, exit_code, stdout=None):
    assert process.returncode == exit_code, f"Unexpected exit code (expected {exit_code})"
    if stdout is not None:
        assert process.stdout == stdout


class Base(SomethingInstalled):
    pass
'''
FILES = {"markdown/test_tools.py": TOOLS, "tests/test_x.py": TESTS, "tests/util.py": UTIL}


def _spot(test: list[str], files=FILES):
    tree = ast.parse(files["tests/test_x.py"])
    body = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == test[0]][-1]
    node = body if len(test) == 1 else next(m for m in body.body if getattr(m, "name", "") == test[1])
    spot = spot_of(node, mutant_targets(tree, "tests/test_x.py", files.get)(test))
    if spot is None or spot.kind == "copy":  # a copy's helper is written by `twin_source.twin_source`
        return (spot and spot.kind), None
    lines = files["tests/test_x.py"].splitlines(keepends=True)[node.lineno - 1:node.end_lineno]
    return spot.kind, ast.unparse(ast.parse("".join(mutate(lines, node.lineno, spot, RNG)).strip()).body[0].body[-1])


def test_what_a_helper_only_compares():
    tools = next(n for n in ast.walk(ast.parse(TOOLS)) if getattr(n, "name", "") == "assertMarkdownRenders")
    assert compared_params(tools) == {"expected"}  # `source` feeds the output; `expected_attrs` is bound again
    util = ast.parse(UTIL).body[1]
    assert compared_params(util) == {"exit_code"}  # named in the failure's message too; `stdout` read by an `if`
    for source in (
            "def h(a, b):\n    if a:\n        return\n    assert f() == b\n",  # a return may come first
            "def h(a, b):\n    assert f(b) == b\n",  # what it is compared with depends on it
            "@wrap\ndef h(a, b):\n    assert f() == b\n",  # a decorator may not run the body as written
            "def h(a, b):\n    yield\n    assert f() == b\n",  # a generator's call runs nothing
            "def h(a, b):\n    b = g(b)\n    assert f() == b\n",  # bound again
            "def h(a, b):\n    self.assertAlmostEqual(f(), b, delta=9)\n",  # near enough may hold for another
            "def h(a, b):\n    if a:\n        assert f() == b\n",  # under an `if`: it may not have run
    ):
        assert compared_params(ast.parse(source).body[0]) == set(), source


@pytest.mark.parametrize("test,kind,last", [
    # a method of a base class in another module of the checkout
    (["TestThings", "test_renders"], "constant", None),
    (["TestThings", "test_renders_built"], "wrap",
     "self.assertMarkdownRenders(self.dedent('*a*'), expected=(self.dedent('<p><em>a</em></p>'),))"),
    (["TestThings", "test_source_only"], "wrap", "self.assertMarkdownRenders(source='*a*', expected_attrs={'x': 1}, "
                                                 "expected=(SRC,))"),
    # a function of the test's module, and one imported from a module beside it
    (["test_module_helper"], "constant", None),
    (["test_imported_helper"], "constant", None),
    # a name the test binds itself is not the module's helper
    (["test_own_helper"], None, None),
    # the class's own method comes first, and it compares no argument as given: the mutant calls a copy of it whose
    # `assert source != expected` is negated (`tests/test_mutant_copies.py`)
    (["TestLocal", "test_own"], "copy", None),
    # a base that the checkout does not define (an installed package's) may define the helper: none
    (["TestOther", "test_shadowed"], None, None),
])
def test_a_helper_is_found_through_imports_and_bases(test, kind, last):
    got_kind, got_last = _spot(test)
    assert got_kind == kind
    if kind == "constant":  # the same call, one constant changed
        assert got_last.split("(")[0] in ("self.assertMarkdownRenders", "check", "check_process")
        assert got_last not in TESTS.replace('"', "'")
    elif last is not None:
        assert got_last == last


def test_no_helper_where_its_module_cannot_be_read():
    assert _spot(["TestThings", "test_renders"], {k: v for k, v in FILES.items() if k != "markdown/test_tools.py"}) \
        == (None, None)
    assert _spot(["test_imported_helper"], {k: v for k, v in FILES.items() if k != "tests/util.py"}) == (None, None)


def test_a_changed_argument_fails_the_helper_where_the_original_passes():
    """The mutant of a test ending in `check_process(run(), 0)`, run against the helper's own code."""
    namespace: dict = {}
    exec(compile(UTIL.replace("class Base(SomethingInstalled):", "class Base:"), "<util>", "exec"), namespace)

    class Done:
        returncode, stdout = 0, "ok"

    source = "def test_x():\n    check_process(Done(), 0)\n"
    tree = ast.parse(source)
    spot = spot_of(tree.body[0], lambda call: helper_target(call, namespace_def(UTIL, "check_process"), False))
    mutant = "".join(mutate(source.splitlines(keepends=True), 1, spot, RNG))
    scope = {"check_process": namespace["check_process"], "Done": Done}
    exec(compile(source, "<original>", "exec"), scope)
    scope["test_x"]()  # the original passes
    exec(compile(mutant, "<mutant>", "exec"), scope)
    with pytest.raises(AssertionError):
        scope["test_x"]()


def namespace_def(source: str, name: str) -> ast.FunctionDef:
    return next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name)


# pyflakes' helper, as pyflakes/test/harness.py writes it: the messages expected come as `*args`
FLAKES = '''
def flakes(self, input, *expectedOutputs, **kw):
    w = check(input, **kw)
    outputs = [type(o) for o in w.messages]
    expectedOutputs = list(expectedOutputs)
    outputs.sort(key=lambda t: t.__name__)
    expectedOutputs.sort(key=lambda t: t.__name__)
    self.assertEqual(outputs, expectedOutputs, "for input: %s expected: %r" % (input, expectedOutputs))
    return w
'''


def test_a_helper_that_only_compares_its_varargs_gets_the_last_twice():
    flakes = ast.parse(FLAKES).body[0]
    assert counted_varargs(flakes) and compared_params(flakes) == set()
    for changed in ("expectedOutputs = set(expectedOutputs)",  # a set may drop the added item
                    "expectedOutputs = expectedOutputs[:1]",
                    "expectedOutputs = list(expectedOutputs)\n    print(expectedOutputs)"):
        source = FLAKES.replace("expectedOutputs = list(expectedOutputs)", changed)
        assert not counted_varargs(ast.parse(source).body[0]), changed
    source = "def test_x(self):\n    self.flakes('import os', m.UnusedImport)\n"
    spot = spot_of(ast.parse(source).body[0], lambda call: helper_target(call, flakes, True))
    assert spot.kind == "repeat"
    mutant = "".join(mutate(source.splitlines(keepends=True), 1, spot, RNG))
    assert mutant == "def test_x(self):\n    self.flakes('import os', m.UnusedImport, m.UnusedImport)\n"
    # no message expected: nothing to give twice, and no other call to take an item from: no mutant
    assert spot_of(ast.parse("def test_x(self):\n    self.flakes('x = 1')\n").body[0],
                   lambda call: helper_target(call, flakes, True)) is None


# pyflakes' test modules, as pyflakes/test/test_imports.py writes them
FLAKES_TESTS = '''
from pyflakes import messages as m
from pyflakes.test.harness import TestCase


class Test(TestCase):
    def test_unused(self):
        self.flakes('import fu', m.UnusedImport)

    def test_two(self):
        self.flakes("""
        import fu, bar
        """, m.UnusedImport, m.UnusedImport)

    def test_redefined(self):
        self.flakes('import fu; fu = 3', m.RedefinedWhileUnused)

    def test_used(self):
        self.flakes("""
        import fu
        fu.bar()
        """)

    def test_segment(self):
        self.flakes('import fu; fu', is_segment=True)

    def test_shadowed(self):
        m = None
        self.flakes('import fu; fu')

    def test_other_helper(self):
        self.check('import fu; fu')
'''
HARNESS = "import unittest\n\n\nclass TestCase(unittest.TestCase):\n" + "".join(
    "    " + line + "\n" if line else "\n" for line in FLAKES.strip().splitlines()) + (
    "\n    def check(self, input, *expected, mode='exec'):\n"
    "        self.assertEqual(run(input, mode), list(expected))\n")


def test_a_call_that_expects_no_message_gets_the_one_its_module_gives_most():
    """pyflakes' tests that expect no message (`self.flakes(source)`, some 300 of its 564) get one more: the item
    the module's other calls give most often. The helper compares the items it gets with the messages it finds, which
    the original equalled (none), so one item more fails wherever the original passed."""
    files = {"pyflakes/test/harness.py": HARNESS, "pyflakes/test/test_x.py": FLAKES_TESTS}
    tree = ast.parse(FLAKES_TESTS)
    targets = mutant_targets(tree, "pyflakes/test/test_x.py", files.get)
    cls = tree.body[-1]

    def mutant(name: str) -> str | None:
        node = next(n for n in cls.body if n.name == name)
        spot = spot_of(node, targets(["Test", name]))
        if spot is None:
            return None
        lines = FLAKES_TESTS.splitlines(keepends=True)[node.lineno - 1:node.end_lineno]
        return spot.kind + ": " + "".join(mutate(lines, node.lineno, spot, RNG)).strip().split("\n", 1)[1].strip()

    assert mutant("test_used") == \
        'add: self.flakes("""\n        import fu\n        fu.bar()\n        """, m.UnusedImport)'
    # after the last positional argument, before the keywords
    assert mutant("test_segment") == "add: self.flakes('import fu; fu', m.UnusedImport, is_segment=True)"
    assert mutant("test_unused") == "repeat: self.flakes('import fu', m.UnusedImport, m.UnusedImport)"
    # the test binds `m` itself: the module's `m.UnusedImport` is not what it would read; no other call gives one
    assert mutant("test_shadowed") is None
    # `check` only compares its `*args` too, but no call of it gives any
    assert mutant("test_other_helper") is None
    # a helper with a defaulted positional parameter: one argument more would fill it, not `*args`
    defaulted = {**files, "pyflakes/test/harness.py": HARNESS.replace(
        "def flakes(self, input, *expectedOutputs", "def flakes(self, input, mode='exec', *expectedOutputs")}
    node = next(n for n in cls.body if n.name == "test_used")
    assert spot_of(node, mutant_targets(tree, "pyflakes/test/test_x.py", defaulted.get)(["Test", "test_used"])) is None


def test_a_helper_known_by_its_name_keeps_its_tolerance():
    """arrow 1.4.0's `assert_datetime_equality(dt1, dt2, within=10)` compares within a tolerance: the name rule
    changed its constant `1` to a larger one, which passed beside the original (3 loose mutants in
    `bench/mutant_audit.py`). Where the definition can be read, a constant given for a parameter with a default is
    left alone, and the compared argument is wrapped instead."""
    files = {"tests/utils.py": "def assert_datetime_equality(dt1, dt2, within=10):\n"
                               "    assert abs((dt1 - dt2).total_seconds()) < within\n",
             "tests/test_x.py": "from .utils import assert_datetime_equality\n\n\n"
                                "def test_x():\n    assert_datetime_equality(f(), g(), 1)\n\n\n"
                                "def test_y():\n    assert_datetime_equality(f(), 'x')\n"}
    tree = ast.parse(files["tests/test_x.py"])
    targets = mutant_targets(tree, "tests/test_x.py", files.get)
    test_x, test_y = tree.body[1:]
    assert spot_of(test_x).kind == "constant"  # unread, the name rule changes the first constant it sees
    spot = spot_of(test_x, targets(["test_x"]))
    assert spot.kind == "wrap" and ast.unparse(spot.node) == "g()"
    assert ast.unparse(spot_of(test_y, targets(["test_y"])).node) == "'x'"  # a required parameter's constant


# sqlglot's helper, as tests/test_diff.py writes it: both sides converted to sets
DELTA = '''
class TestDiff(unittest.TestCase):
    def _validate_delta_only(self, actual_delta, expected_delta):
        self.assertEqual(set(actual_delta), set(expected_delta))
'''


def test_a_helper_that_compares_through_a_converter_gets_its_argument_wrapped():
    """sqlglot 30.31's `_validate_delta_only` compares `set(actual)` with `set(expected)`: the forgery that passes
    every failure but the canaries' passed verification on a `sqlglot/diff.py` task, whose failing tests all end in
    it (`bench/verifier_audit.py --forgery`). Its arguments are now compared through the converter, and a mutant
    wraps one in a tuple, never changes a constant of it (`set("ab" + "a")` is `set("ab")`)."""
    helper = ast.parse(DELTA).body[0].body[0]
    assert compared_params(helper) == converted_params(helper) == {"actual_delta", "expected_delta"}
    for source in ("def h(self, a, b):\n    set = frozenset\n    self.assertEqual(set(a), b)\n",  # not the builtin
                   "def h(self, a, list):\n    self.assertEqual(list(a), 1)\n",
                   "def h(self, a, b):\n    self.assertEqual(sorted(a, key=len), b)\n",  # a key may equate values
                   "def h(self, a, b):\n    self.assertEqual(len(a), b)\n"):  # no converter: many values, one length
        assert compared_params(ast.parse(source).body[0]) - {"b"} == set(), source
    import unittest

    class Delta(unittest.TestCase):
        pass

    for expected in ("[('x', 1), ('y', 2)]", "'yx'"):
        source = f"def test_x(self):\n    self._validate_delta_only(made(), {expected})\n"
        spot = spot_of(ast.parse(source).body[0], lambda call: helper_target(call, helper, True))
        assert spot is not None and spot.kind == "wrap", source
        mutant = "".join(mutate(source.splitlines(keepends=True), 1, spot, RNG))
        made = (lambda: [("y", 2), ("x", 1)]) if expected.startswith("[") else (lambda: "xy")
        scope = {"made": made}
        exec(compile(DELTA.replace("unittest.TestCase", "object"), "<helper>", "exec"), scope)
        for name, text in (("original", source), ("mutant", mutant)):
            exec(compile(text, f"<{name}>", "exec"), scope)
            case = type("Case", (Delta,), {"_validate_delta_only": scope["TestDiff"]._validate_delta_only,
                                            "test_x": scope["test_x"]})("test_x")
            if name == "original":
                case.test_x()  # passes
            else:
                with pytest.raises((AssertionError, TypeError)):
                    case.test_x()
