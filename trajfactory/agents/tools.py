"""The SWE tools an agent may call (bash, edit, submit): JSON schemas and their sandbox execution.

Oracle and model policies use the same tools, so their trajectories are interchangeable rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from trajfactory.executors.base import Sandbox

TOOLS: list[dict] = [
    {
        "type": "function",
        "function": {
            "name": "bash",
            "description": "Run a bash command in the repository root and return its output and exit code.",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string", "description": "The command to run."}},
                "required": ["command"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "edit",
            "description": (
                "Replace exactly one occurrence of `old_str` with `new_str` in a file. "
                "`old_str` must match the file's text exactly, whitespace included, and be unique."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path, relative to the repository root."},
                    "old_str": {"type": "string", "description": "The exact text to replace."},
                    "new_str": {"type": "string", "description": "The replacement text."},
                },
                "required": ["path", "old_str", "new_str"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "submit",
            "description": "Submit the current state of the repository as the solution and end the episode.",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]
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


@dataclass
class ToolResult:
    observation: str
    exit_code: int | None
    error: str | None = None
    done: bool = False


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
    res = sandbox.execute("git add -A && git diff --cached HEAD", timeout=timeout)
    return ToolResult(res.output, res.exit_code, None if res.exit_code == 0 else "submit_failed", done=True)
