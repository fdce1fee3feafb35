"""Unified diffs of one file that `git apply` takes, with the lines of the old text they change.

Written here rather than with difflib's `unified_diff` because the changed-line numbers feed
coverage-based test selection, and the common head and tail are trimmed first so large files diff fast.
"""

from __future__ import annotations

from difflib import SequenceMatcher


def line_list(text: str) -> list[str]:
    """Lines with their endings; only \\n ends a line, as for `ast` and git."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def _range(start: int, stop: int) -> str:
    length = stop - start
    if length == 1:
        return str(start + 1)
    return f"{start if length == 0 else start + 1},{length}"


def _opcodes(a: list[str], b: list[str]) -> list[tuple[str, int, int, int, int]]:
    # Trim the common head and tail so the matcher only sees the changed middle (fast on big files).
    p, shortest = 0, min(len(a), len(b))
    while p < shortest and a[p] == b[p]:
        p += 1
    s = 0
    while s < shortest - p and a[-1 - s] == b[-1 - s]:
        s += 1
    middle = SequenceMatcher(None, a[p:len(a) - s], b[p:len(b) - s], autojunk=False).get_opcodes()
    codes = [("equal", 0, p, 0, p)] + [(tag, i1 + p, i2 + p, j1 + p, j2 + p) for tag, i1, i2, j1, j2 in middle]
    codes.append(("equal", len(a) - s, len(a), len(b) - s, len(b)))
    merged: list[tuple[str, int, int, int, int]] = []
    for code in codes:
        if code[1] == code[2] and code[3] == code[4]:
            continue
        if merged and merged[-1][0] == code[0] == "equal":
            merged[-1] = ("equal", merged[-1][1], code[2], merged[-1][3], code[4])
        else:
            merged.append(code)
    return merged


def _hunks(codes: list[tuple[str, int, int, int, int]], n: int):
    """Group opcodes into hunks with `n` lines of context (difflib's grouping)."""
    if codes and codes[0][0] == "equal":
        tag, i1, i2, j1, j2 = codes[0]
        codes[0] = (tag, max(i1, i2 - n), i2, max(j1, j2 - n), j2)
    if codes and codes[-1][0] == "equal":
        tag, i1, i2, j1, j2 = codes[-1]
        codes[-1] = (tag, i1, min(i2, i1 + n), j1, min(j2, j1 + n))
    group: list[tuple[str, int, int, int, int]] = []
    for tag, i1, i2, j1, j2 in codes:
        if tag == "equal" and i2 - i1 > 2 * n:
            group.append((tag, i1, i1 + n, j1, j1 + n))
            yield group
            group, i1, j1 = [], i2 - n, j2 - n
        group.append((tag, i1, i2, j1, j2))
    if group and not (len(group) == 1 and group[0][0] == "equal"):
        yield group


def unified_diff(file: str, old: str, new: str, context: int = 3) -> tuple[str, list[int]]:
    """A `git apply`-able diff of one file, and the 1-based lines of `old` it removes or modifies.

    A pure insertion counts the line before it (line 1 at the top of the file).
    """
    a, b = line_list(old), line_list(new)
    codes = _opcodes(a, b)
    changed: set[int] = set()
    out = [f"diff --git a/{file} b/{file}\n", f"--- a/{file}\n", f"+++ b/{file}\n"]

    def emit(prefix: str, line: str) -> None:
        out.append(prefix + line if line.endswith("\n") else f"{prefix}{line}\n\\ No newline at end of file\n")

    for group in _hunks(codes, context):
        first, last = group[0], group[-1]
        out.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@\n")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                for line in a[i1:i2]:
                    emit(" ", line)
                continue
            changed.update(range(i1 + 1, i2 + 1) if i2 > i1 else [max(i1, 1)])
            for line in a[i1:i2]:
                emit("-", line)
            for line in b[j1:j2]:
                emit("+", line)
    return "".join(out), sorted(changed)
