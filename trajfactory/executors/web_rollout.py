"""Web rollout: a policy × a fresh browser episode on a fresh seeded app -> `Trajectory`.

Messages are OpenAI chat format without tool calls (BrowserGym style): the system prompt holds the
action grammar, user turns hold observations (url, last action error, truncated axtree), assistant
turns hold one action string each. Screenshots go to a content-addressed store
(`<root>/screenshots/<sha256>.png`); each step records its screenshot's sha in `arguments["screenshot"]`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trajfactory.executors.browser import BrowserPool, Observation, action_space
from trajfactory.executors.webapps import launch
from trajfactory.schema import Final, Message, Policy as PolicyInfo, Step, Trajectory, WebTask, content_hash

SYSTEM_PROMPT = ("You are a web agent. Each turn you see the page's accessibility tree, where `[bid] role 'name'` "
                 "lines name the elements. Answer with exactly one action:\n{actions}\n"
                 "When the task is done, call send_msg_to_user; if the site cannot do it, call report_infeasible.")
ENDING = {"send_msg_to_user": "submitted", "report_infeasible": "infeasible"}


class WebPolicy(Protocol):
    info: PolicyInfo

    def reset(self, task: WebTask, accounts: dict[str, str] | None = None) -> None: ...

    def act(self, axtree: str, last_action_error: str | None = None) -> str | None:
        """The next action string; None ends the episode."""


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
    with launch(env.app, env.seed) as site:
        initial = site.state()
        policy.reset(task, accounts=site.accounts)
        messages = [Message(role="system", content=SYSTEM_PROMPT.format(actions=action_space())),
                    Message(role="user", content=task.instruction)]
        shots: list[str] = []
        exit_status = "step_limit"
        with pool.episode(site.url + env.start_path) as ep:
            obs = ep.observe()
            shots.append(store.put(obs.screenshot) if store and obs.screenshot else "")
            messages.append(Message(role="user", content=observation_text(obs, max_observation_chars)))
            try:
                for _ in range(max_steps):
                    action = policy.act(obs.axtree, obs.last_action_error)
                    if action is None:
                        exit_status = "submitted"
                        break
                    messages.append(Message(role="assistant", content=action))
                    obs = ep.step(action)
                    shots.append(store.put(obs.screenshot) if store and obs.screenshot else "")
                    name = ep.steps[-1].name
                    if name in ENDING:
                        exit_status = ENDING[name]
                        break
                    messages.append(Message(role="user", content=observation_text(obs, max_observation_chars)))
            except Exception as exc:  # a policy bug ends this episode, never the batch
                exit_status = f"error: {type(exc).__name__}: {exc}"
            steps = [_step(r.to_step(max_observation_chars), sha) for r, sha in zip(ep.steps, shots[1:])]
        final = site.state()
    actions = [m.content for m in messages if m.role == "assistant"]
    traj = Trajectory(trajectory_id=content_hash(task.task_id, policy.info.model_dump(), sample, actions),
                      task_id=task.task_id, policy=policy.info, sample=sample, messages=messages, tools=[],
                      steps=steps, final=Final(), exit_status=exit_status, duration_s=time.perf_counter() - t0)
    return WebRollout(traj, initial, final, shots, site.accounts)


def _step(step: Step, sha: str) -> Step:
    return step.model_copy(update={"arguments": {**step.arguments, **({"screenshot": sha} if sha else {})}})
