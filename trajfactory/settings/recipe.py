"""The factory recipe: YAML validated by pydantic. Errors name the file and the field."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from trajfactory.schema import content_hash
from trajfactory.settings.agents import Section
from trajfactory.settings.cluster import ClusterConfig
from trajfactory.settings.model import ModelConfig
from trajfactory.settings.sandbox import SandboxConfig
from trajfactory.settings.swe import JudgeConfig, RepoSpec, RolloutConfig, SynthesisConfig, ValidationConfig
from trajfactory.settings.training import TrainConfig
from trajfactory.settings.web import WebConfig

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "data" / "recipes" / "default.yaml"


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the field."""


class DatasetConfig(Section):
    name: str = "trajfactory-swe"
    """Name of the SWE dataset (the web dataset's is `web.dataset_name`)."""
    root: str = "trajfactory-out/datasets"
    """Where dataset versions are written (relative paths are relative to the working directory)."""
    split_seed: int = 0
    """Seed of the train / validation / test assignment (`datasets/splits.py`): whole leakage groups, so the same
    seed on the same tasks gives the same splits."""
    near_duplicate_threshold: float = Field(0.8, gt=0.0, le=1.0)
    """MinHash similarity at or above which two tasks' statements (and fixes) count as near-duplicates."""
    exports: list[Literal["sft", "dpo", "rl", "swebench"]] = Field(default_factory=lambda: ["sft", "dpo", "rl",
                                                                                              "swebench"])
    """What `trajfactory run` exports of each new version (`trajfactory dataset export` makes them later too)."""
    export_root: str = "trajfactory-out/exports"
    """Where: `EXPORT_ROOT/NAME/vN/` (relative paths are relative to the working directory)."""


class Recipe(Section):
    name: str = "default"
    work_dir: str = "trajfactory-out/work"
    """Mirrors, wheelhouses, stage records and the flows' cached results (the web half's under `web/`);
    keep it to resume a killed run."""
    repos: list[RepoSpec] = Field(default_factory=list)
    """Repositories for SWE tasks (may be empty when the recipe only has a `web` section)."""
    synthesis: SynthesisConfig = SynthesisConfig()
    validation: ValidationConfig = ValidationConfig()
    sandbox: SandboxConfig = SandboxConfig()
    rollout: RolloutConfig = RolloutConfig()
    judge: JudgeConfig = JudgeConfig()
    model: ModelConfig | None = None
    """The served or external model used by the model agent, LM synthesis and the judge."""
    dataset: DatasetConfig = DatasetConfig()
    web: WebConfig | None = None
    """The web half: tutorials -> web tasks -> verified browser trajectories (omit it to skip)."""
    train: TrainConfig | None = None
    """The closed loop after the datasets are written: fine-tune a model on the run's verified SWE (or web, with
    `train.data: web`) trajectories and evaluate it against the untrained one on held-out tasks (omit it to skip)."""
    cluster: ClusterConfig | None = None
    """Run the sandbox fan-out (validation, gold proofs, rollouts, verdicts) on a Ray cluster (omit it to run here)."""

    @model_validator(mode="after")
    def _has_work(self) -> "Recipe":
        if not self.repos and self.web is None:
            raise ValueError("nothing to do: give `repos:` (SWE tasks) and/or a `web:` section (web tasks)")
        if self.train is not None and self.train.data == "swe" and not self.repos:
            raise ValueError("`train:` trains and evaluates on the run's SWE tasks (`train.data: swe`): add `repos:`, "
                             "set `train.data: web` to train on the web tasks, or drop `train:`")
        if self.train is not None and self.train.data == "web" and self.web is None:
            raise ValueError("`train.data: web` trains and evaluates on the run's web tasks: add a `web:` section, or "
                             "set `train.data: swe`")
        if self.model is None:
            users = [what for what, used in (
                ("rollout.policies: [model]", "model" in self.rollout.policies),
                ("synthesis.lm_rewrite.enabled", self.synthesis.lm_rewrite.enabled),
                ("synthesis.statements: model", self.synthesis.statements == "model"),
                ("judge.enabled", self.judge.enabled),
                ("web.policies: [model] / web.judge", self.web is not None and self.web.uses_model()),
            ) if used]
            if users:
                raise ValueError(f"{', '.join(users)} need a model: add a `model:` section (`serve: builtin:tiny`, "
                                 "a model directory, or `base_url:` of an OpenAI-compatible endpoint)")
        return self

    def swe_uses_model(self) -> bool:
        """Whether the SWE steps use the model (LM rewrite, model statements, model rollouts, the judge)."""
        return self.model is not None and (
            "model" in self.rollout.policies or self.synthesis.lm_rewrite.enabled
            or self.synthesis.statements == "model" or self.judge.enabled)

    def web_uses_model(self) -> bool:
        """Whether the web half uses the model (the web model agent, the web judge)."""
        return self.model is not None and self.web is not None and self.web.uses_model()

    def uses_model(self) -> bool:
        return self.swe_uses_model() or self.web_uses_model()

    @property
    def web_work_dir(self) -> Path:
        """Cached results, screenshots and the journal of the web half."""
        return Path(self.work_dir) / "web"

    def digest(self) -> str:
        """Hash of everything that changes the SWE data (not where it is written, the web half, the model's port or the
        closed loop that trains on it)."""
        data = self.model_dump(exclude={"work_dir": True, "dataset": {"root"}, "web": True, "model": True,
                                        "train": True, "cluster": True})
        return content_hash(data, self.web.digest() if self.web else None,
                            self.model.digest_fields() if self.model else None)


def _section_fields(loc: tuple) -> list[str]:
    """The field names of the section at `loc` (the path of an unknown key, without the key itself)."""
    model: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        kinds = [field.annotation, *typing.get_args(field.annotation)]
        kinds += [a for k in kinds for a in typing.get_args(k)]  # list[X] | None, dict[str, X]
        model = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
        if model is None:
            return []
    return sorted(model.model_fields)


def _unknown_key_hint(loc: tuple) -> str:
    """For an unknown key: the section's valid keys, and the closest one when it looks like a typo."""
    valid = _section_fields(loc[:-1])
    if not valid:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
    where = ".".join(str(p) for p in loc[:-1] if not isinstance(p, int)) or "the recipe"
    return (f" (did you mean `{close[0]}`?)" if close else "") + f"; the keys of {where}: {', '.join(valid)}"


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
            hint = _unknown_key_hint(tuple(err["loc"])) if err["type"] == "extra_forbidden" else ""
            lines.append(f"{path}: field `{field}`: {err['msg']}{hint}")
        raise RecipeError("\n".join(lines)) from None
