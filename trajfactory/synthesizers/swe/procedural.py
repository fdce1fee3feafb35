"""Procedural bug candidates: SWE-smith's AST mutation families, spliced into the original source.

Each mutation is written back by replacing only the source segment that changed (an operator
token, an expression, a run of whole-line statements), and the result is re-parsed and compared
with the intended tree; only where no segment splice reproduces it is the whole entity unparsed.
"""

from __future__ import annotations

import ast
import copy
import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from trajfactory.schema import Candidate, Entity, content_hash
from trajfactory.synthesizers.swe.entities import ParsedFile, first_line, parse_repository
from trajfactory.synthesizers.swe.attribution import References, removed_method, shuffled_methods
from trajfactory.synthesizers.swe.base_removal import removed_base
from trajfactory.synthesizers.swe.ast_edits import Cut, Edit, Header, Mutation, TokenEdit
from trajfactory.synthesizers.swe.diffs import line_list as _lines, unified_diff
from trajfactory.synthesizers.swe.mutations import FAMILIES, Family
from trajfactory.runtime import parse_python

log = logging.getLogger(__name__)

SYNTHESIZER = "swe.procedural"
VERSION = "3"
"""Bumped when the candidates of a checkout change (2: class candidates carry `params.attribution`, entities their
`body_lineno`; 3: removed base classes are attributed too)."""


# ---------------------------------------------------------------- source text


class _Text:
    """A source file as lines, with AST (line, byte-column) positions mapped to string offsets."""

    def __init__(self, source: str):
        self.source = source
        self.lines = _lines(source)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))
        self.newline = "\r\n" if self.lines and self.lines[0].endswith("\r\n") else "\n"

    def offset(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1] if lineno <= len(self.lines) else ""
        chars = col if line.isascii() else len(line.encode()[:col].decode("utf-8", "replace"))
        return self.starts[lineno - 1] + chars

    def segment(self, node: ast.AST) -> str:
        return self.source[self.offset(node.lineno, node.col_offset):self.offset(node.end_lineno, node.end_col_offset)]

    def line_end(self, lineno: int) -> int:
        """Offset just past line `lineno` (its newline included)."""
        return self.starts[lineno]

    def indent(self, lineno: int) -> str:
        line = self.lines[lineno - 1]
        return line[: len(line) - len(line.lstrip(" \t"))]

    def alone(self, node: ast.stmt) -> bool:
        """Whether a statement owns its lines: nothing else before it, only a comment after it."""
        head = self.lines[first_line(node) - 1]
        if getattr(node, "decorator_list", None):
            before_ok = head.lstrip().startswith("@")
        else:
            before_ok = not self.source[self.starts[node.lineno - 1]:self.offset(node.lineno, node.col_offset)].strip()
        tail = self.source[self.offset(node.end_lineno, node.end_col_offset):self.line_end(node.end_lineno)].strip()
        return before_ok and (not tail or tail.startswith("#"))

    def block(self, nodes: list[ast.stmt]) -> list[str]:
        return self.lines[first_line(nodes[0]) - 1:nodes[-1].end_lineno]


def _reindent(lines: list[str], old: str, new: str) -> list[str]:
    # Blank lines and continuation lines indented less than the block stay as they are.
    return [new + line[len(old):] if line.startswith(old) and line.strip() else line for line in lines]


class _Unsplicable(Exception):
    """This way of writing the mutation back into the source does not work here."""


