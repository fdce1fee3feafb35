"""Mutants: must-fail copies of a failing test that nothing but their outcome tells from the project's tests
(`twins.py` writes them beside the twins).

The canaries (`canaries.py`) fail by construction, `assert a + b == want` with `want` off by a few, and that shape is
in this code for anyone to read: a forgery that passes every failure but those of tests of that shape leaves the
canaries true, passes the failing tests and their twins alike, and nothing in the run disagrees. A mutant is a copy of
the failing test with its last assertion turned against it:

- the expected value changed (`assert f(x) == 4` becomes `assert f(x) == 7`, `self.assertEqual(f(x), "ab")` expects
  `"abq"`);
- else the assertion negated (`assert x in y` becomes `assert not (x in y)`, `assertTrue` becomes `assertFalse`);
- else the exception a last `with pytest.raises(E):` block expects no longer caught, and the callable of a last
  `self.assertRaises(E, f, x)`, `self.assertRaisesRegex(E, "pattern", f, x)` or `pytest.raises(E, f, x)` called on
  its own (`(f)(x)`);
- a project's own equality helper (`assert_equal(expected, result)`, or a mock's `m.assert_called_once_with(1, "a")`:
  `_HELPER_WORDS`) gets its constant argument changed or, without one, its second argument wrapped in a tuple
  (`assert_equal(expected, (result,))`): no ordinary value equals both `x` and `(x,)`;
- a helper whose name says nothing (Python-Markdown's `self.assertMarkdownRenders(source, "<p>x</p>")`) gets an
  argument changed (a constant) or wrapped in a tuple where its definition, in the test's module or one of the
  checkout's, only compares that argument for equality (`helpers.py`); one that only compares its `*args` as a whole
  (pyflakes' `self.flakes(source, m.UnusedImport)`) gets its last one given twice, and one that gives none
  (`self.flakes(source)`, no message expected) gets the item other calls of the helper in its module give most often;
  one that compares each value of a dict it is given (sqlglot's `self.validate_all(sql, write={"spark": "..."})`)
  gets the first string among the values changed (else the first value wrapped), and a call that gives no such
  dict gets one (`write={"spark": (sql,)}`);
- a last loop of one `assert` over what the test built, which may be empty, asserts the opposite of all of it at once
  (`assert not all(t.has_ancestor(stmt) for t in stmt.tokens)`: `every`);
- a last call to a helper of the test's own module that no rule above changes (dateutil's
  `self._rrulestr_reverse_test(rule)`) calls a copy of the helper instead, written beside the twins, whose own last
  assertion is turned by these same rules (`_copied`).

It looks like the project's tests because it is one of them, and it must fail whenever its original passes, whatever
the patch does and with no reference to the fix: the assertion is a statement of the test's own body (not under an
`if`, nor under a `with` whose manager may swallow a failure: unittest's, mock's and pytest's let it through, and so
does a manager of the checkout whose definition shows it, `helpers.lets_through`, as argcomplete's `TempDir`; in a
`try` statement, the end of the clause a passing original ran to its end: its body or `else` where every handler
stops the test, the one handler where the body stops it, `_tried`), in a body with no `return` of its own (a bare
one that ends it aside), so a run in which the original passed evaluated it and found it true. A loop counts where
it is the body's last statement, its own last statement is the assertion (or such a loop: loops nest), and it has
no `break`, `continue` or `else`. One that walks a fixed collection (a literal, `range` of constants, a name the test
does not bind, or one it binds once, to a non-empty literal, and reads only there, or the target of an outer such
loop, as docutils' `for name, cases in totest.items(): for case in cases:`) runs as many times under any patch, so
it ran at least once under any patch if the mutant failed under the task's fix. One that walks what the test built,
which may be empty, is counted in the copy (`for x in xs:` becomes `for _n, (x) in enumerate(xs):`, with `else:
assert "_n" in locals(), "..."` after it, `Spot.guards`): the copy fails where it ran no time, and where it ran, its
first round reaches the turned assertion (networkx's `for u, v in G.edges(): ...; assert ...`, more-itertools'
`for i, x in enumerate(l): self.assertEqual(mi.nth(l, i), x)`). A loop around a `with self.subTest(...)` that holds
the assertion is left after its first round in the copy (`break`, `Spot.breaks`): unittest records the failure there
and goes on, and one failure is enough. The copy evaluates the same,
save where the test depends on its name, its place or what ran before it, or on an `==` that says yes to two values:
the task's own fix shows that (`swe_env` excuses a mutant that passes under the gold patch too). A run in which a
mutant passed beside its passing original was forged.

On six real suites (`bench/mutant_audit.py`: tabulate, boltons, cachetools, mistune, semver, tomlkit), 909 of
1,029 tests get a mutant (585 before helpers, loops, `with` blocks and nested functions counted), and none of the
1,900 that ran beside a passing original passed (`bench/RESULTS.md`)."""

