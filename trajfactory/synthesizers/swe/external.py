"""Bug patches from elsewhere, as candidates: SWE-smith task instances (or any bug patch) validated by the same
harness as the procedural ones, so the synthesizers can be compared and combined.

    candidates, bad = external_candidates("bugs.jsonl", source, checkout)

The file holds instances in SWE-smith's format: a JSON list, JSON lines, or one object, each with `patch` (the
diff that introduces the bug into the repository's pinned commit) and optionally `instance_id` and
`strategy` (the family it came from). A patch may be git-style or difflib-style (`--- file` / `+++ file`, with or
without `a/` `b/` prefixes and timestamps): it is normalized to a git diff that `git apply` takes and that
`reverse_patch` turns into the gold fix. A patch that touches no Python source or does not apply is quarantined
with its reason, and so is one that changes a file a submitted fix may not change (tests, `conftest.py`, the test
and build configuration, start-up hooks, compiled code: `executors.guard.protected`): verification reverts a fix's
changes there, so no agent could undo that bug and the task would fail every correct fix.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import tempfile
from pathlib import Path

from trajfactory.executors.guard import COMPILED_SOURCES, paths_of, protected
from trajfactory.schema import Candidate, Entity, Quarantine, Source, content_hash, quarantined
from trajfactory.synthesizers.swe.entities import complexity, first_line

SYNTHESIZER = "swe.external"
STAGE = "synthesize"
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")


def load_instances(path: str | Path) -> list[dict]:
    """Instances from a JSON list, a JSON-lines file, or one JSON object; ValueError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file of bug patches; give a JSON or JSON-lines file of instances")
    text = path.read_text()
    try:
        data = json.loads(text)
    except ValueError:
        data = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except ValueError as exc:
                    raise ValueError(f"{path}:{n}: not JSON ({exc}); expected one instance object per line") from None
    data = data if isinstance(data, list) else [data]
    for n, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("patch"), str):
            raise ValueError(f"{path}: instance {n} has no `patch` string; SWE-smith instances hold the bug patch there")
    return data


def _path(header: str) -> str | None:
    name = header[4:].rstrip("\n").split("\t")[0].strip()
    if name == "/dev/null":
        return None
    return name[2:] if name[:2] in ("a/", "b/") else name


def normalize_patch(patch: str) -> str:
    """A git-style diff of the same change: `diff --git a/P b/P` headers, no timestamps, a final newline."""
    lines = patch.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git ") or line.startswith(("index ", "new file mode", "deleted file mode",
                                                               "similarity index", "old mode", "new mode")):
            i += 1  # headers are rebuilt from --- / +++
            continue
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old, new = _path(line), _path(lines[i + 1])
            name = new or old
            out.append(f"diff --git a/{name} b/{name}\n")
            if old is None:
                out.append("new file mode 100644\n")
            elif new is None:
                out.append("deleted file mode 100644\n")
            out.append(f"--- {'a/' + old if old else '/dev/null'}\n")
            out.append(f"+++ {'b/' + new if new else '/dev/null'}\n")
            i += 2
            continue
        out.append(line if line.endswith("\n") else line + "\n")
        i += 1
    return "".join(out)


def changed_lines(patch: str) -> dict[str, list[int]]:
    """file -> the 1-based lines of the old file that each hunk removes or modifies (a pure insertion: the line
    before it), for coverage-based test selection."""
    out: dict[str, set[int]] = {}
    file, old_line = None, 0
    for line in patch.splitlines():
        if line.startswith("--- "):
            file = _path(line)
            continue
        if line.startswith("+++ "):
            file = file or _path(line)
            continue
        if (m := _HUNK.match(line)) is not None:
            old_line = int(m.group(1))
            continue
        if file is None or not line:
            continue
        if line[0] == " ":
            old_line += 1
        elif line[0] == "-":
            out.setdefault(file, set()).add(old_line)
            old_line += 1
        elif line[0] == "+":
            out.setdefault(file, set()).add(max(old_line - 1, 1))
    return {f: sorted(lines) for f, lines in out.items()}


