"""SWE-smith's thirteen procedural bug families, as seeded AST mutations of one entity.

A family lists the sites of an entity where it applies (`applies`), and `apply(node, rng)` picks one
and returns a `Mutation`: the mutated copy of the entity plus source edits that realise it, most
minimal first. Turning edits into text (and checking them) is `procedural.py`'s job.
"""

from __future__ import annotations

import ast
import copy
import random
from typing import Any

from trajfactory.synthesizers.swe.ast_edits import (
    _DEFS,
    _TRY,
    Cut,
    Edit,
    Header,
    Mutation,
    TokenEdit,
    _bodies,
    _clone,
    _end,
    _is_docstring,
    _nodes,
    _permute,
    _same,
    _start,
)


class Family:
    name: str = ""
    scope: str = "function"

    def accepts(self, node: ast.AST) -> bool:
        return isinstance(node, ast.ClassDef) if self.scope == "class" else isinstance(node, _DEFS)

    def sites(self, node: ast.AST) -> list[Any]:
        raise NotImplementedError

    def applies(self, node: ast.AST) -> bool:
        return self.accepts(node) and bool(self.sites(node))

    def apply(self, node: ast.AST, rng: random.Random, sites: list[Any] | None = None) -> Mutation | None:
        """A seeded mutation at one of the sites (pass `sites` from `sites(node)` to skip the search)."""
        if sites is None:
            sites = self.sites(node) if self.accepts(node) else []
        return self.mutate(node, rng.choice(sites), rng) if sites else None

    def mutate(self, node: ast.AST, site: Any, rng: random.Random) -> Mutation:
        raise NotImplementedError


def _remove_statement(root: ast.AST, owner: ast.AST, name: str, index: int, params: dict) -> Mutation:
    tree, twin = _clone(root)
    old = getattr(owner, name)[index]
    body = getattr(twin(owner), name)
    del body[index]
    new: list[ast.AST] = []
    elif_branch = isinstance(owner, ast.If) and name == "orelse" and isinstance(old, ast.If)
    if not body and not elif_branch:  # a block may not be empty; a dropped `elif` just ends the chain
        body.append(ast.Pass())
        new = body[:]
    alternatives = [[Edit([old], new)]]
    if elif_branch:  # written `else:` + `if`: cut from the end of the if-body through the nested if
        alternatives.append([Cut(_end(owner.body[-1]), _end(old))])
    return Mutation(tree, alternatives, {"lineno": old.lineno, "node": type(old).__name__, **params})


class RemoveStatements(Family):
    """Delete one statement of the given kinds (`pass` stands in for the last one of a block)."""

    def __init__(self, name: str, *kinds: type):
        self.name, self.kinds = name, kinds

    def sites(self, node):
        return [(o, f, i) for o, f, body in _bodies(node) for i, s in enumerate(body)
                if isinstance(s, self.kinds) and not (isinstance(s, ast.AnnAssign) and s.value is None)]

    def mutate(self, node, site, rng):
        return _remove_statement(node, *site, {})


# ---------------------------------------------------------------- class families


class RemoveBaseClass(Family):
    name, scope = "remove_base_class", "class"

    def sites(self, node):
        return [i for i, b in enumerate(node.bases) if not (isinstance(b, ast.Name) and b.id == "object")]

    def mutate(self, node, index, rng):
        base = node.bases[index]
        tree = copy.copy(node)  # class families only re-list children, so a shallow copy will do
        tree.bases = [b for b in node.bases if b is not base]
        items = sorted(node.bases + node.keywords, key=_start)
        k = items.index(base)
        cut = Cut(_start(base), _start(items[k + 1])) if k + 1 < len(items) else (
            Cut(_end(items[k - 1]), _end(base)) if k else Cut(_start(base), _end(base)))
        header = Header(node, tree)
        alternatives = [[header], [cut]] if len(items) == 1 else [[cut], [header]]
        return Mutation(tree, alternatives, {"base": ast.unparse(base)})


