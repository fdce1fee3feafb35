"""The policy protocol: given the conversation so far, produce the next assistant message.

A policy's `act` may be sync (the oracle) or async (a served model); the async rollout
(`executors/concurrent.py`) awaits either. `EpisodeLimits` and `PolicyError` are the contract
between a policy and the rollout loop that runs it.
"""

from __future__ import annotations

from typing import Any, Awaitable, Protocol

from pydantic import BaseModel, ConfigDict, Field

from trajfactory.schema import Message, Policy as PolicyInfo, Task, Usage


class Policy(Protocol):
    info: PolicyInfo
    usage: Usage

    def reset(self, task: Task) -> None:
        """Start an episode on `task`."""
        ...

    def act(self, messages: list[Message]) -> Message | Awaitable[Message]:
        """The next assistant message (normally with `tool_calls`); may be a coroutine."""
        ...


class EpisodeLimits(BaseModel):
    """Budgets of one episode; None means unlimited. Exceeding one ends the episode with its name."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(None, ge=1)
    """Steps (executed actions and malformed replies); exit status `step_limit`."""
    max_tokens: int | None = Field(None, ge=1)
    """Prompt + completion tokens over the episode, checked before each model call; `token_limit`."""
    max_seconds: float | None = Field(None, gt=0)
    """Wall-clock seconds of the agent loop (after the sandbox is prepared); `time_limit`."""
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


class SamplingConfig(BaseModel):
    """Request sampling shared by the model agents (SWE `ModelPolicyConfig`, web `WebAgentConfig`)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.0, ge=0)
    """Sampling temperature of every model call."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    max_tokens: int = Field(512, ge=1)
    """Completion tokens per model call."""
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
        return {**body, **self.extra_body}


class PolicyError(RuntimeError):
    """A turn that produced no executable action (malformed reply, failed model request).

    The rollout records a `Step` with `error=reason`, appends `message` (the reply as the model
    wrote it, if any) and shows `observation` to the policy as the next user message. `stop`,
    when set, ends the episode with that exit status instead.
    """

    def __init__(self, reason: str, observation: str, message: Message | None = None, stop: str | None = None):
        super().__init__(f"{reason}: {observation}")
        self.reason = reason
        self.observation = observation
        self.message = message
        self.stop = stop
