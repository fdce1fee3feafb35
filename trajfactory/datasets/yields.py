"""Yield tables of both halves, computed here only.

SWE (`yields`): how many candidates became tasks, trajectories and verified trajectories, per repository and
per mutation family; per policy (pass@1 / pass@k), what the model cost, and how far the model judge agrees
with the tests. Web (`web_yields`): the AgentTrek funnel per site, per policy, and the judge against the
state checks."""

from __future__ import annotations

from collections import Counter, defaultdict
from math import comb
from pathlib import Path
from typing import Iterable

from trajfactory.schema import (Candidate, ModelUsage, Quarantine, Task, Trajectory, Tutorial, Validation, Verdict,
                                WebTask, WebVerification, stage_stats)
from trajfactory.settings.sites import declared_site
from trajfactory.verifiers import judge as judge_verifier, state as state_verifier
from trajfactory.verifiers.record import verification


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
           judge_agreement: dict | None = None, quarantine: list[Quarantine] | None = None,
           repositories: dict[str, str] | None = None) -> dict[str, list[dict]]:
    """Per repository and per mutation family: candidates, validated ones, tasks (validated and with their gold
    patch proven: the only ones that count for the yield), trajectories, verified; per policy; the model usage and
    the judge's agreement with the tests when there were any; quarantined items per stage and reason.

    `repositories` (uri -> name) lists every repository of the recipe: one quarantined as a whole (it could not be
    harvested, built or tested) still gets its row, with the reason. `verdicts` are the verdicts of record (tests),
    never the judge's."""
    family_of = {c.candidate_id: (c.repo, c.family) for c in candidates}
    task_key = {t.task_id: (t.environment.repo, t.family) for t in tasks}
    traj_task = {tr.trajectory_id: tr.task_id for tr in trajectories}
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {"candidates": 0, "validated": 0, "tasks": 0, "trajectories": 0, "verified": 0})
    for c in candidates:
        counts[(c.repo, c.family)]["candidates"] += 1
    for v in validations:
        if v.status == "valid" and v.candidate_id in family_of:
            counts[family_of[v.candidate_id]]["validated"] += 1
    for t in tasks:
        counts[task_key[t.task_id]]["tasks"] += 1
    for tr in trajectories:
        if tr.task_id in task_key:
            counts[task_key[tr.task_id]]["trajectories"] += 1
    for v in verdicts:
        if v.subject == "trajectory" and v.passed and traj_task.get(v.trajectory_id) in task_key:
            counts[task_key[traj_task[v.trajectory_id]]]["verified"] += 1
    whole = {q.uri: f"{q.stage}: {q.reason}" for q in quarantine or [] if q.item_kind == "source"
             and q.stage in ("harvest", "build", "reference")}
    # the items of a repository quarantined one by one (gold proofs that failed, files that did not parse): yarl
    # 1.25.1's six `gold_failed` showed as "validated 6, tasks 0" and nothing else
    items: dict[str, Counter[str]] = defaultdict(Counter)
    for q in quarantine or []:
        if q.uri not in whole:
            items[q.uri][f"{q.stage}: {q.reason}"] += 1

    def rollup(index: int) -> list[dict]:
        agg: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for key, row in counts.items():
            for k, n in row.items():
                agg[key[index]][k] += n
        name = "repository" if index == 0 else "family"
        if index == 0:
            for uri, repo in (repositories or {}).items():
                agg.setdefault(repo, defaultdict(int))
        rows = [{name: k, **{c: v.get(c, 0) for c in ("candidates", "validated", "tasks", "trajectories", "verified")},
                 "yield": round(v.get("tasks", 0) / v["candidates"], 3) if v.get("candidates") else 0.0}
                for k, v in sorted(agg.items())]
        if index == 0:
            by_name = {repo: whole.get(uri) or ", ".join(f"{why} ({n})" for why, n in sorted(items[uri].items()))
                       for uri, repo in (repositories or {}).items()}
            for row in rows:
                row["quarantined"] = by_name.get(row["repository"], "")
        return rows

    out = {"by_repository": rollup(0), "by_family": rollup(1), "by_policy": by_policy(trajectories, verdicts)}
    if usage:
        out["model_usage"] = usage_rows(usage)
    if judge_agreement:
        out["judge_agreement"] = judge_rows(judge_agreement)
    if quarantine:
        out["quarantine"] = stage_stats(quarantine)
    return out


# ---------------------------------------------------------------- web


