"""Immutable, versioned Parquet datasets on a local directory.

Layout of a store root::

    ROOT/
      .lock                      # fcntl lock that serialises version allocation
      .tmp-<uuid>/               # a write in progress (or a killed one, removed by `gc()`)
      v1/
        manifest.json            # version, parent, row counts, schemas, shard sha256, lineage
        README.md                # the dataset card (optional; its YAML `configs:` serve `load_dataset`)
        tasks/part-00000.parquet
        trajectories/part-00000.parquet ...
      v2/ ...

A version becomes visible only by one `os.rename` of a complete, fsynced temp dir, so a failed or
killed writer never leaves a half-written version.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trajfactory.datasets.normalize import row_digest
from trajfactory.schema import TABLE_SCHEMAS

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CARD = "README.md"
FORMAT = "trajfactory.dataset/1"
_VERSION_RE = re.compile(r"^v(\d+)$")
_TMP_PREFIX = ".tmp-"
_SPLIT_RE = re.compile(r"^[a-z][a-z0-9_]*$")

# Row ids: rows of these tables are compared as a set (their digests sorted), so row order does not change the digest.
ID_COLUMNS = {
    "tasks": "task_id",
    "web_tasks": "task_id",
    "trajectories": "trajectory_id",
    "verdicts": "verdict_id",
    "quarantine": "item_id",
    "reviews": "review_id",
    "screenshots": "sha256",
    "web_verification": "trajectory_id",
}


@dataclass(frozen=True)
class Version:
    """One written version: its name (`v3`), its directory and its manifest."""

    name: str
    path: Path
    manifest: dict[str, Any]

    def __str__(self) -> str:
        return self.name


class DatasetStore:
    """A directory of immutable versions `v1`, `v2`, ... of one dataset."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    # ------------------------------------------------------------ writing

    def write_version(
        self,
        tables: dict[str, Iterable[dict[str, Any]]],
        *,
        lineage: dict[str, Any],
        parent: str | None = "latest",
        card: str | Callable[[dict[str, Any]], str] | None = None,
        shard_rows: int = 5000,
    ) -> Version:
        """Write `tables` (table name -> rows, a list or a generator) as the next version.

        `parent`: `"latest"` (the newest version when the number is allocated), a version name, or
        None. `card`: the README.md text, or a function of the final manifest that renders it
        (e.g. `lambda m: render_card(name, m, summary)`), since only the manifest knows the version.
        """
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        for name in tables:
            if name not in TABLE_SCHEMAS:
                raise ValueError(f"unknown table {name!r}; known tables: {sorted(TABLE_SCHEMAS)}")
        if parent not in (None, "latest"):
            self._version_dir(parent)  # fail before the (possibly long) write, not after
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():  # gc() scans under this lock, so it never sees our dir unlocked
            tmp = self.root / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
            tmp.mkdir()
            tmp_fd = os.open(tmp, os.O_RDONLY)
            fcntl.flock(tmp_fd, fcntl.LOCK_EX)  # "writer alive": gc() skips dirs it cannot lock
        try:
            entries = {}
            for name, rows in tables.items():
                entries[name] = _write_table(tmp, name, TABLE_SCHEMAS[name], rows, shard_rows)
                log.info("wrote table %s: %d rows, %d shards", name, entries[name]["rows"], len(entries[name]["shards"]))
            with self._lock():
                version = f"v{self._next_number()}"
                manifest = {
                    "format": FORMAT,
                    "version": version,
                    "created_at": datetime.now(timezone.utc).isoformat(),
                    "parent": self.latest() if parent == "latest" else parent,
                    "tables": entries,
                    "lineage": lineage,
                    "card": CARD if card is not None else None,
                }
                manifest = json.loads(json.dumps(manifest, default=str))  # exactly what readers will see
                if card is not None:
                    _write_file(tmp / CARD, (card(manifest) if callable(card) else card).encode())
                _write_file(tmp / MANIFEST, json.dumps(manifest, indent=2).encode())
                for path in tmp.rglob("*"):
                    if path.is_file():
                        path.chmod(0o444)
                for path in [*(p for p in tmp.rglob("*") if p.is_dir()), tmp]:
                    _fsync_dir(path)
                os.rename(tmp, self.root / version)  # the commit point
                _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(tmp_fd)
        log.info("published %s at %s", version, self.root / version)
        return Version(version, self.root / version, manifest)

    def gc(self) -> list[Path]:
        """Remove temp dirs left by killed or failed writers; live writers' dirs are kept."""
        removed = []
        if not self.root.is_dir():
            return removed
        with self._lock():
            for path in sorted(self.root.glob(f"{_TMP_PREFIX}*")):
                fd = os.open(path, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a writer is still working in it
                finally:
                    os.close(fd)  # closing drops our lock too; the dir is removed just below
                shutil.rmtree(path)
                removed.append(path)
        return removed

    # ------------------------------------------------------------ reading

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [(int(m[1]), p.name) for p in self.root.iterdir() if (m := _VERSION_RE.match(p.name)) and p.is_dir()]
        return [name for _, name in sorted(found)]

    def latest(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def manifest(self, version: str | Version) -> dict[str, Any]:
        return json.loads((self._version_dir(version) / MANIFEST).read_text())

    def data_files(self, version: str | Version) -> dict[str, list[str]]:
        vdir = self._version_dir(version)
        return {
            table: [str(vdir / shard["path"]) for shard in entry["shards"]]
            for table, entry in self.manifest(version)["tables"].items()
        }

    def read_table(self, version: str | Version, table: str) -> pa.Table:
        files = self.data_files(version)
        if table not in files:
            raise ValueError(f"version {version} has no table {table!r}; its tables: {sorted(files)}")
        return pa.concat_tables([pq.read_table(path) for path in files[table]])

    def read_rows(self, version: str | Version, table: str) -> list[dict[str, Any]]:
        return self.read_table(version, table).to_pylist()

    def verify(self, version: str | Version) -> list[str]:
        """Problems found in a version (missing or altered shards, stray files); [] when intact."""
        vdir = self._version_dir(version)
        if not (vdir / MANIFEST).is_file():
            return [f"{vdir}: missing {MANIFEST}"]
        manifest = self.manifest(version)
        problems, expected = [], set()
        for table, entry in manifest["tables"].items():
            if sum(s["rows"] for s in entry["shards"]) != entry["rows"]:
                problems.append(f"{table}: shard rows do not add up to {entry['rows']}")
            for shard in entry["shards"]:
                path = vdir / shard["path"]
                expected.add(path)
                if not path.is_file():
                    problems.append(f"{shard['path']}: missing shard")
                    continue
                sha, size = _sha256(path)
                if size != shard["bytes"]:
                    problems.append(f"{shard['path']}: {size} bytes, manifest says {shard['bytes']}")
                if sha != shard["sha256"]:
                    problems.append(f"{shard['path']}: sha256 {sha} != manifest {shard['sha256']}")
        # A stray shard would be read by `load_dataset` through the card's `TABLE/*.parquet` glob.
        for path in sorted(vdir.glob("*/*.parquet")):
            if path not in expected:
                problems.append(f"{path.relative_to(vdir)}: shard not in the manifest")
        return problems

    def content_digest(self, version: str | Version) -> str:
        """sha256 of the tables' content: equal for two runs that made the same data, and blind only to
        what differs between such runs (the rules are in `trajfactory/datasets/normalize.py`):

        - wall-clock fields (created_at, fetched_at, started_at, duration_s) and clock measurements (latency_s,
          cost_usd; token counts stay) at any depth, also inside the JSON-encoded columns tasks.validation,
          tasks.provenance and web_tasks.provenance: dropped; so is tutorial_id, a hash of a URL that holds the
          bundled docs server's throwaway port (the URL stays, port replaced);
        - in observation text (steps' observation and error, the content of user and tool messages, exit_status,
          the detail/refused/uri texts of validations, verdict evidence and quarantine rows): test-run timings
          (`in 0.15s`, `0.12s call`), object addresses (`0x7f...`), mock ids, pytest and tempfile temp dir
          names, pids and loopback ports are replaced by placeholders;
        - the order of rows of tables with an id column (ID_COLUMNS): rows are compared as a set.

        The stored rows keep the real text; only the digest is computed over this normalized form. The manifest
        (lineage, run ids) and the card are not part of the digest. Everything else is: a different patch, test
        id, instruction, action or observation word gives a different digest.
        """
        digest = hashlib.sha256()
        for table, files in sorted(self.data_files(version).items()):
            row_digests = [
                row_digest(table, row)
                for path in files
                for batch in pq.ParquetFile(path).iter_batches()
                for row in batch.to_pylist()
            ]
            if table in ID_COLUMNS:
                row_digests.sort()
            digest.update(json.dumps([table, row_digests]).encode())
        return digest.hexdigest()

    # ------------------------------------------------------------ helpers

    def _version_dir(self, version: str | Version) -> Path:
        name = str(version)
        path = self.root / name
        if not _VERSION_RE.match(name) or not path.is_dir():
            raise ValueError(f"no version {name!r} in {self.root}; versions: {self.versions()}")
        return path

    def _next_number(self) -> int:
        versions = self.versions()
        return int(versions[-1][1:]) + 1 if versions else 1

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _write_table(tmp: Path, name: str, schema: pa.Schema, rows: Iterable[dict], shard_rows: int) -> dict:
    """Write one table's shards. A table with a `split` column is partitioned: its shards are named after the
    split (`train-00000.parquet`), so a card's configs can point one split at `TABLE/train-*.parquet`."""
    (tmp / name).mkdir()
    partitioned = "split" in schema.names
    shards: list[dict] = []
    splits: dict[str, int] = {}
    buffers: dict[str, list[dict]] = {}
    written: dict[str, int] = {}

    def flush(prefix: str) -> None:
        chunk = buffers.pop(prefix, [])
        index = written.get(prefix, 0)
        rel = f"{name}/{prefix}-{index:05d}.parquet"
        if chunk:
            pq.write_table(_to_arrow(name, schema, chunk, sum(splits.values()) - len(chunk)), tmp / rel)
        else:  # zero row groups: an empty row group makes `datasets` ask for batches of size 0
            pq.ParquetWriter(tmp / rel, schema).close()
        sha, size = _sha256(tmp / rel, fsync=True)
        shards.append({"path": rel, "rows": len(chunk), "sha256": sha, "bytes": size})
        written[prefix] = index + 1

    for row in rows:
        split = (row.get("split") or "") if partitioned and isinstance(row, dict) else ""
        prefix = split if _SPLIT_RE.match(split) else "part"
        splits[split] = splits.get(split, 0) + 1
        buffers.setdefault(prefix, []).append(row)
        if len(buffers[prefix]) >= shard_rows:
            flush(prefix)
    for prefix in sorted(buffers):
        flush(prefix)
    if not shards:
        flush("part")
    shards.sort(key=lambda s: s["path"])
    entry = {
        "rows": sum(splits.values()),
        "schema": schema.to_string(show_schema_metadata=False),
        "fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
        "shards": shards,
    }
    if partitioned:
        entry["splits"] = dict(sorted(splits.items()))
    return entry


def _to_arrow(name: str, schema: pa.Schema, rows: list, offset: int) -> pa.Table:
    known = set(schema.names)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"table {name!r} row {offset + i}: expected a dict, got {type(row).__name__}")
        if extra := sorted(row.keys() - known):
            raise ValueError(f"table {name!r} row {offset + i}: field(s) {extra} not in the schema; fields: {schema.names}")
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        for i, row in enumerate(rows):  # slow path only on failure: find the exact cell
            for field in schema:
                try:
                    pa.array([row.get(field.name)], type=field.type)
                except (pa.ArrowException, TypeError, ValueError, OverflowError) as cell:
                    raise ValueError(
                        f"table {name!r} row {offset + i} field {field.name!r}: {cell} (expected {field.type})"
                    ) from cell
        raise ValueError(f"table {name!r} rows {offset}..{offset + len(rows) - 1} do not fit the schema: {exc}") from exc


def _sha256(path: Path, fsync: bool = False) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        if fsync:
            os.fsync(fh.fileno())
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
