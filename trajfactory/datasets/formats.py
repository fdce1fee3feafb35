"""Table rows converted to the ecosystem's formats (SWE-bench instances, TRL SFT rows)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

SWEBENCH_KEYS = (
    "instance_id",
    "repo",
    "base_commit",
    "patch",
    "test_patch",
    "problem_statement",
    "hints_text",
    "created_at",
    "version",
    "FAIL_TO_PASS",
    "PASS_TO_PASS",
    "environment_setup_commit",
    "image_name",
)


def swebench_instances(task_rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """SWE-bench / SWE-smith instances from `tasks` rows (web tasks are skipped).

    FAIL_TO_PASS / PASS_TO_PASS are JSON-encoded strings, as SWE-bench stores them. Tasks carry no
    creation time nor a package version, so `created_at` and `version` are empty strings, and
    `environment_setup_commit` is the base commit (the image is built from it, as in SWE-smith).
    """
    return [
        {
            "instance_id": row["instance_id"],
            "repo": row["repo"],
            "base_commit": row["base_commit"],
            "patch": row["patch"],
            "test_patch": "",
            "problem_statement": row["problem_statement"],
            "hints_text": "",
            "created_at": row.get("created_at") or "",
            "version": row.get("version") or "",
            "FAIL_TO_PASS": json.dumps(list(row["FAIL_TO_PASS"] or [])),
            "PASS_TO_PASS": json.dumps(list(row["PASS_TO_PASS"] or [])),
            "environment_setup_commit": row["base_commit"],
            "image_name": row["image_name"],
        }
        for row in task_rows
        if row.get("kind", "swe") == "swe"
    ]


def trl_sft_rows(
    trajectory_rows: Iterable[dict[str, Any]],
    verdict_rows: Iterable[dict[str, Any]],
    only_passed: bool = True,
) -> list[dict[str, Any]]:
    """TRL conversational rows `{"messages", "tools"}`, one per trajectory.

    With `only_passed`, a trajectory is kept when it has at least one verdict and all of its
    verdicts passed (several verifiers must agree). Tool-call arguments stay JSON strings, as in
    the OpenAI API.
    """
    verdicts: dict[str, list[bool]] = defaultdict(list)
    for v in verdict_rows:
        if v.get("subject", "trajectory") == "trajectory" and v.get("trajectory_id"):
            verdicts[v["trajectory_id"]].append(bool(v["passed"]))
    rows = []
    for t in trajectory_rows:
        outcomes = verdicts.get(t["trajectory_id"], [])
        if only_passed and not (outcomes and all(outcomes)):
            continue
        tools = t["tools"]
        rows.append(
            {
                "messages": [{k: v for k, v in m.items() if v is not None} for m in t["messages"]],
                "tools": json.loads(tools) if isinstance(tools, str) else list(tools or []),
            }
        )
    return rows
