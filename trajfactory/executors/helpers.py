"""A test's own assertion helper, read from its definition: which of its arguments it only compares for equality.

Many suites end their tests in a helper of their own whose name says nothing of what it checks (Python-Markdown's
`self.assertMarkdownRenders(source, expected)`, defined in `markdown/test_tools.py`). `mutants.py` changes a constant
argument of such a call only where the helper's definition shows that the argument is compared for equality and used
for nothing else (`compared_params`): then the value the helper compares it with does not depend on it, and the
changed constant fails the comparison wherever the original passed. A helper that only compares its `*args` as a
whole (pyflakes' `self.flakes(source, *messages)`) gets its last one given twice (`counted_varargs`), or, where the
call gives none, the item the module's other calls give most often (`donor_argument`). A helper that compares
`p or q` (sqlglot's `validate_identity(sql, write_sql=None)`) gets its `p` changed, or `p=(q,)` where the call gives
no `p` (`or_params`). One that compares each value of a dict it is given (sqlglot's `validate_all(sql, write={"spark":
"..."})`) gets the first string among that dict literal's values changed, or, where the call gives no such dict,
one with the key the module's other calls give most often and a tuple for its value (`item_params`). The rules are
in `helper_rules.py`.

`resolver` finds the definition the call reaches: a function of the test's module or one it imports from the
checkout, or a method of the test's class or of a base class of the checkout; a base it cannot read (unittest's
`TestCase`, a base from an installed package) ends the search with no helper, since that base might define the
name. `mutant_targets` puts the two together for a test module, as `mutants.spot_of` takes them.
"""

from __future__ import annotations

import ast
import posixpath
from typing import Callable

from trajfactory.executors.helper_rules import (Def, Target, defaulted_args, donor_argument, donor_key,
                                                helper_target)
from trajfactory.executors.mutant_loops import own_code
from trajfactory.executors.mutants import STOPS
from trajfactory.runtime import parse_python

Resolver = Callable[[list[str], ast.Call], "tuple[Def, bool] | None"]
_DEPTH = 6
"""How many base classes and imports deep a helper is looked for."""


def _imports(tree: ast.Module) -> dict[str, tuple[str, int, str]]:
    """The names a module imports from others: name -> (module, level, the name there)."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                out[alias.asname or alias.name] = (node.module or "", node.level, alias.name)
    return out


def binds(stmt: ast.stmt) -> set[str]:
    """The names a statement of a module or class body binds there: a definition's, an import's, an assignment's
    targets, a loop's and a `with` block's."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {a.asname or a.name.split(".")[0] for a in stmt.names}
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
        targets = [stmt.target]
    elif isinstance(stmt, (ast.With, ast.AsyncWith)):
        targets = [i.optional_vars for i in stmt.items if i.optional_vars is not None]
    else:
        targets = []
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


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

    def passing(test: list[str], expr: ast.expr) -> bool:
        """Whether the `with` item `expr` of the test at `test` enters a context manager of the checkout whose
        definition lets an exception of its block through (`lets_through`): a class's (`TempDir(prefix="t")`, its
        `__exit__` found on it or a base the checkout defines) or a `@contextmanager` function's, of the module or
        of the test's class (`self.cwd(path)`)."""
        func = expr.func if isinstance(expr, ast.Call) else None
        if isinstance(func, ast.Name) and func.id not in _local_names(tree, test):
            got = find(func.id, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef), tree, path, 0)
            if got is None:
                return False
            if isinstance(got[0], ast.ClassDef):
                leave = method(got[0], "__exit__", got[2], got[1], 0)
                return isinstance(leave, ast.FunctionDef) and lets_through(leave, exit=True)
            return isinstance(got[0], ast.FunctionDef) and lets_through(got[0], exit=False)
        if len(test) == 2 and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
                func.value.id == "self":
            classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == test[0]]
            found = method(classes[-1], func.attr, tree, path, 0) if classes else None
            return isinstance(found, ast.FunctionDef) and lets_through(found, exit=False)
        return False

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

    def origin(name: str, module: ast.Module, here: str, depth: int) -> tuple[str, str] | None:
        """Where the name `name` of `module` (the file `here`) comes from outside the checkout: (module, name) of
        its `from M import N`, followed through the checkout's own modules; None where the checkout defines it."""
        if any(name in binds(n) for n in module.body if not isinstance(n, (ast.Import, ast.ImportFrom))):
            return None
        found = _imports(module).get(name)
        if found is None or depth >= _DEPTH:
            return None
        loaded = load(found[0], found[1], here)
        if loaded is None:
            return (found[0], found[2]) if not found[1] else None
        return origin(found[2], loaded[1], loaded[0], depth + 1)

    def stops(test: list[str], call: ast.Call) -> bool:
        """Whether `call`, in the test at `test`, always raises out of the test: pytest's `fail`, `skip` or
        `xfail` (`pytest.skip(...)`, or the name imported from pytest, through the checkout's own modules as
        tabulate's `from common import skip`), or unittest's `self.fail(...)` / `self.skipTest(...)` where no class
        of the checkout defines it over."""
        func = call.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if func.value.id == "pytest":
                return func.attr in STOPS
            if func.value.id == "self" and func.attr in ("fail", "skipTest") and len(test) == 2:
                classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == test[0]]
                return bool(classes) and not isinstance(method(classes[-1], func.attr, tree, path, 0),
                                                        (ast.FunctionDef, ast.AsyncFunctionDef))
            return False
        if isinstance(func, ast.Name) and func.id in STOPS and func.id not in _local_names(tree, test):
            return origin(func.id, tree, path, 0) in {(m, func.id) for m in ("pytest", "_pytest.outcomes")}
        return False

    resolve.passing = passing
    resolve.stops = stops
    return resolve


