"""What the records of a run go through before they become a dataset version: episodes the infrastructure broke
are dropped, near-duplicate tasks are removed, and every task and trajectory gets its split.

    out = release(tasks, trajectories, verdicts, seed=0)
    out.tasks, out.trajectories, out.verdicts    # kept, with `split` set
    out.quarantine                              # near_duplicate tasks, infra_failed trajectories, with reasons
    out.lineage, out.summary                    # the clusters removed and the split rule; per split counts

(The scan of the rows themselves, placeholders and secrets, runs as the version is written: `publish.py`.)
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from trajfactory.datasets import splits
from trajfactory.executors.protocol import INFRA_FAILED
from trajfactory.schema import Quarantine, Task, Trajectory, WebTask, quarantined

STAGE = "build"


@dataclass
class Released:
    tasks: list[Any]
    trajectories: list[Trajectory]
    verdicts: list[Any]
    quarantine: list[Quarantine] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def keep(self, rows: list[Any]) -> list[Any]:
        """Rows of another per-task or per-trajectory table (web verification) that still belong to the version."""
        tasks = {t.task_id for t in self.tasks}
        trajs = {t.trajectory_id for t in self.trajectories}
        return [r for r in rows if r.task_id in tasks and (getattr(r, "trajectory_id", None) in (None, *trajs))]


def item_of(task: Task | WebTask, base_group: str) -> splits.Item:
    """A task as the splitter sees it: statement, fix, group."""
    if isinstance(task, WebTask):
        fix = json.dumps([c.model_dump() for c in task.checks], sort_keys=True) if task.checks else ""
        return splits.Item(task.task_id, task.spec.task_description + "\n" + "\n".join(task.spec.steps), fix,
                           base_group, kind="web")
    return splits.Item(task.task_id, task.instruction, splits.changed_lines(task.gold.patch), base_group)


def base_groups(tasks: list[Task | WebTask]) -> dict[str, str]:
    """task id -> its group before merging: the repository (site) when there are three or more, else the function
    (tutorial)."""
    swe = [t for t in tasks if isinstance(t, Task)]
    web = [t for t in tasks if isinstance(t, WebTask)]
    out = {}
    by_repo = len({t.environment.repo for t in swe}) >= 3
    for t in swe:
        out[t.task_id] = t.environment.repo if by_repo else f"{t.environment.repo}:{t.entity.file}::{t.entity.name}"
    by_site = len({t.environment.app for t in web}) >= 3
    for t in web:
        out[t.task_id] = t.environment.app if by_site else f"{t.environment.app}:{t.provenance.tutorial_id}"
    return out


def release(tasks: list[Any], trajectories: list[Trajectory], verdicts: list[Any], *, seed: int = 0,
            threshold: float = splits.THRESHOLD) -> Released:
    """Drop infra-failed episodes and near-duplicate tasks (with quarantine records), then assign splits."""
    quarantine: list[Quarantine] = []
    broken = {t.trajectory_id for t in trajectories if t.exit_status == INFRA_FAILED}
    for t in trajectories:
        if t.trajectory_id in broken:
            why = next((s.observation for s in reversed(t.steps) if s.error == "infra_error"), "")
            quarantine.append(quarantined(STAGE, "trajectory", t.trajectory_id, INFRA_FAILED,
                                          f"task {t.task_id}, policy {t.policy.name}: {why}"[:1000]))
    groups = base_groups(tasks)
    items = [item_of(t, groups[t.task_id]) for t in tasks]
    kept_items, clusters = splits.dedup(items, threshold)
    removed = {i for members in clusters for i in members[1:]}
    kind = {t.task_id: "web_task" if isinstance(t, WebTask) else "task" for t in tasks}
    for members in clusters:
        for i in members[1:]:
            quarantine.append(quarantined(STAGE, kind[i], i, "near_duplicate",
                                          f"the same problem with the same fix as task {members[0]} (MinHash "
                                          f"similarity of statement and fix >= {threshold})"))
    split_of = splits.assign(kept_items, seed, threshold=threshold)
    leaked = splits.leaks(kept_items, split_of, threshold)
    if leaked:  # assign() keeps every similar pair in one split; this is its proof, checked on every version
        raise AssertionError(f"near-duplicates across splits: {leaked[:5]}")
    kept_tasks = [t.model_copy(update={"split": split_of[t.task_id]}) for t in tasks if t.task_id not in removed]
    kept_trajs = [t.model_copy(update={"split": split_of[t.task_id]}) for t in trajectories
                  if t.task_id in split_of and t.trajectory_id not in broken]
    traj_ids = {t.trajectory_id for t in kept_trajs}
    kept_verdicts = [v for v in verdicts if v.task_id in split_of
                     and (getattr(v, "trajectory_id", None) is None or v.trajectory_id in traj_ids)]
    lineage = {
        "dedup": {"method": "MinHash (datasketch) of word 3-grams of statement and fix, boilerplate dropped",
                  "threshold": threshold, "num_perm": splits.NUM_PERM, "removed": len(removed),
                  "clusters": clusters},
        "splits": {"seed": seed, "fractions": dict(zip(splits.SPLITS, splits.FRACTIONS)),
                   "groups": "repository (3+ repositories) or function; site (3+ sites) or tutorial; merged where "
                             "statements or fixes are near-duplicates", "leaks": len(leaked)},
    }
    group_of = splits.groups(kept_items, threshold)
    tasks_per = Counter(split_of[t.task_id] for t in kept_tasks)
    trajs_per = Counter(t.split for t in kept_trajs)
    summary = {
        "splits": [{"split": s, "tasks": tasks_per.get(s, 0), "trajectories": trajs_per.get(s, 0),
                    "groups": len({group_of[i] for i, sp in split_of.items() if sp == s})} for s in splits.SPLITS],
        "near_duplicates": [{"kept": m[0], "removed": ", ".join(m[1:])} for m in clusters],
    }
    return Released(kept_tasks, kept_trajs, kept_verdicts, quarantine, lineage, summary)
