"""Core records shared by every stage (sources, trajectories, quarantine), their Arrow schemas, and record
files. Verdicts and reviews live beside it in `verdicts.py`, SWE and web task records in `swe.py` and `web.py`.

Stages talk only through these records. Each record that lands in a dataset has an explicit Arrow
schema and a `to_row` that produces plain columns (TRL / SWE-bench conventions where they exist).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field


def content_hash(*parts: Any, length: int = 16) -> str:
    """Stable hash of JSON-serialisable parts; ids of records are content hashes."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")
"""Control characters other than tab, newline and carriage return, and U+FFFD (what undecodable bytes become)."""


def control_chars(text: str) -> str | None:
    """Why `text` is not clean text (control characters, undecodable bytes), or None when it is."""
    found = sorted(set(CONTROL_CHARS.findall(text)))
    if not found:
        return None
    shown = ", ".join("U+FFFD (undecodable bytes)" if c == "\ufffd" else f"{ord(c):#04x}" for c in found[:5])
    return f"{len(CONTROL_CHARS.findall(text))} control or undecodable character(s): {shown}"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- sources


class Source(Record):
    """A harvested repository, pinned to one commit, with provenance."""

    source_id: str
    """Content hash of (uri, commit)."""
    kind: Literal["git", "local", "pypi"]
    uri: str
    """What the user asked for: a git URL, a local path, or `pypi:NAME==VERSION`."""
    name: str
    """Short repository name, e.g. `inflection`."""
    commit: str
    """The pinned commit (hex sha) of the mirror."""
    path: str
    """Path of the local git mirror that holds `commit`."""
    license: str | None = None
    """License name guessed from the license file, e.g. `MIT`."""
    license_file: str | None = None
    fetched_at: datetime = Field(default_factory=utcnow)
    version: str | None = None
    """The release (`pypi:` version, the ref asked for), when there is one."""
    repo_slug: str | None = None
    """`owner/name` of the project's code host (GitHub, GitLab, ...), from its URL or its metadata, when known."""
    commit_date: datetime | None = None
    """When the pinned commit was made."""


class Quarantine(Record):
    """An item that could not go through a stage, with the reason; it never stops other items."""

    item_id: str
    item_kind: Literal["source", "candidate", "task", "trajectory", "tutorial", "web_task"]
    stage: str
    reason: str
    """Short machine-readable cause, e.g. `no_tests`, `install_failed`, `suite_timeout`."""
    detail: str = ""
    """Human-readable explanation: what was wrong and what would be right."""
    uri: str = ""
    created_at: datetime = Field(default_factory=utcnow)

    def to_row(self) -> dict:
        return self.model_dump()


def quarantined(stage: str, kind: str, item_id: str, reason: str, detail: str = "", uri: str = "") -> Quarantine:
    """The quarantine record of one item: every stage makes them here, the same way."""
    return Quarantine(item_id=item_id, item_kind=kind, stage=stage, reason=reason, detail=detail, uri=uri)


def stage_stats(quarantine: list[Quarantine]) -> list[dict[str, Any]]:
    """Quarantined items per stage and reason, for the yields and the card."""
    counts: dict[tuple[str, str, str], int] = {}
    for q in quarantine:
        key = (q.stage, q.item_kind, q.reason)
        counts[key] = counts.get(key, 0) + 1
    return [{"stage": st, "item": kind, "reason": reason, "items": n} for (st, kind, reason), n in sorted(counts.items())]