def _stmt_edit(t: _Text, edit: Edit, originals: set[int]) -> tuple[int, int, str]:
    old = edit.old
    if not all(t.alone(n) for n in old):
        raise _Unsplicable("statement shares its line")
    first, last = first_line(old[0]), old[-1].end_lineno
    indent = t.indent(first)
    new = edit.new
    if not new:
        # Take the blank lines above along when blank lines follow, so no double gap is left.
        if last == len(t.lines) or not t.lines[last].strip():
            while first > 1 and not t.lines[first - 2].strip():
                first -= 1
        return t.starts[first - 1], t.line_end(last), ""
    if all(id(n) in originals for n in new):
        if not all(t.alone(n) for n in new):
            raise _Unsplicable("moved statement shares its line")
        if len(new) > 1 and sorted(map(id, new)) == sorted(map(id, old)):
            # A permutation of sibling statements: move whole blocks, keep the gaps where they were.
            text: list[str] = []
            for i, node in enumerate(new):
                text += t.block([node])
                if i + 1 < len(old):
                    text += t.lines[old[i].end_lineno:first_line(old[i + 1]) - 1]
            lines = [line if line.endswith("\n") else line + t.newline for line in text]
        else:
            lines = _reindent(t.block(new), t.indent(first_line(new[0])), indent)
            lines = [line if line.endswith("\n") else line + t.newline for line in lines]
    else:
        body = "\n".join(ast.unparse(n) for n in new).split("\n")
        lines = _reindent([line + t.newline for line in body], "", indent)
    text = "".join(lines)
    if not t.lines[last - 1].endswith("\n"):  # the file ends without a newline here; keep it so
        text = text.rstrip("\r\n")
    return t.starts[first - 1], t.line_end(last), text


def _spans(t: _Text, edits: list, originals: set[int], paren: bool) -> list[tuple[int, int, str]]:
    """(start, end, new text) string spans that realise `edits`, sorted and non-overlapping."""
    spans: list[tuple[int, int, str]] = []
    for edit in edits:
        if isinstance(edit, Edit) and isinstance(edit.old[0], ast.stmt):
            spans.append(_stmt_edit(t, edit, originals))
        elif isinstance(edit, Edit):
            node = edit.new[0]
            text = t.segment(node) if id(node) in originals else ast.unparse(node)
            lo, hi = t.offset(*_start(edit.old[0])), t.offset(*_end(edit.old[-1]))
            spans.append((lo, hi, f"({text})" if paren else text))
        elif isinstance(edit, TokenEdit):
            lo, hi = t.offset(*_end(edit.after)), t.offset(*_start(edit.before))
            region = t.source[lo:hi]
            masked = re.sub(r"#[^\r\n]*", lambda m: " " * len(m.group()), region)
            found = list(re.finditer(edit.pattern, masked))
            if len(found) != 1:
                raise _Unsplicable(f"operator {edit.pattern!r} found {len(found)} times")
            spans.append((lo + found[0].start(), lo + found[0].end(), edit.text))
        elif isinstance(edit, Cut):
            spans.append((t.offset(*edit.start), t.offset(*edit.end), ""))
        elif isinstance(edit, Header):
            spans.append(_header_edit(t, edit))
    spans.sort()
    for (_, end, _), (start, _, _) in zip(spans, spans[1:]):
        if start < end:
            raise _Unsplicable("edits overlap")
    return spans


def _apply(source: str, spans: list[tuple[int, int, str]], lo: int, hi: int) -> str:
    """`source[lo:hi]` with the spans (which lie inside it) replaced."""
    out, pos = [], lo
    for start, end, text in spans:
        out += [source[pos:start], text]
        pos = end
    return "".join(out + [source[pos:hi]])


def _header_edit(t: _Text, edit: Header) -> tuple[int, int, str]:
    old = edit.old
    items = old.bases + old.keywords
    pos = max((t.offset(*_end(n)) for n in items), default=t.offset(old.lineno, old.col_offset))
    while pos < len(t.source) and t.source[pos] != ":":
        pos = t.source.index("\n", pos) if t.source[pos] == "#" else pos + 1
    header = copy.copy(edit.new)
    header.body, header.decorator_list = [ast.Pass()], []
    return t.offset(old.lineno, old.col_offset), pos + 1, ast.unparse(header).split("\n")[0]


def _start(node: ast.AST) -> tuple[int, int]:
    return node.lineno, node.col_offset


def _end(node: ast.AST) -> tuple[int, int]:
    return node.end_lineno, node.end_col_offset


# ---------------------------------------------------------------- checking a splice


