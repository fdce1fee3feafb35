"""The rules that read a test helper's definition (`helpers.py` finds it): which of its arguments it only compares
for equality (`compared_params`), compares as `p or q` (`or_params`), compares value by value as a dict
(`item_params`), or compares as a whole among its `*args` (`counted_varargs`), and so what a mutant may change in a
call to it (`helper_target`), with the argument a call that gives no `*args` gets (`donor_argument`)."""

from __future__ import annotations

import ast
from typing import Callable

from trajfactory.executors.mutants import PASSING_MANAGERS, manager_name


Def = ast.FunctionDef
Resolver = Callable[[list[str], ast.Call], "tuple[Def, bool] | None"]
Target = tuple[str, ast.expr] | tuple[str, ast.expr, str]
"""What a mutant changes in a call: (kind, the argument, the text it adds, for "add")."""

_EQUAL = ("assertEqual", "assertEquals", "assertMultiLineEqual", "assertListEqual", "assertTupleEqual",
          "assertDictEqual", "assertSequenceEqual", "assertCountEqual")
"""unittest's equality assertions: where `a` equals `b`, no value that differs from `b` by a letter or a number
equals `a` too (not `assertAlmostEqual`, whose `delta` may admit it)."""


def _compared(stmt: ast.stmt) -> list[ast.expr]:
    """The two sides of the equality that the statement `stmt` asserts (`assert a == b`, `self.assertEqual(a, b)`),
    else none."""
    if isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Compare) and len(stmt.test.ops) == 1 and \
            isinstance(stmt.test.ops[0], ast.Eq):
        return [stmt.test.left, stmt.test.comparators[0]]
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in _EQUAL and \
            len(call.args) >= 2 and not any(isinstance(a, ast.Starred) for a in call.args):
        return list(call.args[:2])
    return []


def _messages(node: ast.AST) -> list[ast.expr]:
    """What the assertion `node` reports when it fails (`assert x == y, MSG`, `self.assertEqual(x, y, MSG)`)."""
    if isinstance(node, ast.Assert):
        return [node.msg] if node.msg is not None else []
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _EQUAL:
        return [*node.args[2:], *(k.value for k in node.keywords if k.arg == "msg")]
    return []


def _said(func: Def) -> set[int]:
    """The ids of the nodes that only the failure messages of `func`'s assertions read: read only when they fail."""
    return {id(n) for stmt in ast.walk(func) for part in _messages(stmt) for n in ast.walk(part)}


def _returns_before(func: Def, i: int) -> bool:
    """Whether a `return` comes before the statement `i` of `func`'s body (a call that returned may not have run it)."""
    return any(isinstance(n, ast.Return) for earlier in func.body[:i] for n in ast.walk(earlier))


_CONVERTERS = ("set", "frozenset", "sorted", "list", "tuple")
"""Builtins a helper may compare a parameter through (`assertEqual(set(actual), set(expected))`: sqlglot's
`_validate_delta_only`): a one-element tuple of the value converts to something else (`set(([a, b],))` raises, and
`list(("ab",))` is `["ab"]`, not `["a", "b"]`), where a changed constant may not (`set("ab" + "a")` is `set("ab")`)."""


def _side_param(side: ast.expr) -> tuple[str, bool] | None:
    """(the parameter name, whether through a converter) of one side of an equality: `p` or `set(p)`, else None."""
    if isinstance(side, ast.Name):
        return side.id, False
    if isinstance(side, ast.Call) and isinstance(side.func, ast.Name) and side.func.id in _CONVERTERS and \
            len(side.args) == 1 and not side.keywords and isinstance(side.args[0], ast.Name):
        return side.args[0].id, True
    return None


def converted_params(func: Def) -> set[str]:
    """Those of `compared_params(func)` that it compares through a converter (`_CONVERTERS`): a mutant wraps their
    argument, never changes a constant of it."""
    return compared_params(func, converted=True)


