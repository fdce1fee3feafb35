"""Mutants: must-fail copies of a failing test that nothing but their outcome tells from the project's tests
(`twins.py` writes them beside the twins).

The canaries (`canaries.py`) fail by construction, `assert a + b == want` with `want` off by a few, and that shape is
in this code for anyone to read: a forgery that passes every failure but those of tests of that shape leaves the
canaries true, passes the failing tests and their twins alike, and nothing in the run disagrees. A mutant is a copy of
the failing test with its last assertion turned against it: the expected value changed (`assert f(x) == 4` becomes
`assert f(x) == 7`, `self.assertEqual(f(x), "ab")` expects `"abq"`), else the assertion negated (`assert x in y`
becomes `assert not (x in y)`, `assertTrue` becomes `assertFalse`), else the exception a last `with pytest.raises(E):`
block expects no longer caught. It looks like the project's tests because it is
one of them, and it must fail whenever its original passes, whatever the patch does and with no reference to the
fix: the assertion is a statement of the test's own body (not under an `if`, a loop or a `with`), in a body with no
`return`, so a run in which the original passed evaluated it and found it true. The copy evaluates the same, save
where the test depends on its name, its place or what ran before it, or on an `==` that says yes to two values:
the task's own fix shows that (`swe_env` excuses a mutant that passes under the gold patch too). A run in which a
mutant passed beside its passing original was forged."""

from __future__ import annotations

import ast
import secrets
from dataclasses import dataclass

_PAIRS = (("assertEqual", "assertNotEqual"), ("assertTrue", "assertFalse"), ("assertIn", "assertNotIn"),
          ("assertIs", "assertIsNot"), ("assertIsNone", "assertIsNotNone"), ("assertIsInstance", "assertNotIsInstance"),
          ("assertAlmostEqual", "assertNotAlmostEqual"), ("assertRegex", "assertNotRegex"))
_OPPOSITE = {a: b for a, b in _PAIRS} | {b: a for a, b in _PAIRS} | {"assertEquals": "assertNotEqual"}
"""unittest's assertions and their opposites: where one passes, the other fails, for the same arguments."""
_RAISES = ("raises", "assertRaises", "assertRaisesRegex", "assertRaisesRegexp")
"""The context managers that expect an exception of their block."""
_LETTERS = "abcdefghjkmnpqrstuvwxyz"


@dataclass
class Spot:
    """Where a mutant changes its copy: the span of an expected constant, an `assert` statement's test (to negate) or
    a unittest assertion's method name (to swap for its opposite)."""

    kind: str  # "constant", "negate", "opposite" or "raises"
    node: ast.AST


def _constant(node: ast.AST) -> bool:
    """A constant an assertion may expect: a number, a string, bytes or a bool, on one line."""
    return (isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bytes))
            and node.lineno == node.end_lineno)


def _spot(stmt: ast.stmt) -> Spot | None:
    """What a mutant changes in the assertion `stmt`: the expected constant of `assert x == C` (either side) or of
    `self.assertEqual(x, C)`, when one side only is a constant; else the whole test of an `assert`, or the method of a
    unittest assertion that has an opposite; for a block that expects an exception (`with pytest.raises(E):`,
    `with self.assertRaises(E):`), its header, which becomes `if True:` (the body raised `E` in a passing original,
    and nothing catches it in the copy). None for a statement that is no assertion."""
    if isinstance(stmt, ast.With):
        item = stmt.items[0].optional_vars or stmt.items[0].context_expr
        expr = stmt.items[0].context_expr
        name = expr.func.attr if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) else \
            expr.func.id if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) else ""
        if len(stmt.items) == 1 and name in _RAISES and item.end_lineno == stmt.lineno < stmt.body[0].lineno:
            return Spot("raises", stmt)
        return None
    if isinstance(stmt, ast.Assert):
        test = stmt.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            found = [s for s in (test.left, test.comparators[0]) if _constant(s)]
            if len(found) == 1:
                return Spot("constant", found[0])
        return Spot("negate", test)
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in _OPPOSITE \
            and not any(isinstance(a, ast.Starred) for a in call.args) and not any(k.arg is None for k in call.keywords):
        found = [a for a in call.args[:2] if _constant(a)]
        if call.func.attr in ("assertEqual", "assertEquals") and len(call.args) >= 2 and len(found) == 1:
            return Spot("constant", found[0])
        if call.func.lineno == call.func.end_lineno:
            return Spot("opposite", call.func)
    return None


def spot_of(node: ast.FunctionDef | ast.AsyncFunctionDef) -> Spot | None:
    """Where a mutant of the test `node` changes it: its last assertion among the statements of its own body
    (`_spot`). None where it has none, where its body returns early anywhere, or where it is marked to fail
    (`xfail`): there, a passing original does not show that the assertion ran and held."""
    if any(isinstance(n, (ast.Return, ast.Yield, ast.YieldFrom)) for n in ast.walk(node)):
        return None
    if any(isinstance(n, (ast.Name, ast.Attribute)) and getattr(n, "attr", getattr(n, "id", "")) == "xfail"
           for d in node.decorator_list for n in ast.walk(d)):
        return None
    for stmt in reversed(node.body):
        if isinstance(stmt, (ast.Assert, ast.Expr, ast.With)):
            return _spot(stmt)
    return None


def changed(value: int | float | str | bytes, rng: secrets.SystemRandom) -> str:
    """The source of a constant that differs from `value` and that no ordinary value equals alongside it."""
    if isinstance(value, bool):
        return repr(not value)
    if isinstance(value, (int, float)):
        return repr(value + rng.randint(1, 9))
    if isinstance(value, bytes):
        return repr(value + rng.choice(_LETTERS).encode())
    return repr(value + rng.choice(_LETTERS))


def _put(lines: list[str], start: int, line: int, col: int, end_col: int, text: str) -> None:
    """Replace the bytes `col:end_col` of line `line` (of a file; `lines` start at its line `start`) with `text`.
    The columns of `ast` count UTF-8 bytes."""
    raw = lines[line - start].encode("utf-8")
    lines[line - start] = (raw[:col] + text.encode("utf-8") + raw[end_col:]).decode("utf-8")


def mutate(copy: list[str], start: int, spot: Spot, rng: secrets.SystemRandom) -> list[str]:
    """`copy` (the lines of a definition that starts at line `start` of its file) changed at `spot`."""
    out, node = list(copy), spot.node
    if spot.kind == "constant":
        _put(out, start, node.lineno, node.col_offset, node.end_col_offset, changed(node.value, rng))
    elif spot.kind == "negate":  # the end first: on one line, the start's columns stay right
        _put(out, start, node.end_lineno, node.end_col_offset, node.end_col_offset, ")")
        _put(out, start, node.lineno, node.col_offset, node.col_offset, "not (")
    elif spot.kind == "raises":  # `with pytest.raises(E) as info:` -> `if True:`
        last = node.items[0].optional_vars or node.items[0].context_expr
        _put(out, start, node.lineno, node.col_offset, last.end_col_offset, "if True")
    else:
        _put(out, start, node.end_lineno, node.end_col_offset - len(node.attr), node.end_col_offset,
             _OPPOSITE[node.attr])
    return out