QUARANTINE_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("item_kind", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("uri", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


class Tutorial(Record):
    """A harvested how-to page (or a non-tutorial page, once classified), with provenance."""

    tutorial_id: str
    """Content hash of (uri, text)."""
    uri: str
    """Where it came from: an http(s) URL, a local file path, or `hf-dump:FILE#ROW`."""
    title: str = ""
    text: str
    """Main text extracted from the page (boilerplate, navigation and scripts removed)."""
    site: str | None = None
    """The application the page is about, when it can be told (e.g. `shop`)."""
    language: str | None = None
    is_tutorial: bool | None = None
    """Classifier decision; None until classified."""
    score: float | None = None
    """Classifier probability of being a tutorial."""
    fetched_at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------- trajectories


class ToolCallFunction(Record):
    name: str
    arguments: str
    """JSON-encoded arguments, as in the OpenAI API."""


class ToolCall(Record):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class Message(Record):
    """One OpenAI chat message."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class Step(Record):
    """One action executed in the sandbox and what it showed."""

    index: int
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    observation: str = ""
    exit_code: int | None = None
    error: str | None = None
    started_at: datetime = Field(default_factory=utcnow)
    duration_s: float = 0.0
    """Wall time of the action in the sandbox."""


class Policy(Record):
    name: str
    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class Usage(Record):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_calls: int = 0
    cost_usd: float = 0.0

    def add_call(self, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        """Count one model call."""
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.model_calls += 1
        self.cost_usd += cost_usd


class Final(Record):
    patch: str = ""
    """`git diff` of the agent's changes against the starting (buggy) state."""


class Trajectory(Record):
    trajectory_id: str
    task_id: str
    policy: Policy
    sample: int = 0
    messages: list[Message]
    tools: list[dict[str, Any]]
    steps: list[Step]
    final: Final
    usage: Usage = Field(default_factory=Usage)
    exit_status: str
    """`submitted`, `step_limit`, `error: ...`."""
    duration_s: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)
    split: str = ""
    """Its task's split: `train`, `validation` or `test` (`datasets/splits.py`), set when the version is built."""

    def to_row(self) -> dict:
        return {
            "trajectory_id": self.trajectory_id,
            "task_id": self.task_id,
            "policy": {
                "name": self.policy.name,
                "model": self.policy.model,
                "params": json.dumps(self.policy.params, sort_keys=True),
            },
            "sample": self.sample,
            "messages": [m.model_dump(mode="json") for m in self.messages],
            "tools": json.dumps(self.tools),
            "steps": [
                {**s.model_dump(mode="python"), "arguments": json.dumps(s.arguments, sort_keys=True)}
                for s in self.steps
            ],
            "final_patch": self.final.patch,
            "usage": self.usage.model_dump(),
            "exit_status": self.exit_status,
            "duration_s": self.duration_s,
            "created_at": self.created_at,
            "split": self.split,
        }


_TOOL_CALL = pa.struct(
    [
        ("id", pa.string()),
        ("type", pa.string()),
        ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
    ]
)
MESSAGE_TYPE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("tool_calls", pa.list_(_TOOL_CALL)),
        ("tool_call_id", pa.string()),
        ("name", pa.string()),
    ]
)
_STEP = pa.struct(
    [
        ("index", pa.int64()),
        ("tool", pa.string()),
        ("arguments", pa.string()),
        ("observation", pa.string()),
        ("exit_code", pa.int64()),
        ("error", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("duration_s", pa.float64()),
    ]
)
TRAJECTORY_SCHEMA = pa.schema(
    [
        ("trajectory_id", pa.string()),
        ("task_id", pa.string()),
        ("policy", pa.struct([("name", pa.string()), ("model", pa.string()), ("params", pa.string())])),
        ("sample", pa.int64()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("tools", pa.string()),
        ("steps", pa.list_(_STEP)),
        ("final_patch", pa.string()),
        (
            "usage",
            pa.struct(
                [
                    ("prompt_tokens", pa.int64()),
                    ("completion_tokens", pa.int64()),
                    ("model_calls", pa.int64()),
                    ("cost_usd", pa.float64()),
                ]
            ),
        ),
        ("exit_status", pa.string()),
        ("duration_s", pa.float64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("split", pa.string()),
    ]
)


TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "trajectories": TRAJECTORY_SCHEMA,
    "quarantine": QUARANTINE_SCHEMA,
}
"""Dataset table -> its Arrow schema; `verdicts.py`, `swe.py` and `web.py` add theirs."""


# ---------------------------------------------------------------- record files


def write_records(path, records: list[BaseModel]) -> None:
    """Write records as JSON lines (atomically: a temp file renamed over the target)."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(r.model_dump_json() + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


def read_records(path, model: type[BaseModel]) -> list:
    """Read JSON-lines records written by `write_records`; a bad line names the file and line."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such record file; run the previous stage first")
    out = []
    # lines end at "\n" only: a record's JSON keeps U+2028, U+0085 and the like as they are (a test's output, a page's
    # text), and str.splitlines() would cut the record there
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if line.strip():
            try:
                out.append(model.model_validate_json(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not a valid {model.__name__} record: {exc}") from None
    return out
