"""The data side of `trajfactory eval` on web tasks: the held-out web tasks of a dataset version, and the web scores as
pure functions of tasks, trajectories and state verdicts (no browser, no model). The episodes come from the web
pipeline (`pipelines/evaluate_web.py`, one layer up); the report files and table from `training/evaluate.py`.

    is_web_version("datasets/web@v1")                     # True: the version has `web_tasks` rows and no SWE tasks
    tasks, data = held_out_web_tasks("datasets/web@v1", "test")
    web_scores(tasks, trajectories, verdicts, k=2)        # every web score of one model, as a JSON-ready dict

Definitions (`WEB_DEFINITIONS`, which goes into report.json):
- task success: the verdict of record is the task's state checks (`verifiers/state.py`): a feasible task passes when
  every predicate holds, an infeasible twin when the agent reported it infeasible and left the site unchanged.
- tool correctness: an *action* is every step the policy took (malformed replies included, model-server failures
  excluded); it is valid when it parsed as a known BrowserGym action with the arguments that action takes.
- infeasible handling: on infeasible twins, the share of episodes whose last action is `report_infeasible`; on
  feasible tasks, the share wrongly ended that way.
- recovery: of the failing steps that have a next step (malformed reply, invalid action, an action the page refused),
  the share whose next step is a valid action that succeeded (`eval_metrics.recovery`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trajfactory.schema import (StatePredicate, Step, Trajectory, Verdict, WebEnvironment, WebProvenance, WebTask,
                                WebTaskSpec)
from trajfactory.training import eval_metrics
from trajfactory.training.common import data_identity, open_version
from trajfactory.training.evaluate import EvalError, open_split
from trajfactory.verifiers import state as state_verifier

INVALID_ACTION = "invalid_action"
"""The tool name of a step whose action did not parse in the browser environment (`executors/web_env.py`)."""
REPORT_INFEASIBLE = "report_infeasible"

WEB_DEFINITIONS = {
    "verdict": "the task's state checks on the site's final state (verifiers/state.py), the verdict of record: a "
               "feasible task passes when every predicate holds; an infeasible twin when the last action is "
               "report_infeasible and the site's state is unchanged. No judge; an episode without a verdict fails",
    "pass@1": eval_metrics.DEFINITIONS["pass@1"],
    "pass@k": eval_metrics.DEFINITIONS["pass@k"],
    "valid_action_rate": "valid actions / actions; an action is each step the policy took (malformed replies "
                         "included, model-server failures excluded); valid: parsed as a known BrowserGym action with "
                         "the arguments it takes (an action the page then refused is valid, and failed)",
    "mean_steps": "steps / episodes (every step, model-server failures included)",
    "infeasible_reported_rate": "episodes of infeasible tasks whose last action is report_infeasible / episodes of "
                                "infeasible tasks",
    "false_infeasible_rate": "episodes of feasible tasks whose last action is report_infeasible / episodes of "
                             "feasible tasks (lower is better)",
    "recovery_rate": "failing steps (malformed reply, invalid action, an action the page refused) with a next step "
                     "whose next step is a valid action that succeeded / such failing steps",
    "tokens_per_episode": "(prompt + completion tokens) / episodes, from each trajectory's usage record",
}


# ---------------------------------------------------------------- held-out web tasks


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def web_task_from_row(row: dict[str, Any]) -> WebTask:
    """The `WebTask` of one `web_tasks` row (`WebTask.to_row` inverted: `where` and `provenance` come back from
    JSON, the spec from its flattened columns)."""
    spec = {f: row[f] for f in WebTaskSpec.model_fields if f in row and row[f] is not None}
    return WebTask(
        task_id=row["task_id"], instruction=row["instruction"], environment=WebEnvironment(**_json(row["environment"])),
        spec=WebTaskSpec(**{**spec, "prerequisites": list(spec.get("prerequisites") or []),
                            "steps": list(spec.get("steps") or [])}),
        feasible=bool(row["feasible"]), infeasible_reason=row.get("infeasible_reason") or "",
        checks=[StatePredicate(**{**c, "where": _json(c["where"]) or {}, "text_contains": list(c["text_contains"] or [])})
                for c in row.get("checks") or []],
        gold=list(row.get("gold") or []), difficulty=row.get("difficulty") or "",
        provenance=WebProvenance(**_json(row["provenance"])), split=row.get("split") or "")


def is_web_version(data: str | Path) -> bool:
    """Whether `data` names a version of web tasks: `web_tasks` rows and no SWE `tasks` rows. False also for data
    that does not open (the SWE evaluation then names what was wrong, as it always has)."""
    try:
        _, _, read = open_version(data, EvalError)
    except EvalError:
        return False
    return bool(read("web_tasks")) and not read("tasks")


def held_out_web_tasks(data: str | Path, split: str, max_tasks: int | None = None
                       ) -> tuple[list[WebTask], dict[str, Any]]:
    """The web tasks of `split` (`all`: every split) of a dataset version that have state checks, in task-id order,
    at most `max_tasks`, and what identifies that data. A task without state checks (read-only, judge-verified) has
    no verdict of record here: it is left out and counted in `unchecked_in_split`."""
    store, version, read, ref = open_split(data, split)
    rows = read("web_tasks")
    in_split = [r for r in rows if split == "all" or r.get("split") == split]
    chosen = [r for r in in_split if r.get("checks")]
    if not chosen:
        found = {s: sum(r.get("split") == s for r in rows) for s in sorted({r.get("split") or "" for r in rows})}
        raise EvalError(f"--data {ref} --split {split}: no web tasks with state checks in split {split!r} of version "
                        f"{version} (web tasks per split: {found or 'none'}; without state checks: "
                        f"{len(in_split) - len(chosen)}); choose another --split, or --split all")
    tasks = sorted((web_task_from_row(r) for r in chosen), key=lambda t: t.task_id)[:max_tasks]
    source = {**data_identity(store, version), "kind": "web", "split": split, "tasks_in_split": len(chosen),
              "unchecked_in_split": len(in_split) - len(chosen), "tasks_evaluated": len(tasks),
              "infeasible_evaluated": sum(not t.feasible for t in tasks)}
    return tasks, source


# ---------------------------------------------------------------- steps and episodes


def is_action(step: Step) -> bool:
    """Whether a step counts as one of the policy's actions (a model-server failure does not)."""
    return eval_metrics.is_call(step)