class RemoveMethods(Family):
    name, scope = "remove_methods", "class"

    def sites(self, node):
        return [i for i, s in enumerate(node.body) if isinstance(s, _DEFS) and s.name != "__init__"]

    def mutate(self, node, index, rng):
        method = node.body[index]
        tree = copy.copy(node)
        tree.body = [s for s in node.body if s is not method] or [ast.Pass()]
        new = [] if len(node.body) > 1 else tree.body
        return Mutation(tree, [[Edit([method], new)]], {"lineno": method.lineno, "method": method.name})


class ShuffleMethods(Family):
    name, scope = "shuffle_methods", "class"

    def sites(self, node):
        slots = [i for i, s in enumerate(node.body) if isinstance(s, _DEFS)]
        return [tuple(slots)] if len(slots) >= 2 else []

    def mutate(self, node, slots, rng):
        order = _permute(list(slots), rng)
        methods = [node.body[i] for i in slots]
        tree = copy.copy(node)
        tree.body = list(node.body)
        for slot, j in zip(slots, order):
            tree.body[slot] = methods[j]
        edits = [Edit([methods[i]], [methods[j]]) for i, j in enumerate(order) if i != j]
        return Mutation(tree, [edits], {"order": [methods[j].name for j in order]})


# ---------------------------------------------------------------- statement families


class InvertIfElse(Family):
    name = "invert_if_else"

    def sites(self, node):
        # An `elif` is an If whose orelse is a lone If: swapping it would rewrite the chain.
        return [n for n in _nodes(node) if isinstance(n, ast.If) and n.orelse
                and not (len(n.orelse) == 1 and isinstance(n.orelse[0], ast.If))
                and list(map(ast.dump, n.body)) != list(map(ast.dump, n.orelse))]

    def mutate(self, node, site, rng):
        tree, twin = _clone(node)
        copy_if = twin(site)
        copy_if.body, copy_if.orelse = copy_if.orelse, copy_if.body
        swap = [Edit(list(site.body), list(site.orelse)), Edit(list(site.orelse), list(site.body))]
        return Mutation(tree, [swap, [Edit([site], [copy_if])]], {"lineno": site.lineno})


_FIXED = (ast.Return, ast.Raise, ast.Break, ast.Continue, ast.Pass, ast.Global, ast.Nonlocal)


class ShuffleStatements(Family):
    """Reorder a window of 2-4 consecutive statements that do not end control flow."""

    name = "shuffle_statements"

    def sites(self, node):
        sites = []
        for owner, name, body in _bodies(node):
            run: list[int] = []
            for i, stmt in enumerate(body + [None]):
                movable = stmt is not None and not isinstance(stmt, _FIXED) and not _is_docstring(owner, i, stmt)
                if movable:
                    run.append(i)
                    continue
                if len(run) >= 2 and len({ast.dump(body[j]) for j in run}) > 1:
                    sites.append((owner, name, run[0], len(run)))
                run = []
        return sites

    def mutate(self, node, site, rng):
        owner, name, first, length = site
        size = rng.randint(2, min(4, length))
        lo = first + rng.randint(0, length - size)
        old = getattr(owner, name)[lo:lo + size]
        order = _permute(old, rng)
        tree, twin = _clone(node)
        getattr(twin(owner), name)[lo:lo + size] = [twin(old[j]) for j in order]
        verbatim = [Edit(old, [old[j] for j in order])]
        unparsed = [Edit(old, [twin(old[j]) for j in order])]
        return Mutation(tree, [verbatim, unparsed], {"lineno": old[0].lineno, "order": order})


class RemoveWrapper(RemoveStatements):
    """Replace a `with` or `try` statement by its body."""

    def __init__(self):
        super().__init__("remove_wrapper", ast.With, ast.AsyncWith, *_TRY)

    def mutate(self, node, site, rng):
        owner, name, index = site
        tree, twin = _clone(node)
        old = getattr(owner, name)[index]
        inner = [twin(s) for s in old.body]
        getattr(twin(owner), name)[index:index + 1] = inner
        return Mutation(tree, [[Edit([old], list(old.body))], [Edit([old], inner)]],
                        {"lineno": old.lineno, "node": type(old).__name__})


# ---------------------------------------------------------------- expression families


