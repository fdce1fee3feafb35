"""Hugging Face dataset cards for store versions.

The YAML front matter declares one `configs:` entry per table, so
`datasets.load_dataset(VERSION_DIR, "tasks")` (or the Hub repo) loads each table by name.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

DEFAULT_TAGS = ("trajfactory", "agent-trajectories", "tool-calling", "swe-bench", "synthetic")

_SECTION_NOTES = {
    "by_policy": "Per policy: trajectories, test-verified ones, and pass@1 / pass@k over each task's k samples.",
    "model_usage": "Model requests behind this version, per stage: tokens, summed request latency, and the "
    "cost estimate (token prices and/or GPU-hour price over the time the server was busy).",
    "quarantine": "Items that could not go through a stage, counted per stage, kind of item and reason (the rows are in "
    "the `quarantine` table).",
    "judge_agreement": "The model judge against the test verdicts: `agreement` and `kappa` over answered "
    "trajectories; abstentions are counted apart (and as fails in `agreement_abstain_as_fail`).",
}
_TABLE_NOTES = {
    "tasks": "SWE-bench style task instances: buggy state, gold patch, FAIL_TO_PASS / PASS_TO_PASS; "
    "`statement_source` says who wrote the problem statement (template or model) and `statement_detail` why.",
    "trajectories": "Agent rollouts: OpenAI-format `messages` with `tool_calls`, `tools`, per-step observations; "
    "`policy.name` is `oracle` or `model`.",
    "verdicts": "Verifier outcomes per trajectory (or gold patch): passed, score, test evidence. `tests` verdicts "
    "are the verdicts of record; `judge` verdicts (a model judge) are measured against them, and an abstention "
    "is recorded as a fail with `\"status\": \"abstain\"` in `evidence.detail`.",
    "quarantine": "Items that could not go through a stage, with the reason.",
}


def render_card(
    name: str,
    manifest: dict[str, Any],
    summary: dict[str, Any],
    *,
    license: str = "other",
    tags: tuple[str, ...] | list[str] = DEFAULT_TAGS,
    description: str = "",
) -> str:
    """Card text for one version: YAML front matter, then tables, lineage and yields.

    `summary` maps a section title to either a list of row dicts (rendered as one table) or a dict
    of key -> dict/scalar (one row per key), e.g. `{"per repository": {"inflection": {"tasks": 12}}}`.
    `license` defaults to `other` because tasks come from repositories under different licenses.
    """
    tables = manifest.get("tables", {})
    front = {
        "pretty_name": name,
        "license": license,
        "tags": list(tags),
        "task_categories": ["text-generation"],
        "configs": [
            {"config_name": table, "data_files": [{"split": "train", "path": f"{table}/*.parquet"}]}
            for table, entry in tables.items()
            if entry["rows"]  # `datasets` cannot load a split with no rows, so an empty table gets no config
        ],
    }
    version = manifest.get("version", "?")
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {name} ({version})",
        "",
        description
        or "Verified multi-turn agent trajectories and the tasks they solve, built by trajfactory: tasks "
        "are synthesized from repositories, rolled out in sandboxes, and checked by verifiers.",
        "",
        f"- version: `{version}`, parent: `{manifest.get('parent')}`, created: {manifest.get('created_at', '?')}",
        "",
        "## Tables",
        "",
        "| table | rows | shards | contents |",
        "|---|---:|---:|---|",
    ]
    for table, entry in tables.items():
        lines.append(f"| `{table}` | {entry['rows']} | {len(entry['shards'])} | {_TABLE_NOTES.get(table, '')} |")
    if empty := [table for table, entry in tables.items() if not entry["rows"]]:
        lines += ["", f"Empty tables ({', '.join(empty)}) keep a schema-only shard but get no config: "
                  "`datasets` cannot load an empty split."]
    lines += [
        "",
        "```python",
        "from datasets import load_dataset",
        f'tasks = load_dataset("PATH_OR_REPO", "{next(iter(tables), "tasks")}", split="train")',
        "```",
        "",
        "## Lineage",
        "",
    ]
    lineage = manifest.get("lineage") or {}
    lineage_rows = [{"key": k, "value": _cell(v)} for k, v in lineage.items()]
    lines += _markdown_table(lineage_rows) if lineage_rows else ["(none recorded)"]
    if summary:
        lines += ["", "## Yields", ""]
        for title, section in summary.items():
            note = [_SECTION_NOTES[title], ""] if title in _SECTION_NOTES else []
            lines += [f"### {title}", "", *note, *_markdown_table(_rows(section)), ""]
    return "\n".join(lines).rstrip() + "\n"


def _rows(section: Any) -> list[dict[str, Any]]:
    if isinstance(section, list):
        return section
    if isinstance(section, dict):
        return [{"": k, **v} if isinstance(v, dict) else {"": k, "count": v} for k, v in section.items()]
    return [{"value": section}]


def _markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(empty)"]
    columns = list(dict.fromkeys(k for row in rows for k in row))  # union, first-seen order
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return out


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text.replace("|", "\\|").replace("\n", " ")
