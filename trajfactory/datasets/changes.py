"""What a version adds to its parent: the sources that are new (or moved to another commit, or were dropped), and
per table the rows that are new, kept and gone, by row id. The card shows it ("What is new since vN"), so a
scheduled run that picked up one more repository says so."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from trajfactory.datasets.store import DatasetStore

COMPARED = {"tasks": "task_id", "web_tasks": "task_id", "trajectories": "trajectory_id"}
"""The tables compared by row id (the other tables hang on these)."""


def _ids(store: DatasetStore, version: str, table: str, column: str) -> set:
    if table not in store.manifest(version)["tables"]:
        return set()
    return set(store.read_table(version, table).column(column).to_pylist())


def changes(store: DatasetStore, parent: str | None, tables: dict[str, list[dict]], lineage: dict) -> dict | None:
    """The new version's `tables` and `lineage` against version `parent` of `store`; None without a parent."""
    if parent is None:
        return None
    before = store.manifest(parent).get("lineage") or {}
    old_sources, new_sources = before.get("sources"), lineage.get("sources") or {}
    sources = None if old_sources is None else {  # None: the parent (an older factory) did not record its sources
        "new": sorted(set(new_sources) - set(old_sources)),
        "updated": sorted(s for s in set(new_sources) & set(old_sources) if new_sources[s] != old_sources[s]),
        "dropped": sorted(set(old_sources) - set(new_sources)),
    }
    rows, new_tasks = [], Counter()
    for table, column in COMPARED.items():
        if table not in tables:
            continue
        old = _ids(store, parent, table, column)
        now = {row[column] for row in tables[table]}
        rows.append({"table": table, "rows": len(now), "new": len(now - old), "kept": len(now & old),
                     "gone": len(old - now)})
        if table == "tasks":
            new_tasks.update(row.get("repo") or "?" for row in tables[table] if row[column] not in old)
    return {"parent": parent, "sources": sources, "tables": rows, "new_tasks_by_repo": dict(sorted(new_tasks.items()))}


def card_section(change: dict[str, Any] | None) -> list[str]:
    """Markdown lines of the card's "What is new since vN" section ([] for a first version)."""
    if not change:
        return []
    src = change["sources"]
    listed = [f"- {what} sources: {', '.join(f'`{s}`' for s in src[what]) or 'none'}"
              for what in ("new", "updated", "dropped")] if src else [f"- sources: {change['parent']} did not record "
                                                                     "its sources"]
    lines = ["## What is new since " + change["parent"], "", *listed, "", "| table | rows | new | kept | gone |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| `{r['table']}` | {r['rows']} | {r['new']} | {r['kept']} | {r['gone']} |" for r in change["tables"]]
    if change["new_tasks_by_repo"]:
        lines += ["", "New tasks by repository: " + ", ".join(f"{repo} {n}" for repo, n in
                                                               change["new_tasks_by_repo"].items())]
    return lines + [""]


def sources_digest(sources: dict[str, str]) -> str:
    """One hash of the sources (uri -> commit) a version was made from; the scan never rewrites it, unlike paths."""
    return hashlib.sha256(json.dumps(sorted(sources.items())).encode()).hexdigest()


def unchanged_version(root: str | Path, lineage: dict) -> str | None:
    """The latest version of the dataset at `root` when it was made by the same factory version from the same recipe
    and the same sources (`lineage`'s `factory_version`, `recipe_hash`, `sources_digest`): a run of them would write
    the same data again. None when there is no such version."""
    store = DatasetStore(root)
    latest = store.latest()
    if latest is None:
        return None
    before = store.manifest(latest).get("lineage") or {}
    keys = ("factory_version", "recipe_hash", "sources_digest")
    return latest if all(lineage.get(k) and before.get(k) == lineage[k] for k in keys) else None