def _chain(node: ast.AST) -> tuple[list[ast.AST], list[Any]]:
    """Operands and operators of a BoolOp, a multi-op Compare, or a left-nested BinOp chain."""
    if isinstance(node, ast.BoolOp):
        return list(node.values), [node.op] * (len(node.values) - 1)
    if isinstance(node, ast.Compare):
        return [node.left, *node.comparators], list(node.ops)
    if isinstance(node, ast.BinOp):
        operands, ops = [node.right], [node.op]
        while isinstance(node.left, ast.BinOp):
            node = node.left
            operands.append(node.right)
            ops.append(node.op)
        return [node.left, *reversed(operands)], list(reversed(ops))
    raise TypeError(f"not an operator chain: {type(node).__name__}")


def _rebuild(node: ast.AST, operands: list[ast.AST], ops: list[Any]) -> ast.AST:
    if isinstance(node, ast.BoolOp):
        return ast.BoolOp(op=node.op, values=operands)
    if isinstance(node, ast.Compare):
        return ast.Compare(left=operands[0], ops=ops, comparators=operands[1:])
    expr = operands[0]
    for op, right in zip(ops, operands[1:]):
        expr = ast.BinOp(left=expr, op=op, right=right)
    return expr


class BreakChains(Family):
    name = "break_chains"

    def sites(self, node):
        inner = {id(n.left) for n in _nodes(node) if isinstance(n, ast.BinOp)}
        return [n for n in _nodes(node) if isinstance(n, (ast.BoolOp, ast.Compare, ast.BinOp))
                and id(n) not in inner and len(_chain(n)[0]) >= 3]

    def mutate(self, node, site, rng):
        operands, ops = _chain(site)
        k = rng.randrange(len(operands))
        tree, twin = _clone(node)
        kept = [twin(o) for i, o in enumerate(operands) if i != k]
        kept_ops = [op for i, op in enumerate(ops) if i != (k - 1 if k else 0)]
        target = twin(site)  # 3+ operands less one still make a node of the same type: refill it
        target.__dict__.update(vars(_rebuild(site, kept, kept_ops)))
        cut = Cut(_start(operands[0]), _start(operands[1])) if k == 0 else Cut(_end(operands[k - 1]), _end(operands[k]))
        return Mutation(tree, [[cut], [Edit([site], [target])]],
                        {"lineno": site.lineno, "node": type(site).__name__, "dropped": k, "operands": len(operands)})


class ChangeConstants(Family):
    name = "change_constants"

    def sites(self, node):
        return [n for n in _nodes(node) if isinstance(n, ast.Constant) and type(n.value) in (int, float)
                and n.value == n.value and abs(n.value) != float("inf")]

    def mutate(self, node, site, rng):
        deltas = [d for d in (-1, 1) if site.value + d >= 0]  # a negative literal would parse as a UnaryOp
        value = site.value + rng.choice(deltas)
        tree, twin = _clone(node)
        twin(site).value = value
        return Mutation(tree, [[Edit([site], [twin(site)])]], {"lineno": site.lineno, "from": site.value, "to": value})


_BIN = {
    ast.Add: ("+", ["-"]), ast.Sub: ("-", ["+"]), ast.Mult: ("*", ["/", "//", "**"]),
    ast.Div: ("/", ["*", "//"]), ast.FloorDiv: ("//", ["/", "%"]), ast.Mod: ("%", ["//"]),
    ast.Pow: ("**", ["*"]), ast.LShift: ("<<", [">>"]), ast.RShift: (">>", ["<<"]),
    ast.BitOr: ("|", ["&", "^"]), ast.BitAnd: ("&", ["|"]), ast.BitXor: ("^", ["|", "&"]),
}
_CMP = {
    ast.Lt: ("<", ["<=", ">"]), ast.LtE: ("<=", ["<", ">="]), ast.Gt: (">", [">=", "<"]),
    ast.GtE: (">=", [">", "<="]), ast.Eq: ("==", ["!="]), ast.NotEq: ("!=", ["=="]),
    ast.Is: ("is", ["is not"]), ast.IsNot: ("is not", ["is"]), ast.In: ("in", ["not in"]),
    ast.NotIn: ("not in", ["in"]),
}
_BOOL = {ast.And: ("and", ["or"]), ast.Or: ("or", ["and"])}
_BY_TEXT = {text: cls for table in (_BIN, _CMP, _BOOL) for cls, (text, _) in table.items()}


