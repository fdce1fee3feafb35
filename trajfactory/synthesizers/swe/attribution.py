"""Where coverage can tell which tests a class-level candidate reaches: a removed method's body, or none at all.

A function-level change is attributed to the tests that ran its function (`validate.select_tests`). A class-level
change is in general not: a removed base class breaks every `raise` of an exception class and every `isinstance`
check, and a reordered class body changes what its decorators see. Removing one method is the exception. After
the removal a call of the method fails (or reaches an inherited one), and every test that called it ran its body in
the reference run. So the tests to run are the ones whose coverage contexts include the body's lines, unless the
method can be noticed without running its body:

- by its name: a reference to the name in the class's own body (`alias = name`, `@name.setter`: the whole suite),
  an attribute reference `x.name` outside function bodies (`Graph.name.__doc__`, a parametrize list of methods)
  that the reference run executed (its lines are kept as `import_time` and looked up in the reference run's
  coverage, as a removed base's are, `base_removal.py`: the whole suite), or a string literal naming it
  (`hasattr(x, "name")`, `getattr`): then the tests that ran a line naming it run too (`_uses`). A bare name
  anywhere else cannot reach the method (a class body's names are not visible outside it, nor in a subclass's
  body), and a use in a file no test imports (the docs' `conf.py`, an example script) never runs;
- by what defining it does: a decorator other than `property` / `staticmethod` / `classmethod` / a property's
  `setter`, `getter` or `deleter` (a cache, a registry, `abstractmethod`), a class decorator or metaclass that sees
  the class body (`dataclass`, `total_ordering`), `__eq__` (which also sets `__hash__`), the hooks Python runs at
  class creation or collection (`__init_subclass__`, `__set_name__`, `__class_getitem__`, `__mro_entries__`) and
  `__del__` (run by the collector in whichever test happens to be running);
- by a call that runs no body line: a generator or coroutine method (calling it only makes the iterator), and a
  body with no statement coverage records (only a docstring, `pass` or `...`). These are attributed by their call
  sites instead: a test reaches a method only by naming it, as `x.name` or as a string, so the tests that ran a
  line naming it inside a function body (or the body, for a generator iterated) are the ones that can notice it
  is gone (`_uses`), unless it is a dunder method Python uses without naming it (`for x in obj`, `a + b`, an ABC's
  `isinstance` check).

Reordering a class's methods changes nothing a test can run into unless the class body itself sees the order: two
definitions of one name (the later wins), a class-level reference to a method (`@x.setter`, `alias = name`), a
decorator, default or annotation that calls something as the class is defined, or a class decorator or metaclass.
Without those, the methods are the same functions under the same names, and the candidate needs no test run: it is
judged `no_fail_to_pass` with that reason (only `vars(cls)` order and line numbers differ).

Where the reading cannot follow, the whole suite runs, with the reason recorded in the candidate's params. The
repository facts (string literals, import-time references, parsed files) are read once per repository
(`References.scan`).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from trajfactory.synthesizers.swe.ast_edits import _DEFS
from trajfactory.synthesizers.swe.entities import python_files
from trajfactory.synthesizers.swe.name_uses import _decorator_ok, _Found, _scan, _spans
from trajfactory.runtime import parse_python

OPAQUE_METHODS = frozenset({"__eq__", "__del__", "__init_subclass__", "__set_name__", "__class_getitem__",
                            "__mro_entries__"})
NOT_THE_PROJECT = frozenset({"build", "dist", "site-packages", "node_modules", "__pycache__", "venv", "virtualenv"})
"""Directories scanned for nothing: build output and environments (tests, docs and examples are scanned)."""
_SCOPES = _DEFS + (ast.Lambda,)


@dataclass
class References:
    """Names a repository can reach without running a function body that uses them."""

    strings: set[str] = field(default_factory=set)
    """Every string literal that is an identifier, in any Python file (tests included), except the names listed in
    a module's `__all__` (which only say what `import *` binds)."""
    import_time: dict[str, dict[str, set[tuple[int, int]]]] = field(default_factory=dict)
    """Attribute names referenced outside function bodies (`x.name`, run at import or collection time if the file
    is imported): name -> repository-relative path -> the referencing statements' line spans."""
    unreadable: list[str] = field(default_factory=list)
    trees: dict[str, ast.Module] = field(default_factory=dict)
    """Repository-relative path -> its parsed module (`removed_base` looks for every mention of a class)."""
    classes: dict[str, list[ast.ClassDef]] = field(default_factory=dict)
    """Class name -> the project's classes of that name."""

    @classmethod
    def scan(cls, root: str | Path) -> "References":
        refs = cls()
        for rel in python_files(root, NOT_THE_PROJECT):
            try:
                refs.add(parse_python((Path(root) / rel).read_bytes()), rel)
            except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
                refs.unreadable.append(rel)
        return refs

    def add(self, tree: ast.Module, rel: str = "") -> None:
        listed = {id(n) for stmt in tree.body if _declares_all(stmt) for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier() \
                    and id(node) not in listed:
                self.strings.add(node.value)
            elif isinstance(node, ast.ClassDef):
                self.classes.setdefault(node.name, []).append(node)
        self._import_time(tree, rel, tree)
        if rel:
            self.trees[rel] = tree

    def _import_time(self, node: ast.AST, rel: str, stmt: ast.AST) -> None:
        """Record where `node` references an attribute when it runs, not descending into bodies that run later:
        the span from its statement's first line (coverage's key; a decorator sits above its `def` line) to the
        reference's last."""
        if isinstance(node, (ast.stmt, ast.excepthandler)):
            stmt = node
        if isinstance(node, ast.Attribute):
            start = min(getattr(stmt, "lineno", node.lineno), node.lineno)
            end = max(getattr(stmt, "lineno", node.lineno), node.end_lineno or node.lineno)
            self.import_time.setdefault(node.attr, {}).setdefault(rel, set()).add((start, end))
        if isinstance(node, _DEFS):
            for part in _definition_parts(node):
                self._import_time(part, rel, stmt)
            return
        if isinstance(node, ast.Lambda):
            for part in (*node.args.defaults, *node.args.kw_defaults):
                if part is not None:
                    self._import_time(part, rel, stmt)
            return
        for child in ast.iter_child_nodes(node):
            self._import_time(child, rel, stmt)


def _declares_all(stmt: ast.stmt) -> bool:
    """`__all__ = [...]`, `__all__ += [...]` or `__all__.extend([...])` / `.append(...)` at module level."""
    if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        return any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets)
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    return isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) \
        and isinstance(call.func.value, ast.Name) and call.func.value.id == "__all__"


