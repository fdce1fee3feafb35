"""Table rows converted to the formats the field's trainers and harnesses read, each proven by its consumer's own code
in the tests.

- `trl_sft_rows`: TRL's conversational SFT rows (`messages`, `tools` as a JSON string, which TRL decodes: a list of
  tool dicts would become one Arrow struct that merges every tool's properties).
- `trl_dpo_rows`: TRL's conversational preference rows (`prompt`, `chosen`, `rejected`, `tools`): a verified and
  a failed trajectory of one task, given the same task turns.
- `rl_rows`: verl's / SkyRL's RL rows (`data_source`, chat `prompt`, `ability`, `reward_model`, `extra_info`).
- `swebench_instances`: SWE-bench / SWE-smith instances (see `datasets/swebench.py` for the buggy-commit branches
  that make them reproduce).

The verdict of record decides what counts as verified: the tests for a SWE trajectory, the `web_verification`
table (state checks, or a confident judge where a task has none) for a web one. A judge verdict never vetoes, and
its abstentions do not count. Reviews (the viewer's `reviews` table) can filter further: a rejected trajectory is
never exported, and `accepted_only` keeps only accepted ones.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

SWEBENCH_KEYS = ("instance_id", "repo", "base_commit", "patch", "test_patch", "problem_statement", "hints_text",
                 "created_at", "version", "FAIL_TO_PASS", "PASS_TO_PASS", "environment_setup_commit", "image_name")


def verified_ids(verdict_rows: Iterable[dict], web_verification_rows: Iterable[dict] = ()) -> dict[str, bool]:
    """trajectory id -> verified, by the verdict of record (tests for SWE, the web verification table for web)."""
    out: dict[str, bool] = {}
    for v in verdict_rows:
        if v.get("verifier") == "tests" and v.get("subject", "trajectory") == "trajectory" and v.get("trajectory_id"):
            out[v["trajectory_id"]] = bool(v["passed"])
    for r in web_verification_rows:
        out[r["trajectory_id"]] = bool(r["verified"])
    return out


def _reviewed(review_rows: Iterable[dict]) -> dict[str, str]:
    """trajectory id -> its latest review label."""
    latest: dict[str, tuple[Any, str]] = {}
    for r in review_rows:
        key = r["trajectory_id"]
        if key not in latest or str(r.get("created_at")) >= str(latest[key][0]):
            latest[key] = (r.get("created_at"), r["label"])
    return {k: label for k, (_, label) in latest.items()}


def _messages(rows: Iterable[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if v is not None} for m in rows]


def _tools(tools: Any) -> str:
    """Tool schemas as a JSON string (TRL's `json.loads` takes it back exactly)."""
    return tools if isinstance(tools, str) else json.dumps(list(tools or []))


def _selected(trajectory_rows, verdict_rows, web_verification_rows, review_rows, accepted_only):
    verified = verified_ids(verdict_rows, web_verification_rows)
    reviews = _reviewed(review_rows)
    for t in trajectory_rows:
        label = reviews.get(t["trajectory_id"])
        if label == "reject" or (accepted_only and label != "accept"):
            continue
        yield t, verified.get(t["trajectory_id"])


def trl_sft_rows(trajectory_rows: Iterable[dict], verdict_rows: Iterable[dict] = (),
                 web_verification_rows: Iterable[dict] = (), review_rows: Iterable[dict] = (), *,
                 only_verified: bool = True, accepted_only: bool = False) -> list[dict[str, Any]]:
    """TRL conversational rows, one per (verified) trajectory: `messages`, `tools` (JSON), and where it came from."""
    rows = []
    for t, ok in _selected(trajectory_rows, verdict_rows, web_verification_rows, review_rows, accepted_only):
        if only_verified and not ok:
            continue
        rows.append({"messages": _messages(t["messages"]), "tools": _tools(t["tools"]),
                     "trajectory_id": t["trajectory_id"], "task_id": t["task_id"], "policy": t["policy"]["name"],
                     "split": t.get("split") or "train"})
    return rows


def _prompt_end(messages: list[dict]) -> int:
    """Index of the first assistant turn: what comes before it is the prompt."""
    return next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))


def _task_turns(prompt: list[dict]) -> list[dict]:
    """A prompt without its system turns: what the task said (two policies may word their system prompt apart)."""
    return [m for m in prompt if m["role"] != "system"]


