"""Write the factory's records as one new immutable dataset version, with its card, after the scan.

Every row, the lineage and the summary pass `scan.py` first: control characters removed, host paths and loopback
ports replaced by placeholders, secrets redacted. A row whose diff holds a secret is left out (with the rows that
hang on it: a task's trajectories and verdicts) and recorded in the `quarantine` table. The scan report goes into
the card and the manifest's lineage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from trajfactory.datasets.card import render_card
from trajfactory.datasets.changes import changes
from trajfactory.datasets.scan import Scanner, scan_tables
from trajfactory.datasets.store import DatasetStore
from trajfactory.schema import quarantined

_ID = {"tasks": "task_id", "web_tasks": "task_id", "trajectories": "trajectory_id"}


def _drop_flagged(tables: dict[str, list[dict]], flagged: dict[tuple[str, int], list[str]]) -> list[dict]:
    """Remove flagged rows and what hangs on them; the quarantine rows that say why."""
    tasks, trajs, out = set(), set(), []
    for (table, i), found in sorted(flagged.items()):
        row = tables[table][i]
        key = _ID.get(table)
        if key is None:
            continue
        (tasks if key == "task_id" else trajs).add(row[key])
        kind = {"tasks": "task", "web_tasks": "web_task"}.get(table, "trajectory")
        out.append(quarantined("publish", kind, row[key], "secret_in_diff",
                               f"{table} row {row[key]}: {', '.join(found)}; a diff or a test id is published byte "
                               "for byte, so a secret in it keeps the row out").to_row())
    for name, rows in tables.items():
        if name in ("quarantine", "screenshots"):
            continue
        tables[name] = [r for r in rows if r.get("task_id") not in tasks and r.get("trajectory_id") not in trajs]
    return out


def write_dataset(root: str | Path, name: str, records: dict[str, list], lineage: dict, summary: dict, *,
                  licenses: dict[str, str | None] | None = None, allowed: Iterable[str] = (),
                  description: str = "") -> str:
    """`records`: table name -> records with `to_row()`; returns the new version's name (`v1`, ...).

    `licenses`: source -> its license (SPDX id, None when unknown), for the card; `allowed`: strings the scan
    keeps although they look like secrets (the demo credentials a site declares)."""
    store = DatasetStore(Path(root) / name)
    scanner = Scanner(allowed)
    tables = {table: [r.to_row() for r in rows] for table, rows in records.items()}
    tables, flagged, report = scan_tables(tables, scanner=scanner)
    if flagged:
        tables.setdefault("quarantine", []).extend(_drop_flagged(tables, flagged))
    lineage: dict[str, Any] = scanner.value(dict(lineage), "lineage")
    summary = scanner.value(dict(summary), "summary")
    summary["scan"] = report.rows()
    lineage["scan"] = {"rules": report.rows(), "flagged_rows": len(flagged)}
    lineage["licenses"] = dict(sorted((licenses or {}).items()))
    # the card is rendered once the parent is known (the version before this one): it says what is new since then
    version = store.write_version(tables, lineage=lineage, card=lambda m: render_card(
        name, m, summary, licenses=licenses or {}, description=description,
        changes=changes(store, m["parent"], tables, m["lineage"])))
    return str(version)