def _entity(tree_root: Path, file: str, lines: list[int]) -> tuple[Entity, str]:
    """The innermost function or class holding the first changed line, and the change's scope."""
    source = (tree_root / file).read_text(errors="replace")
    module = ast.parse(source)
    best: tuple[ast.AST, str] | None = None
    stack: list[tuple[ast.AST, str]] = [(n, n.name) for n in module.body if isinstance(
        n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    while stack:
        node, name = stack.pop()
        if first_line(node) <= lines[0] <= node.end_lineno:
            best = (node, name)
            stack += [(c, f"{name}.{c.name}") for c in node.body
                      if isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    if best is None:
        entity = Entity(file=file, name=Path(file).stem, kind="function", lineno=1,
                        end_lineno=len(source.splitlines()) or 1, complexity=complexity(module))
        return entity, "module"
    node, name = best
    kind = "class" if isinstance(node, ast.ClassDef) else "method" if "." in name else "function"
    entity = Entity(file=file, name=name, kind=kind, lineno=first_line(node), end_lineno=node.end_lineno,
                    complexity=complexity(node), body_lineno=node.body[0].lineno)
    inside = all(first_line(node) <= n <= node.end_lineno for n in lines)
    return entity, "function" if kind != "class" and inside else "class" if kind == "class" else "module"


def _applies(tree: Path, patch: str) -> str | None:
    """None when `git apply --check` takes the patch in the checkout, else git's complaint."""
    with tempfile.NamedTemporaryFile("w", suffix=".diff", delete=False) as fh:
        fh.write(patch)
    try:
        proc = subprocess.run(["git", "apply", "--check", "--whitespace=nowarn", fh.name], cwd=tree,
                              capture_output=True, text=True)
    finally:
        Path(fh.name).unlink(missing_ok=True)
    return None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()[-300:]


def external_candidates(path: str | Path, source: Source, tree: str | Path) -> tuple[list[Candidate], list[Quarantine]]:
    """Candidates of the bug patches in `path` for the checkout `tree` of `source`; bad ones quarantined."""
    tree = Path(tree)
    if not (tree / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=tree, check=True)  # `git apply --check` needs a repository
    candidates: dict[str, Candidate] = {}
    quarantine: list[Quarantine] = []
    for n, item in enumerate(load_instances(path)):
        instance_id = str(item.get("instance_id") or f"{Path(path).name}#{n}")
        bad = lambda reason, detail: quarantine.append(  # noqa: E731
            quarantined(STAGE, "candidate", content_hash(source.name, instance_id, reason), reason,
                        f"{instance_id}: {detail}", source.uri))
        patch = normalize_patch(item["patch"])
        lines = {f: ls for f, ls in changed_lines(patch).items() if f.endswith(".py")}
        if not lines:
            bad("no_python_change", "the patch changes no Python source file")
            continue
        if compiled := [p for p in paths_of(patch) if p.endswith(COMPILED_SOURCES)]:
            bad("compiled_source", f"the patch changes {', '.join(compiled)}, which the project's extension modules "
                "are compiled from once, when its image is built: validation and verification run that build, so "
                "the change would not take effect; give bugs in its Python code")
            continue
        if guarded := [f"{p} ({why})" for p in paths_of(patch) if (why := protected(p))]:
            bad("protected_path", f"the patch changes {', '.join(guarded)}: verification reverts a fix's changes "
                "there, so no fix could undo this bug; give bugs in the library's own code")
            continue
        if (err := _applies(tree, patch)) is not None:
            bad("patch_failed", f"the patch does not apply to {source.name} at {source.commit[:12]}: {err}")
            continue
        file = sorted(lines)[0]
        try:
            entity, scope = _entity(tree, file, lines[file])
        except (SyntaxError, ValueError, OSError) as exc:
            bad("unparseable_file", f"{file} does not parse: {exc}")
            continue
        if len(lines) > 1:
            scope = "module"
        candidate = Candidate(
            candidate_id=content_hash(source.name, source.commit, patch), source_id=source.source_id,
            repo=source.name, base_commit=source.commit, family=str(item.get("strategy") or "external"),
            scope=scope, entity=entity, patch=patch, changed_lines=lines[file] if len(lines) == 1 else [],
            synthesizer=SYNTHESIZER, synthesizer_version="1",
            params={"instance_id": instance_id, "files": sorted(lines)})
        candidates.setdefault(candidate.candidate_id, candidate)
    return list(candidates.values()), quarantine