def trl_dpo_rows(trajectory_rows: Iterable[dict], verdict_rows: Iterable[dict] = (),
                 web_verification_rows: Iterable[dict] = (), review_rows: Iterable[dict] = (), *,
                 accepted_only: bool = False, max_pairs_per_task: int = 4) -> list[dict[str, Any]]:
    """TRL conversational preference pairs: per task, a verified and a failed trajectory given the same task.

    The pair's `prompt` is the chosen trajectory's (its system prompt and the task); the rejected completion was
    written for the same task turns, perhaps under another policy's system prompt (a model's text-action format)."""
    by_task: dict[str, dict[bool, list[dict]]] = defaultdict(lambda: {True: [], False: []})
    for t, ok in _selected(trajectory_rows, verdict_rows, web_verification_rows, review_rows, accepted_only):
        if ok is not None and t["messages"]:
            by_task[t["task_id"]][ok].append(t)
    rows = []
    for task_id, groups in sorted(by_task.items()):
        made = 0
        for chosen in sorted(groups[True], key=lambda t: t["trajectory_id"]):
            for rejected in sorted(groups[False], key=lambda t: t["trajectory_id"]):
                c, r = _messages(chosen["messages"]), _messages(rejected["messages"])
                cut, rcut = _prompt_end(c), _prompt_end(r)
                if made >= max_pairs_per_task or _task_turns(c[:cut]) != _task_turns(r[:rcut]) \
                        or cut == len(c) or rcut == len(r):
                    continue
                rows.append({"prompt": c[:cut], "chosen": c[cut:], "rejected": r[rcut:], "tools": _tools(chosen["tools"]),
                             "task_id": task_id, "chosen_id": chosen["trajectory_id"],
                             "rejected_id": rejected["trajectory_id"], "split": chosen.get("split") or "train"})
                made += 1
    return rows


def rl_rows(task_rows: Iterable[dict], *, system_prompt: str, data_source: str, ability: str) -> list[dict[str, Any]]:
    """verl / SkyRL RL rows: the task as a chat prompt, and what the reward checks as `reward_model.ground_truth`.

    The reward is the factory's verifier run on the final state (see the README), so `ground_truth` carries the
    checks as JSON (FAIL_TO_PASS / PASS_TO_PASS for SWE, the state predicates for web) with style `rule`.
    """
    rows = []
    for n, t in enumerate(sorted(task_rows, key=lambda t: t["task_id"])):
        if "FAIL_TO_PASS" in t:
            truth = {"FAIL_TO_PASS": list(t["FAIL_TO_PASS"]), "PASS_TO_PASS": list(t["PASS_TO_PASS"])}
            statement = t["problem_statement"]
            extra = {"instance_id": t["instance_id"], "repo": t["repo"], "image_name": t["image_name"],
                     "environment_setup_commit": t["base_commit"]}
        else:
            truth = {"checks": t["checks"], "feasible": t["feasible"]}
            statement = t["instruction"]
            extra = {"app": t["environment"]["app"], "seed": t["environment"]["seed"]}
        rows.append({
            "data_source": data_source,
            "prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": statement}],
            "ability": ability,
            "reward_model": {"style": "rule", "ground_truth": json.dumps(truth, sort_keys=True)},
            "extra_info": {"split": t.get("split") or "train", "index": n, "task_id": t["task_id"], **extra},
        })
    return rows


def swebench_instances(task_rows: Iterable[dict], *, base_commits: dict[str, str] | None = None,
                       created_at: str = "") -> list[dict[str, Any]]:
    """SWE-bench / SWE-smith instances from `tasks` rows (web tasks are skipped).

    `base_commits` maps each task id to the commit that holds its bug (a branch per instance, the way SWE-smith
    keeps its mirrors; `datasets/swebench.py` makes them): the gold `patch` applies there and fixes the failing
    tests. `environment_setup_commit` is the clean commit the image (`image_name`) holds installed. FAIL_TO_PASS / PASS_TO_PASS are JSON-encoded strings, as SWE-bench stores them; the tests live in the
    repository, so `test_patch` is empty. `repo` is the code host's `owner/name` where the source names one.
    """
    out = []
    for row in task_rows:
        if row.get("kind", "swe") != "swe":
            continue
        prov = json.loads(row["provenance"]) if isinstance(row.get("provenance"), str) else row.get("provenance") or {}
        base = (base_commits or {}).get(row["task_id"], row["base_commit"])
        out.append({
            "instance_id": row["instance_id"],
            "repo": prov.get("repo_slug") or row["repo"],
            "base_commit": base,
            "patch": row["patch"],
            "test_patch": "",
            "problem_statement": row["problem_statement"],
            "hints_text": "",
            "created_at": created_at or prov.get("commit_date") or "",
            "version": prov.get("version") or prov.get("commit", "")[:12],
            "FAIL_TO_PASS": json.dumps(list(row["FAIL_TO_PASS"] or [])),
            "PASS_TO_PASS": json.dumps(list(row["PASS_TO_PASS"] or [])),
            "environment_setup_commit": row["base_commit"],
            "image_name": row["image_name"],
        })
    return out
