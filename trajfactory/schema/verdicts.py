"""Verdicts (a verifier's judgement of a trajectory or a gold patch, with its evidence) and reviews (a person's
label of a trajectory), with their Arrow schemas: the `verdicts` and `reviews` tables."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import pyarrow as pa
from pydantic import Field

from trajfactory.schema.core import TABLE_SCHEMAS, Record, utcnow

class TestOutcome(Record):
    test: str
    outcome: str


class Evidence(Record):
    FAIL_TO_PASS: list[TestOutcome] = Field(default_factory=list)
    PASS_TO_PASS: list[TestOutcome] = Field(default_factory=list)
    detail: str = ""
    reverted: list[str] = Field(default_factory=list)
    """Changes of the verified patch that were dropped before the tests ran (tests, test configuration,
    start-up hooks), as `path (why)`."""
    refused: list[str] = Field(default_factory=list)
    """Why the patch was refused without a test verdict counting (tampering with the test machinery, canary
    tests with the wrong outcome); a refused patch fails."""


class Verdict(Record):
    verdict_id: str
    task_id: str
    trajectory_id: str | None = None
    """None when the verdict is about the task's gold patch."""
    subject: Literal["trajectory", "gold"] = "trajectory"
    verifier: str
    verifier_version: str
    passed: bool
    score: float
    evidence: Evidence
    duration_s: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)

    def to_row(self) -> dict:
        row = self.model_dump()
        row["evidence"] = self.evidence.model_dump()
        return row


_OUTCOMES = pa.list_(pa.struct([("test", pa.string()), ("outcome", pa.string())]))
VERDICT_SCHEMA = pa.schema(
    [
        ("verdict_id", pa.string()),
        ("task_id", pa.string()),
        ("trajectory_id", pa.string()),
        ("subject", pa.string()),
        ("verifier", pa.string()),
        ("verifier_version", pa.string()),
        ("passed", pa.bool_()),
        ("score", pa.float64()),
        (
            "evidence",
            pa.struct([("FAIL_TO_PASS", _OUTCOMES), ("PASS_TO_PASS", _OUTCOMES), ("detail", pa.string()),
                       ("reverted", pa.list_(pa.string())), ("refused", pa.list_(pa.string()))]),
        ),
        ("duration_s", pa.float64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


class Review(Record):
    """A person's label of one trajectory, made in `trajfactory view`: accept or reject it, with a note.

    Reviews are data: a `reviews` table in a new dataset version whose parent is the reviewed one. The latest
    label of a trajectory wins (`datasets/reviews.py`), so a later version may overrule an earlier label.
    """

    review_id: str
    """Content hash of (trajectory_id, label, note, reviewer, created_at)."""
    trajectory_id: str
    task_id: str
    label: Literal["accept", "reject"]
    note: str = ""
    reviewer: str = ""
    reviewed_version: str = ""
    """The dataset version the reviewer looked at, e.g. `v3`."""
    created_at: datetime = Field(default_factory=utcnow)

    def to_row(self) -> dict:
        return self.model_dump()


REVIEW_SCHEMA = pa.schema(
    [
        ("review_id", pa.string()),
        ("trajectory_id", pa.string()),
        ("task_id", pa.string()),
        ("label", pa.string()),
        ("note", pa.string()),
        ("reviewer", pa.string()),
        ("reviewed_version", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

TABLE_SCHEMAS["verdicts"] = VERDICT_SCHEMA
TABLE_SCHEMAS["reviews"] = REVIEW_SCHEMA
