"""Compare two dataset versions' content, ignoring only run ids and timings: are two runs' data the same?

    python scripts/compare_datasets.py OLD_ROOT/NAME/v1 NEW_ROOT/NAME/v1 [--show 5]

Every table of both versions is read and each row matched by its id (task, trajectory, verdict, item,
screenshot). What differs between runs that did the same work is masked first: wall-clock columns
(`created_at`, `fetched_at`, `started_at`, `duration_s`), the cost estimate (`cost_usd`: GPU-hour price x
request latency; `latency_s`), pytest's run times (`in 0.12s`, `(0:01:01)`), loopback ports of throwaway
servers (`127.0.0.1:43107` -> `127.0.0.1:<PORT>`), object addresses (`0x7f...`), and `tutorial_id`, which is a
hash of the tutorial's URI, and that URI holds the throwaway port of the docs server (the URI itself is still
compared, port masked, as `tutorial_uri`). Everything else - task ids, patches, FAIL_TO_PASS / PASS_TO_PASS,
trajectories' messages and steps, verdicts and their evidence, quarantine reasons, screenshots - must be equal.
Exit status 0 when every table is identical, 1 otherwise (2 when a version cannot be read); the report names
each difference.

`mask_text` is also what scripts/compare_main_job.sh applies to the prompts its model proxy forwards, so
that the model's reply depends only on what this comparison compares.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

TIMING_KEYS = frozenset({"created_at", "fetched_at", "started_at", "duration_s", "cost_usd", "latency_s"})
# Keys whose value is a hash of a string that holds a throwaway loopback port: the value is replaced by a
# placeholder (the hashed string itself is compared, port masked, under the key named here).
PORT_HASH_KEYS = {"tutorial_id": "tutorial_uri"}
ID_COLUMNS = {"tasks": "task_id", "web_tasks": "task_id", "trajectories": "trajectory_id", "verdicts": "verdict_id",
              "quarantine": "item_id", "screenshots": "sha256", "web_verification": "trajectory_id"}
MASKS = [
    (re.compile(r"\b(in |took )\d+(?:\.\d+)?s\b"), r"\1<T>s"),             # pytest: "5 passed in 0.12s"
    (re.compile(r"\b\d+(?:\.\d+)?s(?= \(\d+:\d+:\d+\))"), "<T>s"),       # pytest: "in 61.2s (0:01:01)"
    (re.compile(r"\(\d+:\d\d:\d\d\)"), "(<T>)"),
    (re.compile(r"(127\.0\.0\.1|localhost):\d+"), r"\1:<PORT>"),           # throwaway loopback servers
    (re.compile(r"\b0x[0-9a-f]{6,16}\b"), "0x<ADDR>"),                      # object addresses in reprs
]


def mask_text(text: str) -> str:
    """A string with pytest run times, loopback ports and object addresses masked."""
    for pattern, repl in MASKS:
        text = pattern.sub(repl, text)
    return text


def mask(value: Any) -> Any:
    """The value with run-dependent parts masked, at any depth (JSON strings are decoded first)."""
    if isinstance(value, dict):
        return {k: f"<hash of {PORT_HASH_KEYS[k]}>" if k in PORT_HASH_KEYS and isinstance(v, str) else mask(v)
                for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [mask(v) for v in value]
    if isinstance(value, str):
        if value[:1] in "{[":
            try:
                return mask(json.loads(value))
            except ValueError:
                pass
        return mask_text(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def read_version(path: Path) -> dict[str, dict[str, dict]]:
    """table -> row id -> masked row, for every table of a version directory."""
    manifest = json.loads((path / "manifest.json").read_text())
    out: dict[str, dict[str, dict]] = {}
    for table, entry in manifest["tables"].items():
        rows: dict[str, dict] = {}
        for shard in entry["shards"]:
            for row in pq.read_table(path / shard["path"]).to_pylist():
                key = row.get(ID_COLUMNS.get(table, ""), None) or json.dumps(mask(row), sort_keys=True, default=str)
                rows[key] = mask(row)
        out[table] = rows
    return out


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths at which two masked values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += differences(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{where}.{k}" if where else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {str(a)[:160]!r} vs {str(b)[:160]!r}"]


def compare(old: Path, new: Path, show: int = 5) -> int:
    a, b = read_version(old), read_version(new)
    failures = 0
    print(f"{'table':<18} {'rows old':>8} {'rows new':>8} {'only old':>8} {'only new':>8} {'differ':>7}")
    details: list[str] = []
    for table in sorted(set(a) | set(b)):
        ra, rb = a.get(table, {}), b.get(table, {})
        only_a, only_b = sorted(set(ra) - set(rb)), sorted(set(rb) - set(ra))
        differ = {k: differences(ra[k], rb[k]) for k in sorted(set(ra) & set(rb))}
        differ = {k: d for k, d in differ.items() if d}
        failures += len(only_a) + len(only_b) + len(differ)
        print(f"{table:<18} {len(ra):>8} {len(rb):>8} {len(only_a):>8} {len(only_b):>8} {len(differ):>7}")
        details += [f"{table}: only in old: {k}" for k in only_a[:show]]
        details += [f"{table}: only in new: {k}" for k in only_b[:show]]
        for k, d in list(differ.items())[:show]:
            details += [f"{table} {k}: {line}" for line in d[:show]]
    print("\n".join(details) if details else "identical: every table has the same rows with the same content")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="a version directory, e.g. out/datasets/trajfactory-swe-demo/v1")
    parser.add_argument("new", type=Path, help="the version directory to compare with it")
    parser.add_argument("--show", type=int, default=5, help="differences shown per table (default 5)")
    args = parser.parse_args()
    try:
        status = compare(args.old, args.new, args.show)
    except Exception as exc:  # unreadable version: exit 2, so that 1 always means "the data differ"
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 2
    sys.exit(status)


if __name__ == "__main__":
    main()