def _definition_parts(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.expr]:
    """What runs when a `def` does: its decorators, default values and annotations (not its body)."""
    args = fn.args
    annotated = (*args.posonlyargs, *args.args, args.vararg, *args.kwonlyargs, args.kwarg)
    parts = [*fn.decorator_list, *args.defaults, *args.kw_defaults, fn.returns,
             *(a.annotation for a in annotated if a is not None)]
    return [p for p in parts if p is not None]


def _runs_nothing(body: list[ast.stmt]) -> bool:
    """Whether coverage records no line of this body when it runs (a docstring, `pass`, `...`)."""
    return all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
               for s in body)


def _lazy(method: ast.AST) -> bool:
    """A generator or coroutine: calling it runs none of its body."""
    if isinstance(method, ast.AsyncFunctionDef):
        return True
    stack = list(method.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom, ast.Await)):
            return True
        if not isinstance(node, _SCOPES + (ast.ClassDef,)):
            stack.extend(ast.iter_child_nodes(node))
    return False


def removed_method(cls: ast.ClassDef, method: ast.FunctionDef | ast.AsyncFunctionDef,
                   refs: References | None, file: str | None = None) -> dict:
    """The attribution of removing `method` from `cls` (defined in `file`): {"lines": [first, last]} (the body's
    lines in the original file) and, where an attribute reference to its name sits outside function bodies,
    {"import_time": {path: [[first, last], ...]}} (`validate.select_tests` runs the whole suite when the reference
    run executed one); {"refs": {path: [[first, last], ...]}, "import_time": ...} for a method a test may notice
    without running its body (`_uses`); or {"full": reason} when the reading cannot follow how tests notice it."""
    name = method.name

    def full(reason: str) -> dict:
        return {"full": reason}

    if refs is None:
        return full("the repository's references were not read")
    if name in OPAQUE_METHODS:
        return full(f"`{name}` acts without being called")
    if cls.decorator_list or any(k.arg == "metaclass" for k in cls.keywords):
        return full(f"class `{cls.name}` has a class decorator or metaclass that sees its body")
    if not all(_decorator_ok(d) for d in method.decorator_list):
        return full(f"`{name}` has a decorator that acts when the class is defined")
    bound, loaded, _ = _class_level(cls)
    if name in bound | loaded:
        return full(f"the class body refers to `{name}` while it runs")
    lines = [method.body[0].lineno, method.end_lineno or method.body[0].lineno]
    silent = ("is a generator or coroutine: a call runs none of its body" if _lazy(method)
              else "has a body with no line coverage records" if _runs_nothing(method.body) else "")
    named = name in refs.strings
    if (silent or named) and name.startswith("__") and name.endswith("__"):
        # Python calls it for an operator or a protocol, and an ABC's isinstance check looks for it, unnamed
        return full(f"`{name}` {silent}, and Python uses it without naming it" if silent else
                    f"the string {name!r} appears in the repository, and Python uses `{name}` without naming it")
    if silent or named:
        if file is None:
            return full(f"`{name}` {silent}" if silent else f"the string {name!r} appears in the repository")
        return _uses(name, file, lines, refs)
    out: dict = {"lines": lines}
    if early := refs.import_time.get(name):
        out["import_time"] = _spans(early)
    return out


