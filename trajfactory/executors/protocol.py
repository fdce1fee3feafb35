"""The episode protocol: an `Environment` the agent acts in, and a `Policy` that chooses the actions.

    start = await env.reset(task)                 # first messages, tool schemas, first observation
    policy.reset(task, start)
    action = await policy.act(messages, obs)      # an assistant message and the calls to execute
    tr = await env.step(call)                     # a Step record, messages for the conversation, done?
    verdict = await env.evaluate(task, trajectory)  # the task's verifier on the final state
    await env.close()

`executors/episode.py` runs any Policy in any Environment with this protocol (limits, timing, usage,
malformed-output recovery, cancellation, cleanup), and an RL trainer's rollout hook can drive the same
calls. SWE (`executors/swe_env.py`: a Docker or bubblewrap sandbox with bash/edit/submit) and web
(`executors/web_env.py`: a seeded site and a Chromium context with BrowserGym actions) are the two
Environments; the oracle, the tutorial replay, and the two model agents (`agents/`) are the Policies.
A new environment or policy is one class in one file that has these members.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from trajfactory.schema import Final, Message, Policy as PolicyInfo, Step, ToolCall, Trajectory, Usage, Verdict
from trajfactory.settings import EpisodeLimits

TaskT = TypeVar("TaskT")
ObsT = TypeVar("ObsT")


@dataclass
class Start(Generic[ObsT]):
    """What an environment shows when an episode starts."""

    system_prompt: str
    """The environment's default system prompt (a policy may replace it: `Policy.system_prompt`)."""
    messages: list[Message]
    """The conversation after the system prompt: the task, and the first observation where there is one."""
    tools: list[dict[str, Any]]
    """JSON schemas of the tools the actions are calls of (empty: actions are written as text)."""
    observation: ObsT
    retry_prompt: str
    """Shown to the policy after a reply that held no action."""
    info: dict[str, Any] = field(default_factory=dict)
    """What else the agent is told, e.g. a site's test accounts (`{"accounts": {...}}`)."""


@dataclass
class Transition(Generic[ObsT]):
    """What one executed call did."""

    step: Step
    """The record of the call (the episode loop numbers it)."""
    messages: list[Message]
    """Appended to the conversation: the tool's result, or the next page (none after an ending action)."""
    observation: ObsT
    done: bool = False
    exit_status: str = ""
    """Why the episode ended when `done`: `submitted`, `submit_failed`, `infeasible`."""
    final: Final | None = None
    """The final state's record when `done` (a SWE submission's patch)."""


@dataclass
class Action:
    """One turn of a policy: the assistant message as the trajectory records it, and the calls to execute."""

    message: Message
    calls: list[ToolCall]
    """Executed in order until one ends the episode; empty: the reply held no action (the policy is told so)."""


INFRA_FAILED = "infra_failed"
"""Exit status of an episode the infrastructure broke (the model server failed after its retries)."""


class PolicyError(RuntimeError):
    """A turn that produced no executable action (malformed reply, failed model request).

    The episode records a `Step` with `error=reason`, appends `message` (the reply as the model wrote it,
    if any) and shows `observation` to the policy as the next user message. `stop`, when set, ends the
    episode with that exit status instead. `infra`: the failure is the infrastructure's (the model server), not
    the policy's: nothing is added to the conversation and the episode ends as `stop` (`infra_failed`), which
    the dataset build drops into quarantine.
    """

    def __init__(self, reason: str, observation: str, message: Message | None = None, stop: str | None = None,
                 infra: bool = False):
        super().__init__(f"{reason}: {observation}")
        self.reason = reason
        self.observation = observation
        self.message = message
        self.stop = stop
        self.infra = infra


class Environment(Protocol[TaskT, ObsT]):
    """Where an agent acts: reset for a task, step with calls, evaluate the final state, close."""

    ids_hash_actions: bool
    """Whether a trajectory id hashes the actions too (web: a replay's content names it) or only
    (task, policy, sample) (SWE)."""

    async def reset(self, task: TaskT) -> Start[ObsT]:
        """Put the environment in the task's starting state (a fresh one: nothing of an earlier episode)."""
        ...

    async def step(self, call: ToolCall, timeout: float | None = None) -> Transition[ObsT]:
        """Execute one call; a bad call is an error step the policy sees, never an exception.
        `timeout`: seconds the call may take at most (None: the environment's own limit)."""
        ...

    async def evaluate(self, task: TaskT, trajectory: Trajectory) -> Verdict | None:
        """The task's verifier on the trajectory's final state (None: the task has no verifier here)."""
        ...

    async def close(self) -> None:
        """Release everything the episode holds; safe to call twice and after a failed reset."""
        ...


class Policy(Protocol[TaskT, ObsT]):
    """Who acts: chooses the next action from the conversation and the latest observation."""

    info: PolicyInfo
    usage: Usage
    """Model calls, tokens and cost of the current episode."""
    limits: EpisodeLimits | None
    """The policy's own budgets; the episode uses the stricter of these and the caller's."""

    def system_prompt(self, default: str) -> str:
        """The system prompt to use, given the environment's default."""
        ...

    def reset(self, task: TaskT, start: Start[ObsT]) -> None:
        """Start an episode on `task`."""
        ...

    async def act(self, messages: list[Message], observation: ObsT) -> Action | None:
        """The next action; None: the policy has nothing more to do (the episode ends as `submitted`).
        Raises `PolicyError` for a turn without an executable action."""
        ...