def is_valid_action(step: Step) -> bool:
    """Parsed as a known BrowserGym action with the arguments it takes (it may still have failed on the page)."""
    return eval_metrics.is_valid_call(step) and step.tool != INVALID_ACTION


def reported_infeasible(trajectory: Trajectory) -> bool:
    """The episode ended with `report_infeasible` (what the state verifier reads as the agent's report)."""
    return bool(trajectory.steps) and trajectory.steps[-1].tool == REPORT_INFEASIBLE


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


# ---------------------------------------------------------------- one model's web scores


def web_scores(tasks: list[WebTask], trajectories: list[Trajectory], verdicts: list[Verdict], k: int
               ) -> dict[str, Any]:
    """Every web score of one model's episodes on `tasks`. Only state verdicts count (the verdict of record); an
    episode without one counts as failed."""
    passed = {v.trajectory_id: v.passed for v in verdicts if v.verifier == state_verifier.VERIFIER}
    by_task = eval_metrics.outcomes_by_task((t.task_id for t in tasks), trajectories, passed)
    feasible = {t.task_id: t.feasible for t in tasks}

    steps = [s for tr in trajectories for s in tr.steps]
    actions = [s for s in steps if is_action(s)]
    valid = [s for s in actions if is_valid_action(s)]
    on_infeasible = [tr for tr in trajectories if feasible.get(tr.task_id) is False]
    on_feasible = [tr for tr in trajectories if feasible.get(tr.task_id, True)]
    reported_right = sum(reported_infeasible(tr) for tr in on_infeasible)
    reported_wrong = sum(reported_infeasible(tr) for tr in on_feasible)
    n = len(trajectories)
    return {
        "task_success": {**eval_metrics.task_success(by_task, k),
                         "feasible_passed": sum(passed.get(tr.trajectory_id, False) for tr in on_feasible),
                         "infeasible_passed": sum(passed.get(tr.trajectory_id, False) for tr in on_infeasible)},
        "tool_correctness": {
            "actions": len(actions), "valid_actions": len(valid), "valid_action_rate": _rate(len(valid), len(actions)),
            "malformed_replies": sum(s.error in eval_metrics.MALFORMED for s in actions),
            "invalid_actions": sum(s.tool == INVALID_ACTION for s in actions),
            "failed_on_page": sum(s.error is not None for s in valid),
            "actions_by_name": {name: sum(s.tool == name for s in valid) for name in sorted({s.tool for s in valid})},
            "mean_steps": _rate(len(steps), n),
        },
        "infeasible_handling": {
            "infeasible_episodes": len(on_infeasible), "reported_on_infeasible": reported_right,
            "infeasible_reported_rate": _rate(reported_right, len(on_infeasible)),
            "feasible_episodes": len(on_feasible), "reported_on_feasible": reported_wrong,
            "false_infeasible_rate": _rate(reported_wrong, len(on_feasible)),
        },
        **eval_metrics.episode_scores(trajectories),
    }