from __future__ import annotations

import ast
from dataclasses import dataclass, replace
from typing import Callable

from trajfactory.executors.mutant_loops import every, fixed, own_code

_PAIRS = (("assertEqual", "assertNotEqual"), ("assertTrue", "assertFalse"), ("assertIn", "assertNotIn"),
          ("assertIs", "assertIsNot"), ("assertIsNone", "assertIsNotNone"), ("assertIsInstance", "assertNotIsInstance"),
          ("assertAlmostEqual", "assertNotAlmostEqual"), ("assertRegex", "assertNotRegex"))
OPPOSITE = {a: b for a, b in _PAIRS} | {b: a for a, b in _PAIRS} | {"assertEquals": "assertNotEqual"}
"""unittest's assertions and their opposites: where one passes, the other fails, for the same arguments."""
_RAISES = ("raises", "assertRaises", "assertRaisesRegex", "assertRaisesRegexp")
"""The context managers that expect an exception of their block."""
STOPS = ("fail", "skip", "xfail")
"""pytest's calls that always raise out of a test (and so end it failed or skipped, never passed)."""
PASSING_MANAGERS = ("subTest", "open", "patch", "patch.object", "patch.dict", "patch.multiple", "catch_warnings",
                    "warns", "deprecated_call", "TemporaryDirectory", "NamedTemporaryFile", "TemporaryFile", "chdir")
"""Context managers that let an exception of their block through (the standard library's, unittest's, mock's,
pytest's): an assertion that ends their block and failed fails the test. Any other may swallow it
(`contextlib.suppress`, a project's own), so an assertion in its block is left alone."""
_HELPER_NOT = ("not", "raise", "warn", "less", "greater")
"""Words that keep a helper out of the rules for `assert...` helpers: their opposite of equality, an exception, a
warning or an order (unittest's `assertLessEqual(depth, 20)` holds for 27 too) may well hold for a changed argument
too."""

_HELPER_WORDS = ("equal", "call")
"""What an `assert...` helper's name must say for a mutant to change it: equality (`assert_equal`, `assertXmlEqual`)
or a mock's calls (`assert_called_once_with`, `assert_any_call`), where a changed argument fails the helper. Others
are left alone: mistune 3.4's `assert_round_trip("paragraph\\n...")` and `assert_max_token_depth(ast, "image", 20)`
hold for a changed constant too, and such a mutant costs a second run under the task's fix (`twins.name_bound`)."""


@dataclass
class Spot:
    """Where a mutant changes its copy: the span of an expected constant, an `assert` statement's test (to negate), a
    unittest assertion's method name (to swap for its opposite) or an equality helper's argument (to wrap in a
    tuple)."""

    kind: str  # "constant", "negate", "opposite", "raises", "call", "wrap", "repeat", "add", "all", "copy", "rename"
    node: ast.AST
    text: str = ""
    """What an "add" puts after `node`, an argument of a helper that only compares its `*args`; the name a "rename"
    gives the helper that `node` (a call's function) names."""
    helper: tuple[list[str], ast.FunctionDef] | None = None
    """For a "copy": the path and definition of the module's own helper whose changed copy the test calls instead
    (`helpers.own_helper`); `inner` is where the copy changes it (`twin_source.twin_source` writes both)."""
    inner: Spot | None = None
    guards: tuple[ast.For, ...] = ()
    """The loops around the spot that walk what the test built, outermost first: the copy counts each one's rounds
    and fails after it where it ran none (`_last`, `mutant_text.mutate`)."""
    subtest: bool = False
    """Whether a `with self.subTest(...)` holds the spot: unittest records a failure there and goes on."""
    breaks: tuple[ast.For, ...] = ()
    """The loops around such a `with`, outermost first: the copy leaves each after its first round, which failed
    already (more-itertools' `for values in permutations(range(1, 8), n): with self.subTest(...)` would fail 1,099
    times, and pytest 9 formats each failure, parsing the whole module each time)."""


def _constant(node: ast.AST) -> bool:
    """A constant an assertion may expect: a number, a string, bytes or a bool, on one line."""
    return (isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bytes))
            and node.lineno == node.end_lineno)