def own_helper(tree: ast.Module, test: list[str], call: ast.Call) -> tuple[list[str], ast.FunctionDef] | None:
    """The helper of the test's own module that `call` reaches, where a copy of it in that module behaves as it does:
    (its path, its definition) for `self.check(...)` and a method of the test's own class, or `check(...)` and a
    function of the module (dateutil's `self._rrulestr_reverse_test(rule)`, networkx's `_check_augmentations(G)`).
    None for a name the module or class binds again or imports, a definition with a decorator or `async`, one that
    uses `super()` or `__class__` (bound to where it is defined), and a private name (mangled by its class)."""
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self" and \
            len(test) == 2:
        classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == test[0]]
        body, path = (classes[-1].body if classes else []), [test[0], func.attr]
    elif isinstance(func, ast.Name) and len(test) in (1, 2) and func.id not in _local_names(tree, test):
        body, path = tree.body, [func.id]
    else:
        return None
    name = path[-1]
    bound = [n for n in body if name in binds(n)]
    if len(bound) != 1 or not isinstance(bound[0], ast.FunctionDef) or bound[0].decorator_list or \
            name.startswith("__") or any(isinstance(n, ast.Name) and n.id in ("super", "__class__")
                                         for n in ast.walk(bound[0])):
        return None
    return path, bound[0]


def _returns_nothing(func: ast.FunctionDef) -> bool:
    """Whether each `return` of `func`'s own code gives nothing, `None` or `False`."""
    return all(r.value is None or isinstance(r.value, ast.Constant) and r.value.value in (None, False)
               for r in own_code(func) if isinstance(r, ast.Return))


def lets_through(func: ast.FunctionDef, exit: bool) -> bool:
    """Whether a context manager's definition lets an exception of the block it manages through: for an `__exit__`
    (`exit`), one with no decorator whose every `return` gives nothing, `None` or `False` (argcomplete's `TempDir`:
    `os.chdir(self.old_dir); shutil.rmtree(self.tmp_dir)`); for a generator function, one decorated `@contextmanager`
    alone with no `return` (which would end it quietly) and no `yield` inside a `try` that has handlers or a `with`
    block (either may swallow what is thrown in at the `yield`). Anything else may swallow it (`contextlib.suppress`,
    a manager that logs and returns True), and an assertion in its block is left alone."""
    if exit:
        return not func.decorator_list and _returns_nothing(func) and not any(
            isinstance(n, (ast.Yield, ast.YieldFrom)) for n in own_code(func))
    if [getattr(d, "attr", getattr(d, "id", None)) for d in func.decorator_list] != ["contextmanager"]:
        return False
    yields = [n for n in own_code(func) if isinstance(n, (ast.Yield, ast.YieldFrom))]
    guards = [n for n in own_code(func) if isinstance(n, (ast.With, ast.AsyncWith)) or
              isinstance(n, ast.Try) and n.handlers or type(n).__name__ == "TryStar"]
    return len(yields) == 1 and not any(isinstance(n, ast.Return) for n in own_code(func)) and not any(
        y in ast.walk(g) for g in guards for y in yields)


def mutant_targets(tree: ast.Module, path: str,
                 read: Callable[[str], str | None]) -> Callable[[list[str]], Callable[[ast.Call], Target | None]]:
    """For a test of the module `tree` (the checkout's file `path`; `read`, a file of the checkout by its path), what
    a mutant changes in a call to a helper of the project, as `mutants.spot_of` takes it: `mutant_targets(...)(["TestX",
    "test_x"])(call)`."""
    resolve = resolver(tree, path, read)

    def for_test(test: list[str], copies: bool = True) -> Callable[[ast.Call], Target | None]:
        def target(call: ast.Call) -> Target | None:
            found = resolve(test, call)
            if found is None:
                return None
            return helper_target(call, *found, donor=lambda positional: donor_argument(
                tree, call, positional, _local_names(tree, test)), key=lambda param: donor_key(tree, call, param))

        def defaulted(call: ast.Call) -> set[int]:
            found = resolve(test, call)
            return defaulted_args(call, *found) if found is not None else set()

        target.defaulted = defaulted  # what `mutants._spot` leaves alone in a helper known by its name
        target.passing = lambda expr: resolve.passing(test, expr)  # a `with` of the project's that `_spot` enters
        target.stops = lambda call: resolve.stops(test, call)  # a call that ends a `try` clause (`mutants._tried`)
        if copies:  # a helper of the module that a mutant calls a changed copy of, read with no copies of its own
            target.own = lambda call: own_helper(tree, test, call)
            target.inner = lambda path: for_test(path, copies=False)
        return target
    return for_test