def compared_params(func: Def, converted: bool = False) -> set[str]:
    """The parameters of the helper `func` that it only compares: each is read once, as one side of an equality that a
    statement of the helper's own body asserts (itself, or converted as a whole: `set(p)`, `_CONVERTERS`), is never
    bound again, and no `return` comes before that statement (so a call that returned has asserted it); with
    `converted`, only those compared through a converter. None for a decorated helper or a generator, whose call may
    not run its body as written."""
    if func.decorator_list or any(isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await)) for n in ast.walk(func)):
        return set()
    args = func.args
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    said = _said(func)  # a parameter a failure message names is still only compared
    loads: dict[str, int] = {}
    for node in ast.walk(func):
        if id(node) in said:
            continue
        if isinstance(node, ast.Name) and node.id in names:
            if not isinstance(node.ctx, ast.Load):
                names.discard(node.id)
            loads[node.id] = loads.get(node.id, 0) + 1
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names -= set(node.names)
    out: set[str] = set()
    for i, stmt in enumerate(func.body):
        sides = _compared(stmt)
        for side in sides:
            found = _side_param(side)
            if found and found[0] in names and loads.get(found[0]) == 1 and not _returns_before(func, i) and \
                    (found[1] or not converted) and not (found[1] and _converter_shadowed(func)):
                out.add(found[0])
    return out


def _converter_shadowed(func: Def) -> bool:
    """Whether `func` binds a converter's name itself (then `set(p)` may be anything)."""
    return any(isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load) and n.id in _CONVERTERS
               for n in ast.walk(func)) or any(a.arg in _CONVERTERS for a in ast.walk(func.args)
                                              if isinstance(a, ast.arg))


def or_params(func: Def) -> dict[str, str]:
    """The parameters `p` of the helper `func` that it reads once, as `p or q`, one side of an equality a statement of
    its own body asserts with no `return` before it, where `q` is a parameter too, and that neither is bound again:
    {p: q} (sqlglot's `validate_identity(sql, write_sql=None)` asserts `write_sql or sql` equals what it makes of
    `sql`). A truthy `p` is what the helper compares; a call that gives none compares `q`. Empty for a decorated
    helper or a generator."""
    if func.decorator_list or any(isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await)) for n in ast.walk(func)):
        return {}
    args = func.args
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    said = _said(func)
    stored = {n.id for n in ast.walk(func) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)} | {
        name for n in ast.walk(func) if isinstance(n, (ast.Global, ast.Nonlocal)) for name in n.names}
    loads = [n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and
             id(n) not in said]
    out: dict[str, str] = {}
    for i, stmt in enumerate(func.body):
        for side in _compared(stmt):
            if isinstance(side, ast.BoolOp) and isinstance(side.op, ast.Or) and len(side.values) == 2 and \
                    all(isinstance(v, ast.Name) and v.id in names - stored for v in side.values) and \
                    loads.count(side.values[0].id) == 1 and not _returns_before(func, i):
                out[side.values[0].id] = side.values[1].id
    return out


def _items_of(loop: ast.stmt, names: set[str]) -> tuple[str, str] | None:
    """(p, v) where `loop` is `for k, v in p.items():` or `for k, v in (p or {}).items():` over a parameter `p` of
    `names`, with no `else`; else None."""
    if not isinstance(loop, ast.For) or loop.orelse or not (
            isinstance(loop.target, ast.Tuple) and len(loop.target.elts) == 2 and
            all(isinstance(e, ast.Name) for e in loop.target.elts)):
        return None
    it = loop.iter
    if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr == "items" and
            not it.args and not it.keywords):
        return None
    owner = it.func.value
    if isinstance(owner, ast.BoolOp) and isinstance(owner.op, ast.Or) and len(owner.values) == 2 and \
            isinstance(owner.values[1], ast.Dict) and not owner.values[1].keys:
        owner = owner.values[0]
    if isinstance(owner, ast.Name) and owner.id in names:
        return owner.id, loop.target.elts[1].id
    return None