class _Checker:
    """Writes mutations of one file's entities back into its text, and checks what they parse to."""

    def __init__(self, pf: ParsedFile):
        self.pf = pf
        self.text = _Text(pf.source)
        self.originals = {id(n) for n in ast.walk(pf.tree)}

    def parse_entity(self, region: str, indent: str) -> ast.AST | None:
        """The one statement an entity's text parses to, or None.

        An entity owns whole lines and ends at a complete statement, so its text parses the same
        alone as in the file; an indented one is parsed under `if True:` so strings keep their bytes.
        """
        try:
            tree = parse_python(f"if True:\n{region}" if indent else region)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None
        body = tree.body[0].body if indent and len(tree.body) == 1 else tree.body
        return body[0] if len(body) == 1 else None

    def realise(self, node: ast.AST, mutation: Mutation, expected: str) -> tuple[str, str] | None:
        """The mutated file text and how it was written ("segment" or "entity"), or None.

        `expected` is the dump of `mutation.tree`; a splice counts only if the entity's new text
        parses to exactly that.
        """
        t = self.text
        lo, hi = t.starts[first_line(node) - 1], t.line_end(node.end_lineno)
        indent = t.indent(first_line(node))
        tries = [(alt, False, "segment") for alt in mutation.alternatives]
        tries += [(alt, True, "segment") for alt in mutation.alternatives
                  if any(isinstance(e, Edit) and not isinstance(e.old[0], ast.stmt) for e in alt)]
        tries.append(([Edit([node], [mutation.tree])], False, "entity"))
        for edits, paren, how in tries:
            try:
                spans = _spans(t, edits, self.originals, paren)
            except (_Unsplicable, ValueError, IndexError):
                continue
            if not spans or spans[0][0] < lo or spans[-1][1] > hi:
                continue  # an edit outside the entity would need a whole-file check
            region = _apply(t.source, spans, lo, hi)
            parsed = self.parse_entity(region, indent)
            if parsed is not None and ast.dump(parsed) == expected:
                return t.source[:lo] + region + t.source[hi:], how
        return None


# ---------------------------------------------------------------- candidates


def resolve_families(names: list[str] | None) -> list[Family]:
    """The families to run, in SWE-smith's order; an unknown name is an error that lists the known ones."""
    if names is None:
        return list(FAMILIES.values())
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown procedural families {unknown}; known: {', '.join(FAMILIES)}")
    return [FAMILIES[n] for n in FAMILIES if n in names]


