"""The web environment: a fresh seeded site and a fresh Chromium context per episode, with BrowserGym actions.

    with BrowserPool(2) as pool:
        run = run_web_episode(task, ReplayPolicy(), pool, ScreenshotStore(work))
        run.trajectory, run.verdict, run.initial_state, run.final_state

Messages are OpenAI chat format without tool calls (BrowserGym style): the system prompt holds the action
grammar, user turns hold observations (URL, last action error, the truncated accessibility tree), assistant
turns hold one action each (a model's turn holds its reply as it wrote it). Policies hand the action over as
a tool call named by the action (`browser_actions.action_call`). Screenshots go to a content-addressed store
(`<root>/screenshots/<sha256>.png`); each step records its screenshot's sha in `arguments["screenshot"]`.
`evaluate` reads the site's final state and judges it with the task's state checks (`verifiers/state.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trajfactory.executors.browser import BrowserEpisode, Observation
from trajfactory.executors.browser_pool import BrowserPool
from trajfactory.executors.browser_actions import ActionError, action_from_call, action_space
from trajfactory.executors.episode import run_episode_sync
from trajfactory.executors.protocol import Policy, Start, Transition
from trajfactory.executors.webapps import SiteHandle, get_adapter
from trajfactory.schema import Message, Step, ToolCall, Trajectory, Verdict, WebTask, utcnow
from trajfactory.settings import EpisodeLimits
from trajfactory.verifiers import state as state_verifier

SYSTEM_PROMPT = ("You are a web agent. Each turn you see the page's accessibility tree, where `[bid] role 'name'` "
                 "lines name the elements. Answer with exactly one action:\n{actions}\n"
                 "When the task is done, call send_msg_to_user; if the site cannot do it, call report_infeasible.")
RETRY_PROMPT = "Write exactly one action, e.g. click('12')."
ENDING = {"send_msg_to_user": "submitted", "report_infeasible": "infeasible"}


class ScreenshotStore:
    """PNG files named by their sha256 under `<root>/screenshots/`: the same image is stored once."""

    def __init__(self, root: str | Path, sent: tuple[str, ...] = ()):
        self.dir = Path(root) / "screenshots"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sent = sent
        """Screenshots this store carries when sent to another node (`sending`)."""

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

    def read(self, sha: str) -> bytes | None:
        """The PNG stored under `sha`, or None."""
        try:
            return self.path(sha).read_bytes()
        except FileNotFoundError:
            return None

    def sending(self, *shas: str) -> "ScreenshotStore":
        """This store, carrying the screenshots `shas` when sent to another node (a judge there reads them)."""
        return ScreenshotStore(self.dir.parent, tuple(s for s in shas if s))

    def take_back(self, pngs: dict[str, bytes]) -> None:
        """The screenshots an episode on another node took (`NodeScreenshots.handed_back`)."""
        for sha, png in pngs.items():
            if self.put(png) != sha:
                raise ValueError(f"screenshot {sha} came back from a node with other bytes")

    def __reduce__(self):
        # Sent to another node (a Ray worker): the episode's screenshots come back with its result, not via a path,
        # and those it reads there go with it
        return (NodeScreenshots, ({sha: png for sha in self.sent if (png := self.read(sha)) is not None},))


class NodeScreenshots:
    """A `ScreenshotStore` as sent to another node (a Ray worker, `flows/cluster.py`): it keeps the PNGs the episode
    takes there, and the step hands them back with its result to the flow's store (`ScreenshotStore.take_back`)."""

    def __init__(self, given: dict[str, bytes] | None = None) -> None:
        self.taken: dict[str, bytes] = {}
        self.given = dict(given or {})
        """The screenshots the flow's store sent along (`ScreenshotStore.sending`)."""
        self._lock = threading.Lock()

    def read(self, sha: str) -> bytes | None:
        with self._lock:
            return self.taken.get(sha) or self.given.get(sha)

    def put(self, png: bytes) -> str:
        sha = hashlib.sha256(png).hexdigest()
        with self._lock:
            self.taken[sha] = png
        return sha

    def handed_back(self) -> dict[str, bytes]:
        with self._lock:
            return dict(self.taken)


def observation_text(obs: Observation, max_chars: int) -> str:
    tree = obs.axtree if len(obs.axtree) <= max_chars else obs.axtree[:max_chars] + "\n... (truncated)"
    error = f"Last action error: {obs.last_action_error}\n" if obs.last_action_error else ""
    return f"URL: {obs.url}\n{error}Accessibility tree:\n{tree}"


