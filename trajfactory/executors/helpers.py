"""A test's own assertion helper, read from its definition: which of its arguments it only compares for equality.

Many suites end their tests in a helper of their own whose name says nothing of what it checks (Python-Markdown's
`self.assertMarkdownRenders(source, expected)`, defined in `markdown/test_tools.py`). `mutants.py` changes a constant
argument of such a call only where the helper's definition shows that the argument is compared for equality and used
for nothing else (`compared_params`): then the value the helper compares it with does not depend on it, and the
changed constant fails the comparison wherever the original passed. A helper that only compares its `*args` as a
whole (pyflakes' `self.flakes(source, *messages)`) gets its last one given twice (`counted_varargs`), or, where the
call gives none, the item the module's other calls give most often (`donor_argument`). A helper that compares
`p or q` (sqlglot's `validate_identity(sql, write_sql=None)`) gets its `p` changed, or `p=(q,)` where the call gives
no `p` (`or_params`).

`resolver` finds the definition the call reaches: a function of the test's module or one it imports from the
checkout, or a method of the test's class or of a base class of the checkout; a base it cannot read (unittest's
`TestCase`, a base from an installed package) ends the search with no helper, since that base might define the name.
"""

from __future__ import annotations

import ast
import posixpath
from typing import Callable

from trajfactory.runtime import parse_python

Def = ast.FunctionDef
Resolver = Callable[[list[str], ast.Call], "tuple[Def, bool] | None"]
Target = tuple[str, ast.expr] | tuple[str, ast.expr, str]
"""What a mutant changes in a call: (kind, the argument, the text it adds, for "add")."""

_EQUAL = ("assertEqual", "assertEquals", "assertMultiLineEqual", "assertListEqual", "assertTupleEqual",
          "assertDictEqual", "assertSequenceEqual", "assertCountEqual")
"""unittest's equality assertions: where `a` equals `b`, no value that differs from `b` by a letter or a number
equals `a` too (not `assertAlmostEqual`, whose `delta` may admit it)."""
_DEPTH = 6
"""How many base classes and imports deep a helper is looked for."""


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


def compared_params(func: Def) -> set[str]:
    """The parameters of the helper `func` that it only compares: each is read once, as one side of an equality that a
    statement of the helper's own body asserts, is never bound again, and no `return` comes before that statement (so
    a call that returned has asserted it). None for a decorated helper or a generator, whose call may not run its
    body as written."""
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
            if isinstance(side, ast.Name) and side.id in names and loads.get(side.id) == 1 and \
                    not _returns_before(func, i):
                out.add(side.id)
    return out


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


def helper_target(call: ast.Call, func: Def, bound: bool,
                  donor: Callable[[int], str | None] | None = None) -> Target | None:
    """What a mutant changes in `call` to the helper `func`, given by position (after `self` where the call is `bound`
    to an instance) or by keyword: an argument the helper only compares (`compared_params`), a constant first
    ("constant": changed), else any ("wrap": wrapped in a tuple); else, where the helper only compares its `*args`
    (`counted_varargs`), the last of them ("repeat": given twice, `mutants.mutate`), or, where the call gives none,
    one more after its last argument ("add": the expression `donor` finds for a helper with that many positional
    parameters, `donor_argument`); else None."""
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return None
    positional = [a.arg for a in [*func.args.posonlyargs, *func.args.args]][1 if bound else 0:]
    if len(call.args) > len(positional) and func.args.vararg is None:
        return None
    params = compared_params(func)
    given = [(positional[i], a) for i, a in enumerate(call.args[:len(positional)])]
    given += [(k.arg, k.value) for k in call.keywords]
    compared = [value for name, value in given if name in params]
    constant = next((v for v in compared if isinstance(v, ast.Constant) and v.lineno == v.end_lineno
                     and isinstance(v.value, (int, float, str, bytes))), None)
    if constant is not None or compared:
        return ("constant", constant) if constant is not None else ("wrap", compared[0])
    if target := _or_target(call, func, dict(given)):
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