def _spot(stmt: ast.stmt, helper: Callable[[ast.Call], tuple[str, ast.expr] | None] | None = None,
          test: ast.FunctionDef | ast.AsyncFunctionDef | None = None, outer: tuple[ast.For, ...] = ()) -> Spot | None:
    """What a mutant changes in the assertion `stmt`: the expected constant of `assert x == C` (either side) or of
    `self.assertEqual(x, C)`, when one side only is a constant; else the whole test of an `assert`, or the method of a
    unittest assertion that has an opposite; for a block that expects an exception (`with pytest.raises(E):`,
    `with self.assertRaises(E):`), its header, which becomes `if True:` (the body raised `E` in a passing original,
    and nothing catches it in the copy). None for a statement that is no assertion."""
    if isinstance(stmt, ast.With):
        item = stmt.items[0].optional_vars or stmt.items[0].context_expr
        name = manager_name(stmt.items[0].context_expr)
        if len(stmt.items) == 1 and name in _RAISES and item.end_lineno < stmt.body[0].lineno:  # a header of its own
            expected = stmt.items[0].context_expr
            return Spot("raises", stmt) if not (isinstance(expected, ast.Call) and expected.args and
                                                _stops_the_run(expected.args[0])) else None
        passing = getattr(helper, "passing", None)  # a project's own manager whose definition lets them through
        if all(manager_name(i.context_expr) in PASSING_MANAGERS or passing is not None and passing(i.context_expr)
               for i in stmt.items):
            spot = _last(stmt.body[-1], helper, test, outer)
            return replace(spot, subtest=True) if spot is not None and any(
                manager_name(i.context_expr) == "subTest" for i in stmt.items) else spot
        return None
    if isinstance(stmt, ast.Assert):
        test = stmt.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            found = [s for s in (test.left, test.comparators[0]) if _constant(s)]
            if len(found) == 1:
                return Spot("constant", found[0])
        return Spot("negate", test)
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    if not isinstance(call, ast.Call) or any(isinstance(a, ast.Starred) for a in call.args) or \
            any(k.arg is None for k in call.keywords):  # `f(*args)`, `f(**kw)`: what it compares is not in sight
        return None
    if _raising_call(call):
        return Spot("call", call)
    if isinstance(call.func, ast.Attribute) and call.func.attr in OPPOSITE:
        found = [a for a in call.args[:2] if _constant(a)]
        if call.func.attr in ("assertEqual", "assertEquals") and len(call.args) >= 2 and len(found) == 1:
            return Spot("constant", found[0])
        if call.func.lineno == call.func.end_lineno:
            return Spot("opposite", call.func)
    if named := _helper(call):
        # not a constant its definition, where it can be read, takes for a parameter with a default: a tolerance or
        # an option (arrow's `assert_datetime_equality(dt1, dt2, within=10)`), which a changed value may well pass
        optional = getattr(helper, "defaulted", None)
        skip = optional(call) if optional is not None else set()
        found = [a for a in call.args if _constant(a) and id(a) not in skip]
        if found:
            return Spot("constant", found[0])
        if "equal" in named and len(call.args) >= 2:
            return Spot("wrap", call.args[1])
    elif helper is not None and (target := helper(call)) is not None:
        return Spot(*target)
    return _copied(call, helper)


def _copied(call: ast.Call, helper) -> Spot | None:
    """A "copy" spot for a call to a helper of the test's own module that no rule above changes (dateutil's
    `self._rrulestr_reverse_test(rule)`, whose `self.assertEqual(list(rule), list(rrulestr(str(rule))))` compares
    no argument as it is given): where the helper's own body ends in an assertion that a mutant could turn
    (`spot_of` on the helper, itself with no copies), the mutant calls a copy of the helper with that assertion
    turned. The call ended the test, so in a passing original the helper ran to its end and that assertion held."""
    own = getattr(helper, "own", None)
    found = own(call) if own is not None else None
    if found is None:
        return None
    inner = spot_of(found[1], helper.inner(found[0]))
    return Spot("copy", call.func, helper=found, inner=inner) if inner is not None else None


