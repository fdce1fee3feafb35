"""Records shared by every stage, and their Arrow schemas.

Stages talk only through these records. Each record that lands in a dataset has an explicit Arrow
schema and a `to_row` that produces plain columns (TRL / SWE-bench conventions where they exist).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field


def content_hash(*parts: Any, length: int = 16) -> str:
    """Stable hash of JSON-serialisable parts; ids of records are content hashes."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


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


# ---------------------------------------------------------------- synthesis


class Entity(Record):
    """A function, method or class of a repository that a mutation targets."""

    file: str
    """Path relative to the repository root."""
    name: str
    """Qualified name, e.g. `Parser.parse`."""
    kind: Literal["function", "method", "class"]
    lineno: int
    end_lineno: int
    complexity: int


class Candidate(Record):
    """A bug candidate: a patch that breaks the repository, not yet validated."""

    candidate_id: str
    source_id: str
    repo: str
    base_commit: str
    family: str
    """The mutation family, e.g. `change_operator`."""
    scope: Literal["function", "class", "module"]
    """How far the change reaches; class/module scopes validate against the whole suite."""
    entity: Entity
    patch: str
    """Unified diff that introduces the bug (apply to `base_commit`)."""
    changed_lines: list[int] = Field(default_factory=list)
    """Lines of the original file that the change touches (for coverage-based test selection)."""
    synthesizer: str = "swe.procedural"
    synthesizer_version: str = "1"
    params: dict[str, Any] = Field(default_factory=dict)


class ReferenceRun(Record):
    """The whole suite of one image, run twice on the clean repository."""

    image: str
    tests: dict[str, str]
    """Outcome per test id of the first run: passed | failed | error | skipped."""
    passing: list[str]
    """Tests that passed in both runs: the only ones a task may use."""
    excluded: dict[str, str] = Field(default_factory=dict)
    """Test id -> why it was excluded (failed, flaky, skipped)."""
    coverage: dict[str, dict[int, list[str]]] = Field(default_factory=dict)
    """file -> line -> ids of the tests that executed the line."""
    duration_s: float = 0.0


class Validation(Record):
    """What running the tests against one candidate showed."""

    candidate_id: str
    status: Literal["valid", "no_fail_to_pass", "no_pass_to_pass", "patch_failed", "timeout", "error"]
    FAIL_TO_PASS: list[str] = Field(default_factory=list)
    PASS_TO_PASS: list[str] = Field(default_factory=list)
    selection: Literal["coverage", "full"] = "full"
    """`coverage`: only the tests that executed the changed lines were run."""
    tests_run: int = 0
    duration_s: float = 0.0
    detail: str = ""


# ---------------------------------------------------------------- tasks


class SweEnvironment(Record):
    repo: str
    base_commit: str
    image_name: str
    workdir: str = "/repo"
    test_command: str = "python -m pytest"


class Checks(Record):
    FAIL_TO_PASS: list[str] = Field(default_factory=list)
    PASS_TO_PASS: list[str] = Field(default_factory=list)
    p2p_method: str = ""
    """How PASS_TO_PASS was established: `full-suite` or `coverage-selected` (see README)."""


class Gold(Record):
    patch: str = ""
    """The fix: reverses the bug patch."""


class Provenance(Record):
    source_uri: str
    source_id: str
    license: str | None = None
    commit: str
    synthesizer: str
    synthesizer_version: str
    params: dict[str, Any] = Field(default_factory=dict)


