"""Records of the SWE half: entities, bug candidates, reference runs, validations and SWE tasks."""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from trajfactory.schema.core import TABLE_SCHEMAS, Record

# ---------------------------------------------------------------- the SWE action vocabulary
# Every SWE trajectory row carries these tool schemas (`tools`), and the built-in tiny model's tokenizer is
# trained on them and on the system prompt, so they live with the records, below every stage.

SWE_SYSTEM_PROMPT = (
    "You are a software engineer working in a Python repository checked out at the current directory. "
    "Use the tools to investigate and fix the problem the user describes: run commands with `bash`, "
    "change files with `edit`, and call `submit` when the fix is complete. Do not modify the tests."
)
SWE_TOOLS: list[dict] = [
    {
        "type": "function",
        "function": {
            "name": "bash",
            "description": "Run a bash command in the repository root and return its output and exit code.",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string", "description": "The command to run."}},
                "required": ["command"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "edit",
            "description": (
                "Replace exactly one occurrence of `old_str` with `new_str` in a file. "
                "`old_str` must match the file's text exactly, whitespace included, and be unique."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path, relative to the repository root."},
                    "old_str": {"type": "string", "description": "The exact text to replace."},
                    "new_str": {"type": "string", "description": "The replacement text."},
                },
                "required": ["path", "old_str", "new_str"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "submit",
            "description": "Submit the current state of the repository as the solution and end the episode.",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]

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
    body_lineno: int = 0
    """First line of its body (the first statement, a docstring included): lines from here on run when it is called,
    the lines above (decorators, signature, defaults) when it is defined. 0: not known."""


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
    """The suite of one image on the clean repository: whole, with per-test coverage, then (by default) its passing
    tests again, selected by id."""

    image: str
    tests: dict[str, str]
    """Outcome per test id of the first run: passed | failed | error | skipped."""
    passing: list[str]
    """Tests that passed in both runs: the only ones a task may use."""
    excluded: dict[str, str] = Field(default_factory=dict)
    """Test id -> why it was excluded (failed, flaky, skipped)."""
    coverage: dict[str, dict[int, list[str]]] = Field(default_factory=dict)
    """file -> line -> ids of the tests that executed the line."""
    measured: list[str] | None = None
    """The files coverage measured (the ones validation reads: `stage.coverage_files`); None: every file of the
    checkout. A file outside them tells nothing: a candidate that needs it runs the whole suite."""
    probed: dict[str, list[int]] | None = None
    """With line probes instead of coverage: the lines they vouch for, per file (`selection_lines.probe_plan`'s
    lines of every file that was instrumented or never imported); a candidate whose selection reads any other line
    runs the whole suite. None: coverage of whole files."""
    duration_s: float = 0.0
    durations: dict[str, float] = Field(default_factory=dict)
    """Test id -> seconds it took (setup, call and teardown) in the last run, the one without coverage when there
    were two: what a candidate's time limit scales with (`validate.candidate_timeout`). Empty: not recorded."""
    overhead_s: float = 0.0
    """Seconds of that run outside every test: the interpreter, pytest's start and the whole suite's collection."""
    by_id: bool = False
    """Whether the first run's passing tests were selected again by id (run again, or with one run collected again),
    through the invocation validation and verification use: every test in `passing` is then known to round-trip
    through it."""


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
    reached: list[str] = Field(default_factory=list)
    """`coverage` selection against a reference run confirmed by test id: the tests run against the candidate (the
    ones its change can reach), which its gold proof runs again; the other PASS_TO_PASS tests passed on the clean
    repository in the reference run, and selecting them by id as verification does was shown to reach them. Empty:
    the gold proof runs every check."""


# ---------------------------------------------------------------- tasks


class SweEnvironment(Record):
    repo: str
    base_commit: str
    image_name: str
    workdir: str = "/repo"
    test_command: str = "python -m pytest"
    python: str | None = None
    """The Python version the task's sandboxes run (`3.13.5`, from the recipe's `sandbox.python`): the tests' verdicts
    hold for it. None in rows written before it was recorded."""


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
    repo_slug: str | None = None
    """`owner/name` of the project's code host, when known."""
    version: str | None = None
    commit_date: str | None = None
    """ISO time of the pinned commit."""
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
    """`easy`, `medium` or `hard`: the band of `difficulty_score`."""
    difficulty_score: float = 0.0
    """0..1, measured (`datasets/curriculum.py`): the fix's size, the breadth of the failure, how many bugs are
    combined, and, where a model rolled out on the task, how often it failed."""
    curriculum: int = 0
    """Rank of the task from easiest (1) to hardest in its dataset version (0: not rated)."""
    family: str
    entity: Entity
    validation: Validation
    provenance: Provenance
    statement_source: Literal["template", "lm"] = "template"
    """Who wrote `instruction`: the template (from the failing tests) or the model (`lm`)."""
    statement_detail: str = ""
    """Why: `ok` (model text used), the reason the model's text was refused (`off_topic: ...`, `leak: ...`,
    `empty: ...`, `model_error: ...`), or empty when the recipe asked for template statements."""
    split: str = ""
    """`train`, `validation` or `test` (`datasets/splits.py`), set when the version is built."""

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
            "statement_source": self.statement_source,
            "statement_detail": self.statement_detail,
            "difficulty": self.difficulty,
            "difficulty_score": self.difficulty_score,
            "curriculum": self.curriculum,
            "family": self.family,
            "entity": self.entity.model_dump(),
            "environment": env.model_dump(),
            "validation": self.validation.model_dump_json(),
            "provenance": self.provenance.model_dump_json(),
            "split": self.split,
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
        ("python", pa.string()),
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
        ("statement_source", pa.string()),
        ("statement_detail", pa.string()),
        ("difficulty", pa.string()),
        ("difficulty_score", pa.float64()),
        ("curriculum", pa.int64()),
        ("family", pa.string()),
        ("entity", _ENTITY),
        ("environment", _SWE_ENV),
        ("validation", pa.string()),
        ("provenance", pa.string()),
        ("split", pa.string()),
    ]
)


TABLE_SCHEMAS["tasks"] = TASK_SCHEMA


# ---------------------------------------------------------------- model usage


class ModelUsage(Record):
    """What one stage's model requests cost: one record per unit of work, summed for a report."""

    stage: str
    """`lm_rewrite`, `statements`, `rollout` or `judge`."""
    model: str = ""
    requests: int = 0
    failed_requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    """Sum of the requests' wall times (retries included); concurrent requests overlap."""
    cost_usd: float = 0.0
    """The client's estimate: token prices and/or the GPU-hour price over the span the server was busy."""

    @classmethod
    def of_client(cls, stage: str, client: Any) -> "ModelUsage":
        """The usage recorded by a `ModelClient` (its `requests` and `cost_usd()`)."""
        reqs = client.requests
        return cls(stage=stage, model=client.model, requests=len(reqs),
                   failed_requests=sum(r.error is not None for r in reqs), retries=sum(r.retries for r in reqs),
                   prompt_tokens=sum(r.prompt_tokens for r in reqs),
                   completion_tokens=sum(r.completion_tokens for r in reqs),
                   latency_s=round(sum(r.latency_s for r in reqs), 3), cost_usd=client.cost_usd())

    def __add__(self, other: "ModelUsage") -> "ModelUsage":
        fields = ("requests", "failed_requests", "retries", "prompt_tokens", "completion_tokens", "latency_s",
                  "cost_usd")
        summed = {f: getattr(self, f) + getattr(other, f) for f in fields}
        return ModelUsage(stage=self.stage if self.stage == other.stage else "total",
                          model=self.model or other.model, **summed)
