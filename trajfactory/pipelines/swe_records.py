"""The records the SWE half's stages hand each other (`pipelines/swe.py`), which the Prefect flows save between
their stage flows (`flows/records.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trajfactory.executors.base import EnvironmentHandle
from trajfactory.schema import Candidate, ModelUsage, Quarantine, Source, Task, Trajectory, Validation, Verdict
from trajfactory.verifiers import judge as judge_verifier


@dataclass
class Harvest:
    sources: list[Source] = field(default_factory=list)
    quarantine: list[Quarantine] = field(default_factory=list)
    uris: list[str] = field(default_factory=list)
    """Every repository the run asked for: the recipe's URIs, `pypi:NAME@latest:N` as the releases it resolved to."""


@dataclass
class Synthesis:
    environments: dict[str, EnvironmentHandle] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    validations: list[Validation] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    gold_verdicts: list[Verdict] = field(default_factory=list)
    quarantine: list[Quarantine] = field(default_factory=list)
    usage: list[ModelUsage] = field(default_factory=list)


@dataclass
class Rollouts:
    trajectories: list[Trajectory] = field(default_factory=list)
    usage: list[ModelUsage] = field(default_factory=list)


@dataclass
class Verification:
    verdicts: list[Verdict] = field(default_factory=list)
    """The tests' verdicts: the verdicts of record."""
    judged: list[Verdict] = field(default_factory=list)
    usage: list[ModelUsage] = field(default_factory=list)

    def agreement(self) -> dict | None:
        return judge_verifier.agreement(self.judged, self.verdicts) if self.judged else None
