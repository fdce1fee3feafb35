"""Which loops a mutant may end in (`mutants.py`): a loop that walks a fixed collection runs as many times under any
patch (`fixed`), and a loop of one `assert` over what the test built asserts the opposite of all it asserts at once
(`every`); any other loop over what the test built is counted in the copy (`mutants.Spot.guards`)."""

from __future__ import annotations

import ast


def own_code(node: ast.AST):
    """The nodes of a definition's own code: not those of the functions, lambdas and classes it defines."""
    for child in ast.iter_child_nodes(node):
        yield child
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            yield from own_code(child)


def fixed(loop: ast.For, test: ast.FunctionDef | ast.AsyncFunctionDef, outer: tuple[ast.For, ...] = ()) -> bool:
    """Whether `loop` walks a collection its test does not build: a non-empty literal, `range` of constants, or a
    name (`CASES`, `cases.items()`, `enumerate(CASES)`) that the test neither takes as an argument nor binds, save
    once to a literal (`_literal_once`) or as the target of a loop it is in that walks such a collection
    (`for name, cases in TOTEST.items(): for case in cases:`, docutils' suites; `_walked`). Such a loop runs as many
    times under any patch: a mutant that failed under the task's fix, where the loop ran, fails under any other."""
    it = loop.iter
    if isinstance(it, (ast.List, ast.Tuple, ast.Set)):
        return bool(it.elts)
    if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range":
        return all(isinstance(a, ast.Constant) and isinstance(a.value, int) for a in it.args) and bool(
            range(*[a.value for a in it.args]))
    bound = {a.arg for a in [*test.args.posonlyargs, *test.args.args, *test.args.kwonlyargs]} | {
        n.id for n in own_code(test) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    names = [n for n in ast.walk(it) if isinstance(n, ast.Name)]
    calls = [n for n in ast.walk(it) if isinstance(n, ast.Call)]
    plain = all(isinstance(c.func, ast.Name) and c.func.id in ("enumerate", "zip", "sorted", "list", "reversed") or
                isinstance(c.func, ast.Attribute) and c.func.attr in ("items", "keys", "values") for c in calls)
    return bool(names) and plain and not any(
        n.id == "self" or n.id in bound and not (_literal_once(n.id, loop, test) or _walked(n.id, outer, test))
        for n in names)


def _walked(name: str, outer: tuple[ast.For, ...], test: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether the test binds `name` only in the targets of the loops `outer` (each of them `fixed`), and does not
    take it as an argument or declare it `global` or `nonlocal`."""
    targets = {id(t) for loop in outer for t in ast.walk(loop.target)}
    stores = [n for n in own_code(test) if isinstance(n, ast.Name) and n.id == name and not isinstance(n.ctx, ast.Load)]
    args = {a.arg for a in [*test.args.posonlyargs, *test.args.args, *test.args.kwonlyargs, test.args.vararg,
                            test.args.kwarg] if a}
    return bool(stores) and all(id(n) in targets for n in stores) and name not in args and not any(
        isinstance(n, (ast.Global, ast.Nonlocal)) and name in n.names for n in ast.walk(test))


def _literal_once(name: str, loop: ast.For, test: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether the test binds `name` once, to a non-empty literal (`units = [1, 5]`, `cases = {"a": 1}`), in a
    statement that runs before `loop` (`_before`: in its own body or a block `loop` is in, such as a `with` block's,
    argcomplete's `with TempDir(): expected = (...); for cmd, output in expected: ...`), and reads it only in
    `loop`'s header: the loop walks that collection as it was written."""
    assigns = [stmt for stmt in _before(test, loop) if isinstance(stmt, ast.Assign)
               and [getattr(t, "id", None) for t in stmt.targets] == [name]]
    if len(assigns) != 1:
        return False
    value = assigns[0].value
    if not (isinstance(value, (ast.List, ast.Tuple, ast.Set)) and value.elts and
            not any(isinstance(e, ast.Starred) for e in value.elts) or
            isinstance(value, ast.Dict) and value.keys and None not in value.keys):
        return False
    header = {id(n) for n in ast.walk(loop.iter)}
    uses = [n for n in ast.walk(test) if isinstance(n, ast.Name) and n.id == name]
    return all(id(n) in header if isinstance(n.ctx, ast.Load) else n is assigns[0].targets[0]
               for n in uses) and not any(isinstance(n, (ast.Global, ast.Nonlocal)) and name in n.names
                                          for n in ast.walk(test))


def _before(test: ast.FunctionDef | ast.AsyncFunctionDef, loop: ast.For) -> list[ast.stmt]:
    """The statements of the blocks `loop` is in, from the test's body in, that come before the one holding it: those
    ran, each time, before it did."""
    out, body = [], test.body
    while body:
        at = next((i for i, stmt in enumerate(body) if any(n is loop for n in ast.walk(stmt))), None)
        if at is None or body[at] is loop:
            return out + body[:at or 0]
        out += body[:at]
        holder = body[at]
        blocks = [getattr(holder, f, None) for f in ("body", "orelse", "finalbody")] + [
            h.body for h in getattr(holder, "handlers", [])]
        body = next((b for b in blocks if b and any(any(n is loop for n in ast.walk(x)) for x in b)), None)
    return out


_NOT_IN_A_GENERATOR = ("super", "locals", "vars", "eval", "exec", "dir")
"""Calls that see the scope they are made in: a generator expression is a scope of its own."""


def _plain_target(target: ast.expr) -> bool:
    if isinstance(target, (ast.Tuple, ast.List)):
        return all(_plain_target(t.value if isinstance(t, ast.Starred) else t) for t in target.elts)
    return isinstance(target, ast.Name)


def every(loop: ast.stmt) -> tuple[ast.expr, list[tuple[ast.expr, ast.expr]]] | None:
    """(the asserted test, each loop's (target, iterable), outermost first) of `loop` where it is a chain of `for`
    loops, each of one statement and no `else`, ending in one `assert`: a loop over what the test built, which may be
    empty. Its mutant asserts the opposite of all the loop asserts at once (`for t in stmt.tokens: assert
    t.has_ancestor(stmt)` becomes `assert not all(t.has_ancestor(stmt) for t in stmt.tokens)`), which fails wherever
    the loop passed, however many times it ran (sqlparse 0.6.1's `test_stmt_tokens_parents`). None where the
    generator expression could differ from the loop: a target that is no plain name, an `await`, `yield` or `:=`, or
    a call that sees its own scope (`super()`, `locals()`)."""
    chain = []
    while isinstance(loop, ast.For) and not loop.orelse and len(loop.body) == 1 and _plain_target(loop.target):
        chain.append((loop.target, loop.iter))
        loop = loop.body[0]
    if not chain or not isinstance(loop, ast.Assert):
        return None
    parts = [loop.test, *(it for _, it in chain)]
    if any(isinstance(n, (ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)) or
           isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in _NOT_IN_A_GENERATOR
           for part in parts for n in ast.walk(part)):
        return None
    return loop.test, chain