def _compares(body: list[ast.stmt], value: str, path: set[int]) -> ast.expr | None:
    """The `value` (a name) that a statement of `body` compares as one side of an equality it asserts, reached only
    through `with` blocks that let exceptions through (`self.subTest(...)`: `mutants.PASSING_MANAGERS`) and `if value
    is X:` / `if value is not X:` tests on the side that a string or a number takes (`else` / body); the ids of the
    names of `value` those tests read are added to `path`. None where there is none."""
    for stmt in body:
        side = next((s for s in _compared(stmt) if isinstance(s, ast.Name) and s.id == value), None)
        if side is not None:
            return side
        if isinstance(stmt, ast.With) and all(manager_name(i.context_expr) in PASSING_MANAGERS for i in stmt.items):
            inner = _compares(stmt.body, value, path)
        elif isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Compare) and len(stmt.test.ops) == 1 and \
                isinstance(stmt.test.ops[0], (ast.Is, ast.IsNot)) and isinstance(stmt.test.left, ast.Name) and \
                stmt.test.left.id == value and isinstance(stmt.test.comparators[0], (ast.Name, ast.Attribute)):
            inner = _compares(stmt.orelse if isinstance(stmt.test.ops[0], ast.Is) else stmt.body, value, path)
            if inner is not None:
                path.add(id(stmt.test.left))
        else:
            continue
        if inner is not None:
            return inner
    return None


def item_params(func: Def) -> set[str]:
    """The parameters `p` of the helper `func` that it reads once, in the header of a loop of its own body with no
    `return` before it, `for k, v in p.items():` or `(p or {}).items()`, whose body asserts that each value `v` equals
    something else (sqlglot's `validate_all(sql, write={"spark": "..."})`, which asserts that `sql` written in each
    dialect equals the value given for it). The loop may hold `with` blocks that let exceptions through and
    `if v is X:` tests (`_compares`); it holds no `break`, `continue`, `return` or `try`, reads `v` nowhere else, and
    nothing binds `p` or `v` again. Every value of a dict given for `p` is then compared, with a value that does not
    depend on it. Empty for a decorated helper or a generator."""
    if func.decorator_list or any(isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await)) for n in ast.walk(func)):
        return set()
    args = func.args
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    said = _said(func)
    stored = [n.id for n in ast.walk(func) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)] + [
        name for n in ast.walk(func) if isinstance(n, (ast.Global, ast.Nonlocal)) for name in n.names]
    loads = [n for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and
             id(n) not in said]
    out: set[str] = set()
    for i, loop in enumerate(func.body):
        found = _items_of(loop, names)
        if found is None or _returns_before(func, i) or \
                any(isinstance(n, (ast.Break, ast.Continue, ast.Return, ast.Try, ast.TryStar)) for n in ast.walk(loop)):
            continue
        param, value = found
        path: set[int] = set()
        side = _compares(loop.body, value, path)
        if side is None or param in stored or stored.count(value) != 1 or \
                [n.id for n in loads].count(param) != 1:
            continue
        if all(id(n) in path or n is side for n in loads if n.id == value):
            out.add(param)
    return out


def _item_target(call: ast.Call, func: Def, given: dict[str, ast.expr],
                 key: Callable[[str], str | None] | None) -> Target | None:
    """The mutant of a call to a helper that compares each value of a dict it is given (`item_params`): the first
    string or number among the values of a dict literal given for such a parameter, on one line, changed, else its
    first value wrapped in a tuple (`{"snowflake": UnsupportedError}`: a new tuple is no name's object, so the
    helper compares it, and no string or number equals it). The keys must be constants, none given twice (a value
    given under a repeated key is never compared). A call that gives no such parameter gets it, `p={K: (a,)}`,
    after its last argument: `K` the key the module's other calls of the helper give most often for it (`key`,
    `donor_key`), `a` the call's first argument (plain: a constant, an f-string, a name or an attribute of one) in a
    tuple, which no string or number the helper makes equals. Where the key is one the helper cannot take, the call
    raises: the mutant fails all the same."""
    first = call.args[0] if call.args else None
    for param in sorted(item_params(func)):
        value = given.get(param)
        if value is None and key is not None and isinstance(first, _PLAIN) and (name := key(param)) is not None:
            last = max([*call.args, *(k.value for k in call.keywords)], key=lambda n: (n.end_lineno, n.end_col_offset))
            return "add", last, f"{param}={{{name}: ({ast.unparse(first)},)}}"
        if not isinstance(value, ast.Dict) or None in value.keys or \
                not all(isinstance(k, ast.Constant) for k in value.keys):
            continue
        keys = [k.value for k in value.keys]
        if len(set(keys)) != len(keys):
            continue
        for item in value.values:
            if isinstance(item, ast.Constant) and type(item.value) in (str, bytes, int) and \
                    item.lineno == item.end_lineno:
                return "constant", item
        if value.values:
            return "wrap", value.values[0]
    return None


