"""Review labels as data: a person accepts or rejects trajectories (`trajfactory view`), and the labels become a
`reviews` table (`schema.verdicts.Review`) in a new dataset version whose parent is the reviewed one.

    rows = store.read_rows("v4", "reviews")
    keep = accepted_ids(rows)        # trajectory ids whose latest label is `accept`
    drop = rejected_ids(rows)        # ... `reject`

The latest label of a trajectory wins (by `created_at`; between equal times, the later row). A reviewed version
carries its parent's reviews forward, so its `reviews` table is the whole history of labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

import pyarrow.parquet as pq
import yaml

from trajfactory.datasets.card import render_card
from trajfactory.datasets.store import CARD, DatasetStore, Version
from trajfactory.schema import TABLE_SCHEMAS, Review, content_hash, utcnow

LABELS = ("accept", "reject")
_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def make_review(trajectory_id: str, task_id: str, label: str, note: str = "", reviewer: str = "",
                reviewed_version: str = "", created_at: datetime | None = None) -> Review:
    """One label; `review_id` is a content hash of what was said, by whom and when."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    when = created_at or utcnow()
    return Review(review_id=content_hash(trajectory_id, label, note, reviewer, when.isoformat()),
                  trajectory_id=trajectory_id, task_id=task_id, label=label, note=note, reviewer=reviewer,
                  reviewed_version=reviewed_version, created_at=when)


def latest_labels(review_rows: Iterable[dict[str, Any] | Review]) -> dict[str, dict[str, Any]]:
    """trajectory_id -> its latest review row (a dict); rows may be `reviews` table rows or `Review` records."""
    rows = [r.to_row() if isinstance(r, Review) else dict(r) for r in review_rows]
    latest: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: _when(r.get("created_at"))):  # stable: equal times keep row order
        latest[row["trajectory_id"]] = row
    return latest


def accepted_ids(review_rows: Iterable[dict[str, Any] | Review]) -> set[str]:
    """Trajectory ids whose latest label is `accept` (for the SFT/DPO exports: keep only these, or prefer them)."""
    return {t for t, row in latest_labels(review_rows).items() if row["label"] == "accept"}


def rejected_ids(review_rows: Iterable[dict[str, Any] | Review]) -> set[str]:
    """Trajectory ids whose latest label is `reject` (for the exports: drop these whatever their verdicts say)."""
    return {t for t, row in latest_labels(review_rows).items() if row["label"] == "reject"}


def write_reviews(store: DatasetStore, version: str, reviews: Iterable[Review],
                  lineage: dict[str, Any] | None = None) -> Version:
    """A new version of `store`: `version`'s tables carried over row by row, plus a `reviews` table holding
    `version`'s earlier reviews (if any) and `reviews`. Its parent is `version`; its card says what was reviewed.

    A table whose stored schema is older than the current one (a column added since) is carried with the new
    columns null; the manifest's lineage names such tables under `schema_upgraded`.
    """
    new = [r.to_row() for r in reviews]
    if not new:
        raise ValueError("no reviews to write: label at least one trajectory first")
    parent = store.manifest(version)
    files = store.data_files(version)
    earlier = store.read_rows(version, "reviews") if "reviews" in files else []
    tables: dict[str, Any] = {t: _rows(paths) for t, paths in files.items() if t != "reviews"}
    tables["reviews"] = earlier + new
    upgraded = {t: why for t, paths in files.items() if t != "reviews" and (why := _schema_change(t, paths))}
    counts = Counter(r["label"] for r in new)
    lineage = {**(parent.get("lineage") or {}), **(lineage or {}),
               "reviewed_version": version, "reviews_added": len(new),
               "reviewers": sorted({r["reviewer"] for r in new if r["reviewer"]})}
    if upgraded:
        lineage["schema_upgraded"] = upgraded
    front = _front_matter(store, version)
    name = front.get("pretty_name") or store.root.name
    description = (
        f"Review labels on `{version}`: {counts['accept']} trajectories accepted and {counts['reject']} rejected "
        f"by {', '.join(lineage['reviewers']) or 'an unnamed reviewer'}, in the `reviews` table"
        + (f" (with {len(earlier)} labels carried from `{version}`)" if earlier else "")
        + f". Every other table is `{version}`'s, carried over unchanged; `{version}`'s card has the yields. "
        "The latest label of a trajectory wins (`trajfactory.datasets.reviews.accepted_ids` / `rejected_ids`)."
    )
    summary = {"review labels": [{"trajectory_id": r["trajectory_id"], "label": r["label"], "reviewer": r["reviewer"],
                                  "note": r["note"][:200]} for r in new]}
    kwargs = {"tags": front["tags"]} if front.get("tags") else {}
    return store.write_version(
        tables, lineage=lineage, parent=version,
        card=lambda m: render_card(name, m, summary, description=description,
                                   licenses=(parent.get("lineage") or {}).get("licenses"), **kwargs))


def _rows(paths: list[str]) -> Iterator[dict[str, Any]]:
    """The rows of a table's shards, a batch at a time (a screenshots table may not fit in memory at once)."""
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1000):
            yield from batch.to_pylist()


def _schema_change(table: str, paths: list[str]) -> str:
    if table not in TABLE_SCHEMAS or not paths:
        return ""  # an unknown table: the store refuses it with the list of known tables
    stored, current = pq.read_schema(paths[0]).remove_metadata(), TABLE_SCHEMAS[table]
    if stored.equals(current):
        return ""
    changed = [f.name for f in current if f.name not in stored.names or not stored.field(f.name).equals(f)]
    return f"stored with an older schema; carried with the current one (changed: {', '.join(changed)})"


def _front_matter(store: DatasetStore, version: str) -> dict[str, Any]:
    path = store.root / version / CARD
    try:
        front = yaml.safe_load(path.read_text().split("---")[1]) if path.is_file() else {}
    except (IndexError, yaml.YAMLError):
        front = {}
    return front if isinstance(front, dict) else {}


def _when(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return _EPOCH
    if not isinstance(value, datetime):
        return _EPOCH
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
