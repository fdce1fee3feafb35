"""Hugging Face dataset cards for store versions.

The YAML front matter declares one `configs:` entry per table, so `datasets.load_dataset(VERSION_DIR, "tasks")`
(or the Hub repo) loads each table by name; a table with a `split` column gets its train / validation / test
splits, and the trajectories are the default config. The license is derived from the sources' licenses.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from trajfactory.datasets.changes import card_section

DEFAULT_TAGS = ("trajfactory", "agent-trajectories", "tool-calling", "swe-bench", "synthetic")
DEFAULT_CONFIG = ("trajectories", "tasks", "web_tasks")
"""The first of these a version holds is its default config."""
HUB_LICENSES = {"mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause", "gpl-2.0", "gpl-3.0", "lgpl-2.1", "lgpl-3.0",
                "agpl-3.0", "mpl-2.0", "unlicense", "bsl-1.0", "isc", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "gpl"}
"""SPDX ids (lower case) that the Hub's `license:` field takes as they are."""


def card_license(licenses: dict[str, str | None]) -> dict[str, str]:
    """The card's license fields from the sources' licenses (source -> SPDX id or None): the one license they share
    where the Hub knows it, else `other` with a name that lists them."""
    found = sorted({(lic or "unknown") for lic in licenses.values()})
    if len(found) == 1 and found[0].lower() in HUB_LICENSES:
        return {"license": found[0].lower()}
    if not found:
        return {"license": "other", "license_name": "unknown (no sources recorded)"}
    return {"license": "other", "license_name": " AND ".join(found)}


def _configs(tables: dict[str, Any]) -> list[dict[str, Any]]:
    configs = []
    for table, entry in tables.items():
        if not entry["rows"]:
            continue  # `datasets` cannot load a split with no rows, so an empty table gets no config
        splits = entry.get("splits") or {}
        if splits and all(name and name != "part" for name in splits):
            files = [{"split": name, "path": f"{table}/{name}-*.parquet"} for name, n in splits.items() if n]
        else:
            files = [{"split": "train", "path": f"{table}/*.parquet"}]
        configs.append({"config_name": table, "data_files": files})
    default = next((name for name in DEFAULT_CONFIG if any(c["config_name"] == name for c in configs)), None)
    for config in configs:
        if config["config_name"] == default:
            config["default"] = True
    return configs

_SECTION_NOTES = {
    "by_policy": "Per policy: trajectories, test-verified ones, and pass@1 / pass@k over each task's k samples.",
    "model_usage": "Model requests behind this version, per stage: tokens, summed request latency, and the "
    "cost estimate (token prices and/or GPU-hour price over the time the server was busy).",
    "quarantine": "Items that could not go through a stage, counted per stage, kind of item and reason (the rows are in "
    "the `quarantine` table).",
    "splits": "Train / validation / test by leakage group (repository or function, site or tutorial, merged where "
    "statements or fixes are near-duplicates), deterministic by seed; the lineage's `splits.leaks` is the check "
    "that no near-duplicate pair crosses two splits (0).",
    "near_duplicates": "Tasks removed before splitting: the same problem with the same fix (MinHash of statement and "
    "fix); the first of each cluster is kept. The clusters are in the lineage (`dedup.clusters`).",
    "scan": "What the scan before writing changed: control characters removed, host paths and loopback ports "
    "replaced by placeholders (`<WORK>`, `<CACHE>`, `<TMP>`, `<PORT>`, ...), secrets found by detect-secrets "
    "redacted as `<SECRET:type>` (a secret in a diff keeps its row out); declared demo credentials are kept.",
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
    "web_tasks": "Web tasks from how-to tutorials (AgentTrek style): instruction, structured spec, the site and seed "
    "of its environment, state checks (`checks`), reference actions (`gold`), and infeasible twins "
    "(`feasible: false`, correct outcome: report it infeasible).",
    "web_verification": "The verdict of record per web trajectory: the task's state checks, or a confident judge "
    "where a task has none (`method`).",
    "screenshots": "Page screenshots as an `Image` (`png`), stored once by sha256; trajectory steps name theirs in "
    "`arguments.screenshot`.",
    "reviews": "A person's accept/reject labels of trajectories, with notes (`trajfactory view`); the latest label of "
    "a trajectory wins (`trajfactory.datasets.reviews.accepted_ids` / `rejected_ids`).",
}


def render_card(
    name: str,
    manifest: dict[str, Any],
    summary: dict[str, Any],
    *,
    licenses: dict[str, str | None] | None = None,
    tags: tuple[str, ...] | list[str] = DEFAULT_TAGS,
    description: str = "",
    changes: dict[str, Any] | None = None,
) -> str:
    """Card text for one version: YAML front matter, then tables, lineage and yields.

    `summary` maps a section title to either a list of row dicts (rendered as one table) or a dict
    of key -> dict/scalar (one row per key), e.g. `{"per repository": {"inflection": {"tasks": 12}}}`.
    `licenses` (source -> SPDX id, None when unknown) gives the card's license (`card_license`). `changes`
    (`changes.changes`) gives the section "What is new since" the parent.
    """
    tables = manifest.get("tables", {})
    front = {
        "pretty_name": name,
        **card_license(licenses or {}),
        "tags": list(tags),
        "task_categories": ["text-generation"],
        "configs": _configs(tables),
    }
    version = manifest.get("version", "?")
    first = next((c for c in front["configs"] if c.get("default")),
                 {"config_name": "tasks", "data_files": [{"split": "train"}]})
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
        *card_section(changes),
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
        f'rows = load_dataset("PATH_OR_REPO", "{first["config_name"]}", split="{first["data_files"][0]["split"]}")',
        "```",
        "",
        "## Licenses",
        "",
        *(_markdown_table([{"source": k, "license": v or "unknown"} for k, v in sorted((licenses or {}).items())])
          if licenses else ["(no sources recorded)"]),
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