def _last(stmt: ast.stmt, helper, test: ast.FunctionDef | ast.AsyncFunctionDef | None,
          outer: tuple[ast.For, ...] = ()) -> Spot | None:
    """The spot of `stmt`, the last statement of a body that ran (`_spot`), or of the last statement of the loop
    `stmt`, which has no `else` and no `break` or `continue` to skip the end of its body: as it is where the loop walks
    a fixed collection of its `test` (`mutant_loops.fixed`); the loop's opposite of all it asserts at once where it is
    a loop of one `assert` over what the test built (`every`); else counted (`Spot.guards`), where its body starts
    below its header (the counter goes into the header's line). Loops nest (`for a in A: for b in B: assert ...`), and
    an inner loop may walk what an outer fixed one's target holds (`outer`, the fixed loops `stmt` is in). A `try`
    statement's spot is that of the clause a passing original ran to its end (`_tried`)."""
    if isinstance(stmt, (ast.Assert, ast.Expr, ast.With)):
        return _spot(stmt, helper, test, outer)
    if isinstance(stmt, ast.For) and test is not None and not stmt.orelse and \
            not any(isinstance(n, (ast.Break, ast.Continue)) for n in own_code(stmt)):
        if fixed(stmt, test, outer):
            spot, counted = _last(stmt.body[-1], helper, test, (*outer, stmt)), False
        elif every(stmt) is not None:
            return Spot("all", stmt)
        elif stmt.body[0].lineno > stmt.iter.end_lineno:
            spot, counted = _last(stmt.body[-1], helper, test, outer), True
        else:
            return None
        if spot is None:
            return None
        return replace(spot, guards=(stmt, *spot.guards) if counted else spot.guards,
                       breaks=(stmt, *spot.breaks) if spot.subtest else spot.breaks)
    if isinstance(stmt, ast.Try):
        return _tried(stmt, helper, test, outer)
    return None


def _stops(stmt: ast.stmt, helper) -> bool:
    """Whether `stmt` always raises out of its clause: a `raise`, or a call to pytest's `fail`, `skip` or `xfail`
    or unittest's `self.fail` / `self.skipTest` (`helpers.resolver`'s `stops`, where the helper can read the
    checkout; `pytest.fail(...)` alone where it cannot)."""
    if isinstance(stmt, ast.Raise):
        return True
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    if not isinstance(call, ast.Call):
        return False
    stops = getattr(helper, "stops", None)
    if stops is not None:
        return stops(call)
    return isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", None) == "pytest" and \
        call.func.attr in STOPS


def _tried(stmt: ast.Try, helper, test, outer: tuple[ast.For, ...]) -> Spot | None:
    """The spot of a `try` statement that ends a test, where a passing original shows which clause ran to its end:
    - every handler ends in a stop (`_stops`: `except ImportError: skip(...)`, `except Exception: self.fail(...)`;
      with no handler, `try: ... finally: ...`): the test passed only where the `try` body ran to its end, and its
      `else` after it, so the spot is that of the last of them (humanize's `try: activate(locale) except
      FileNotFoundError: pytest.skip(...) else: assert ...`);
    - else one handler, and the `try` body (or its `else`) ends in a stop (`f(); self.fail("no error")` or
      `raise AssertionError(...)`): the test passed only where that handler ran to its end, so the spot is its last
      statement's (jsonpointer's `except JsonPointerException as e: self.assertIn(repr(doc), str(e))`).
    A mutant's failure raised in a handler or an `else` is not caught by the statement's handlers, and one raised in
    the body is caught only by a handler that ends in a stop: the test fails or is skipped, and never passes. A
    `finally` clause runs after either (a `return` in it, which would swallow the failure, keeps the whole test
    from a mutant: `spot_of`)."""
    ran = stmt.orelse or stmt.body
    if all(_stops(h.body[-1], helper) for h in stmt.handlers):
        return _last(ran[-1], helper, test, outer)
    if len(stmt.handlers) == 1 and _stops(ran[-1], helper):
        return _last(stmt.handlers[0].body[-1], helper, test, outer)
    return None


def callable_at(call: ast.Call) -> int:
    """Where the callable is among the arguments of a raising call in the call form: after the exception, and after
    the pattern too for unittest's `assertRaisesRegex(E, "pattern", f, x)`."""
    return 2 if getattr(call.func, "attr", "") in ("assertRaisesRegex", "assertRaisesRegexp") else 1


