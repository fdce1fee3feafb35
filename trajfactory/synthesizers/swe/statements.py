"""LM problem statements (SWE-smith's issue text): a model writes a GitHub-issue-style report from
the bug patch and the failing tests' output, and a leak check keeps the fix out of it.

A statement is rejected when it is not clean text (`not_text`: control characters, undecodable bytes),
when it quotes a changed line of the patch, a long run of the fixed code, or diff markers (`leak`), and
when it names nothing of the task (`off_topic`: no changed function,
module or failing test is mentioned, so it cannot be about this bug); then, and when the model
fails, the template statement is used instead. The result says which one was used and why, so a
dataset can report its share of model-written text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, Literal

from trajfactory.models.client import ModelClient, ModelError
from trajfactory.schema import Validation, control_chars
from trajfactory.synthesizers.swe.tasks import template_statement

DEFAULT_SAMPLING: dict[str, Any] = {"temperature": 0.7, "max_tokens": 600}
MIN_LINE_CHARS = 12
"""Changed lines shorter than this (`return x`, `else:`) are too common to count as a leak."""
MIN_CODE_RUN = 24
"""A run of this many characters of the fixed code inside the statement is a leak."""
MIN_STATEMENT_CHARS = 40
MIN_TOPIC_CHARS = 4
"""Names shorter than this (`f`, `io`) are too common to show that a statement is about the task."""

SYSTEM = (
    "You write GitHub issues for a Python project. You describe what a user observes, never how "
    "to fix it."
)
PROMPT = """A change introduced a bug into the repository `{repo}`. Here is the change (do NOT reveal it):

```diff
{patch}
```

These tests fail now:
{tests}

End of the test output:
```
{output}
```

Write the GitHub issue a user would file: a short title line, what they did (a minimal example that
calls the public API), what they expected, and what happened instead. Do not quote the diff or any
changed line, do not name the file, the line or the fix, and do not mention the tests."""

_DIFF_MARKERS = re.compile(r"^(diff --git |@@ -\d|--- a/|\+\+\+ b/|index [0-9a-f]{7,}\.\.)", re.MULTILINE)


@dataclass
class StatementResult:
    """The statement a task gets, whether the model or the template wrote it, and why."""

    text: str
    source: Literal["lm", "template"]
    reason: str
    """`ok` (model text used), or why the template was used: `leak`, `off_topic`, `model_error`, `empty`,
    `not_text` (control characters or undecodable bytes)."""
    detail: str = ""
    """What leaked, or the model error; empty when the model's text was used."""


def _norm(text: str) -> str:
    return " ".join(text.split())


def changed_lines(patch: str) -> tuple[list[str], list[str]]:
    """The added and the removed lines of a unified diff, markers stripped."""
    added, removed = [], []
    for line in patch.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            added.append(line[1:])
        elif line.startswith("-") and not line.startswith("---"):
            removed.append(line[1:])
    return added, removed


def find_leak(statement: str, bug_patch: str, *, min_line_chars: int = MIN_LINE_CHARS,
              min_code_run: int = MIN_CODE_RUN) -> str | None:
    """Why `statement` gives the fix away, or None when it does not.

    Checks, on whitespace-normalized text: diff markers; any added or removed line of the bug patch
    longer than `min_line_chars`; any run of `min_code_run` characters of the fixed code (the lines
    the bug patch removes, i.e. the gold patch's `+` lines).
    """
    if (m := _DIFF_MARKERS.search(statement)) is not None:
        return f"diff marker {m.group(0)!r}"
    text = _norm(statement)
    added, removed = changed_lines(bug_patch)
    for line in added + removed:
        if len(_norm(line)) > min_line_chars and _norm(line) in text:
            return f"patch line {_norm(line)!r}"
    for line in removed:
        code = _norm(line)
        if len(code) < min_code_run:
            continue
        match = SequenceMatcher(None, code, text, autojunk=False).find_longest_match(0, len(code), 0, len(text))
        if match.size >= min_code_run:
            return f"fixed code {code[match.a:match.a + match.size]!r}"
    return None


def topics(entity_name: str, entity_file: str, tests: list[str]) -> list[str]:
    """Names a statement about this bug would mention: the changed function (and its class), its module,
    and the failing tests (with and without their `test_` prefix)."""
    names = set(entity_name.split("."))
    module = entity_file.rsplit("/", 1)[-1].removesuffix(".py")
    if module != "__init__":
        names.add(module)
    for test in tests:
        leaf = re.split(r"::|\.", test.split("[")[0])[-1]
        names.update({leaf, leaf.removeprefix("test_")})
    return sorted(n for n in names if len(n) >= MIN_TOPIC_CHARS)


def find_off_topic(statement: str, names: list[str]) -> str | None:
    """Why `statement` is not about the task (it names none of `names`), or None when it names one."""
    for name in names:
        if re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", statement, re.IGNORECASE):
            return None
    return f"names none of {names[:8]}" + (" ..." if len(names) > 8 else "")


def _tail(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else "..." + text[-max_chars:]


def build_messages(repo: str, bug_patch: str, validation: Validation, test_output: str, *,
                   max_patch_chars: int = 3000, max_output_chars: int = 3000, max_tests: int = 10) -> list[dict]:
    tests = validation.FAIL_TO_PASS
    listed = "\n".join(f"- {t}" for t in tests[:max_tests])
    if len(tests) > max_tests:
        listed += f"\n- ... and {len(tests) - max_tests} more"
    user = PROMPT.format(
        repo=repo, patch=bug_patch[:max_patch_chars].rstrip("\n"), tests=listed or "- (none listed)",
        output=_tail(test_output.strip(), max_output_chars) or "(no output recorded)",
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


async def write_statement(
    client: ModelClient, *, repo: str, bug_patch: str, validation: Validation, test_output: str = "",
    sampling: dict[str, Any] | None = None, max_patch_chars: int = 3000, max_output_chars: int = 3000,
    names: list[str] | None = None,
) -> StatementResult:
    """A model-written problem statement, or the template one when the model's text leaks or fails.

    With `names` (see `topics`), a statement that mentions none of them is refused as `off_topic`.
    """
    def fallback(reason: str, detail: str) -> StatementResult:
        return StatementResult(template_statement(repo, validation), "template", reason, detail)

    messages = build_messages(repo, bug_patch, validation, test_output,
                              max_patch_chars=max_patch_chars, max_output_chars=max_output_chars)
    try:
        result = await client.chat(messages, **{**DEFAULT_SAMPLING, **(sampling or {})})
    except ModelError as exc:
        if exc.infrastructure:  # the server's failure, not the model's answer: the step is retried, never cached
            raise
        return fallback("model_error", str(exc)[:300])
    text = (result.message.content or "").strip()
    if len(text) < MIN_STATEMENT_CHARS:
        return fallback("empty", f"the model wrote {len(text)} characters: {text[:80]!r}")
    if (bad := control_chars(text)) is not None:
        return fallback("not_text", f"{bad}; the model wrote {text[:80]!r}")
    if (leak := find_leak(text, bug_patch)) is not None:
        return fallback("leak", leak)
    if names is not None and (off := find_off_topic(text, names)) is not None:
        return fallback("off_topic", f"{off}; the model wrote {text[:80]!r}")
    return StatementResult(text, "lm", "ok")