def _site_of_uri(uri: str, sites: Iterable[str]) -> str:
    """The site a quarantined page counts for: the one its source is declared for, else a site named in its path."""
    if (declared := declared_site(uri)) in sites:
        return declared
    parts = Path(uri.split("#", 1)[0]).parts  # /docs/shop/x.html, http://h/shop/x.html
    return next((p for p in parts if p in sites), "-")


def web_yields(tutorials: list[Tutorial], harvest_quarantine: list[Quarantine], tasks: list[WebTask],
               trajectories: list[Trajectory], verdicts: list[Verdict | None], min_confidence: float = 0.8, *,
               sites: Iterable[str] = (), quarantine: list[Quarantine] | None = None) -> dict[str, list[dict]]:
    """The AgentTrek funnel per site: pages -> tutorials -> tasks (checked) -> trajectories -> verified tasks.

    `verified` counts feasible tasks with a verified trajectory (by the verdict of record, see
    `verification`); `verified_infeasible` the infeasible twins correctly reported. A quarantined page counts
    for the site of `sites` its URI's path names. `by_policy` gives each
    policy's trajectories, verified ones (by state / by judge), malformed turns, model use and image
    fallbacks; `judge_agreement` (with judge verdicts) the judge against the state checks.
    """
    verdicts = [v for v in verdicts if v is not None]
    keys = ("pages", "tutorials", "tasks", "infeasible_tasks", "trajectories", "verified", "verified_infeasible")
    rows: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(keys, 0))
    for tut in tutorials:
        site = tut.site or "-"
        rows[site]["pages"] += 1
        rows[site]["tutorials"] += bool(tut.is_tutorial)
    for q in harvest_quarantine:
        rows[_site_of_uri(q.uri, set(sites))]["pages"] += 1
    by_id = {t.task_id: t for t in tasks}
    for t in tasks:
        rows[t.environment.app]["tasks" if t.feasible else "infeasible_tasks"] += 1
    for tr in trajectories:
        rows[by_id[tr.task_id].environment.app if tr.task_id in by_id else "-"]["trajectories"] += 1
    record = verification(tasks, trajectories, verdicts, min_confidence)
    for task_id in sorted({r.task_id for r in record if r.verified and r.task_id in by_id}):
        t = by_id[task_id]
        rows[t.environment.app]["verified" if t.feasible else "verified_infeasible"] += 1
    out = [{"site": site, **r, "yield": round(r["verified"] / r["tutorials"], 3) if r["tutorials"] else 0.0}
           for site, r in sorted(rows.items())]
    summary: dict[str, list[dict]] = {"by_site": out, "by_policy": _by_policy(trajectories, record)}
    judged = [v for v in verdicts if v.verifier == judge_verifier.VERIFIER]
    if judged:
        state = [v for v in verdicts if v.verifier == state_verifier.VERIFIER]
        report = judge_verifier.agreement(judged, state)
        confusion = report.pop("confusion")
        report["judge_only"] = sum(r.verified_by == "judge" for r in record)
        report["judge_only_verified"] = sum(r.verified_by == "judge" and r.verified for r in record)
        summary["judge_agreement"] = [{k: round(v, 3) if isinstance(v, float) else v for k, v in report.items()} | confusion]
    if quarantine:
        summary["quarantine"] = stage_stats(quarantine)
    return summary


def _by_policy(trajectories: list[Trajectory], record: list[WebVerification]) -> list[dict]:
    rec = {r.trajectory_id: r for r in record}
    rows: dict[str, dict] = {}
    for tr in trajectories:
        r = rows.setdefault(tr.policy.name, dict.fromkeys(
            ("trajectories", "verified", "verified_by_state", "verified_by_judge", "malformed_turns", "model_calls",
             "tokens", "image_fallbacks"), 0) | {"cost_usd": 0.0})
        v = rec.get(tr.trajectory_id)
        r["trajectories"] += 1
        r["verified"] += bool(v and v.verified)
        r["verified_by_state"] += bool(v and v.verified and v.verified_by == "state")
        r["verified_by_judge"] += bool(v and v.verified and v.verified_by == "judge")
        r["malformed_turns"] += sum(1 for s in tr.steps if not s.tool and s.error)
        r["model_calls"] += tr.usage.model_calls
        r["tokens"] += tr.usage.prompt_tokens + tr.usage.completion_tokens
        r["image_fallbacks"] += "images_dropped" in tr.policy.params
        r["cost_usd"] = round(r["cost_usd"] + tr.usage.cost_usd, 6)
    return [{"policy": name, **r} for name, r in sorted(rows.items())]
