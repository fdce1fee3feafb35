"""Combined multi-bug candidates (SWE-smith's `combine_file`): several validated bugs of one file as one task.

    combos = combine(tasks, checkout, size=2, max_per_file=2, seed=0)

Only bugs that break different tests are combined (their FAIL_TO_PASS sets differ), so every part of the combined
bug is needed to explain the failures; their patches must touch different lines. The combined patch is the
parts applied one after the other, as one diff; it goes through the same validation and gold proof as any
candidate, and the task's gold fix undoes all of them.
"""

from __future__ import annotations

import itertools
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

from trajfactory.schema import Candidate, Task, content_hash

SYNTHESIZER = "swe.combine"
FAMILY = "combine_file"


def _combined_patch(checkout: Path, patches: list[str]) -> str | None:
    """The diff of the checkout with every patch applied in turn (None: they do not apply together)."""
    with tempfile.TemporaryDirectory(prefix="trajfactory-combine-") as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(checkout, tree, ignore=shutil.ignore_patterns(".git"))
        git = ["git", "-c", "user.name=trajfactory", "-c", "user.email=trajfactory@localhost"]
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "clean", "--no-verify"]):
            subprocess.run([*git, *cmd], cwd=tree, check=True, capture_output=True)
        for n, patch in enumerate(patches):
            path = Path(tmp) / f"part{n}.diff"
            path.write_text(patch if patch.endswith("\n") else patch + "\n")
            if subprocess.run([*git, "apply", str(path)], cwd=tree, capture_output=True).returncode != 0:
                return None
        out = subprocess.run([*git, "diff"], cwd=tree, capture_output=True, text=True, check=True).stdout
    return out or None


def combine(tasks: list[Task], candidates: list[Candidate], checkout: str | Path, *, size: int = 2,
            max_per_file: int = 2, seed: int = 0) -> list[Candidate]:
    """Up to `max_per_file` candidates per file, each `size` of the file's proven bugs with differing FAIL_TO_PASS."""
    by_id = {c.candidate_id: c for c in candidates}
    per_file: dict[str, list[Task]] = {}
    for task in tasks:
        if task.family != FAMILY and task.validation.candidate_id in by_id:
            per_file.setdefault(task.entity.file, []).append(task)
    rng = random.Random(seed)
    out: list[Candidate] = []
    for file, group in sorted(per_file.items()):
        group = sorted(group, key=lambda t: t.task_id)
        combos = [c for c in itertools.combinations(group, size)
                  if len({frozenset(t.checks.FAIL_TO_PASS) for t in c}) == size
                  and not _overlap([by_id[t.validation.candidate_id] for t in c])]
        rng.shuffle(combos)
        made = 0
        for combo in combos:
            if made >= max_per_file:
                break
            parts = [by_id[t.validation.candidate_id] for t in combo]
            patch = _combined_patch(Path(checkout), [p.patch for p in parts])
            if patch is None:
                continue
            first = parts[0]
            lines = sorted({n for p in parts for n in p.changed_lines})
            out.append(Candidate(
                candidate_id=content_hash(first.repo, first.base_commit, patch), source_id=first.source_id,
                repo=first.repo, base_commit=first.base_commit, family=FAMILY, scope="module",
                entity=first.entity.model_copy(update={"name": " + ".join(p.entity.name for p in parts)}),
                patch=patch, changed_lines=lines, synthesizer=SYNTHESIZER, synthesizer_version="1",
                params={"parts": [p.candidate_id for p in parts], "families": [p.family for p in parts],
                        "file": file}))
            made += 1
    return out


def _overlap(parts: list[Candidate]) -> bool:
    """Whether two parts change the same lines (their combination would not keep both bugs)."""
    seen: set[int] = set()
    for part in parts:
        lines = set(part.changed_lines)
        if seen & lines:
            return True
        seen |= lines
    return False