def _pattern(text: str) -> str:
    """Regex for an operator's token; words need boundaries, `is not` any inner spacing."""
    if text[0].isalpha():
        return r"\b" + r"\s+".join(text.split()) + r"\b"
    return r"(?<![*/<>=!])" + "".join("\\" + c for c in text) + r"(?![*/<>=])"


class ChangeOperator(Family):
    name = "change_operator"

    def sites(self, node):
        sites = []
        for n in _nodes(node):
            if isinstance(n, (ast.BinOp, ast.AugAssign)) and type(n.op) in _BIN:
                sites.append((n, 0))
            elif isinstance(n, ast.BoolOp):
                sites.append((n, 0))
            elif isinstance(n, ast.Compare):
                sites.extend((n, i) for i, op in enumerate(n.ops) if type(op) in _CMP)
        return sites

    def mutate(self, node, site, rng):
        n, i = site
        tree, twin = _clone(node)
        copy_n = twin(n)
        augmented = "=" if isinstance(n, ast.AugAssign) else ""
        if isinstance(n, ast.Compare):
            (old, choices), pairs = _CMP[type(n.ops[i])], [([n.left, *n.comparators][i], n.comparators[i])]
        elif isinstance(n, ast.BoolOp):
            (old, choices), pairs = _BOOL[type(n.op)], list(zip(n.values, n.values[1:]))
        else:
            (old, choices), pairs = _BIN[type(n.op)], [(n.target, n.value) if augmented else (n.left, n.right)]
        new = rng.choice(choices)
        if isinstance(n, ast.Compare):
            copy_n.ops[i] = _BY_TEXT[new]()
        else:
            copy_n.op = _BY_TEXT[new]()
        tokens = [TokenEdit(a, b, _pattern(old + augmented), new + augmented) for a, b in pairs]
        return Mutation(tree, [tokens, [Edit([n], [copy_n])]],
                        {"lineno": n.lineno, "node": type(n).__name__, "from": old + augmented, "to": new + augmented})


class SwapOperands(Family):
    name = "swap_operands"

    def sites(self, node):
        sites = []
        for n in _nodes(node):
            if isinstance(n, ast.BinOp) and not _same(n.left, n.right):
                sites.append((n, n.left, n.right))
            elif isinstance(n, ast.Compare) and len(n.ops) == 1 and not _same(n.left, n.comparators[0]):
                sites.append((n, n.left, n.comparators[0]))
            elif isinstance(n, ast.BoolOp):
                sites.extend((n, a, b) for a, b in zip(n.values, n.values[1:]) if not _same(a, b))
        return sites

    def mutate(self, node, site, rng):
        n, a, b = site
        tree, twin = _clone(node)
        copy_n, ca, cb = twin(n), twin(a), twin(b)
        if isinstance(n, ast.BinOp):
            copy_n.left, copy_n.right = cb, ca
        elif isinstance(n, ast.Compare):
            copy_n.left, copy_n.comparators = cb, [ca]
        else:
            i = n.values.index(a)
            copy_n.values[i:i + 2] = [cb, ca]
        swap = [Edit([a], [b]), Edit([b], [a])]
        return Mutation(tree, [swap, [Edit([n], [copy_n])]], {"lineno": n.lineno, "node": type(n).__name__})


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        RemoveBaseClass(), RemoveMethods(), ShuffleMethods(), InvertIfElse(), ShuffleStatements(),
        RemoveStatements("remove_assignment", ast.Assign, ast.AugAssign, ast.AnnAssign),
        RemoveStatements("remove_conditional", ast.If),
        RemoveStatements("remove_loop", ast.For, ast.AsyncFor, ast.While),
        RemoveWrapper(), BreakChains(), ChangeConstants(), ChangeOperator(), SwapOperands(),
    )
}
"""The thirteen families by name, in SWE-smith's order: class families first."""