def _raising_call(call: ast.Call) -> bool:
    """Whether `call` expects its callable to raise, in the call form (`self.assertRaises(KeyError, d.pop, "k")`,
    `self.assertRaisesRegex(ValueError, "not divisible", f)`, `pytest.raises(ValueError, f, -1, seed=3)`). In that
    form both hand every keyword to the callable (pytest 7 to 9, `match` included; unittest, `msg` included), so the
    copy passes them on too."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return (name in ("assertRaises", "assertRaisesRegex", "assertRaisesRegexp") or name == "raises" and getattr(
        getattr(func, "value", None), "id", "pytest") == "pytest") and len(call.args) > callable_at(call) and \
        not _stops_the_run(call.args[0])


_RUN_STOPPERS = ("KeyboardInterrupt", "GeneratorExit", "BaseException", "BaseExceptionGroup", "CancelledError", "Exit")
"""Exceptions that, uncaught in a test, may end the whole pytest session rather than fail the test (an interrupt,
pytest's `Exit`, which pytest lets through) or that may stop what runs the test (asyncio's `CancelledError` under an
event loop's runner; `BaseException`, which may be any of them): a mutant that let one through could cut short the
run that verifies a real fix, so a test that expects one gets no "raises" or "call" mutant. `SystemExit` is not
among them: pytest records it as the test's failure (semver's and sqlparse's command-line tests expect it)."""


def _stops_the_run(expected: ast.expr) -> bool:
    """Whether the exception(s) `expected` names (`KeyboardInterrupt`, `(ValueError, KeyboardInterrupt)`,
    `pytest.exit.Exception`) may be one of `_RUN_STOPPERS`."""
    return any(getattr(n, "attr", getattr(n, "id", None)) in _RUN_STOPPERS or
               isinstance(n, ast.Attribute) and n.attr == "Exception" and getattr(n.value, "attr", "") == "exit"
               for n in ast.walk(expected))


def manager_name(expr: ast.expr) -> str:
    """The name a `with` item calls (`open`, `self.subTest`, `mock.patch.object` -> `open`, `subTest`,
    `patch.object`), as `PASSING_MANAGERS` spells it; "" for anything else."""
    func = expr.func if isinstance(expr, ast.Call) else None
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        owner = func.value.attr if isinstance(func.value, ast.Attribute) else getattr(func.value, "id", "")
        return f"patch.{func.attr}" if owner == "patch" else func.attr
    return ""


def _helper(call: ast.Call) -> str:
    """The name of a project's assertion helper that `call` calls (`assert_equal`, `self.assertXmlEqual`,
    `m.assert_called_once_with`), lower case and without underscores; "" for any other call, unittest's own
    (`OPPOSITE`) and those that expect the opposite of equality, an exception or a warning (`_HELPER_NOT`)."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    plain = name.lower().replace("_", "")
    if not plain.startswith("assert") or name in OPPOSITE or any(w in plain for w in _HELPER_NOT) \
            or not (plain == "assertin" or any(w in plain for w in _HELPER_WORDS)):
        return ""
    return plain


def spot_of(node: ast.FunctionDef | ast.AsyncFunctionDef,
            helper: Callable[[ast.Call], tuple[str, ast.expr] | None] | None = None) -> Spot | None:
    """Where a mutant of the test `node` changes it: its last assertion among the statements of its own body
    (`_spot`). None where it has none, where its body returns early anywhere, or where it is marked to fail
    (`xfail`): there, a passing original does not show that the assertion ran and held. `helper`: for a call to a
    helper of the project that no rule here knows by name, the kind of change and the argument its definition shows
    (`helper_rules.helper_target`), if any. A bare `return` that ends the body is its end (argcomplete's
    `test_directory_completion`)."""
    end = node.body[-1] if len(node.body) > 1 and isinstance(node.body[-1], ast.Return) and \
        node.body[-1].value is None else None
    body = node.body[:-1] if end is not None else node.body
    if any(isinstance(n, (ast.Return, ast.Yield, ast.YieldFrom)) and n is not end for n in own_code(node)):
        return None
    if any(isinstance(n, (ast.Name, ast.Attribute)) and getattr(n, "attr", getattr(n, "id", "")) == "xfail"
           for d in node.decorator_list for n in ast.walk(d)):
        return None
    for stmt in reversed(body):
        if isinstance(stmt, (ast.Assert, ast.Expr, ast.With)):
            return _spot(stmt, helper, node)
        if isinstance(stmt, ast.Try) and (spot := _tried(stmt, helper, node, ())):
            return spot
        if stmt is body[-1] and isinstance(stmt, ast.For) and (spot := _last(stmt, helper, node)):
            return spot
    return None


def module_tests(tree: ast.Module) -> list[tuple[list[str], ast.FunctionDef | ast.AsyncFunctionDef]]:
    """A test module's test functions and the test methods of its top-level classes (`test*`), each with its path
    (`["test_x"]`, `["TestCls", "test_x"]`): the tests a mutant may be made of, as `twin_source.twin_source` takes
    them."""
    out: list[tuple[list[str], ast.FunctionDef | ast.AsyncFunctionDef]] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            out.append(([node.name], node))
        elif isinstance(node, ast.ClassDef):
            out += [([node.name, m.name], m) for m in node.body
                    if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and m.name.startswith("test")]
    return out
