"""A mutant's text: the copy of a test changed where `mutants.spot_of` says (`mutate`)."""

from __future__ import annotations

import ast
import re
import secrets

from trajfactory.executors.mutant_loops import every
from trajfactory.executors.mutants import OPPOSITE, Spot, callable_at

_LETTERS = "abcdefghjkmnpqrstuvwxyz"
_EMPTY = ("nothing to check", "no cases", "nothing was checked", "empty", "no items", "nothing ran")
"""The message of a loop's `else` in a mutant (`Spot.guards`)."""
_COUNTERS = ("_n", "_i", "_k", "_count", "_index", "_seen", "_step", "_idx")
"""The names a mutant's counted loops take (`Spot.guards`), where the test does not use them."""


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


def _text(lines: list[str], start: int, node: ast.AST) -> str:
    """The source of `node`, on one line or several (`lines` start at line `start` of the file)."""
    raw = [lines[n - start].encode("utf-8") for n in range(node.lineno, node.end_lineno + 1)]
    if len(raw) == 1:
        return raw[0][node.col_offset:node.end_col_offset].decode("utf-8")
    return b"".join([raw[0][node.col_offset:], *raw[1:-1], raw[-1][:node.end_col_offset]]).decode("utf-8")


def _counters(copy: list[str], count: int, rng: secrets.SystemRandom) -> list[str]:
    """`count` names the definition `copy` does not use, for the loops a mutant counts (`Spot.guards`): a name bound
    in a function is local to all of it, so it must be none that the function reads."""
    text, names = "".join(copy), []
    for word in rng.sample(_COUNTERS, len(_COUNTERS)) + [f"_n{i}" for i in range(len(copy) + count)]:
        if len(names) < count and not re.search(rf"\b{word}\b", text):
            names.append(word)
    return names


def mutate(copy: list[str], start: int, spot: Spot, rng: secrets.SystemRandom) -> list[str]:
    """`copy` (the lines of a definition that starts at line `start` of its file) changed at `spot`."""
    out, node = list(copy), spot.node
    # (the name a "rename" gives the helper is new to the copy's text, and must not be a counter either)
    names = dict(zip(spot.guards, _counters([*copy, spot.text], len(spot.guards), rng)))
    for loop in sorted({*spot.guards, *spot.breaks}, key=lambda n: n.lineno):  # the outer loop first
        # lines added after the loop's end, below the spot (no line of the loop moves): a `break` that leaves it
        # after a first round that a `subTest` failed, and an `else` that fails where it ran no round; for that,
        # `for x in xs:` -> `for _n, (x) in enumerate(xs):` (the last column first)
        head, body, added = out[loop.lineno - start], out[loop.body[0].lineno - start], []
        if loop in spot.breaks:
            added.append(f"{body[:len(body) - len(body.lstrip())]}break\n")
        if loop in names:
            name, it, target = names[loop], loop.iter, loop.target
            _put(out, start, it.end_lineno, it.end_col_offset, it.end_col_offset, ")")
            _put(out, start, it.lineno, it.col_offset, it.col_offset, "enumerate(")
            _put(out, start, target.end_lineno, target.end_col_offset, target.end_col_offset, ")")
            _put(out, start, target.lineno, target.col_offset, target.col_offset, f"{name}, (")
            added.append(f"{head[:len(head) - len(head.lstrip())]}else: assert {name!r} in locals(), "
                         f"{rng.choice(_EMPTY)!r}\n")
        out[loop.end_lineno - start + 1:loop.end_lineno - start + 1] = added
    if spot.kind == "constant":
        _put(out, start, node.lineno, node.col_offset, node.end_col_offset, changed(node.value, rng))
    elif spot.kind == "negate":  # the end first: on one line, the start's columns stay right
        _put(out, start, node.end_lineno, node.end_col_offset, node.end_col_offset, ")")
        _put(out, start, node.lineno, node.col_offset, node.col_offset, "not (")
    elif spot.kind == "all":  # the loop -> `assert not all(test for target in iterable ...)`, on one line
        test, chain = every(node)
        first = out[node.lineno - start]
        loops = "".join(f" for {ast.unparse(target)} in {ast.unparse(it)}" for target, it in chain)
        out[node.lineno - start:node.end_lineno - start + 1] = [
            first[:len(first) - len(first.lstrip())] + f"assert not all({ast.unparse(test)}{loops})\n"]
    elif spot.kind == "wrap":  # `x` -> `(x,)`, the end first
        _put(out, start, node.end_lineno, node.end_col_offset, node.end_col_offset, ",)")
        _put(out, start, node.lineno, node.col_offset, node.col_offset, "(")
    elif spot.kind == "repeat":  # `f(a, x)` -> `f(a, x, x)` (the argument on one line)
        raw = out[node.lineno - start].encode("utf-8")
        _put(out, start, node.end_lineno, node.end_col_offset, node.end_col_offset,
             ", " + raw[node.col_offset:node.end_col_offset].decode("utf-8"))
    elif spot.kind == "add":  # `f(a)` -> `f(a, m.X)`
        _put(out, start, node.end_lineno, node.end_col_offset, node.end_col_offset, ", " + spot.text)
    elif spot.kind == "call":  # `self.assertRaises(E, f, a, k=b)` -> `(f)(a, k=b)`: what raised is no longer caught
        # (`self.assertRaisesRegex(E, "pattern", f, a)` -> `(f)(a)`)
        parts = [_text(out, start, a) for a in node.args[callable_at(node):]]
        parts += [f"{k.arg}={_text(out, start, k.value)}" for k in node.keywords]
        first, last = out[node.lineno - start].encode("utf-8"), out[node.end_lineno - start].encode("utf-8")
        text = f"({parts[0]})({', '.join(parts[1:])})".encode("utf-8")  # the arguments' own lines, if several
        out[node.lineno - start:node.end_lineno - start + 1] = (
            first[:node.col_offset] + text + last[node.end_col_offset:]).decode("utf-8").splitlines(keepends=True)
    elif spot.kind == "rename":  # `self.check(x)` / `check(x)` -> `self.<copy>(x)` / `<copy>(x)`
        begin = node.end_col_offset - len(node.attr) if isinstance(node, ast.Attribute) else node.col_offset
        _put(out, start, node.end_lineno, begin, node.end_col_offset, spot.text)
    elif spot.kind == "copy":
        raise ValueError("a copy's helper is written beside it: twin_source.twin_source turns it into a rename")
    elif spot.kind == "raises":  # `with pytest.raises(E) as info:` -> `if True:`
        last = node.items[0].optional_vars or node.items[0].context_expr
        if last.end_lineno == node.lineno:
            _put(out, start, node.lineno, node.col_offset, last.end_col_offset, "if True")
        else:  # a header over several lines: the rest of them blank (no line moves)
            first, header = out[node.lineno - start], node.body[0].lineno - node.lineno
            out[node.lineno - start:node.body[0].lineno - start] = [
                first[:len(first) - len(first.lstrip())] + "if True:\n"] + ["\n"] * (header - 1)
    else:
        _put(out, start, node.end_lineno, node.end_col_offset - len(node.attr), node.end_col_offset,
             OPPOSITE[node.attr])
    return out
