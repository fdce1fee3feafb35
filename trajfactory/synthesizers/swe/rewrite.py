"""LM rewrite candidates (SWE-smith's `lm_rewrite`): a model re-implements a function from its
signature, docstring and the rest of the file; the re-implementation, spliced in, is the candidate.

Only the body is replaced: the original header, decorators and docstring stay byte for byte, so the
patch touches the body lines alone. A reply without code, one that does not parse, one that defines
another name or signature, and one that changes nothing give no candidate but a `Quarantine` row
with the reason. Whether a candidate is a bug at all is the validator's call (`stage.validate`).
"""

from __future__ import annotations

import ast
import asyncio
import logging
import random
import re
import textwrap
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trajfactory.models.client import ModelClient, ModelError
from trajfactory.runtime import run_sync
from trajfactory.schema import Candidate, Entity, Quarantine, content_hash, control_chars, quarantined
from trajfactory.synthesizers.swe.entities import ParsedFile, first_line, parse_repository
from trajfactory.synthesizers.swe.diffs import unified_diff

log = logging.getLogger(__name__)

SYNTHESIZER = "swe.lm_rewrite"
VERSION = "1"
FAMILY = "lm_rewrite"
STAGE = "synthesize"
DEFAULT_SAMPLING: dict[str, Any] = {"temperature": 0.7, "max_tokens": 1024}
PLACEHOLDER = "# TODO: implement this function"

SYSTEM = (
    "You are an expert Python developer. You are given a Python file in which the body of one "
    "function was removed. Re-implement that function."
)
PROMPT = """File `{file}` (the body of `{name}` was removed and marked `{placeholder}`):

```python
{context}
```

Write the complete function `{short}`: the same signature and docstring, and a body that does what
the docstring and the rest of the file say. Reply with one ```python fenced code block that holds
only that function, and nothing else."""

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)


class Rejected(Exception):
    """A reply that gives no candidate; `reason` is the quarantine code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class Target:
    """One function or method whose body the model re-implements."""

    pf: ParsedFile
    entity: Entity
    node: ast.FunctionDef | ast.AsyncFunctionDef

    @property
    def short(self) -> str:
        return self.node.name

    def body(self) -> list[ast.stmt]:
        """The statements that are removed: everything after the docstring."""
        return self.node.body[1:] if ast.get_docstring(self.node, clean=False) is not None else list(self.node.body)


# ---------------------------------------------------------------- prompt


def _lines(source: str) -> list[str]:
    return source.splitlines(keepends=True)


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _owns_line(lines: list[str], stmt: ast.stmt) -> bool:
    """Whether nothing but indentation precedes the statement on its first line."""
    line = lines[first_line(stmt) - 1]
    col = min([stmt.col_offset] + [d.col_offset - 1 for d in getattr(stmt, "decorator_list", [])])
    return not line.encode()[:col].strip()


def body_span(target: Target) -> tuple[int, int] | None:
    """1-based first and last line of the removable body, or None when it cannot be cut cleanly."""
    body = target.body()
    if not body:
        return None  # only a docstring: nothing to re-implement
    if not _owns_line(_lines(target.pf.source), body[0]):
        return None  # the body shares a line with the header or docstring (`def f(): return x`)
    return first_line(body[0]), target.node.end_lineno


def masked_source(target: Target, max_chars: int = 6000) -> str:
    """The file with the target's body replaced by a placeholder, cut to about `max_chars` around it."""
    span = body_span(target)
    assert span is not None
    lines = _lines(target.pf.source)
    indent = _indent(lines[span[0] - 1])
    stub = [f"{indent}{PLACEHOLDER}\n", f"{indent}raise NotImplementedError\n"]
    head, tail = lines[: span[0] - 1], lines[span[1]:]
    # Keep the entity's header whole, then grow the context outwards, nearest lines first.
    keep_head = lines[first_line(target.node) - 1: span[0] - 1]
    before, after = head[: len(head) - len(keep_head)], list(tail)
    budget = max_chars - sum(map(len, keep_head + stub))
    above: list[str] = []
    below: list[str] = []
    while budget > 0 and (before or after):
        if before:
            line = before.pop()
            budget -= len(line)
            above.insert(0, line)
        if after and budget > 0:
            line = after.pop(0)
            budget -= len(line)
            below.append(line)
    cut = ["# ...\n"]
    return "".join((cut if before else []) + above + keep_head + stub + below + (cut if after else []))


