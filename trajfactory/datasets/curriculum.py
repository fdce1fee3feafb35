"""A measured difficulty for every SWE task of a version, and a curriculum order (easiest first).

The score (0..1) weighs what can be measured of a task: the size of its fix (changed lines), the breadth of its
failure (FAIL_TO_PASS tests), the number of bugs combined in it and of files its fix touches; where a model
rolled out on the task, its failure rate is half the score. The `difficulty` label is the score's band.
"""

from __future__ import annotations

import math
from collections import defaultdict

from trajfactory.schema import Task, Trajectory, Verdict

BANDS = ((0.33, "easy"), (0.66, "medium"), (math.inf, "hard"))


def _changed(patch: str) -> tuple[int, int]:
    lines = sum(1 for ln in patch.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---")))
    files = sum(1 for ln in patch.splitlines() if ln.startswith("+++ "))
    return lines, max(files, 1)


def score(task: Task, model_failure_rate: float | None = None) -> float:
    """The task's difficulty score: static features, and the model's failure rate when there is one."""
    lines, files = _changed(task.gold.patch)
    parts = len(task.provenance.params.get("parts") or []) or 1
    static = (0.4 * min(1.0, math.log1p(lines) / math.log1p(40))
              + 0.3 * min(1.0, math.log1p(len(task.checks.FAIL_TO_PASS)) / math.log1p(20))
              + 0.2 * min(1.0, (parts - 1) / 3)
              + 0.1 * min(1.0, (files - 1) / 3))
    return round(static if model_failure_rate is None else 0.5 * static + 0.5 * model_failure_rate, 4)


def band(value: float) -> str:
    return next(label for top, label in BANDS if value < top)


def rate(tasks: list[Task], trajectories: list[Trajectory], verdicts: list[Verdict]) -> list[Task]:
    """The tasks with `difficulty_score`, `difficulty` and `curriculum` measured (`verdicts`: the tests')."""
    passed = {v.trajectory_id: v.passed for v in verdicts if v.subject == "trajectory"}
    model: dict[str, list[bool]] = defaultdict(list)
    for tr in trajectories:
        if tr.policy.name == "model" and tr.trajectory_id in passed:
            model[tr.task_id].append(passed[tr.trajectory_id])
    scored = []
    for task in tasks:
        runs = model.get(task.task_id)
        value = score(task, None if not runs else 1 - sum(runs) / len(runs))
        scored.append(task.model_copy(update={"difficulty_score": value, "difficulty": band(value)}))
    order = sorted(scored, key=lambda t: (t.difficulty_score, t.task_id))
    rank = {t.task_id: n for n, t in enumerate(order, 1)}
    return [t.model_copy(update={"curriculum": rank[t.task_id]}) for t in scored]