def _imports(tree: ast.Module) -> dict[str, tuple[str, int, str]]:
    """The names a module imports from others: name -> (module, level, the name there)."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                out[alias.asname or alias.name] = (node.module or "", node.level, alias.name)
    return out


def _local_names(tree: ast.Module, test: list[str]) -> set[str]:
    """The names the test at `test` binds itself (its arguments, assignments, imports and definitions): a call to one
    of them reaches no helper of the module."""
    body: list[ast.stmt] = tree.body
    node = None
    for name in test:
        node = next((n for n in reversed(body) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                     and n.name == name), None)
        if node is None:
            return set()
        body = node.body
    args = node.args
    out = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a}
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
            out.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n is not node:
            out.add(n.name)
        elif isinstance(n, ast.alias):
            out.add(n.asname or n.name.split(".")[0])
    return out


def resolver(tree: ast.Module, path: str, read: Callable[[str], str | None]) -> Resolver:
    """Finds the helper a test of the module `tree` (the checkout's file `path`) calls: for a test at `["test_x"]` or
    `["TestX", "test_x"]` and a call `helper(...)` or `self.helper(...)`, (its definition, whether the call is bound to
    an instance), or None. `read`: a file of the checkout by its path, None where there is none."""
    modules: dict[str, ast.Module | None] = {path: tree}

    def load(name: str, level: int, here: str) -> tuple[str, ast.Module] | None:
        rel = name.replace(".", "/")
        if level:
            base = posixpath.dirname(here)
            for _ in range(level - 1):
                base = posixpath.dirname(base)
            roots = [base]
        else:
            roots = ["", "src", posixpath.dirname(here)]
        for root in roots:
            for candidate in (f"{rel}.py", f"{rel}/__init__.py") if rel else ("__init__.py",):
                file = posixpath.normpath(posixpath.join(root, candidate))
                if file.startswith("../"):
                    continue
                if file not in modules:
                    text = read(file)
                    try:
                        modules[file] = parse_python(text) if text is not None else None
                    except (SyntaxError, ValueError):
                        modules[file] = None
                if modules[file] is not None:
                    return file, modules[file]
        return None

    def find(name: str, kinds: tuple, module: ast.Module, here: str,
             depth: int) -> tuple[ast.AST, str, ast.Module] | None:
        """The top-level definition `name` of `module` (the file `here`), or the one it imports from the checkout."""
        found = [n for n in module.body if isinstance(n, kinds) and n.name == name]
        if found:
            return found[-1], here, module
        origin = _imports(module).get(name)
        if origin is None or depth >= _DEPTH or not (loaded := load(origin[0], origin[1], here)):
            return None
        return find(origin[2], kinds, loaded[1], loaded[0], depth + 1)

    def method(cls: ast.ClassDef, name: str, module: ast.Module, here: str, depth: int) -> Def | None | bool:
        """The method `name` of `cls` or of its bases, depth first; False where a base the checkout does not define
        comes first (it may define the name)."""
        own = [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
        if own:
            return own[-1] if isinstance(own[-1], ast.FunctionDef) else False
        if any(isinstance(t, ast.Name) and t.id == name for n in cls.body if isinstance(n, ast.Assign)
               for t in n.targets):
            return False
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id == "object":
                continue
            got = find(base.id, (ast.ClassDef,), module, here, depth) if isinstance(base, ast.Name) and \
                depth < _DEPTH else None
            if got is None:
                return False
            result = method(got[0], name, got[2], got[1], depth + 1)
            if result is not None:
                return result
        return None

    def resolve(test: list[str], call: ast.Call) -> tuple[Def, bool] | None:
        func = call.func
        if isinstance(func, ast.Name):
            if func.id in _local_names(tree, test):  # the test's own `check = ...` or `def check`, not the module's
                return None
            got = find(func.id, (ast.FunctionDef, ast.AsyncFunctionDef), tree, path, 0)
            return (got[0], False) if got and isinstance(got[0], ast.FunctionDef) else None
        if len(test) == 2 and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
                func.value.id == "self":
            classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == test[0]]
            found = method(classes[-1], func.attr, tree, path, 0) if classes else None
            return (found, True) if isinstance(found, ast.FunctionDef) else None
        return None

    return resolve


def mutant_targets(tree: ast.Module, path: str,
                 read: Callable[[str], str | None]) -> Callable[[list[str]], Callable[[ast.Call], Target | None]]:
    """For a test of the module `tree` (the checkout's file `path`; `read`, a file of the checkout by its path), what
    a mutant changes in a call to a helper of the project, as `mutants.spot_of` takes it: `mutant_targets(...)(["TestX",
    "test_x"])(call)`."""
    resolve = resolver(tree, path, read)

    def for_test(test: list[str]) -> Callable[[ast.Call], Target | None]:
        def target(call: ast.Call) -> Target | None:
            found = resolve(test, call)
            if found is None:
                return None
            return helper_target(call, *found, donor=lambda positional: donor_argument(
                tree, call, positional, _local_names(tree, test)))
        return target
    return for_test
