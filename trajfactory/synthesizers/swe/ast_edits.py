"""Source edits that realise an AST mutation (most minimal first), and the AST helpers the families share."""

from __future__ import annotations

import ast
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)
_TRY = (ast.Try, ast.TryStar) if hasattr(ast, "TryStar") else (ast.Try,)
Pos = tuple[int, int]


@dataclass
class Edit:
    """Replace the source of `old` (a run of sibling statements, or one expression) by `new`.

    A node of `new` that is one of the original nodes is copied verbatim; any other is unparsed.
    """

    old: list[ast.AST]
    new: list[ast.AST]


@dataclass
class TokenEdit:
    """Replace the one operator matching regex `pattern` between the end of `after` and the start of `before`."""

    after: ast.AST
    before: ast.AST
    pattern: str
    text: str


@dataclass
class Cut:
    """Delete the source from `start` to `end`, each a (lineno, col_offset) pair of the original."""

    start: Pos
    end: Pos


@dataclass
class Header:
    """Replace the header of class `old` (from `class` to its colon) by the header of `new`."""

    old: ast.ClassDef
    new: ast.ClassDef


SourceEdit = Edit | TokenEdit | Cut | Header


@dataclass
class Mutation:
    tree: ast.AST
    """The mutated copy of the entity node."""
    alternatives: list[list[SourceEdit]]
    """Ways to realise `tree` in the source, most minimal first."""
    params: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- helpers


def _clone(root: ast.AST) -> tuple[ast.AST, Callable[[ast.AST], ast.AST]]:
    """Deep copy of `root` and a map from each original node to its copy."""
    pairs: dict[int, ast.AST] = {}

    def dup(value: Any) -> Any:
        # Several times faster than copy.deepcopy on ASTs; leaves (str, int, None...) are immutable.
        if isinstance(value, ast.AST):
            new = value.__class__.__new__(value.__class__)
            new.__dict__.update({k: dup(v) for k, v in value.__dict__.items()})
            pairs[id(value)] = new
            return new
        return [dup(v) for v in value] if isinstance(value, list) else value

    twin = dup(root)
    return twin, lambda node: pairs[id(node)]


def _nodes(root: ast.AST):
    """Nodes under `root`, breadth first, skipping f-string internals (their positions are unreliable)."""
    todo = deque([root])
    while todo:
        node = todo.popleft()
        yield node
        if not isinstance(node, ast.JoinedStr):
            todo.extend(ast.iter_child_nodes(node))


def _bodies(root: ast.AST):
    """(owner, field, statements) for every statement list under `root`, its own body included."""
    for owner in _nodes(root):
        for name, value in ast.iter_fields(owner):
            if isinstance(value, list) and value and all(isinstance(v, ast.stmt) for v in value):
                yield owner, name, value


def _is_docstring(owner: ast.AST, index: int, stmt: ast.stmt) -> bool:
    return (
        index == 0 and isinstance(owner, (*_DEFS, ast.ClassDef, ast.Module))
        and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _start(node: ast.AST) -> Pos:
    return node.lineno, node.col_offset


def _end(node: ast.AST) -> Pos:
    return node.end_lineno, node.end_col_offset


def _same(a: ast.AST, b: ast.AST) -> bool:
    return ast.dump(a) == ast.dump(b)


def _permute(items: list, rng: random.Random) -> list[int]:
    """A random non-identity permutation of range(len(items))."""
    order = list(range(len(items)))
    while order == sorted(order):
        rng.shuffle(order)
    return order
