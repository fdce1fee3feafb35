"""Where a repository uses a name, read from its parsed files: inside a function body (it runs when the function is
called, and the reference run's coverage says by which tests) or outside one (at import or collection time, when the
file is imported). The removed-method and removed-base attributions share it (`attribution.py`, `base_removal.py`).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from trajfactory.synthesizers.swe.ast_edits import _DEFS

PURE_DECORATORS = frozenset({"property", "staticmethod", "classmethod"})
PROPERTY_PARTS = frozenset({"setter", "getter", "deleter"})
ANNOTATION_BLIND = frozenset({"overload", "abstractmethod"})
"""Decorators that never read the annotations of what they decorate (nor do `property`, `staticmethod`,
`classmethod` and a property's `setter` / `getter` / `deleter`)."""


def _decorator_ok(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in PURE_DECORATORS
    return isinstance(node, ast.Attribute) and node.attr in PROPERTY_PARTS and isinstance(node.value, ast.Name)


@dataclass
class _Found:
    ranges: dict[str, set[tuple[int, int]]] = field(default_factory=dict)
    subclasses: list[tuple[str, ast.ClassDef]] = field(default_factory=list)
    aliases: set[str] = field(default_factory=set)
    import_time: dict[str, set[tuple[int, int]]] = field(default_factory=dict)
    attributes_only: bool = False
    """Match `x.name` only, not a bare `name` (a method is reached through an attribute; a bare name elsewhere is
    its own scope's)."""
    strings: bool = False
    """Match a string literal `"name"` too (`getattr(x, "name")`, `hasattr`, a name in a parametrize list)."""


def _named(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def _scan(node: ast.AST, names: set[str], runtime: bool, stmt: ast.AST, rel: str, found: _Found) -> None:
    """Record where `node` names one of `names`: a line range when it runs inside a function body (`runtime`), a
    subclass or an import alias, or else an import-time use."""
    if isinstance(node, (ast.stmt, ast.excepthandler)):
        stmt = node
    name = node.attr if isinstance(node, ast.Attribute) else None if found.attributes_only else _named(node)
    if found.strings and isinstance(node, ast.Constant) and isinstance(node.value, str):
        name = node.value
    if name in names:
        # the statement's first line (coverage's key) to the name's last; a decorator sits above its `def` line
        span = (min(stmt.lineno, node.lineno), max(stmt.lineno, node.end_lineno or node.lineno))
        (found.ranges if runtime else found.import_time).setdefault(rel, set()).add(span)
    elif isinstance(node, ast.alias):
        short = node.name.rpartition(".")[2]
        if short in names and node.asname and node.asname != short:
            found.aliases.add(node.asname)  # `from m import X as Y`: Y is X
        return
    if isinstance(node, ast.ClassDef):
        bases = [b for b in node.bases if _named(b) in names]
        if bases and not runtime and node.name not in names:
            found.subclasses.append((rel, node))
        for part in [*node.decorator_list, *(k.value for k in node.keywords),
                     *(b for b in node.bases if runtime or not any(b is x for x in bases))]:
            _scan(part, names, runtime, stmt, rel, found)
        for child in node.body:
            _scan(child, names, runtime, child, rel, found)
        return
    if isinstance(node, _DEFS):
        args = node.args
        parts = [*node.decorator_list, *args.defaults, *(d for d in args.kw_defaults if d is not None)]
        if not all(_decorator_ok(d) or _named(d) in ANNOTATION_BLIND for d in node.decorator_list):
            annotated = (*args.posonlyargs, *args.args, args.vararg, *args.kwonlyargs, args.kwarg)
            parts += [a.annotation for a in annotated if a is not None and a.annotation is not None]
            parts += [node.returns] if node.returns is not None else []
        for part in parts:
            _scan(part, names, runtime, stmt, rel, found)
        for child in node.body:
            _scan(child, names, True, child, rel, found)
        return
    if isinstance(node, ast.Lambda):
        for part in (*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)):
            _scan(part, names, runtime, stmt, rel, found)
        _scan(node.body, names, True, stmt, rel, found)
        return
    for child in ast.iter_child_nodes(node):
        _scan(child, names, runtime, stmt, rel, found)


def _spans(by_file: dict[str, set[tuple[int, int]]]) -> dict[str, list[list[int]]]:
    return {rel: [list(span) for span in sorted(spans)] for rel, spans in sorted(by_file.items()) if spans}