def generate_candidates(
    root: str | Path,
    *,
    source_id: str,
    repo: str,
    base_commit: str,
    families: list[str] | None = None,
    min_complexity: int = 3,
    max_per_entity: int = 2,
    max_candidates: int | None = None,
    seed: int = 0,
    pooled: bool = False,
) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Bug candidates for the checkout at `root`, and the files that could not be parsed.

    Every entity with `complexity >= min_complexity` gets at most `max_per_entity` distinct
    candidates from each family whose scope fits it. The same seed gives the same candidates;
    with `max_candidates` the entities are visited in a seeded order, so the cap samples the repo.
    With `pooled`, the pool the cap is taken from comes back whole (five times the cap), for `pick` to take the cap
    once the reference run has said which entities the tests run.
    """
    chosen = resolve_families(families)
    parsed, errors = parse_repository(root)
    work = [(pf, e, n) for pf in parsed for e, n in pf.entities if e.complexity >= min_complexity]
    if max_candidates is not None:
        random.Random(f"order:{seed}").shuffle(work)
    checkers: dict[str, _Checker] = {}
    seen: set[str] = set()
    out: list[Candidate] = []
    cap = max_candidates
    # Draw a wider pool than asked, then pick round-robin so every family that applies is represented.
    max_candidates = None if cap is None else cap * 5
    for pf, entity, node in work:
        if max_candidates is not None and len(out) >= max_candidates:
            break
        original = ast.dump(node)
        for family in chosen:
            if max_candidates is not None and len(out) >= max_candidates:
                break
            sites = family.sites(node) if family.accepts(node) else []
            if not sites:
                continue
            checker = checkers.get(pf.file) or checkers.setdefault(pf.file, _Checker(pf))
            rng = random.Random(f"{seed}:{entity.file}:{entity.name}:{entity.lineno}:{family.name}")
            made = 0
            for _ in range(4 * max_per_entity):  # a few spare draws for no-op or duplicate picks
                if made >= max_per_entity or (max_candidates is not None and len(out) >= max_candidates):
                    break
                candidate = _candidate(checker, entity, node, family, sites, rng, original,
                                       source_id, repo, base_commit)
                if candidate is not None and candidate.patch not in seen:
                    seen.add(candidate.patch)
                    out.append(candidate)
                    made += 1
    out = out if pooled else pick(out, cap)
    _attribute(root, out, {(pf.file, e.lineno): n for pf, e, n in work})
    log.info("procedural: %d candidates from %d entities (%d files unparseable)", len(out), len(work), len(errors))
    return out, errors


def _attribute(root: str | Path, candidates: list[Candidate], nodes: dict[tuple[str, int], ast.AST]) -> None:
    """Record in each removed-method, reordered-methods or removed-base candidate's params how its tests are found
    (`attribution.py`, `base_removal.py`)."""
    refs: References | None = None
    for c in candidates:
        cls = nodes.get((c.entity.file, c.entity.lineno))
        if c.family == "shuffle_methods":
            c.params["attribution"] = shuffled_methods(cls)
        elif c.family == "remove_methods":
            refs = refs or References.scan(root)
            method = next(s for s in cls.body if getattr(s, "lineno", None) == c.params["lineno"])
            c.params["attribution"] = removed_method(cls, method, refs, c.entity.file)
        elif c.family == "remove_base_class":
            refs = refs or References.scan(root)
            c.params["attribution"] = removed_base(cls, c.params["base"], c.entity.file, refs)


def pick(candidates: list[Candidate], cap: int | None, ran: Callable[[Candidate], bool] | None = None
         ) -> list[Candidate]:
    """At most `cap` candidates of a pool, taken round-robin across families (`_balanced`); with `ran`, the
    candidates in code some test runs first, and the others only where those fall short of the cap. A bug in code no
    test runs fails no test: propcache 0.5.4's in-tree build backend (`packaging/pep517_backend/`, one of whose
    modules a test imports) took 10 of its 12 candidates, and gave no task."""
    if cap is None or len(candidates) <= cap:
        return candidates
    if ran is None:
        return _balanced(candidates, cap)
    first = _balanced([c for c in candidates if ran(c)], cap)
    return first + _balanced([c for c in candidates if not ran(c)], cap - len(first))


def _balanced(candidates: list[Candidate], cap: int) -> list[Candidate]:
    """At most `cap` candidates, taken round-robin across families, each family's turn going to its candidate in
    the entity picked least so far (the pool's seeded order breaking ties): the first entity visited has candidates
    of most families, and took 10 of natsort 8.4.0's 12, none of which its tests could tell from the clean code."""
    if len(candidates) <= cap:
        return candidates
    by_family: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_family.setdefault(c.family, []).append(c)
    queues = [by_family[f] for f in sorted(by_family)]
    picked: list[Candidate] = []
    taken: Counter[tuple[str, str, int]] = Counter()

    def entity(c: Candidate) -> tuple[str, str, int]:
        return c.entity.file, c.entity.name, c.entity.lineno

    while len(picked) < cap:
        for queue in queues:
            if queue and len(picked) < cap:
                best = min(range(len(queue)), key=lambda i: (taken[entity(queue[i])], i))
                picked.append(queue.pop(best))
                taken[entity(picked[-1])] += 1
    return picked


def _candidate(
    checker: _Checker, entity: Entity, node: ast.AST, family: Family, sites: list, rng: random.Random, original: str,
    source_id: str, repo: str, base_commit: str,
) -> Candidate | None:
    mutation = family.apply(node, rng, sites)
    expected = ast.dump(mutation.tree) if mutation is not None else original
    if expected == original:  # no behaviour-relevant change: the family does not apply here
        return None
    realised = checker.realise(node, mutation, expected)
    if realised is None:
        return None
    new_source, how = realised
    patch, changed = unified_diff(entity.file, checker.pf.source, new_source)
    return Candidate(
        candidate_id=content_hash(repo, base_commit, patch),
        source_id=source_id,
        repo=repo,
        base_commit=base_commit,
        family=family.name,
        scope=family.scope,
        entity=entity,
        patch=patch,
        changed_lines=changed,
        synthesizer=SYNTHESIZER,
        params={**mutation.params, "splice": how},
    )
