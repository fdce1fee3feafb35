"""Write the factory's records as one new immutable dataset version, with its card."""

from __future__ import annotations

from pathlib import Path

from trajfactory.datasets.card import render_card
from trajfactory.datasets.store import DatasetStore


def write_dataset(root: str | Path, name: str, records: dict[str, list], lineage: dict, summary: dict) -> str:
    """`records`: table name -> records with `to_row()`; returns the new version's name (`v1`, ...)."""
    store = DatasetStore(Path(root) / name)
    tables = {table: [r.to_row() for r in rows] for table, rows in records.items()}
    version = store.write_version(tables, lineage=lineage, card=lambda m: render_card(name, m, summary))
    return str(version)
