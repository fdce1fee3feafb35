"""Records of the web half: web tasks, their state predicates, and screenshots stored by hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from trajfactory.schema.core import TABLE_SCHEMAS, Record

# ---------------------------------------------------------------- web tasks


class WebEnvironment(Record):
    """Where a web task runs: a registered site (bundled or real), seeded, opened at `start_path`."""

    app: str
    """The name of a registered site adapter (`shop`, `django_admin`, a recipe's `web.sites:` entry ...)."""
    seed: int = 0
    start_path: str = "/"


class StatePredicate(Record):
    """A declarative check over one table of a site's state (its adapter's `state()`; no code is evaluated).

    Rows match when every `where` field equals its value and every `text_contains` string occurs
    (case-insensitively) in some string field. The number of matching rows (minus those of the
    initial state when `delta`) must equal `count`, or be at least `min_count` when `count` is None.
    """

    table: str
    where: dict[str, Any] = Field(default_factory=dict)
    text_contains: list[str] = Field(default_factory=list)
    count: int | None = None
    min_count: int = 1
    delta: bool = False
    """Count only rows beyond those that matched in the initial state (new rows)."""
    description: str = ""
    origin: Literal["outcome", "diff", "manual"] = "manual"
    """Where the predicate came from: the expected outcome text, a replay's state diff, or by hand."""


class WebTaskSpec(Record):
    """AgentTrek's structured task spec of a tutorial."""

    platform: str = "web"
    target_site: str = ""
    task_description: str
    prerequisites: list[str] = Field(default_factory=list)
    steps: list[str]
    """Step-by-step instructions, one imperative sentence each."""
    expected_outcome: str = ""


class WebProvenance(Record):
    tutorial_id: str
    tutorial_uri: str
    synthesizer: str
    synthesizer_version: str
    params: dict[str, Any] = Field(default_factory=dict)


class WebTask(Record):
    task_id: str
    """Content hash of (environment, spec, feasible)."""
    kind: Literal["web"] = "web"
    instruction: str
    environment: WebEnvironment
    spec: WebTaskSpec
    feasible: bool = True
    """False: the correct outcome is `report_infeasible` with the state left unchanged."""
    infeasible_reason: str = ""
    checks: list[StatePredicate] = Field(default_factory=list)
    gold: list[str] = Field(default_factory=list)
    """Reference BrowserGym action strings (from a verified replay)."""
    difficulty: str = ""
    provenance: WebProvenance
    split: str = ""
    """`train`, `validation` or `test` (`datasets/splits.py`), set when the version is built."""

    def to_row(self) -> dict:
        return {
            "task_id": self.task_id,
            "kind": self.kind,
            "instruction": self.instruction,
            "environment": self.environment.model_dump(),
            **self.spec.model_dump(),
            "feasible": self.feasible,
            "infeasible_reason": self.infeasible_reason,
            "checks": [{**c.model_dump(), "where": json.dumps(c.where, sort_keys=True)} for c in self.checks],
            "gold": list(self.gold),
            "difficulty": self.difficulty,
            "provenance": self.provenance.model_dump_json(),
            "split": self.split,
        }


_PREDICATE = pa.struct(
    [
        ("table", pa.string()),
        ("where", pa.string()),
        ("text_contains", pa.list_(pa.string())),
        ("count", pa.int64()),
        ("min_count", pa.int64()),
        ("delta", pa.bool_()),
        ("description", pa.string()),
        ("origin", pa.string()),
    ]
)
WEB_TASK_SCHEMA = pa.schema(
    [
        ("task_id", pa.string()),
        ("kind", pa.string()),
        ("instruction", pa.string()),
        ("environment", pa.struct([("app", pa.string()), ("seed", pa.int64()), ("start_path", pa.string())])),
        ("platform", pa.string()),
        ("target_site", pa.string()),
        ("task_description", pa.string()),
        ("prerequisites", pa.list_(pa.string())),
        ("steps", pa.list_(pa.string())),
        ("expected_outcome", pa.string()),
        ("feasible", pa.bool_()),
        ("infeasible_reason", pa.string()),
        ("checks", pa.list_(_PREDICATE)),
        ("gold", pa.list_(pa.string())),
        ("difficulty", pa.string()),
        ("provenance", pa.string()),
        ("split", pa.string()),
    ]
)
TABLE_SCHEMAS["web_tasks"] = WEB_TASK_SCHEMA


class ScreenshotRow(Record):
    """One PNG of a web episode, stored once by content; trajectory steps name it in `arguments["screenshot"]`."""

    sha256: str
    png: bytes
    bytes: int
    """Size of `png`, so a reader can total the table without loading the images."""

    @classmethod
    def of(cls, png: bytes) -> "ScreenshotRow":
        return cls(sha256=hashlib.sha256(png).hexdigest(), png=png, bytes=len(png))

    def to_row(self) -> dict:
        return {"sha256": self.sha256, "png": {"bytes": self.png, "path": f"{self.sha256}.png"}, "bytes": self.bytes}


# `png` is stored the way `datasets` stores an `Image` (bytes and a path), and the schema's `huggingface` metadata
# says so: `load_dataset` and the Hub viewer show the column as images.
SCREENSHOT_SCHEMA = pa.schema(
    [("sha256", pa.string()), ("png", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
     ("bytes", pa.int64())],
    metadata={"huggingface": json.dumps({"info": {"features": {
        "sha256": {"dtype": "string", "_type": "Value"}, "png": {"_type": "Image"},
        "bytes": {"dtype": "int64", "_type": "Value"}}}})},
)
TABLE_SCHEMAS["screenshots"] = SCREENSHOT_SCHEMA


# ---------------------------------------------------------------- verification of record


class WebVerification(Record):
    """Whether one web trajectory counts as verified, and by what.

    The state checks decide where the task has any; a task without state checks is verified only by a
    judge pass at least `min_confidence` sure (its confidence recorded); an abstention never verifies.
    """

    trajectory_id: str
    task_id: str
    policy: str
    verified: bool
    verified_by: Literal["state", "judge", "none"]
    """`state`: the task's state checks decided (pass or fail); `judge`: no state checks, the judge decided;
    `none`: no state checks and no usable judge verdict (not verified)."""
    state_passed: bool | None = None
    judge_status: Literal["verdict", "abstain", "not_judged"] = "not_judged"
    judge_passed: bool | None = None
    judge_confidence: float | None = None
    reason: str = ""

    def to_row(self) -> dict:
        return self.model_dump()


WEB_VERIFICATION_SCHEMA = pa.schema(
    [
        ("trajectory_id", pa.string()),
        ("task_id", pa.string()),
        ("policy", pa.string()),
        ("verified", pa.bool_()),
        ("verified_by", pa.string()),
        ("state_passed", pa.bool_()),
        ("judge_status", pa.string()),
        ("judge_passed", pa.bool_()),
        ("judge_confidence", pa.float64()),
        ("reason", pa.string()),
    ]
)
TABLE_SCHEMAS["web_verification"] = WEB_VERIFICATION_SCHEMA
