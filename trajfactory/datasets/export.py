"""One dataset version written out in the formats its consumers read, into a directory of plain files.

    OUT/
      sft/{train,validation,test}.parquet       TRL SFTTrainer: `messages` + `tools` (a JSON string)
      dpo/{train,validation,test}.parquet       TRL DPOTrainer: `prompt`, `chosen`, `rejected` (+ `tools`)
      rl/{train,validation,test}.parquet        verl / SkyRL: `data_source`, `prompt`, `ability`, `reward_model`,
                                                `extra_info` (data.train_files / data.val_files)
      swebench/instances.jsonl, swebench/repos/ SWE-bench / SWE-smith instances with a branch per instance
      export.json                               what was written, from which version, with row counts

A split with no rows gets no file. Verified means the verdict of record (tests for SWE, state checks for web); a
rejected review keeps a trajectory out, and `accepted_only` keeps only accepted ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trajfactory.datasets import formats
from trajfactory.datasets.store import DatasetStore
from trajfactory.executors.base import Backend
from trajfactory.schema import SWE_SYSTEM_PROMPT

log = logging.getLogger(__name__)

FORMATS = ("sft", "dpo", "rl", "swebench")
SPLITS = ("train", "validation", "test")
WEB_RL_PROMPT = ("You are a web agent. Complete the task in the browser; when it cannot be done on this site, "
                 "report it as infeasible.")


class ExportError(ValueError):
    """An export that cannot be made: names the input and what would be right."""


def _write_splits(out: Path, rows: list[dict[str, Any]], split_of: Callable[[dict], str]) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        part = [r for r in rows if split_of(r) == split]
        if part:
            pq.write_table(pa.Table.from_pylist(part), out / f"{split}.parquet")
            counts[split] = len(part)
    return counts


def export_version(dataset_dir: str | Path, out_dir: str | Path, *, version: str | None = None,
                   formats_: tuple[str, ...] = FORMATS, backend: Backend | None = None, accepted_only: bool = False,
                   progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Write the exports of one version (the latest by default) under `out_dir`; returns what `export.json` holds.

    `backend` opens the sandboxes that commit each SWE instance's buggy state (the SWE-bench export needs it and
    the version's images; without it that export is skipped and the reason recorded)."""
    store = DatasetStore(dataset_dir)
    version = version or store.latest()
    if version is None or version not in store.versions():
        raise ExportError(f"{dataset_dir}: no version {version!r} to export; its versions: "
                          f"{', '.join(store.versions()) or 'none'}")
    if unknown := [f for f in formats_ if f not in FORMATS]:
        raise ExportError(f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    tables = store.manifest(version)["tables"]
    read = lambda t: store.read_rows(version, t) if t in tables else []  # noqa: E731
    trajectories, verdicts, web_record, reviews = (read("trajectories"), read("verdicts"), read("web_verification"),
                                                  read("reviews"))
    swe_tasks, web_tasks = read("tasks"), read("web_tasks")
    out = Path(out_dir)
    report: dict[str, Any] = {"dataset": str(Path(dataset_dir).name), "version": version, "exports": {}}
    by_split = lambda r: r.get("split") or "train"  # noqa: E731
    if "sft" in formats_:
        rows = formats.trl_sft_rows(trajectories, verdicts, web_record, reviews, accepted_only=accepted_only)
        report["exports"]["sft"] = _write_splits(out / "sft", rows, by_split)
    if "dpo" in formats_:
        rows = formats.trl_dpo_rows(trajectories, verdicts, web_record, reviews, accepted_only=accepted_only)
        report["exports"]["dpo"] = _write_splits(out / "dpo", rows, by_split)
    if "rl" in formats_:
        name = report["dataset"]
        rows = (formats.rl_rows(swe_tasks, system_prompt=SWE_SYSTEM_PROMPT, data_source=name, ability="swe")
                + formats.rl_rows(web_tasks, system_prompt=WEB_RL_PROMPT, data_source=name, ability="web"))
        report["exports"]["rl"] = _write_splits(out / "rl", rows, lambda r: r["extra_info"]["split"])
    if "swebench" in formats_ and swe_tasks:
        if backend is None:
            report["exports"]["swebench"] = {"skipped": "no sandbox backend to commit the buggy states"}
        else:
            from trajfactory.datasets.swebench import export_instances

            instances, problems = export_instances(swe_tasks, out / "swebench", backend, progress=progress)
            report["exports"]["swebench"] = {"instances": len(instances), "problems": problems}
    (out / "export.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
