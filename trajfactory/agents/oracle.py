"""The oracle policy: solves a SWE task the way a careful engineer would, knowing the fix (the gold patch).

It never jumps to the answer. Each turn it reads what the last command showed and decides:

1. reproduce: run the failing tests;
2. locate: follow the traceback into the library when it leads there, else read the failing test and grep for
   the definition of what it calls; then read that code;
3. fix: edit the defect (a failed edit falls back to applying the whole fix with git);
4. check: re-run the failing tests, then the other tests of their files (the related passing ones);
5. look at `git status` and remove what the test runs wrote into the checkout (pyparsing's tests write railroad
   diagrams there), which is not part of the fix;
6. submit.

What it says is written from what it saw: it claims the tests pass only after an observation that shows them
passing, and says so plainly when they do not. Wording and the order of the locating steps vary per task,
seeded by the task id, so demonstrations are not one template.
"""

from __future__ import annotations

import json
import random
import re
import shlex

from trajfactory.executors.guard import paths_of, protected
from trajfactory.executors.protocol import Action, Start
from trajfactory.schema import Message, Policy as PolicyInfo, Task, ToolCall, ToolCallFunction, Usage, content_hash

VERSION = "4"
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_FRAME = re.compile(r"^(?P<file>[\w./-]+\.py):(?P<line>\d+): ", re.M)
_GREP = re.compile(r"^(?:\./)?(?P<file>[^:\n]+\.py):(?P<line>\d+):", re.M)
_SUMMARY = re.compile(r"\b(\d+) (passed|failed|errors?)\b")

PHRASES = {
    "reproduce": ["Let me reproduce the failure first by running the failing tests.",
                  "First I'll run the failing tests to see how they fail.",
                  "I'll start by running the tests the report names.",
                  "Running the failing tests to see the error for myself."],
    "frame": ["The traceback points into `{file}` at line {line}. Let me read the code there.",
              "The failure comes from `{file}`, line {line}; looking at that code.",
              "`{file}` line {line} is where it goes wrong, according to the traceback. Reading it."],
    "read_test": ["The traceback stays in the test, so let me see what `{test}` exercises.",
                  "Let me read `{test}` to see what it calls.",
                  "Nothing in the traceback leaves the test file; reading `{test}` first."],
    "grep": ["Let me find where `{name}` is defined.",
             "Searching the library for the definition of `{name}`.",
             "Where is `{name}` implemented? Grepping for it."],
    "view": ["`{name}` is defined in `{file}` at line {line}; reading it.",
             "Found `{name}` in `{file}` (line {line}). Let me look at it.",
             "Opening `{file}` around line {line}, where `{name}` lives."],
    "fix": ["I see the defect in `{file}`. Fixing it.",
            "That is the bug, in `{file}`: fixing it with an edit.",
            "The logic in `{file}` is wrong here. Editing it."],
    "fallback": ["The edit did not match the file; applying the fix as a patch instead.",
                 "My edit did not apply cleanly, so I'll apply the change as a patch."],
    "rerun": ["Now let me re-run the failing tests to confirm the fix.",
              "Re-running the failing tests.",
              "Let me check the fix against the failing tests."],
    "regress": ["They pass now. Let me run the rest of {files} to check nothing else broke.",
                "The failing tests pass. Running the other tests of {files} as well.",
                "Fixed. Before submitting, the related tests in {files}."],
    "submit_pass": ["Everything passes. Submitting.", "All of them pass; submitting the fix.",
                    "The related tests pass too. Submitting."],
    "still_failing": ["The tests still fail ({summary}); applying the whole fix as a patch.",
                      "Still failing ({summary}). Let me apply the fix as a patch instead."],
    "status": ["Before submitting, let me see what the checkout holds besides the fix.",
               "Checking `git status` before I submit.",
               "Let me make sure nothing but the fix is left in the checkout."],
    "tidy": ["The test runs left {files} behind, which is not part of the fix. Removing it.",
             "{files}: written by the tests, not part of the fix. Cleaning up before submitting.",
             "Untracked files from the test runs ({files}) do not belong in the patch; removing them."],
    "submit_anyway": ["Some tests still fail ({summary}); submitting what I have.",
                      "Not everything passes ({summary}), but this is my fix; submitting."],
}