def build_messages(target: Target, max_context_chars: int = 6000) -> list[dict[str, str]]:
    user = PROMPT.format(
        file=target.entity.file, name=target.entity.name, short=target.short, placeholder=PLACEHOLDER,
        context=masked_source(target, max_context_chars).rstrip("\n"),
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


# ---------------------------------------------------------------- reply -> function


def extract_code(reply: str | None) -> str:
    """The code of the first fenced block (or the whole reply when it starts with a `def`)."""
    text = (reply or "").strip()
    blocks = _FENCE.findall(text)
    if blocks:
        return blocks[0]
    if text.startswith(("def ", "async def ", "@")):
        return text
    raise Rejected("no_code", "the reply holds no ```python fenced block")


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    return f"{type(node).__name__}:{ast.dump(node.args)}->{ast.dump(node.returns) if node.returns else ''}"


def parse_function(code: str, original: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[ast.AST, str]:
    """The reply's definition of `original` (checked: parses, same name, same signature), and its text."""
    code = textwrap.dedent(code)
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise Rejected("syntax_error", f"the code does not parse: {exc}") from None
    # A method may come back inside its class; one level of class nesting is accepted.
    defs = [n for n in tree.body if isinstance(n, _DEFS)]
    defs += [m for c in tree.body if isinstance(c, ast.ClassDef) for m in c.body if isinstance(m, _DEFS)]
    if not defs:
        raise Rejected("not_function", "the code defines no function")
    named = [n for n in defs if n.name == original.name]
    if not named:
        raise Rejected("wrong_name", f"the code defines {[n.name for n in defs]}, not `{original.name}`")
    node = named[0]
    if _signature(node) != _signature(original):
        raise Rejected("wrong_signature", f"`{original.name}` came back with a different signature: "
                       f"({ast.unparse(node.args)}) instead of ({ast.unparse(original.args)})")
    return node, code


def new_body(node: ast.FunctionDef | ast.AsyncFunctionDef, code: str, indent: str) -> str:
    """The reply's body (its docstring dropped), re-indented to `indent`."""
    body = node.body[1:] if ast.get_docstring(node, clean=False) is not None else list(node.body)
    if not body:
        raise Rejected("empty_body", "the function has no statements besides its docstring")
    if all(isinstance(s, ast.Pass) or (isinstance(s, ast.Raise) and "NotImplementedError" in ast.unparse(s))
           or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)) for s in body):
        raise Rejected("empty_body", "the body is a stub (pass / raise NotImplementedError / ...)")
    lines = _lines(code)
    if _owns_line(lines, body[0]):
        text = lines[first_line(body[0]) - 1: body[-1].end_lineno]
        old = _indent(text[0])
    else:  # `def f(): return x`: the body has no lines of its own to copy
        text = [ln + "\n" for ln in "\n".join(ast.unparse(s) for s in body).split("\n")]
        old = ""
    # Lines indented less than the body (continuations inside strings) keep their text.
    out = [indent + ln[len(old):] if ln.startswith(old) and ln.strip() else ln for ln in text]
    return "".join(ln if ln.endswith("\n") else ln + "\n" for ln in out)


