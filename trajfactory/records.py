"""Stage records in the work dir: how stage flows hand work to each other (`work_dir/records/*.jsonl`).

Flow parameters stay small (the recipe); the records a stage produces are files the next stage
reads, so stages can run one by one from the CLI or chained by the end-to-end flow.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from trajfactory.executors.base import EnvironmentHandle
from trajfactory.schema import read_records, write_records


def records_dir(work_dir: str | Path) -> Path:
    return Path(work_dir) / "records"


def save(work_dir: str | Path, name: str, records: list) -> None:
    write_records(records_dir(work_dir) / f"{name}.jsonl", records)


def load(work_dir: str | Path, name: str, model) -> list:
    """Records of a previous stage; FileNotFoundError names the stage to run first."""
    return read_records(records_dir(work_dir) / f"{name}.jsonl", model)


def load_optional(work_dir: str | Path, name: str, model) -> list:
    """Records a stage writes only in some recipes (model usage, judge verdicts); none when absent."""
    path = records_dir(work_dir) / f"{name}.jsonl"
    return read_records(path, model) if path.is_file() else []


def save_environments(work_dir: str | Path, envs: dict[str, EnvironmentHandle]) -> None:
    path = records_dir(work_dir) / "environments.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: dataclasses.asdict(v) for k, v in envs.items()}, indent=1))
    tmp.replace(path)


def load_environments(work_dir: str | Path) -> dict[str, EnvironmentHandle]:
    path = records_dir(work_dir) / "environments.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such record file; run `trajfactory synthesize` first")
    return {k: EnvironmentHandle(**v) for k, v in json.loads(path.read_text()).items()}