class Task(Record):
    task_id: str
    kind: Literal["swe", "web"] = "swe"
    instance_id: str
    """SWE-bench style id: `<repo>__<family>__<hash>`."""
    instruction: str
    """The problem statement given to the agent."""
    environment: SweEnvironment
    bug_patch: str
    """Unified diff that turns `base_commit` into the buggy starting state."""
    checks: Checks
    gold: Gold
    difficulty: str
    family: str
    entity: Entity
    validation: Validation
    provenance: Provenance

    def to_row(self) -> dict:
        env = self.environment
        return {
            "task_id": self.task_id,
            "kind": self.kind,
            "instance_id": self.instance_id,
            "repo": env.repo,
            "base_commit": env.base_commit,
            "image_name": env.image_name,
            "patch": self.gold.patch,
            "bug_patch": self.bug_patch,
            "FAIL_TO_PASS": list(self.checks.FAIL_TO_PASS),
            "PASS_TO_PASS": list(self.checks.PASS_TO_PASS),
            "p2p_method": self.checks.p2p_method,
            "problem_statement": self.instruction,
            "difficulty": self.difficulty,
            "family": self.family,
            "entity": self.entity.model_dump(),
            "environment": env.model_dump(),
            "validation": self.validation.model_dump_json(),
            "provenance": self.provenance.model_dump_json(),
        }


_ENTITY = pa.struct(
    [
        ("file", pa.string()),
        ("name", pa.string()),
        ("kind", pa.string()),
        ("lineno", pa.int64()),
        ("end_lineno", pa.int64()),
        ("complexity", pa.int64()),
    ]
)
_SWE_ENV = pa.struct(
    [
        ("repo", pa.string()),
        ("base_commit", pa.string()),
        ("image_name", pa.string()),
        ("workdir", pa.string()),
        ("test_command", pa.string()),
    ]
)
TASK_SCHEMA = pa.schema(
    [
        ("task_id", pa.string()),
        ("kind", pa.string()),
        ("instance_id", pa.string()),
        ("repo", pa.string()),
        ("base_commit", pa.string()),
        ("image_name", pa.string()),
        ("patch", pa.string()),
        ("bug_patch", pa.string()),
        ("FAIL_TO_PASS", pa.list_(pa.string())),
        ("PASS_TO_PASS", pa.list_(pa.string())),
        ("p2p_method", pa.string()),
        ("problem_statement", pa.string()),
        ("difficulty", pa.string()),
        ("family", pa.string()),
        ("entity", _ENTITY),
        ("environment", _SWE_ENV),
        ("validation", pa.string()),
        ("provenance", pa.string()),
    ]
)


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
    ]
)


# ---------------------------------------------------------------- verdicts


class TestOutcome(Record):
    test: str
    outcome: str


class Evidence(Record):
    FAIL_TO_PASS: list[TestOutcome] = Field(default_factory=list)
    PASS_TO_PASS: list[TestOutcome] = Field(default_factory=list)
    detail: str = ""


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
            pa.struct([("FAIL_TO_PASS", _OUTCOMES), ("PASS_TO_PASS", _OUTCOMES), ("detail", pa.string())]),
        ),
        ("duration_s", pa.float64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "tasks": TASK_SCHEMA,
    "trajectories": TRAJECTORY_SCHEMA,
    "verdicts": VERDICT_SCHEMA,
    "quarantine": QUARANTINE_SCHEMA,
}


# ---------------------------------------------------------------- web tasks


class WebEnvironment(Record):
    """Where a web task runs: a bundled app, seeded, opened at `start_path`."""

    app: str
    """A bundled app name (`shop`, `forum`, `tracker`)."""
    seed: int = 0
    start_path: str = "/"


class StatePredicate(Record):
    """A declarative check over one table of the app's `/__state__` JSON (no code is evaluated).

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
        return {"sha256": self.sha256, "png": self.png, "bytes": self.bytes}


SCREENSHOT_SCHEMA = pa.schema([("sha256", pa.string()), ("png", pa.binary()), ("bytes", pa.int64())])
TABLE_SCHEMAS["screenshots"] = SCREENSHOT_SCHEMA


# ---------------------------------------------------------------- record files


def write_records(path, records: list[BaseModel]) -> None:
    """Write records as JSON lines (atomically: a temp file renamed over the target)."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(r.model_dump_json() + "\n" for r in records))
    tmp.replace(path)


def read_records(path, model: type[BaseModel]) -> list:
    """Read JSON-lines records written by `write_records`; a bad line names the file and line."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such record file; run the previous stage first")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(model.model_validate_json(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not a valid {model.__name__} record: {exc}") from None
    return out
