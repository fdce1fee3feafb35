"""The SWE tools in a sandbox: `bash`, `edit` and `submit` (`swe_env.py`'s environment runs one per step).

A tool call becomes a `Step` and a tool message; a bad call is an error observation, never a crash. `submit` stages
everything and hands back the patch whole, through a file: only its observation is cut to the output limit (and,
like every observation, has no ANSI escapes).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from trajfactory.executors.base import ANSI, FileTooLargeError, Sandbox
from trajfactory.schema import SWE_TOOLS as TOOLS, Message, Step, ToolCall, utcnow

SUBMIT_PATH = "/tmp/trajfactory-submit.diff"
SUBMIT_LIMIT = 8 * 2**20
"""Bytes a submitted patch may hold (a larger one is `submit_failed`, with what to look at)."""

TOOL_NAMES = {t["function"]["name"] for t in TOOLS}

# Runs inside the sandbox with the sandbox's python3, so edits happen there, not on the host.
_EDIT_SCRIPT = r'''
import json, sys
args = json.load(open(sys.argv[1]))
path, old, new = args["path"], args["old_str"], args["new_str"]
try:
    text = open(path).read()
except OSError as exc:
    print(f"Error: cannot read {path}: {exc.strerror}"); sys.exit(1)
count = text.count(old)
if count != 1:
    where = "does not occur" if count == 0 else f"occurs {count} times"
    print(f"Error: old_str {where} in {path}; give the exact text of one place, with more context if needed.")
    sys.exit(1)
text = text.replace(old, new, 1)
open(path, "w").write(text)
start = text[: text.index(new)].count("\n") + 1
lines = text.splitlines()
lo, hi = max(1, start - 3), min(len(lines), start + new.count("\n") + 3)
print(f"Edited {path}. Lines {lo}-{hi} now read:")
for n in range(lo, hi + 1):
    print(f"{n:6}\t{lines[n - 1]}")
'''


# ---------------------------------------------------------------- the tools, in a sandbox


@dataclass
class ToolResult:
    observation: str
    exit_code: int | None
    error: str | None = None
    done: bool = False
    patch: str = ""
    """A submission's patch, whole (its observation may be cut to the output limit)."""


def run_tool(sandbox: Sandbox, name: str, arguments: dict, *, timeout: float) -> ToolResult:
    """Execute one tool call in the sandbox; a bad call becomes an error observation, never a crash."""
    if name not in TOOL_NAMES:
        return ToolResult(f"Error: unknown tool {name!r}; available: {sorted(TOOL_NAMES)}", None, "unknown_tool")
    if name == "bash":
        command = arguments.get("command")
        if not isinstance(command, str) or not command.strip():
            return ToolResult("Error: bash needs a non-empty `command` string.", None, "bad_arguments")
        res = sandbox.execute(command, timeout=timeout)
        note = f"\n[command timed out after {timeout:.0f}s and was killed]" if res.timed_out else ""
        return ToolResult(f"{res.output}{note}\n[exit code: {res.exit_code}]", res.exit_code,
                          "timeout" if res.timed_out else None)
    if name == "edit":
        missing = [k for k in ("path", "old_str", "new_str") if not isinstance(arguments.get(k), str)]
        if missing:
            return ToolResult(f"Error: edit needs string arguments {missing}.", None, "bad_arguments")
        sandbox.write_file("/tmp/trajfactory-edit.py", _EDIT_SCRIPT)
        sandbox.write_file("/tmp/trajfactory-edit.json", json.dumps(arguments))
        res = sandbox.execute("python3 /tmp/trajfactory-edit.py /tmp/trajfactory-edit.json", timeout=timeout)
        return ToolResult(res.output, res.exit_code, None if res.exit_code == 0 else "edit_failed")
    # the patch goes through a file, never the command's output, which the output limit cuts: a cut patch does not apply
    res = sandbox.execute(f"git add -A && git diff --cached HEAD > {SUBMIT_PATH}", timeout=timeout)
    if res.exit_code != 0:
        return ToolResult(res.output, res.exit_code, "submit_failed", done=True)
    try:
        patch = sandbox.read_file(SUBMIT_PATH, max_bytes=SUBMIT_LIMIT).decode("utf-8", "replace")
    except FileTooLargeError:
        return ToolResult(f"Error: the patch is over {SUBMIT_LIMIT >> 20} MiB; `git status` shows what the checkout "
                          "holds besides the fix (files the tests wrote?).", 1, "submit_failed", done=True)
    limit = getattr(getattr(sandbox, "limits", None), "output_limit", None) or len(patch)
    cut = f"\n[... {len(patch) - limit} characters of the patch not shown ...]\n"
    shown = patch if len(patch) <= limit else f"{patch[:limit // 2]}{cut}{patch[-(limit // 2):]}"
    # the patch is kept byte for byte; its view has no terminal escapes, as no other observation has
    return ToolResult(ANSI.sub("", shown), 0, None, done=True, patch=patch)


def execute_call(sandbox: Sandbox, call: ToolCall, timeout: float) -> tuple[Step, Message, bool, str]:
    """Execute one tool call: (step, tool message, whether it submitted, the submitted patch). A bad call is an error
    step."""
    t0, at = time.monotonic(), utcnow()
    finished = False
    try:
        args = json.loads(call.function.arguments or "{}")
        if not isinstance(args, dict):
            raise ValueError("arguments must be a JSON object")
    except ValueError as exc:
        obs, code, err, args = f"Error: the arguments are not a JSON object: {exc}", None, "bad_json", {}
        patch = ""
    else:
        result = run_tool(sandbox, call.function.name, args, timeout=timeout)
        obs, code, err, finished, patch = result.observation, result.exit_code, result.error, result.done, result.patch
    step = Step(index=0, tool=call.function.name, arguments=args, observation=obs, exit_code=code,
                error=err, started_at=at, duration_s=time.monotonic() - t0)
    message = Message(role="tool", tool_call_id=call.id, name=call.function.name, content=obs)
    return step, message, finished, patch