def final_screenshot(trajectory: Trajectory) -> str:
    """sha256 of the last screenshot a step of `trajectory` recorded ('' when none)."""
    return next((s.arguments["screenshot"] for s in reversed(trajectory.steps) if s.arguments.get("screenshot")), "")


class WebEnvironment:
    """One web episode: the `Environment` of web tasks (observations are the browser's `Observation`)."""

    ids_hash_actions = True

    def __init__(self, pool: BrowserPool, store: ScreenshotStore | None = None, max_observation_chars: int = 8_000):
        self.pool, self.store, self.max_observation_chars = pool, store, max_observation_chars
        self.site: SiteHandle | None = None
        self.initial_state: dict[str, Any] = {}
        self.final_state: dict[str, Any] | None = None
        self._browser = None
        self._episode: BrowserEpisode | None = None

    def _open(self, task: WebTask) -> Observation:
        env = task.environment
        adapter = get_adapter(env.app)
        self.site = adapter.start(env.seed)
        self.initial_state = self.site.state()
        self._browser = self.pool.acquire()
        self._episode = self._browser.new_episode(self.site.url + env.start_path, adapter.facts.hosts)
        return self._episode.observe()

    async def reset(self, task: WebTask) -> Start[Observation]:
        await self.close()
        self.final_state = None
        obs = await asyncio.to_thread(self._open, task)
        return Start(system_prompt=SYSTEM_PROMPT.format(actions=action_space()),
                     messages=[Message(role="user", content=task.instruction),
                               Message(role="user", content=observation_text(obs, self.max_observation_chars))],
                     tools=[], observation=obs, retry_prompt=RETRY_PROMPT, info={"accounts": self.site.accounts})

    def _step(self, call: ToolCall) -> Transition[Observation]:
        ep = self._episode
        try:
            action = action_from_call(call.function.name, call.function.arguments)
        except ActionError as exc:  # never reaches the browser: the page is as it was
            obs = ep.observe(error=str(exc))
            step = Step(index=0, tool="invalid_action", observation=obs.axtree[:self.max_observation_chars],
                        error=str(exc), started_at=utcnow())
            return Transition(step, [Message(role="user", content=observation_text(obs, self.max_observation_chars))], obs)
        obs = ep.step(action)
        record = ep.steps[-1]
        sha = self.store.put(obs.screenshot) if self.store and obs.screenshot else ""
        step = record.to_step(self.max_observation_chars)
        if sha:
            step = step.model_copy(update={"arguments": {**step.arguments, "screenshot": sha}})
        if record.name in ENDING:
            return Transition(step, [], obs, done=True, exit_status=ENDING[record.name])
        return Transition(step, [Message(role="user", content=observation_text(obs, self.max_observation_chars))], obs)

    async def step(self, call: ToolCall, timeout: float | None = None) -> Transition[Observation]:
        if self._episode is None:
            raise RuntimeError("step before reset: call reset(task) first")
        return await asyncio.to_thread(self._step, call)

    async def evaluate(self, task: WebTask, trajectory: Trajectory) -> Verdict | None:
        """The task's state checks on the site's final state; None for a task without checks (a judge decides)."""
        if self.final_state is None and self.site is not None:
            self.final_state = await asyncio.to_thread(self.site.state)
        if not task.checks:
            return None
        return state_verifier.verify_state(task, trajectory, self.initial_state, self.final_state or {})

    def _close(self) -> None:
        try:
            if self._episode is not None:
                self._episode.close()
        finally:
            self._episode = None
            if self._browser is not None:
                self.pool.release(self._browser)
                self._browser = None
            if self.site is not None:
                try:
                    if self.final_state is None:
                        self.final_state = self.site.state()
                finally:
                    self.site.close()
                    self.site = None

    async def close(self) -> None:
        if self.site is not None or self._episode is not None:
            await asyncio.to_thread(self._close)


@dataclass
class WebRun:
    """A web episode's trajectory, its state verdict (None: the task has no state checks), and the site's state
    before and after."""

    trajectory: Trajectory
    verdict: Verdict | None
    initial_state: dict[str, Any]
    final_state: dict[str, Any]


def run_web_episode(task: WebTask, policy: Policy, pool: BrowserPool, store: ScreenshotStore | None = None, *,
                    max_steps: int = 40, max_observation_chars: int = 8_000, sample: int = 0) -> WebRun:
    """One episode of `policy` on `task` in a fresh site and browser context, verified by the task's state checks."""
    env = WebEnvironment(pool, store, max_observation_chars)
    episode = run_episode_sync(env, policy, task, sample=sample, limits=EpisodeLimits(max_steps=max_steps),
                               evaluate=True)
    return WebRun(episode.trajectory, episode.verdict, env.initial_state, env.final_state or {})
