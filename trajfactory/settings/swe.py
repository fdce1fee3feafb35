"""The recipe's SWE sections: which repositories, how bugs are synthesized and validated, who rolls out, the judge."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from trajfactory.settings.agents import ModelPolicyConfig, Section, unique_policies

BUILTIN_REPOS = Path(__file__).resolve().parent.parent / "data" / "repos"


RESERVED_ENV = frozenset({"PATH", "HOME", "TMPDIR", "LD_PRELOAD", "LD_LIBRARY_PATH", "COVERAGE_PROCESS_START",
                          "COVERAGE_FILE", "COVERAGE_RCFILE", "GIT_DIR", "GIT_WORK_TREE"})
"""Variables a recipe's `test_env` may not set: the sandbox's harness, git and the interpreter rely on them."""


class RepoSpec(Section):
    uri: str
    """A git URL (optionally `URL@REF`), a local path, `pypi:NAME==VERSION`, `pypi:NAME@latest:N` (the N newest
    releases with an sdist, resolved when the run starts: each a repository of its own) or `builtin:NAME`."""
    bug_patches: str | None = None
    """A JSON or JSON-lines file of bug patches for this repository in SWE-smith's instance format (`patch`,
    optionally `instance_id` and `strategy`): validated as candidates by the same harness as the procedural ones."""
    test_requirements: list[str] = []
    """Requirements its suite needs that the project does not declare, installed into its image beside those it
    does: an sdist often leaves its test requirements file out (funcy 2.1's tests import `whatever`, which only its
    repository's `test_requirements.txt` names). PEP 508 strings, as pip takes them (`whatever>=0.7`). One that names
    a distribution the project requires too replaces the project's requirement of it: html5lib 1.1 pins `pytest<6`,
    which does not run on Python 3.11, and `pytest>=7` here lifts the pin."""
    ignore_tests: list[str] = []
    """Test paths (files or folders, relative to the repository's root) that every run of its suite leaves out, as
    pytest's `--ignore` does: modules its maintainers run only elsewhere (bitarray 3.12.3's `test_free_threading.py`
    asserts at import that the interpreter has no GIL, so the whole suite does not collect here)."""
    test_env: dict[str, str] = {}
    """Environment variables set in its image, for its install and every run of its suite, as its maintainers' tox
    `setenv` or CI matrix sets them: a second suite run they make (msgpack's `MSGPACK_PUREPYTHON=1` tests its pure
    Python fallback instead of its C extension, whose bugs no test catches otherwise)."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, entry):
        """`- pypi:NAME==VERSION` for `- uri: pypi:NAME==VERSION`: an entry that says nothing but its URI."""
        return {"uri": entry} if isinstance(entry, str) else entry

    @field_validator("uri")
    @classmethod
    def _known_form(cls, uri: str) -> str:
        uri = uri.strip()
        if not uri:
            raise ValueError("empty; expected a git URL, a local path, pypi:NAME==VERSION, pypi:NAME@latest:N or "
                             "builtin:NAME")
        if uri.startswith("builtin:"):
            name = uri.split(":", 1)[1]
            if not (BUILTIN_REPOS / name).is_dir():
                known = ", ".join(sorted(p.name for p in BUILTIN_REPOS.iterdir() if p.is_dir()))
                raise ValueError(f"no built-in repository {name!r}; built-ins are: {known}")
        if uri.startswith("pypi:") and "@latest:" in uri:
            latest = re.fullmatch(r".+@latest:([0-9]+)(:pre)?", uri)
            if not latest or int(latest[1]) < 1:
                raise ValueError(f"{uri!r}: N of pypi:NAME@latest:N is a whole number of 1 or more (`:pre` after it "
                                 "counts pre-releases), e.g. pypi:inflection@latest:2")
        elif uri.startswith("pypi:") and "==" not in uri:
            raise ValueError(f"{uri!r} has no version; write pypi:NAME==VERSION or pypi:NAME@latest:N")
        return uri

    @field_validator("bug_patches")
    @classmethod
    def _patch_file(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{path!r}: no such file; give a JSON or JSON-lines file of SWE-smith instances "
                             "(each with a `patch`)")
        return path

    @field_validator("test_requirements")
    @classmethod
    def _requirements(cls, wanted: list[str]) -> list[str]:
        from packaging.requirements import InvalidRequirement, Requirement

        for req in wanted:
            try:
                Requirement(req)
            except InvalidRequirement as exc:
                why = str(exc).splitlines()[0]
                raise ValueError(f"{req!r} is not a requirement pip understands ({why}); write a PEP 508 requirement "
                                 "such as 'whatever' or 'whatever>=0.7'") from None
        return [r.strip() for r in wanted]

    @field_validator("ignore_tests")
    @classmethod
    def _relative_paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            parts = Path(path.strip()).parts
            if not path.strip() or Path(path.strip()).is_absolute() or ".." in parts:
                raise ValueError(f"{path!r} is not a path inside the repository; give it relative to the repository's "
                                 "root, e.g. 'tests/test_free_threading.py' or 'tests/slow'")
        return [path.strip().rstrip("/") for path in paths]

    @field_validator("test_env")
    @classmethod
    def _variables(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name; use letters, digits and '_', "
                                 "e.g. MSGPACK_PUREPYTHON")
            if name in RESERVED_ENV or name.startswith(("TRAJFACTORY_", "PYTEST_", "PYTHON", "COV_", "PIP_")):
                raise ValueError(f"{name!r} is the sandbox's own (the harness, pytest, the interpreter or pip read "
                                 "it); set the project's own variables only")
            if "\0" in value or "\n" in value:
                raise ValueError(f"the value of {name!r} holds a newline or NUL byte; give one line of text")
        return env

    @model_validator(mode="after")
    def _patches_of_one_release(self) -> "RepoSpec":
        if self.bug_patches and "@latest:" in self.uri:
            raise ValueError(f"bug_patches apply to one release, and {self.uri!r} stands for several: pin the release "
                             "the patches were made on (pypi:NAME==VERSION)")
        return self


class LMRewriteConfig(Section):
    enabled: bool = False
    max_entities: int = Field(4, ge=1)
    """Functions per repository given to the model (a seeded sample of those above `min_complexity`)."""
    samples_per_entity: int = Field(1, ge=1)
    temperature: float = Field(0.8, ge=0)
    max_tokens: int = Field(512, ge=16)
    max_context_chars: int = Field(6000, ge=200)
    """Characters of the masked file shown around the function (keep prompt + reply inside the model's context)."""


class CombineConfig(Section):
    size: int = Field(2, ge=2, le=4)
    """Bugs per combined task."""
    max_per_file: int = Field(0, ge=0)
    """Combined tasks per file at most; 0 turns combining off. Only proven bugs whose FAIL_TO_PASS sets differ
    (and whose patches touch different lines) are combined."""


class SynthesisConfig(Section):
    families: list[str] | Literal["all"] = "all"
    """Procedural mutation families to use, or `all`."""
    min_complexity: int = Field(3, ge=1)
    """Entities below this cyclomatic complexity are not mutated."""
    max_per_entity: int = Field(2, ge=1)
    max_candidates_per_repo: int = Field(40, ge=1)
    seed: int = 0
    combine: CombineConfig = Field(default_factory=CombineConfig)
    """SWE-smith's combined bugs: several validated bugs of one file as one task."""
    lm_rewrite: LMRewriteConfig = Field(default_factory=LMRewriteConfig)
    """SWE-smith's LM rewrite: the model re-implements a function from its masked body (needs `model:`)."""
    statements: Literal["template", "model"] = "template"
    """Problem statements: `template` (from the failing tests), or `model` (written by the model from the bug
    patch and the failing tests' output, checked not to leak the fix and to name something of the task;
    the template is the fallback)."""
    statement_max_tokens: int = Field(600, ge=16)
    """Completion tokens of one model-written statement."""
    statement_max_context_chars: int = Field(6000, ge=200)
    """Characters of bug patch and test output (half each, at most) in the statement prompt."""


class ValidationConfig(Section):
    selection: Literal["coverage", "full"] = "coverage"
    """`coverage`: run only the tests that execute the mutated lines; `full`: the whole suite."""
    recorder: Literal["probe", "coverage"] = "probe"
    """How the reference run records which test executed which line: `probe` instructs only the lines the
    candidates' selections read (`executors/line_probe.py`), at about a plain run's cost; `coverage` measures
    whole files with coverage.py, whose tracer costs about 2.2x a plain run on Python < 3.12."""
    reference_runs: int = Field(1, ge=1, le=5)
    """Runs of the clean suite: the whole suite, then its passing tests again by id; a test that differs between runs
    is flaky and excluded. With 1, the passing tests are only collected again by id, which proves their ids select
    them at the cost of a collection (`synthesizers/swe/reference.py`); more runs catch flaky tests before
    validation, at a whole suite each."""
    suite_timeout_s: float = Field(300, gt=0)
    test_timeout_s: float = Field(120, gt=0)
    """Ceiling of one candidate's test run; a mutation that hangs the tests is rejected."""
    timeout_factor: float = Field(10.0, ge=0)
    """A candidate's tests may run this many times what they took on the clean repository (their durations in the
    reference run plus their share of its time between tests), at least 15 s and twice the suite's time outside its
    tests, at most `test_timeout_s`: a bug that loops forever costs seconds, not the ceiling. A limit of CPU
    seconds stops them too: twice the suite's time outside its tests plus this factor times the selected tests' own
    time, at least 2 s (a busy machine slows the wall clock, not that one). 0: always `test_timeout_s`, and no CPU
    limit."""
    batch_size: int = Field(16, ge=1)
    """Candidates validated by one warm test worker in one sandbox (one unit of work, one `execute`)."""


class ModelRolloutConfig(Section):
    samples: int = Field(2, ge=1)
    """Samples per task (for pass@k, and the groups of RL)."""
    max_tasks: int | None = Field(None, ge=1)
    """Roll out only this many tasks with the model (the first by task id); None: all."""
    concurrency: int = Field(4, ge=1)
    """Episodes (and sandboxes) in flight at once, sharing the one model server (on a cluster: in all, shared by the
    nodes that run chunks of them at once)."""
    agent: ModelPolicyConfig = Field(default_factory=ModelPolicyConfig)
    """Sampling, action format (tool_calls / text / both) and episode budgets of the model agent."""


class RolloutConfig(Section):
    policies: list[Literal["oracle", "model"]] = Field(default_factory=lambda: ["oracle"], min_length=1)
    """Who acts: `oracle` (applies the gold patch: proves the harness) and/or `model` (needs `model:`)."""
    samples: int = Field(1, ge=1)
    """Oracle samples per task (the oracle is deterministic; more only re-proves it)."""
    max_steps: int = Field(20, ge=1)
    model: ModelRolloutConfig = Field(default_factory=ModelRolloutConfig)

    _unique = field_validator("policies")(staticmethod(unique_policies))


class JudgeConfig(Section):
    enabled: bool = False
    """Judge every trajectory with the model too, and report its agreement with the test verdicts.
    Tests stay the verdict of record for SWE tasks; the judge is measured against them."""
    structured: Literal["json_schema", "json_object", "none"] = "json_schema"
    """How the verdict's JSON is constrained at the server."""
    max_tokens: int = Field(200, ge=16)
    max_history_steps: int = Field(30, ge=1)
    """Steps of the trajectory shown to the judge (the first and last ones when there are more)."""
    max_observation_chars: int = Field(400, ge=50)
    """Characters of each observation shown (head and tail)."""
    max_patch_chars: int = Field(4000, ge=200)
    """Characters of the final diff shown; keep the prompt within the model's context."""