_SAME_LENGTH = ("list", "sorted", "tuple")
"""What a helper may make of its `*args` before it compares them: a sequence of the same items."""


def counted_varargs(func: Def) -> bool:
    """Whether the helper `func` only compares its `*args`, as a whole: it may make them a list, a sorted list or a
    tuple (`expected = sorted(expected, key=...)`) and sort that in place (`expected.sort()`), in statements of its own
    body, and reads them once more, as one side of an equality that a statement of its own body asserts with no
    `return` before it. One item more then fails that equality (pyflakes' `self.flakes(source, *messages)`)."""
    vararg = func.args.vararg.arg if func.args.vararg else None
    if vararg is None or func.decorator_list or \
            any(isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await, ast.Global, ast.Nonlocal)) for n in ast.walk(func)):
        return False
    said = _said(func)
    allowed, compared = set(), 0
    for i, stmt in enumerate(func.body):
        value = stmt.value if isinstance(stmt, (ast.Assign, ast.Expr)) else None
        if isinstance(stmt, ast.Assign) and [getattr(t, "id", None) for t in stmt.targets] == [vararg] and \
                isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in _SAME_LENGTH \
                and len(value.args) == 1 and getattr(value.args[0], "id", None) == vararg and \
                all(k.arg in ("key", "reverse") for k in value.keywords):
            allowed |= {id(stmt.targets[0]), id(value.args[0])}
        elif isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "sort" and \
                getattr(value.func.value, "id", None) == vararg:
            allowed.add(id(value.func.value))
        for side in _compared(stmt):
            if getattr(side, "id", None) == vararg and not _returns_before(func, i):
                allowed.add(id(side))
                compared += 1
    uses = [n for n in ast.walk(func) if isinstance(n, ast.Name) and n.id == vararg and id(n) not in said]
    return compared == 1 and all(id(n) in allowed for n in uses)


def helper_target(call: ast.Call, func: Def, bound: bool, donor: Callable[[int], str | None] | None = None,
                  key: Callable[[str], str | None] | None = None) -> Target | None:
    """What a mutant changes in `call` to the helper `func`, given by position (after `self` where the call is `bound`
    to an instance) or by keyword: an argument the helper only compares (`compared_params`), a constant first
    ("constant": changed), else any ("wrap": wrapped in a tuple); else, where the helper only compares its `*args`
    (`counted_varargs`), the last of them ("repeat": given twice, `mutant_text.mutate`), or, where the call gives none,
    one more after its last argument ("add": the expression `donor` finds for a helper with that many positional
    parameters, `donor_argument`); a helper that compares each value of a dict it is given (`item_params`) gets a
    value of it changed, or the dict added with the key `key` finds (`donor_key`) where the call gives none
    (`_item_target`); else None."""
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return None
    positional = [a.arg for a in [*func.args.posonlyargs, *func.args.args]][1 if bound else 0:]
    if len(call.args) > len(positional) and func.args.vararg is None:
        return None
    params, converted = compared_params(func), converted_params(func)
    given = [(positional[i], a) for i, a in enumerate(call.args[:len(positional)])]
    given += [(k.arg, k.value) for k in call.keywords]
    compared = [value for name, value in given if name in params]
    constant = next((v for name, v in given if name in params and name not in converted and
                     isinstance(v, ast.Constant) and v.lineno == v.end_lineno
                     and isinstance(v.value, (int, float, str, bytes))), None)
    if constant is not None or compared:
        return ("constant", constant) if constant is not None else ("wrap", compared[0])
    if target := _or_target(call, func, dict(given)) or _item_target(call, func, dict(given), key):
        return target
    extra = call.args[len(positional):]
    if extra and extra[-1].lineno == extra[-1].end_lineno and counted_varargs(func):
        return "repeat", extra[-1]
    # a call that fills exactly the positional parameters: one argument more goes to `*args` (with one fewer, it
    # would fill a parameter that has a default)
    if not extra and call.args and len(call.args) == len(positional) and donor is not None and \
            counted_varargs(func) and (text := donor(len(positional))):
        return "add", call.args[-1], text
    return None