def splice(target: Target, reply: str | None) -> str:
    """The file with the target's body replaced by the reply's; raises `Rejected`."""
    span = body_span(target)
    assert span is not None
    node, code = parse_function(extract_code(reply), target.node)
    lines = _lines(target.pf.source)
    body = new_body(node, code, _indent(lines[span[0] - 1]))
    if not lines[span[1] - 1].endswith("\n"):  # the file ends without a newline here; keep it so
        body = body.rstrip("\n")
    new_source = "".join(lines[: span[0] - 1]) + body + "".join(lines[span[1]:])
    try:
        tree = ast.parse(new_source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise Rejected("syntax_error", f"the spliced file does not parse: {exc}") from None
    if ast.dump(tree) == ast.dump(target.pf.tree):
        raise Rejected("unchanged", "the re-implementation is the original code")
    return new_source


# ---------------------------------------------------------------- candidates


def targets(root: str | Path, *, min_complexity: int = 3, names: Collection[str] | None = None,
            max_entities: int | None = None, seed: int = 0) -> list[Target]:
    """Functions and methods worth rewriting: complex enough, with a body that can be cut cleanly."""
    parsed, _ = parse_repository(root)
    found = [
        Target(pf, e, n) for pf in parsed for e, n in pf.entities
        if e.kind != "class" and e.complexity >= min_complexity and (names is None or e.name in names)
    ]
    found = [t for t in found if body_span(t) is not None]
    if max_entities is not None:
        random.Random(f"lm_rewrite:{seed}").shuffle(found)  # a cap samples the whole repository
        found = found[:max_entities]
    return found


async def rewrite_entity(
    client: ModelClient, target: Target, *, source_id: str, repo: str, base_commit: str,
    sampling: dict[str, Any] | None = None, max_context_chars: int = 6000, sample: int = 0,
) -> Candidate | Quarantine:
    """Ask the model for one re-implementation of `target`; a candidate or the reason there is none."""
    sampling = {**DEFAULT_SAMPLING, **(sampling or {})}
    item = f"{repo}:{target.entity.file}:{target.entity.name}:{sample}"
    reply: str | None = None
    try:
        result = await client.chat(build_messages(target, max_context_chars), **sampling)
        reply = result.message.content
        if (bad := control_chars(reply or "")) is not None:
            raise Rejected("not_text", bad)
        new_source = splice(target, reply)
    except ModelError as exc:
        if exc.infrastructure:  # the server's failure, not the model's answer: the step is retried, never cached
            raise
        return quarantined(STAGE, "candidate", item, "model_error",
                           f"{target.entity.name}: the rewrite request failed: {exc}", repo)
    except Rejected as exc:
        head = (reply or "")[:200]
        return quarantined(STAGE, "candidate", item, exc.reason, f"{target.entity.name}: {exc.detail}; reply began {head!r}",
                           repo)
    patch, changed = unified_diff(target.entity.file, target.pf.source, new_source)
    return Candidate(
        candidate_id=content_hash(repo, base_commit, patch),
        source_id=source_id,
        repo=repo,
        base_commit=base_commit,
        family=FAMILY,
        scope="function",
        entity=target.entity,
        patch=patch,
        changed_lines=changed,
        synthesizer=SYNTHESIZER,
        synthesizer_version=VERSION,
        params={"model": client.model, "sampling": sampling, "sample": sample,
                "max_context_chars": max_context_chars},
    )


async def rewrite_candidates(
    root: str | Path, client: ModelClient, *, source_id: str, repo: str, base_commit: str,
    min_complexity: int = 3, names: Collection[str] | None = None, max_entities: int | None = None,
    samples_per_entity: int = 1, sampling: dict[str, Any] | None = None, max_context_chars: int = 6000,
    seed: int = 0,
) -> tuple[list[Candidate], list[Quarantine]]:
    """LM rewrite candidates for the checkout at `root`, and the rejected replies with their reasons.

    Requests run concurrently, bounded by the client's own concurrency limit. Duplicate patches
    (two samples that wrote the same code) keep the first.
    """
    work = targets(root, min_complexity=min_complexity, names=names, max_entities=max_entities, seed=seed)
    jobs = [
        rewrite_entity(client, t, source_id=source_id, repo=repo, base_commit=base_commit, sampling=sampling,
                       max_context_chars=max_context_chars, sample=s)
        for t in work for s in range(samples_per_entity)
    ]
    results = await asyncio.gather(*jobs)
    candidates: dict[str, Candidate] = {}
    rejects: list[Quarantine] = []
    for r in results:
        if isinstance(r, Candidate):
            candidates.setdefault(r.patch, r)
        else:
            rejects.append(r)
    log.info("lm_rewrite: %d candidates, %d rejected replies from %d entities",
             len(candidates), len(rejects), len(work))
    return list(candidates.values()), rejects


def generate_rewrites(root: str | Path, client: ModelClient, **kwargs: Any
                      ) -> tuple[list[Candidate], list[Quarantine]]:
    """`rewrite_candidates` for synchronous callers (the stage functions are plain calls)."""
    return run_sync(rewrite_candidates(root, client, **kwargs))
