"""Settings of the agents and their episodes: request sampling, episode budgets, and the model agents' sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trajfactory.schema import Usage


class Section(BaseModel):
    """A recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def unique_policies(policies: list[str]) -> list[str]:
    """A policy list's validator (the recipe's `rollout.policies` and `web.policies`): each name once."""
    if len(set(policies)) != len(policies):
        raise ValueError(f"{policies}: name each policy once")
    return policies


class EpisodeLimits(Section):
    """Budgets of one episode; None means unlimited. Exceeding one ends the episode with its name."""

    max_steps: int | None = Field(None, ge=1)
    """Steps (executed actions and malformed replies); exit status `step_limit`."""
    max_tokens: int | None = Field(None, ge=1)
    """Prompt + completion tokens over the episode, checked before each model call; `token_limit`."""
    max_seconds: float | None = Field(None, gt=0)
    """Wall-clock seconds of the agent loop (after the environment is reset); `time_limit`."""
    max_cost_usd: float | None = Field(None, gt=0)
    """Estimated cost in USD (`Usage.cost_usd`), checked before each model call; `cost_limit`."""

    def tighten(self, other: "EpisodeLimits | None") -> "EpisodeLimits":
        """The stricter of the two limits, field by field."""
        if other is None:
            return self
        merged = {}
        for name in type(self).model_fields:
            mine, theirs = getattr(self, name), getattr(other, name)
            merged[name] = theirs if mine is None else mine if theirs is None else min(mine, theirs)
        return EpisodeLimits(**merged)

    def hit(self, steps: int, usage: Usage, elapsed: float) -> str | None:
        """The name of the first budget used up (checked before each turn), or None."""
        if self.max_steps is not None and steps >= self.max_steps:
            return "step_limit"
        if self.max_seconds is not None and elapsed >= self.max_seconds:
            return "time_limit"
        if self.max_tokens is not None and usage.prompt_tokens + usage.completion_tokens >= self.max_tokens:
            return "token_limit"
        if self.max_cost_usd is not None and usage.cost_usd >= self.max_cost_usd:
            return "cost_limit"
        return None


class SamplingConfig(Section):
    """Request sampling shared by the model agents (SWE `ModelPolicyConfig`, web `WebAgentConfig`)."""

    temperature: float = Field(0.0, ge=0)
    """Sampling temperature of every model call."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    max_tokens: int = Field(512, ge=1)
    """Completion tokens per model call."""
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    """OpenAI's repetition guard: each generated token's logit drops by this much per earlier use in the reply
    (small models loop on a token without it); 0: off, and not sent."""
    seed: int | None = None
    """Sampling seed sent with each request (servers that honour it make a sample reproducible)."""
    max_model_errors: int = Field(3, ge=1)
    """Consecutive failed model requests after which the episode ends (`model_error`)."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Further request fields (e.g. `top_k`, `stop`), sent as they are."""

    def sampling(self) -> dict[str, Any]:
        body: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        if self.seed is not None:
            body["seed"] = self.seed
        if self.frequency_penalty:
            body["frequency_penalty"] = self.frequency_penalty
        return {**body, **self.extra_body}

    def for_sample(self, sample: int):
        """These settings for sample `sample` of a task: its own seed, so samples differ and each is reproducible."""
        return self.model_copy(update={"seed": (self.seed or 0) + sample})


class ModelPolicyConfig(SamplingConfig):
    """Settings of the SWE model agent: sampling (see `SamplingConfig`), action format, and episode budgets."""

    actions: Literal["tool_calls", "text", "both"] = "tool_calls"
    """`tool_calls`: send the tool schemas, read native tool calls only. `text`: send no schemas,
    document the text format in the system prompt and parse it. `both`: schemas plus the text
    fallback when a reply has no native tool call."""
    limits: EpisodeLimits = Field(default_factory=lambda: EpisodeLimits(max_steps=30))
    """Episode budgets; the rollout uses the stricter of these and its own."""
    max_observation_chars: int | None = Field(None, ge=64)
    """Tool outputs sent to the model are clipped to this many characters (head and tail kept; the trajectory keeps
    them whole). Set it to the `clip_tool_output_chars` a model was trained with; None: send them whole."""


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
