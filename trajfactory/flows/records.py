"""Stage records in the work dir: how stage flows hand work to each other (`work_dir/records/*.jsonl`).

Flow parameters stay small (the recipe); the records a stage produces are files the next stage reads, so
stages can run one by one from the CLI or chained by the end-to-end flow. One file per field of a stage's
result (`pipelines.swe_records.Harvest`, `Synthesis`, `Rollouts`, `Verification`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TypeVar

from trajfactory.executors.base import EnvironmentHandle
from trajfactory.pipelines.swe_records import Harvest, Rollouts, Synthesis, Verification
from trajfactory.schema import (Candidate, ModelUsage, Quarantine, Source, Task, Trajectory, Validation, Verdict,
                                read_records, write_records)

T = TypeVar("T")

# stage result -> field -> (file name, record type, required when loading)
FILES: dict[type, dict[str, tuple[str, type, bool]]] = {
    Harvest: {"sources": ("sources", Source, True), "quarantine": ("quarantine-harvest", Quarantine, True)},
    Synthesis: {"candidates": ("candidates", Candidate, True), "validations": ("validations", Validation, True),
                "tasks": ("tasks", Task, True), "gold_verdicts": ("gold-verdicts", Verdict, True),
                "quarantine": ("quarantine-synthesize", Quarantine, True),
                "usage": ("model-usage-synthesize", ModelUsage, False)},
    Rollouts: {"trajectories": ("trajectories", Trajectory, True), "usage": ("model-usage-rollout", ModelUsage, False)},
    Verification: {"verdicts": ("verdicts", Verdict, True), "judged": ("judge-verdicts", Verdict, False),
                   "usage": ("model-usage-verify", ModelUsage, False)},
}
STAGE_OF = {Harvest: "harvest", Synthesis: "synthesize", Rollouts: "rollout", Verification: "verify"}


def records_dir(work_dir: str | Path) -> Path:
    return Path(work_dir) / "records"


def save(work_dir: str | Path, result) -> None:
    """Write every field of a stage's result to its record file."""
    for name, (file, _, _) in FILES[type(result)].items():
        write_records(records_dir(work_dir) / f"{file}.jsonl", getattr(result, name))
    if isinstance(result, Synthesis):
        _write_json(records_dir(work_dir) / "environments.json",
                    {k: dataclasses.asdict(v) for k, v in result.environments.items()})
    if isinstance(result, Harvest):
        _write_json(records_dir(work_dir) / "harvest-uris.json", result.uris)


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


def load(work_dir: str | Path, cls: type[T]) -> T:
    """A stage's result from its record files; a missing one names the stage to run first."""
    fields = {}
    for name, (file, model, required) in FILES[cls].items():
        path = records_dir(work_dir) / f"{file}.jsonl"
        if not path.is_file():
            if required:
                raise FileNotFoundError(f"{path}: no such record file; run `trajfactory {STAGE_OF[cls]}` first")
            fields[name] = []
            continue
        fields[name] = read_records(path, model)
    if cls is Synthesis:
        path = records_dir(work_dir) / "environments.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such record file; run `trajfactory synthesize` first")
        fields["environments"] = {k: EnvironmentHandle(**v) for k, v in json.loads(path.read_text()).items()}
    if cls is Harvest and (path := records_dir(work_dir) / "harvest-uris.json").is_file():
        fields["uris"] = json.loads(path.read_text())
    return cls(**fields)
