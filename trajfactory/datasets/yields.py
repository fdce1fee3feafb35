"""Yield tables: how many candidates became tasks, trajectories and verified trajectories."""

from __future__ import annotations

from collections import defaultdict

from trajfactory.schema import Candidate, Task, Trajectory, Validation, Verdict


def yields(candidates: list[Candidate], validations: list[Validation], tasks: list[Task],
           trajectories: list[Trajectory], verdicts: list[Verdict]) -> dict[str, list[dict]]:
    """Per repository and per mutation family: candidates, valid tasks, trajectories, verified."""
    family_of = {c.candidate_id: (c.repo, c.family) for c in candidates}
    task_key = {t.task_id: (t.environment.repo, t.family) for t in tasks}
    traj_task = {tr.trajectory_id: tr.task_id for tr in trajectories}
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {"candidates": 0, "valid": 0, "tasks": 0, "trajectories": 0, "verified": 0})
    for c in candidates:
        counts[(c.repo, c.family)]["candidates"] += 1
    for v in validations:
        if v.status == "valid" and v.candidate_id in family_of:
            counts[family_of[v.candidate_id]]["valid"] += 1
    for t in tasks:
        counts[task_key[t.task_id]]["tasks"] += 1
    for tr in trajectories:
        if tr.task_id in task_key:
            counts[task_key[tr.task_id]]["trajectories"] += 1
    for v in verdicts:
        if v.subject == "trajectory" and v.passed and traj_task.get(v.trajectory_id) in task_key:
            counts[task_key[traj_task[v.trajectory_id]]]["verified"] += 1

    def rollup(index: int) -> list[dict]:
        agg: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for key, row in counts.items():
            for k, n in row.items():
                agg[key[index]][k] += n
        name = "repository" if index == 0 else "family"
        return [{name: k, **dict(v), "yield": round(v["valid"] / v["candidates"], 3) if v["candidates"] else 0.0}
                for k, v in sorted(agg.items())]

    return {"by_repository": rollup(0), "by_family": rollup(1)}