def _uses(name: str, file: str, lines: list[int], refs: References) -> dict:
    """A removed method that a test may notice without running its body: a call runs none of it (a generator, a
    body of only a docstring), or its name is a string somewhere (`hasattr(x, "name")`, `getattr`). A test reaches
    a method only by naming it, as an attribute `x.name` or as a string, so the tests to run are the ones that ran
    a line naming it inside a function body, and the ones that ran its body (a generator iterated); a use outside
    function bodies that the reference run executed (a module's table of names, a parametrize list) sends it to the
    whole suite (`import_time`). Names a module lists in `__all__` only say what `import *` binds."""
    found = _Found(attributes_only=True, strings=True)
    for rel, tree in refs.trees.items():
        try:
            for stmt in tree.body:
                if not _declares_all(stmt):
                    _scan(stmt, {name}, False, stmt, rel, found)
        except RecursionError:
            return {"full": f"{rel} is nested too deeply to read"}
    found.ranges.setdefault(file, set()).add((lines[0], lines[1]))
    return {"refs": _spans(found.ranges), "import_time": _spans(found.import_time)}


def _class_level(cls: ast.ClassDef) -> tuple[set[str], set[str], bool]:
    """What runs while the class body does: the names it binds outside method definitions, the names it loads, and
    whether it calls anything (decorators, defaults, annotations and class-level statements; method bodies excluded)."""
    bound: set[str] = set()
    loaded: set[str] = set()
    calls = False
    parts: list[ast.AST] = []
    for stmt in cls.body:
        if isinstance(stmt, _DEFS):
            parts += _definition_parts(stmt)
        else:
            parts.append(stmt)
    for part in parts:
        for node in ast.walk(part):
            if isinstance(node, ast.Name):
                (bound if isinstance(node.ctx, ast.Store) else loaded).add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, ast.alias):
                bound.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, (ast.Call, ast.NamedExpr, ast.Yield, ast.YieldFrom, ast.Await)):
                calls = True
    return bound, loaded, calls


def shuffled_methods(cls: ast.ClassDef) -> dict:
    """The attribution of reordering `cls`'s methods: {"none": reason} when nothing in the class body sees the
    order, else {"full": reason}."""
    names = [s.name for s in cls.body if isinstance(s, _DEFS)]
    if len(set(names)) < len(names):
        return {"full": "two methods share a name, and the later definition wins"}
    if cls.decorator_list or cls.keywords:
        return {"full": f"class `{cls.name}` has a class decorator or class keywords that see its body"}
    if not all(_decorator_ok(d) for s in cls.body if isinstance(s, _DEFS) for d in s.decorator_list):
        return {"full": "a method has a decorator that acts when the class is defined"}
    bound, loaded, calls = _class_level(cls)
    if (clash := sorted(set(names) & (bound | loaded))):
        return {"full": f"the class body binds or refers to {', '.join(clash[:3])} while it runs"}
    if calls:
        return {"full": "the class body calls something while it runs (a default, an annotation, a statement)"}
    return {"none": "reordering the methods changes no behaviour: no two share a name, nothing in the class body "
                    "refers to them, and no decorator, default or metaclass sees the order"}