_PLAIN = (ast.Constant, ast.JoinedStr, ast.Name, ast.Attribute)
"""Arguments a mutant may evaluate twice: a constant, an f-string, a name or an attribute of one."""


def _or_target(call: ast.Call, func: Def, given: dict[str, ast.expr]) -> Target | None:
    """The mutant of a call to a helper that compares `p or q` (`or_params`): a `p` it gives is changed (a string
    constant, which stays truthy) or wrapped in a tuple (which is truthy); where it gives none, `p=(q,)` is added,
    the argument it gives for `q` wrapped in a tuple: the original's `q` equalled what the helper made, and no
    ordinary value equals both that and its 1-tuple."""
    for p, q in sorted(or_params(func).items()):
        value = given.get(p)
        if value is not None:
            if isinstance(value, ast.Constant) and isinstance(value.value, (str, bytes)) and \
                    value.lineno == value.end_lineno:
                return "constant", value
            return "wrap", value
        other = given.get(q)
        if isinstance(other, _PLAIN) and not isinstance(other, ast.Constant) or isinstance(other, ast.Constant) and \
                isinstance(other.value, (int, float, str, bytes)):
            last = max([*call.args, *(k.value for k in call.keywords)],
                       key=lambda n: (n.end_lineno, n.end_col_offset))
            return "add", last, f"{p}=({ast.unparse(other)},)"
    return None


def defaulted_args(call: ast.Call, func: Def, bound: bool) -> set[int]:
    """The ids of the positional arguments of `call` that go to parameters of `func` with a default (after `self`
    where the call is `bound`), or to its `*args`: a tolerance or an option, not what it compares."""
    positional = [*func.args.posonlyargs, *func.args.args][1 if bound else 0:]
    required = len(positional) - len(func.args.defaults)
    return {id(a) for i, a in enumerate(call.args) if i >= required}


def _module_names(tree: ast.Module) -> set[str]:
    """The names a module binds in its own top-level statements: its imports, definitions and assignments."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {a.asname or a.name.split(".")[0] for a in node.names if a.name != "*"}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return out


def _root(expr: ast.expr) -> str | None:
    """The name at the root of `m.UnusedImport` or `UnusedImport` (a name and its attributes, nothing else)."""
    while isinstance(expr, ast.Attribute):
        expr = expr.value
    return expr.id if isinstance(expr, ast.Name) else None


def donor_argument(tree: ast.Module, call: ast.Call, positional: int, local: set[str]) -> str | None:
    """The argument a mutant adds to `call`, a call of a helper that only compares its `*args` (pyflakes'
    `self.flakes("import fu; fu")`, which expects no message): the item that other calls of the same helper in the
    module (`tree`) give most often in their `*args` (past their `positional` arguments), where it is a name of the
    module or an attribute of one (`m.UnusedImport`) that the test does not bind itself (`local`). None where no call
    gives one. The helper compares the `*args` it gets, as a whole, with what it finds, which the original equalled:
    one item more fails the comparison whatever the item is."""
    names, counts = _module_names(tree) - local - {"self"}, {}
    same = ast.dump(call.func)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and ast.dump(node.func) == same) or \
                any(isinstance(a, ast.Starred) for a in node.args):
            continue
        for item in node.args[positional:]:
            if _root(item) in names and item.lineno == item.end_lineno:
                text = ast.unparse(item)
                counts[text] = counts.get(text, 0) + 1
    return min(counts, key=lambda t: (-counts[t], t)) if counts else None


def donor_key(tree: ast.Module, call: ast.Call, param: str) -> str | None:
    """The key (a string constant, as source) that the other calls of the same helper as `call` in the module `tree`
    give most often in a dict literal for the keyword `param`; None where none gives one."""
    same, counts = ast.dump(call.func), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.dump(node.func) == same:
            for k in node.keywords:
                if k.arg == param and isinstance(k.value, ast.Dict):
                    for item in k.value.keys:
                        if isinstance(item, ast.Constant) and isinstance(item.value, str):
                            text = repr(item.value)
                            counts[text] = counts.get(text, 0) + 1
    return min(counts, key=lambda t: (-counts[t], t)) if counts else None