def _hunks(patch: str) -> list[tuple[str, int, list[str]]]:
    """(file, old_start, body lines) for each hunk of a unified diff."""
    hunks: list[tuple[str, int, list[str]]] = []
    file = ""
    for line in patch.splitlines():
        if line.startswith("+++ "):
            file = line[4:].split("\t")[0].removeprefix("b/")
        elif (m := _HUNK.match(line)) is not None:
            hunks.append((file, int(m.group(1)), []))
        elif hunks and line[:1] in (" ", "-", "+") and not line.startswith(("---", "+++")):
            hunks[-1][2].append(line)
    return hunks


def _pytest(tests: list[str]) -> str:
    return "python -m pytest -q -p no:cacheprovider --no-header --tb=short " + " ".join(shlex.quote(t) for t in tests)


def passed(observation: str) -> bool:
    """Whether a test command's observation shows tests passing and none failing (exit code 0)."""
    counts = {kind: int(n) for n, kind in _SUMMARY.findall(observation)}
    failing = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    return "[exit code: 0]" in observation and counts.get("passed", 0) > 0 and failing == 0


def summary(observation: str) -> str:
    found = _SUMMARY.findall(observation)
    return ", ".join(f"{n} {kind}" for n, kind in found) or "no test summary"


class OraclePolicy:
    """Solves each task through the same tools a model agent uses, reacting to what it observes."""

    def __init__(self, max_tests_shown: int = 5):
        self.info = PolicyInfo(name="oracle", params={"version": VERSION, "max_tests_shown": max_tests_shown})
        self.usage = Usage()
        self.limits = None
        self._max_tests = max_tests_shown
        self._calls = 0

    def system_prompt(self, default: str) -> str:
        return default

    def reset(self, task: Task, start: Start | None = None) -> None:
        self.task = task
        self._calls = 0
        self._rng = random.Random(content_hash("oracle", task.task_id))
        self._hunks = _hunks(task.gold.patch)
        self._gold_files = [f for f in dict.fromkeys(f for f, _, _ in self._hunks)]
        self._failing = task.checks.FAIL_TO_PASS[: self._max_tests]
        self._test_files = list(dict.fromkeys(t.split("::", 1)[0] for t in self._failing))
        self._name = task.entity.name.rsplit(".", 1)[-1]
        self._phase = "reproduce"
        self._edits = list(self._hunks)
        self._patched = False
        self._read_test_first = self._rng.random() < 0.5
        self._pending: str | None = None  # the words of the submission, said once `git status` was looked at
        self._named = set(paths_of(task.gold.patch))  # files the fix may add
        self._editing: str | None = None  # the file of the edit call last made
        self._edited: list[str] = []  # files an edit call changed

    def _say(self, kind: str, **fields: str) -> str:
        return self._rng.choice(PHRASES[kind]).format(**fields)

    def _call(self, thought: str, tool: str, args: dict) -> Action:
        self._calls += 1
        call = ToolCall(id=f"call_{self._calls}", function=ToolCallFunction(name=tool, arguments=json.dumps(args)))
        return Action(Message(role="assistant", content=thought, tool_calls=[call]), [call])

    def _view(self, file: str, line: int, thought: str) -> Action:
        span = max(20, self.task.entity.end_lineno - self.task.entity.lineno + 6)
        lo = max(1, line - 4)
        return self._call(thought, "bash", {"command": f"nl -ba {shlex.quote(file)} | sed -n '{lo},{lo + span}p'"})

    def _locate(self, observation: str) -> Action:
        frames = [(m["file"], int(m["line"])) for m in _FRAME.finditer(observation) if protected(m["file"]) is None]
        in_gold = [f for f in frames if f[0] in self._gold_files]
        if in_gold:
            file, line = in_gold[-1]  # the innermost frame in the code that holds the defect
            self._phase = "fix"
            return self._view(file, line, self._say("frame", file=file, line=str(line)))
        if self._read_test_first:
            self._read_test_first = False
            test = self._failing[0]
            file, _, func = test.partition("::")
            func = func.split("::")[-1].split("[")[0]
            return self._call(self._say("read_test", test=test), "bash",
                              {"command": f"grep -n -A 15 {shlex.quote('def ' + func)} {shlex.quote(file)}"})
        self._phase = "found"
        kind = "class" if self.task.entity.kind == "class" else "def"
        pattern = rf"^\s*(async\s+)?{kind} {self._name}\b"
        return self._call(self._say("grep", name=self._name), "bash", {
            "command": f"grep -rnE {shlex.quote(pattern)} --include='*.py' --exclude-dir=tests --exclude-dir=test ."})

    def _found(self, observation: str) -> Action:
        hits = [(m["file"], int(m["line"])) for m in _GREP.finditer(observation)]
        hits = [h for h in hits if h[0] in self._gold_files] or hits
        self._phase = "fix"
        if not hits:  # the grep found nothing: read the start of the file the fix is in
            hits = [(self._gold_files[0], self._hunks[0][1])]
        file, line = hits[0]
        return self._view(file, line, self._say("view", name=self._name, file=file, line=str(line)))

    def _fix(self) -> Action:
        file, _, body = self._edits.pop(0)
        self._editing = file
        old = "\n".join(ln[1:] for ln in body if ln[0] in " -")
        new = "\n".join(ln[1:] for ln in body if ln[0] in " +")
        if not self._edits:
            self._phase = "rerun"
        return self._call(self._say("fix", file=file), "edit", {"path": file, "old_str": old, "new_str": new})

    def _apply_whole_fix(self, thought: str) -> Action:
        self._patched, self._edits, self._phase = True, [], "rerun"
        patch = self.task.gold.patch if self.task.gold.patch.endswith("\n") else self.task.gold.patch + "\n"
        # put back the files the edits already changed (by name: the eval counts `git checkout -- .` as a destructive
        # command), then apply the whole fix
        undo = f"git checkout -- {' '.join(shlex.quote(f) for f in self._edited)} && " if self._edited else ""
        command = f"{undo}git apply <<'TRAJFACTORY_PATCH'\n{patch}TRAJFACTORY_PATCH"
        return self._call(thought, "bash", {"command": command})

    def _submit(self, thought: str) -> Action:
        """Submit with `thought`, after a look at `git status`: the first call asks for it, the next ones (`_tidy`)
        remove what the test runs wrote (by name: the eval counts `git clean -f` as a destructive command), then
        submit."""
        if self._pending is None:
            self._pending, self._phase = thought, "status"
            return self._call(self._say("status"), "bash", {"command": "git status --short"})
        self._phase = "done"
        return self._call(thought, "submit", {})

    def _tidy(self, observation: str) -> Action:
        stray = [line[3:].strip() for line in observation.splitlines() if line.startswith("?? ")]
        stray = [p for p in stray if not p.startswith('"') and not any(
            f == p.rstrip("/") or f.startswith(p if p.endswith("/") else p + "/") for f in self._named)]
        if not stray:
            return self._submit(self._pending or self._say("submit_pass"))
        self._phase = "tidied"
        shown = ", ".join(f"`{p}`" for p in stray[:3]) + (f" and {len(stray) - 3} more" if len(stray) > 3 else "")
        return self._call(self._say("tidy", files=shown), "bash",
                          {"command": "rm -rf -- " + " ".join(shlex.quote(p) for p in stray)})

    async def act(self, messages: list[Message], observation: str = "") -> Action:
        last = messages[-1] if messages else None
        observation = observation or (last.content or "" if last is not None and last.role == "tool" else "")
        if last is not None and last.role == "tool" and last.name == "edit" and self._editing:
            if not observation.startswith("Error") and self._editing not in self._edited:
                self._edited.append(self._editing)
            self._editing = None
        if last is not None and last.role == "tool" and last.name == "edit" and observation.startswith("Error: old_str"):
            return self._apply_whole_fix(self._say("fallback"))
        phase = self._phase
        if phase == "reproduce":
            self._phase = "locate"
            return self._call(self._say("reproduce"), "bash", {"command": _pytest(self._failing)})
        if phase == "locate":
            return self._locate(observation)
        if phase == "found":
            return self._found(observation)
        if phase == "fix" and self._edits:
            return self._fix()
        if phase in ("fix", "rerun"):
            self._phase = "checked"
            return self._call(self._say("rerun"), "bash", {"command": _pytest(self.task.checks.FAIL_TO_PASS[:20])})
        if phase == "checked":
            if not passed(observation):
                if not self._patched:
                    return self._apply_whole_fix(self._say("still_failing", summary=summary(observation)))
                return self._submit(self._say("submit_anyway", summary=summary(observation)))
            self._phase = "regressed"
            files = ", ".join(f"`{f}`" for f in self._test_files)
            return self._call(self._say("regress", files=files), "bash", {"command": _pytest(self._test_files)})
        if phase == "regressed":
            ok = passed(observation)
            return self._submit(self._say("submit_pass") if ok else
                                self._say("submit_anyway", summary=summary(observation)))
        if phase == "status":
            return self._tidy(observation)
        return self._submit(self._pending or self._say("submit_pass"))
