"""Web rollout: a policy × a fresh browser episode on a fresh seeded app -> `Trajectory`.

Messages are OpenAI chat format without tool calls (BrowserGym style): the system prompt holds the
action grammar, user turns hold observations (url, last action error, truncated axtree), assistant
turns hold one action string each (a model policy's turn holds the reply as it wrote it). Screenshots go
to a content-addressed store (`<root>/screenshots/<sha256>.png`); each step records its screenshot's sha
in `arguments["screenshot"]`.

Two kinds of policy: a rule policy answers `act(axtree, last_action_error)` with an action string; an
observing policy (the model agent) has `act_on(observation) -> WebTurn` and sees the whole observation
(URL, screenshot). An observing policy may raise `PolicyError` for a turn without an executable action:
that turn is a step with `error=reason` (it counts against the step limit), and its text is shown to
the policy as the next observation. Budgets are the stricter of `max_steps` and the policy's `limits`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trajfactory.agents.base import EpisodeLimits, PolicyError
from trajfactory.executors.browser import BrowserPool, Observation, action_space
from trajfactory.executors.webapps import launch
from trajfactory.schema import Final, Message, Policy as PolicyInfo, Step, Trajectory, Usage, WebTask, content_hash

SYSTEM_PROMPT = ("You are a web agent. Each turn you see the page's accessibility tree, where `[bid] role 'name'` "
                 "lines name the elements. Answer with exactly one action:\n{actions}\n"
                 "When the task is done, call send_msg_to_user; if the site cannot do it, call report_infeasible.")
ENDING = {"send_msg_to_user": "submitted", "report_infeasible": "infeasible"}


class WebPolicy(Protocol):
    info: PolicyInfo

    def reset(self, task: WebTask, accounts: dict[str, str] | None = None) -> None: ...

    def act(self, axtree: str, last_action_error: str | None = None) -> str | None:
        """The next action string; None ends the episode."""


@dataclass
class WebTurn:
    """An observing policy's turn: the action to run (None ends the episode) and the reply that held it."""

    action: str | None
    content: str | None = None
    """What the policy wrote (recorded as the assistant message); None: the action string itself."""


class ScreenshotStore:
    """PNG files named by their sha256 under `<root>/screenshots/`: the same image is stored once."""

    def __init__(self, root: str | Path):
        self.dir = Path(root) / "screenshots"
        self.dir.mkdir(parents=True, exist_ok=True)

    def put(self, png: bytes) -> str:
        sha = hashlib.sha256(png).hexdigest()
        path = self.dir / f"{sha}.png"
        if not path.exists():
            tmp = path.with_suffix(f".{time.monotonic_ns()}.tmp")  # atomic: a reader never sees half a PNG
            tmp.write_bytes(png)
            tmp.replace(path)
        return sha

    def path(self, sha: str) -> Path:
        return self.dir / f"{sha}.png"


@dataclass
class WebRollout:
    """A trajectory plus what its verifier needs: the app's state before and after the episode."""

    trajectory: Trajectory
    initial_state: dict[str, Any]
    final_state: dict[str, Any]
    screenshots: list[str] = field(default_factory=list)
    """sha256 of the initial observation's screenshot, then one per step ('' when none)."""
    accounts: dict[str, str] = field(default_factory=dict)


def observation_text(obs: Observation, max_chars: int) -> str:
    tree = obs.axtree if len(obs.axtree) <= max_chars else obs.axtree[:max_chars] + "\n... (truncated)"
    error = f"Last action error: {obs.last_action_error}\n" if obs.last_action_error else ""
    return f"URL: {obs.url}\n{error}Accessibility tree:\n{tree}"


def web_rollout(task: WebTask, policy: WebPolicy, pool: BrowserPool, store: ScreenshotStore | None = None,
                max_steps: int = 40, max_observation_chars: int = 8_000, sample: int = 0) -> WebRollout:
    """Run `policy` on `task` in a fresh app instance (launch -> episode -> close) and record everything."""
    t0 = time.perf_counter()
    env = task.environment
    observing = callable(getattr(policy, "act_on", None))
    lim = EpisodeLimits(max_steps=max_steps).tighten(getattr(policy, "limits", None))
    with launch(env.app, env.seed) as site:
        initial = site.state()
        policy.reset(task, accounts=site.accounts)
        system = getattr(policy, "system_prompt", None) or SYSTEM_PROMPT.format(actions=action_space())
        messages = [Message(role="system", content=system), Message(role="user", content=task.instruction)]
        shots: list[str] = []
        steps: list[Step] = []
        exit_status = ""
        with pool.episode(site.url + env.start_path) as ep:
            obs = ep.observe()
            shots.append(store.put(obs.screenshot) if store and obs.screenshot else "")
            messages.append(Message(role="user", content=observation_text(obs, max_observation_chars)))
            loop_start = time.monotonic()
            try:
                while (hit := lim.hit(len(steps), getattr(policy, "usage", Usage()),
                                        time.monotonic() - loop_start)) is None:
                    try:
                        turn = policy.act_on(obs) if observing else WebTurn(policy.act(obs.axtree, obs.last_action_error))
                    except PolicyError as exc:  # no executable action this turn: the policy sees why next turn
                        if exc.message is not None:
                            messages.append(exc.message)
                        steps.append(Step(index=len(steps), tool="", error=exc.reason, observation=exc.observation))
                        shots.append("")
                        messages.append(Message(role="user", content=exc.observation))
                        if exc.stop:
                            exit_status = exc.stop
                            break
                        continue
                    if turn.action is None:
                        exit_status = "submitted"
                        break
                    messages.append(Message(role="assistant", content=turn.content or turn.action))
                    obs = ep.step(turn.action)
                    sha = store.put(obs.screenshot) if store and obs.screenshot else ""
                    shots.append(sha)
                    steps.append(_step(ep.steps[-1].to_step(max_observation_chars), sha, len(steps)))
                    name = ep.steps[-1].name
                    if name in ENDING:
                        exit_status = ENDING[name]
                        break
                    messages.append(Message(role="user", content=observation_text(obs, max_observation_chars)))
                else:
                    exit_status = hit
            except Exception as exc:  # a policy bug ends this episode, never the batch
                exit_status = f"error: {type(exc).__name__}: {exc}"
        final = site.state()
    actions = [m.content for m in messages if m.role == "assistant"]
    usage = getattr(policy, "usage", None)
    traj = Trajectory(trajectory_id=content_hash(task.task_id, policy.info.model_dump(), sample, actions),
                      task_id=task.task_id, policy=policy.info, sample=sample, messages=messages, tools=[],
                      steps=steps, final=Final(), usage=usage.model_copy() if usage is not None else Usage(),
                      exit_status=exit_status, duration_s=time.perf_counter() - t0)
    return WebRollout(traj, initial, final, shots, site.accounts)


def final_screenshot(trajectory: Trajectory) -> str:
    """sha256 of the last screenshot a step of `trajectory` recorded ('' when none)."""
    return next((s.arguments["screenshot"] for s in reversed(trajectory.steps) if s.arguments.get("screenshot")), "")


def _step(step: Step, sha: str, index: int) -> Step:
    return step.model_copy(update={"index": index, "arguments": {**step.arguments, **({"screenshot": sha} if sha else {})}})
