"""The web side of `trajfactory train grpo`: episodes of web tasks for the GRPO rollouts (`training/grpo.py`).

    episodes = WebEpisodes(settings)
    with episodes.open():
        verdict, record = episodes.run(client, task, sample)        # client: a LocalChatClient on the trained model
    web_reward(verdict)                                             # 1.0 when the task's state checks pass, else 0.0

An episode is the one `trajfactory eval` runs for a model on a web task (`pipelines/evaluate_web.py`): the model web
agent (`agents/web_model.py`, actions written as text, no screenshots) in a fresh seeded site of the task's app and a
fresh Chromium context (`executors/web_env.py`), through the factory's episode loop; its verdict is the task's state
checks on the site's final state (`verifiers/state.py`), the verdict of record of web tasks. The only difference is
the model: the trainer's current weights, generating in-process (`training/local_policy.py`) or, with
`generation: vllm`, on the run's own vLLM server (`training/vllm_policy.py`; the tests run that on SWE tasks only).

The web agent re-renders its request every turn (the goal, its earlier turns with their pages shortened, the current
page), so a turn's input does not extend the last one: the episode's token sequence is then each turn's whole input
(environment tokens, masked) followed by what the model sampled, one turn after another, which is exactly what the
model was conditioned on when it sampled. Keep `max_observation_chars` small for a small context.

Reward: 1.0 when the state checks pass (for an infeasible twin: the agent reported it infeasible and left the site
unchanged), otherwise 0.0: no partial credit on web tasks (a predicate that holds by the site's seed data would earn
credit for doing nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from trajfactory.agents.web_model import WebModelPolicy
from trajfactory.executors.browser_pool import BrowserPool
from trajfactory.executors.episode import run_episode_sync
from trajfactory.executors.web_env import WebEnvironment
from trajfactory.schema import Verdict, WebTask
from trajfactory.settings import EpisodeLimits, WebAgentConfig
from trajfactory.settings.training import GRPOSettings

WEB_REWARD_DEFINITION = ("web tasks: 1.0 when the task's state checks pass on the site's final state (the verifier's "
                         "verdict; an infeasible twin passes when reported infeasible with the site unchanged), "
                         "otherwise 0")
WEB_OBSERVATION_CHARS = 1_000
"""The page shown to the model when the settings name no clip: the tiny model's 2,048 tokens hold about 6,000
characters in all, and an episode holds every turn's input."""


def web_reward(verdict: Verdict | None) -> float:
    """The reward of one web episode from its state verdict (module docstring); no verdict earns 0."""
    return 1.0 if verdict is not None and verdict.passed else 0.0


class WebEpisodes:
    """Web episodes of the model under training, one at a time in one Chromium (`open` starts it)."""

    def __init__(self, settings: GRPOSettings):
        self.settings = settings
        self.agent = WebAgentConfig(actions="text", images="off", temperature=settings.temperature,
                                    max_tokens=settings.max_new_tokens, seed=settings.seed,
                                    max_observation_chars=settings.max_observation_chars or WEB_OBSERVATION_CHARS,
                                    limits=EpisodeLimits(max_steps=settings.max_agent_steps))
        self.pool: BrowserPool | None = None

    @contextmanager
    def open(self) -> Iterator[WebEpisodes]:
        with BrowserPool(1) as pool:
            self.pool = pool
            try:
                yield self
            finally:
                self.pool = None

    def run(self, client, task: WebTask, sample: int) -> tuple[Verdict | None, dict[str, Any]]:
        """One episode of `task` with the model behind `client` (sample `sample`: its own seed), and its record."""
        if self.pool is None:
            raise RuntimeError("WebEpisodes.run outside `with episodes.open()`")
        env = WebEnvironment(self.pool, None, self.agent.max_observation_chars)
        ep = run_episode_sync(env, WebModelPolicy(client, self.agent.for_sample(sample)), task, sample=sample,
                              limits=EpisodeLimits(max_steps=self.settings.max_agent_steps), evaluate=True)
        tr, verdict = ep.trajectory, ep.verdict
        return verdict, {"task_id": task.task_id, "kind": "web", "sample": sample, "trajectory_id": tr.trajectory_id,
                         "exit_status": tr.exit_status, "agent_steps": len(tr.steps),
                         "actions": [s.tool for s in tr.steps], "feasible": task.feasible,
                         "passed": bool(verdict and verdict.passed),
                         "verifier": verdict.verifier if verdict else None}

    def reward(self, verdict: Verdict | None) -> float:
        return web_reward(verdict)
