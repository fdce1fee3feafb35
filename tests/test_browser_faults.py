"""A Chromium that crashes or is killed under the web half: between episodes the pool relaunches it unseen; in the
middle of one, the episode ends in an `InfrastructureError` (never a failed trajectory in the dataset), which the
flow's web steps retry on a relaunched browser, and the retry verifies."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from test_web_tasks import TRACKER, tutorial
from trajfactory.agents.replay import ReplayPolicy
from trajfactory.executors.base import InfrastructureError
from trajfactory.executors.browser import CHROMIUM_ARGS, BrowserConfig
from trajfactory.executors.browser_pool import BrowserPool
from trajfactory.executors.web_env import run_web_episode
from trajfactory.executors.webapps import launch
from trajfactory.schema import WebTask
from trajfactory.synthesizers.web import stage
from trajfactory.synthesizers.web.spec import make_web_task, parse_tutorial

pytestmark = pytest.mark.browser

# a switch Chromium ignores, so that this module's browsers (and no one else's) can be found and killed
MARK = f"--trajfactory-test-{uuid.uuid4().hex[:10]}"


def kill_chromium() -> None:
    """SIGKILL every process of this module's Chromium, as a crash or the OOM killer would end it."""
    assert subprocess.run(["pkill", "-9", "-f", "--", MARK]).returncode == 0, "no Chromium of this module ran"


class KilledAfter(ReplayPolicy):
    """The tutorial replay, with Chromium killed before its action number `n`."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.acted = n, 0

    async def act(self, messages, observation):
        if self.acted == self.n:
            kill_chromium()
        self.acted += 1
        return await super().act(messages, observation)


@pytest.fixture(scope="module")
def pool():
    with BrowserPool(1, BrowserConfig(args=[*CHROMIUM_ARGS, MARK], action_timeout_ms=2_000)) as p:
        yield p


def test_chromium_killed_between_episodes_is_relaunched(pool):
    with launch("tracker", seed=0) as site:
        with pool.episode(site.url) as ep:
            before = ep.observe().axtree
        kill_chromium()
        with pool.episode(site.url) as ep:  # the dead browser is found and replaced; the caller sees nothing
            assert ep.observe().axtree == before


def test_chromium_killed_mid_episode_is_retried_and_the_retry_verifies(pool):
    tut = tutorial(TRACKER, "tracker")
    task = stage.establish_checks(make_web_task(parse_tutorial(tut), tut, seed=0), pool)
    assert isinstance(task, WebTask) and task.checks, task
    with pytest.raises(InfrastructureError, match="Chromium is gone"):
        run_web_episode(task, KilledAfter(2), pool)
    again = run_web_episode(task, ReplayPolicy(), pool)
    assert again.verdict is not None and again.verdict.passed, again.verdict


def test_the_flow_retries_web_steps_on_infrastructure_errors():
    from trajfactory.flows.tasks import STEPS, infrastructure_only
    from trajfactory.pipelines import web

    for step in (web.establish, web.replay_rollout, web.model_rollout):
        assert STEPS[step].retries >= 1 and STEPS[step].retry_condition_fn is infrastructure_only, step.__name__
