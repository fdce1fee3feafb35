"""The recipe's `web:` section: tutorials -> web tasks -> verified browser trajectories.

Where the web half writes (its work files, its dataset root) comes from the recipe's `work_dir` and `dataset.root`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from trajfactory.schema import content_hash
from trajfactory.settings.agents import Section, WebAgentConfig, unique_policies
from trajfactory.settings.sites import SiteEntry

BUILTIN_DOCS = "builtin:docs"


class WebJudgeConfig(Section):
    """The model judge of web trajectories (goal + actions + final URL/page excerpt + final screenshot)."""

    min_confidence: float = Field(0.8, ge=0, le=1)
    """A task without state checks counts as verified only by a judge pass at least this confident."""
    structured: Literal["json_schema", "json_object", "none"] = "json_schema"
    """How the verdict's JSON is constrained at the server."""
    max_tokens: int = Field(200, ge=16)
    max_page_chars: int = Field(3_000, ge=100)
    """The final page's accessibility tree shown to the judge is clipped to this many characters."""
    images: Literal["auto", "on", "off"] = "auto"
    """Attach the final screenshot. `auto`: attach it, and ask again without it when the model takes no images."""


class WebConfig(Section):
    """What the web half harvests, how many tasks it makes, how it runs them and what its dataset is called."""

    tutorials: list[str] = Field(default_factory=lambda: [BUILTIN_DOCS], min_length=1)
    """Tutorial sources: `builtin:docs` (the bundled docs served on loopback), http(s) URLs, folders, globs, dumps."""
    seed: int = 0
    """Seed of the bundled apps and of the pick of infeasible tasks."""
    infeasible_share: float = Field(0.25, ge=0, le=1)
    """Share of each site's tasks that also get an infeasible twin (at least one per site when > 0)."""
    browsers: int = Field(2, ge=1)
    """Chromium processes in the pool, and episodes run at once."""
    max_tasks_per_site: int | None = Field(None, ge=1)
    """Cap on feasible tasks per site (tutorials in URI order); None keeps all."""
    max_steps: int = Field(40, ge=1)
    """Browser actions per episode before it ends as `step_limit`."""
    max_pages: int = Field(200, ge=1)
    """Pages fetched per crawled tutorial site."""
    spec_parser: Literal["rule", "model"] = "rule"
    """How tutorials become task specs: `rule` (model-free) or `model` (the recipe's served model, under a JSON
    schema; the rule parser writes the spec wherever the model's answer is unusable). Each task records which."""
    policies: list[Literal["replay", "model"]] = Field(default_factory=lambda: ["replay"], min_length=1)
    """Who acts in the browser: `replay` (tutorial-guided, model-free) and/or `model` (the served model)."""
    judge: bool = False
    """Also judge each trajectory with the model (goal + actions + final screenshot). State checks stay the
    verdict of record; tasks without state checks (read-only tutorials, kept only when the judge is on) are
    verified by a confident judge pass. The judge's agreement with the state checks is reported."""
    judge_settings: WebJudgeConfig = Field(default_factory=WebJudgeConfig)
    model_samples: int = Field(1, ge=1)
    """Episodes of the model agent per checked task."""
    model_max_tasks: int | None = Field(None, ge=1)
    """Roll out only this many checked tasks with the model (the first by task id); None: all."""
    agent: WebAgentConfig = Field(default_factory=WebAgentConfig)
    """Sampling, action form, images and budgets of the model web agent."""
    sites: list[SiteEntry] = Field(default_factory=list)
    """Site adapters beside the built-in ones (shop, forum, tracker, django_admin, roundup): each names a kind (built-in or
    `module:Class`), its options, and facts such as the tutorial sources that are about it (settings/sites.py)."""
    dataset_name: str = "trajfactory-web"
    """Name of the web dataset (written under the recipe's `dataset.root`)."""

    @field_validator("tutorials")
    @classmethod
    def _known_builtin(cls, uris: list[str]) -> list[str]:
        for uri in uris:
            if uri.startswith("builtin:") and uri != BUILTIN_DOCS:
                raise ValueError(f"unknown built-in tutorial source {uri!r}; the only one is {BUILTIN_DOCS!r}")
        return uris

    _unique = field_validator("policies")(staticmethod(unique_policies))

    def uses_model(self) -> bool:
        return "model" in self.policies or self.judge or self.spec_parser == "model"

    def digest(self) -> str:
        """Hash of everything that changes the data (not how many browsers run)."""
        return content_hash(self.model_dump(exclude={"browsers"}))
