"""Yield tables: how many candidates became tasks, trajectories and verified trajectories; per policy
(pass@1 / pass@k), what the model cost, and how far the model judge agrees with the tests."""

from __future__ import annotations

from collections import defaultdict
from math import comb

from trajfactory.schema import Candidate, ModelUsage, Task, Trajectory, Validation, Verdict


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one task from `n` samples of which `c` passed (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def by_policy(trajectories: list[Trajectory], verdicts: list[Verdict]) -> list[dict]:
    """Per policy: tasks, trajectories, verified, pass@1 and pass@k (k: the samples per task)."""
    passed = {v.trajectory_id for v in verdicts if v.subject == "trajectory" and v.passed}
    groups: dict[tuple[str, str], dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for tr in trajectories:
        groups[(tr.policy.name, tr.policy.model or "")][tr.task_id].append(tr.trajectory_id in passed)
    rows = []
    for (name, model), per_task in sorted(groups.items()):
        k = min(len(outcomes) for outcomes in per_task.values())
        n_traj = sum(len(o) for o in per_task.values())
        rows.append({
            "policy": name, "model": model, "tasks": len(per_task), "trajectories": n_traj,
            "verified": sum(sum(o) for o in per_task.values()),
            "pass@1": round(sum(pass_at_k(len(o), sum(o), 1) for o in per_task.values()) / len(per_task), 3),
            "k": k,
            "pass@k": round(sum(pass_at_k(len(o), sum(o), k) for o in per_task.values()) / len(per_task), 3),
        })
    return rows


def usage_rows(usage: list[ModelUsage]) -> list[dict]:
    """Model usage per stage, and the total: requests, tokens, latency and the cost estimate."""
    stages: dict[str, ModelUsage] = {}
    for u in usage:
        stages[u.stage] = stages[u.stage] + u if u.stage in stages else u
    if not stages:
        return []
    total = sum(stages.values(), ModelUsage(stage="total"))
    total = total.model_copy(update={"stage": "total"})
    return [{**u.model_dump(), "latency_s": round(u.latency_s, 2), "cost_usd": round(u.cost_usd, 6)}
            for u in [*stages.values(), total]]


def judge_rows(report: dict | None) -> list[dict]:
    """`verifiers.judge.agreement(...)` as one table row (None: no judge ran)."""
    if not report:
        return []
    flat = {**{k: v for k, v in report.items() if k != "confusion"}, **report.get("confusion", {})}
    return [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in flat.items()}]


def yields(candidates: list[Candidate], validations: list[Validation], tasks: list[Task],
           trajectories: list[Trajectory], verdicts: list[Verdict], *, usage: list[ModelUsage] | None = None,
           judge_agreement: dict | None = None) -> dict[str, list[dict]]:
    """Per repository and per mutation family: candidates, valid tasks, trajectories, verified; per policy;
    the model usage and the judge's agreement with the tests when there were any. `verdicts` are the
    verdicts of record (tests), never the judge's."""
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

    out = {"by_repository": rollup(0), "by_family": rollup(1), "by_policy": by_policy(trajectories, verdicts)}
    if usage:
        out["model_usage"] = usage_rows(usage)
    if judge_agreement:
        out["judge_agreement"] = judge_rows(judge_agreement)
    return out
