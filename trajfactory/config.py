"""The factory recipe: YAML validated by pydantic. Errors name the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trajfactory.schema import content_hash
from trajfactory.web_config import WebConfig

DEFAULT_RECIPE = Path(__file__).parent / "data" / "recipes" / "default.yaml"
BUILTIN_REPOS = Path(__file__).parent / "data" / "repos"


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RepoSpec(_Section):
    uri: str
    """A git URL (optionally `URL@REF`), a local path, `pypi:NAME==VERSION` or `builtin:NAME`."""

    @field_validator("uri")
    @classmethod
    def _known_form(cls, uri: str) -> str:
        uri = uri.strip()
        if not uri:
            raise ValueError("empty; expected a git URL, a local path, pypi:NAME==VERSION or builtin:NAME")
        if uri.startswith("builtin:"):
            name = uri.split(":", 1)[1]
            if not (BUILTIN_REPOS / name).is_dir():
                known = ", ".join(sorted(p.name for p in BUILTIN_REPOS.iterdir() if p.is_dir()))
                raise ValueError(f"no built-in repository {name!r}; built-ins are: {known}")
        if uri.startswith("pypi:") and "==" not in uri:
            raise ValueError(f"{uri!r} has no version; write pypi:NAME==VERSION")
        return uri


class SynthesisConfig(_Section):
    families: list[str] | Literal["all"] = "all"
    """Procedural mutation families to use, or `all`."""
    min_complexity: int = Field(3, ge=1)
    """Entities below this cyclomatic complexity are not mutated."""
    max_per_entity: int = Field(2, ge=1)
    max_candidates_per_repo: int = Field(40, ge=1)
    seed: int = 0


class ValidationConfig(_Section):
    selection: Literal["coverage", "full"] = "coverage"
    """`coverage`: run only the tests that execute the mutated lines; `full`: the whole suite."""
    reference_runs: int = Field(2, ge=1, le=5)
    """Runs of the whole clean suite; a test that differs between runs is flaky and excluded."""
    suite_timeout_s: float = Field(300, gt=0)
    test_timeout_s: float = Field(120, gt=0)
    """Limit of one candidate's test run; a mutation that hangs the tests is rejected."""


class SandboxConfig(_Section):
    backend: Literal["auto", "docker", "local"] = "auto"
    concurrency: int = Field(2, ge=1)
    """Sandboxes in use at once across the flow."""
    memory: str = "2g"
    cpus: float = Field(1.0, gt=0)
    pids: int = Field(256, ge=16)
    command_timeout_s: float = Field(120, gt=0)


class RolloutConfig(_Section):
    policy: Literal["oracle"] = "oracle"
    samples: int = Field(1, ge=1)
    max_steps: int = Field(20, ge=1)


class DatasetConfig(_Section):
    name: str = "trajfactory-swe"
    root: str = "trajfactory-out/datasets"
    """Where dataset versions are written (relative paths are relative to the working directory)."""


class Recipe(_Section):
    name: str = "default"
    work_dir: str = "trajfactory-out/work"
    """Mirrors, wheelhouses and the flow's cached results; keep it to resume a killed run."""
    repos: list[RepoSpec] = Field(default_factory=list)
    """Repositories for SWE tasks (may be empty when the recipe only has a `web` section)."""
    synthesis: SynthesisConfig = SynthesisConfig()
    validation: ValidationConfig = ValidationConfig()
    sandbox: SandboxConfig = SandboxConfig()
    rollout: RolloutConfig = RolloutConfig()
    dataset: DatasetConfig = DatasetConfig()
    web: WebConfig | None = None
    """The web half: tutorials -> web tasks -> verified browser trajectories (omit it to skip)."""

    @model_validator(mode="after")
    def _has_work(self) -> "Recipe":
        if not self.repos and self.web is None:
            raise ValueError("nothing to do: give `repos:` (SWE tasks) and/or a `web:` section (web tasks)")
        return self

    def digest(self) -> str:
        """Hash of everything that changes the data (not where it is written)."""
        data = self.model_dump(exclude={"work_dir": True, "dataset": {"root"}, "web": True})
        return content_hash(data, self.web.digest() if self.web else None)


def load_recipe(path: str | Path | None = None) -> Recipe:
    """Load and validate a recipe; `None` gives the embedded default."""
    path = Path(path) if path else DEFAULT_RECIPE
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file; pass a YAML file or omit it for the default recipe")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level (name:, repos:, ...)")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"{path}: field `{field}`: {err['msg']}")
        raise RecipeError("\n".join(lines)) from None
