"""Settings of the web half of the factory (tutorials -> web tasks -> verified browser trajectories).

Only pydantic here, so `config.Recipe` can embed it as `web: WebConfig` without importing browsers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trajfactory.agents.base import EpisodeLimits, SamplingConfig
from trajfactory.schema import content_hash

BUILTIN_DOCS = "builtin:docs"


def unique_policies(policies: list[str]) -> list[str]:
    """A policy list's validator (the recipe's `rollout.policies` and `web.policies`): each name once."""
    if len(set(policies)) != len(policies):
        raise ValueError(f"{policies}: name each policy once")
    return policies


class WebAgentConfig(SamplingConfig):
    """Settings of the model web agent (`agents/web_model.py`): sampling, action form, images, budgets."""

    max_tokens: int = Field(256, ge=1)
    """Completion tokens per model call (other sampling fields: `SamplingConfig`)."""
    actions: Literal["text", "tool_calls", "both"] = "text"
    """`text`: the action is written in the reply (BrowserGym style, e.g. `click('12')`). `tool_calls`: one
    tool per action is offered and only native tool calls count. `both`: tools, and text when no call came."""
    images: Literal["auto", "on", "off"] = "auto"
    """Send the screenshot with each observation. `auto`: send it, and when the server answers that the
    model takes no images, drop images for the rest of the episode (recorded in the policy params)."""
    system_prompt: str | None = None
    """Replaces the default system prompt (the action grammar with one line per action); `{actions}` in it
    is replaced by that grammar. A short one fits small context windows."""
    max_observation_chars: int = Field(6_000, ge=100)
    """The accessibility tree shown to the model is clipped to this many characters."""
    history_turns: int = Field(8, ge=0)
    """Earlier turns kept in the request (their observations shortened to URL + error)."""
    limits: EpisodeLimits = Field(default_factory=lambda: EpisodeLimits(max_steps=30))
    """Steps (actions and malformed replies), tokens, seconds and cost per episode; the stricter of
    these and `WebConfig.max_steps` applies."""


class WebJudgeConfig(BaseModel):
    """The model judge of web trajectories (goal + actions + final URL/page excerpt + final screenshot)."""

    model_config = ConfigDict(extra="forbid")

    min_confidence: float = Field(0.8, ge=0, le=1)
    """A task without state checks counts as verified only by a judge pass at least this confident."""
    structured: Literal["json_schema", "json_object", "none"] = "json_schema"
    """How the verdict's JSON is constrained at the server."""
    max_tokens: int = Field(200, ge=16)
    max_page_chars: int = Field(3_000, ge=100)
    """The final page's accessibility tree shown to the judge is clipped to this many characters."""
    images: Literal["auto", "on", "off"] = "auto"
    """Attach the final screenshot. `auto`: attach it, and ask again without it when the model takes no images."""


class WebConfig(BaseModel):
    """What the web flow harvests, how many tasks it makes, how it runs them and where the dataset goes."""

    model_config = ConfigDict(extra="forbid")

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
    work_dir: str = "trajfactory-out/web-work"
    """Cached results, screenshots and the run journal; keep it to resume a killed run."""
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
    dataset_name: str = "trajfactory-web"
    dataset_root: str = "trajfactory-out/datasets"

    @field_validator("tutorials")
    @classmethod
    def _known_builtin(cls, uris: list[str]) -> list[str]:
        for uri in uris:
            if uri.startswith("builtin:") and uri != BUILTIN_DOCS:
                raise ValueError(f"unknown built-in tutorial source {uri!r}; the only one is {BUILTIN_DOCS!r}")
        return uris

    _unique = field_validator("policies")(staticmethod(unique_policies))

    def uses_model(self) -> bool:
        return "model" in self.policies or self.judge

    def digest(self) -> str:
        """Hash of everything that changes the data (not where it is written or how many browsers run)."""
        return content_hash(self.model_dump(exclude={"work_dir", "dataset_root", "browsers"}))
