"""Train / validation / test splits without leakage: near-duplicates removed first, then whole groups assigned.

    kept, removed = dedup(items)                     # MinHash over the problem statement and the fix
    split_of = assign(kept, seed=0)                  # group -> split, deterministic by seed
    assert leaks(kept, split_of) == []               # no near-duplicate pair across two splits

An item is a task seen as text: its statement (problem statement, or a web task's instruction), its fix (the
changed lines of a SWE task's gold patch, a web task's state checks) and its group: the repository when a version
mines three or more, else the function the bug is in; for web tasks the site when there are three or more, else
the tutorial (an infeasible twin shares its original's tutorial, so the two always land in one split).

Similarity is the estimated Jaccard of word 3-grams (datasketch MinHash, 128 permutations, LSH at `threshold`).
- Near-duplicates: statement and fix both similar, the same problem with the same fix. Of each cluster the first
  item by id is kept; the others are removed and the clusters recorded.
- Leakage groups: groups that share any similar statement or fix are merged (ten tasks with one template
  statement go to one split). `leaks` looks for exactly such pairs across splits, so 0 is the proof.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

SPLITS = ("train", "validation", "test")
FRACTIONS = (0.8, 0.1, 0.1)
THRESHOLD = 0.8
NUM_PERM = 128
COMMON = 0.3
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Item:
    id: str
    statement: str
    fix: str
    group: str
    kind: str = "swe"
    """Near-duplicates are only looked for between items of one kind (and one feasibility, for web twins)."""


def _shingles(text: str) -> set[str]:
    words = _WORD.findall(text.lower())
    return {" ".join(words[i:i + 3]) for i in range(len(words) - 2)}


def _minhash(shingles: set[str]) -> MinHash:
    m = MinHash(num_perm=NUM_PERM, seed=1)
    m.update_batch([g.encode() for g in sorted(shingles)] or [b""])
    return m


def changed_lines(patch: str) -> str:
    """The + and - lines of a unified diff: what a fix changes, without its context."""
    return "\n".join(ln[1:] for ln in patch.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---")))


def _signatures(items: list[Item]) -> dict[str, tuple[MinHash | None, MinHash | None]]:
    """Per item, the MinHash of its statement's and its fix's telling 3-grams: boilerplate (a 3-gram in more than
    `COMMON` of the items, such as a template statement's frame) is dropped, and a text with no telling 3-gram
    left (an infeasible task's empty fix) gets None and matches nothing."""
    out: dict[str, list[MinHash | None]] = {item.id: [None, None] for item in items}
    for part in (0, 1):
        sets = {item.id: _shingles((item.statement, item.fix)[part]) for item in items}
        df: dict[str, int] = {}
        for grams in sets.values():
            for g in grams:
                df[g] = df.get(g, 0) + 1
        common = max(2, COMMON * len(items))
        for item_id, grams in sets.items():
            telling = {g for g in grams if df[g] <= common}
            out[item_id][part] = _minhash(telling) if telling else None
    return {k: (v[0], v[1]) for k, v in out.items()}


def _similar(items: list[Item], threshold: float, both: bool) -> list[tuple[str, str]]:
    """Pairs of items of one kind whose statements and (`both`) or (not `both`) fixes are near-duplicates."""
    pairs: set[tuple[str, str]] = set()
    by_kind: dict[str, list[Item]] = {}
    for item in items:
        by_kind.setdefault(item.kind, []).append(item)
    for group in by_kind.values():
        sigs = _signatures(group)
        for part in (0, 1):
            lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
            telling = [i for i in group if sigs[i.id][part] is not None]
            for item in telling:
                lsh.insert(item.id, sigs[item.id][part])
            for item in telling:
                for other in lsh.query(sigs[item.id][part]):
                    if other == item.id:
                        continue
                    a, b = sorted((item.id, other))
                    near = [sigs[a][k] is not None and sigs[b][k] is not None
                            and sigs[a][k].jaccard(sigs[b][k]) >= threshold for k in (0, 1)]
                    if all(near) if both else any(near):
                        pairs.add((a, b))
    return sorted(pairs)


def _union(ids: list[str], pairs: list[tuple[str, str]]) -> dict[str, str]:
    parent = {i: i for i in ids}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {i: root(i) for i in ids}


def dedup(items: list[Item], threshold: float = THRESHOLD) -> tuple[list[Item], list[list[str]]]:
    """The items without near-duplicates (statement and fix both similar), and the clusters that lost members
    (the kept id first, then the removed ones)."""
    roots = _union(sorted(i.id for i in items), _similar(items, threshold, both=True))
    clusters: dict[str, list[str]] = {}
    for item_id in sorted(roots):
        clusters.setdefault(roots[item_id], []).append(item_id)
    removed = {i for members in clusters.values() for i in members[1:]}
    return [i for i in items if i.id not in removed], [m for m in clusters.values() if len(m) > 1]


def groups(items: list[Item], threshold: float = THRESHOLD) -> dict[str, str]:
    """item id -> its leakage group: the item's own group, merged with every group that shares a near-duplicate
    statement or fix with it (ten tasks with one template statement land in one split)."""
    by_group: dict[str, list[str]] = {}
    for item in items:
        by_group.setdefault(item.group, []).append(item.id)
    links = [(a, b) for members in by_group.values() for a, b in zip(members, members[1:])]
    roots = _union(sorted(i.id for i in items), links + _similar(items, threshold, both=False))
    named: dict[str, str] = {}
    for item in sorted(items, key=lambda i: i.group):
        named.setdefault(roots[item.id], item.group)  # a merged group is named after its first member group
    return {item.id: named[roots[item.id]] for item in items}


def assign(items: list[Item], seed: int = 0, fractions: tuple[float, ...] = FRACTIONS,
           threshold: float = THRESHOLD) -> dict[str, str]:
    """item id -> split. Whole leakage groups (`groups`) go to one split: with three or more groups the smallest
    seed test and validation (and train), so none stays empty; the rest go largest first, each to the split
    furthest below its target count. `seed` orders groups of equal size."""
    group_of = groups(items, threshold)
    sizes: dict[str, int] = {}
    for item in items:
        sizes[group_of[item.id]] = sizes.get(group_of[item.id], 0) + 1
    shuffled = sorted(sizes, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    total = sum(sizes.values())
    target = {s: f * total for s, f in zip(SPLITS, fractions)}
    filled = dict.fromkeys(SPLITS, 0)
    group_split: dict[str, str] = {}
    if len(shuffled) >= len(SPLITS):
        for split, group in zip(reversed(SPLITS), sorted(shuffled, key=lambda g: (sizes[g], shuffled.index(g)))):
            group_split[group] = split
            filled[split] += sizes[group]
    for group in sorted(shuffled, key=lambda g: (-sizes[g], shuffled.index(g))):
        if group in group_split:
            continue
        split = max(SPLITS, key=lambda s: (target[s] - filled[s], -SPLITS.index(s)))
        group_split[group] = split
        filled[split] += sizes[group]
    return {item.id: group_split[group_of[item.id]] for item in items}


def leaks(items: list[Item], split_of: dict[str, str], threshold: float = THRESHOLD) -> list[tuple[str, str]]:
    """Pairs of items in different splits whose statements or fixes are near-duplicates (empty: no leakage)."""
    return [(a, b) for a, b in _similar(items, threshold, both=False) if split_of.get(a) != split_of.get(b)]
