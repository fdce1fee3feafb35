"""`trajfactory train grpo` on web tasks: episodes in real Chromium against the tasks' bundled apps, through the web
environment and the model web agent, rewarded by the tasks' state checks; and real GRPO optimizer steps on a web
version the factory's own web pipeline builds (the `web_version` fixture)."""

from __future__ import annotations

import json
import math

import pytest

from trajfactory.models.client import ChatResult
from trajfactory.schema import Message
from trajfactory.settings.training import GRPOSettings
from trajfactory.training.eval_web import held_out_web_tasks
from trajfactory.training.grpo import load_tasks, train_grpo
from trajfactory.training.grpo_web import WebEpisodes, web_reward
from trajfactory.training.local_policy import Rollout

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DONE = "send_msg_to_user('done')"


class ScriptedModel:
    """Stands in for the model under training in `WebEpisodes.run`: writes the given actions as text, one a turn
    (then `send_msg_to_user`), as the model's replies would be parsed (`agents/web_model.py`)."""

    model = "scripted"

    def __init__(self, actions: list[str]):
        self.actions = list(actions)

    def start_episode(self) -> None:
        pass

    def rollout(self) -> Rollout:
        return Rollout()

    def request_cost(self, result: ChatResult) -> float:
        return 0.0

    async def chat(self, messages, tools=None, **sampling) -> ChatResult:
        assert tools is None and all(isinstance(m["content"], str) for m in messages)  # text actions, no images
        action = self.actions.pop(0) if self.actions else DONE
        return ChatResult(message=Message(role="assistant", content=f"```\n{action}\n```"), finish_reason="stop",
                          prompt_tokens=0, completion_tokens=0, latency_s=0.0, raw={})


def test_the_web_reward_is_the_state_checks_verdict(web_version):
    tasks, _ = held_out_web_tasks(f"{web_version}@v1", "all")
    task = next(t for t in tasks if t.feasible and t.gold)
    twin = next(t for t in tasks if not t.feasible)
    episodes = WebEpisodes(GRPOSettings(max_agent_steps=len(task.gold) + 2, max_observation_chars=4000))
    with episodes.open():
        good_verdict, good = episodes.run(ScriptedModel(task.gold), task, 0)
        bad_verdict, bad = episodes.run(ScriptedModel([]), task, 1)  # claims done at once: the site is unchanged
        right_verdict, right = episodes.run(ScriptedModel(["report_infeasible('the site cannot do that')"]), twin, 2)
    assert good_verdict.verifier == bad_verdict.verifier == right_verdict.verifier == "state"
    assert good_verdict.passed and episodes.reward(good_verdict) == 1.0 == web_reward(good_verdict)
    assert good["passed"] and good["actions"][-1] == "send_msg_to_user" and good["exit_status"] == "submitted"
    assert not bad_verdict.passed and episodes.reward(bad_verdict) == 0.0 and bad["actions"] == ["send_msg_to_user"]
    assert right_verdict.passed and episodes.reward(right_verdict) == 1.0 and right["exit_status"] == "infeasible"
    assert web_reward(None) == 0.0  # a task without state checks has no verdict of record: no reward


def test_a_web_version_gives_grpo_its_web_tasks(web_version):
    tasks, source = load_tasks(f"{web_version}@v1", ["test"], None)
    expected, _ = held_out_web_tasks(f"{web_version}@v1", "test")
    assert source["kind"] == "web" and [t.task_id for t in tasks] == [t.task_id for t in expected]
    assert source["tasks"] == [t.task_id for t in tasks] and any(not t.feasible for t in tasks)


def test_grpo_steps_over_web_tasks(web_version, tiny_model, tmp_path):
    out = tmp_path / "grpo-web"
    settings = GRPOSettings(splits=["test"], group_size=2, max_steps=2, max_agent_steps=2, max_new_tokens=16,
                            max_observation_chars=300, learning_rate=1e-3, log_every=1)
    metrics = train_grpo(f"{web_version}@v1", tiny_model, out, settings)
    training, test_tasks = metrics["training"], {t.task_id: t for t in held_out_web_tasks(f"{web_version}@v1",
                                                                                          "test")[0]}
    assert metrics["data"]["kind"] == "web" and "state checks" in metrics["reward"]
    assert training["steps"] == 2 and training["episodes"] == 4 and len(metrics["episodes"]) == 4
    for e in metrics["episodes"]:
        assert e["kind"] == "web" and e["task_id"] in test_tasks and e["verifier"] == "state"
        assert e["feasible"] == test_tasks[e["task_id"]].feasible and 1 <= e["agent_steps"] <= 2 and e["turns"] >= 1
        assert e["reward"] == (1.0 if e["passed"] else 0.0) and e["sampled_tokens"] > 0
    for step in training["per_step"]:
        mine = [e for e in metrics["episodes"] if e["step"] == step["step"]]
        assert len(mine) == step["episodes"] == 2 and len({e["task_id"] for e in mine}) == 1  # one task's group
        assert step["reward_mean"] == pytest.approx(sum(e["reward"] for e in mine) / 2)
        assert math.isfinite(step["loss"]) and step["sampled_tokens"] > 0
    assert [s["step"] for s in training["per_step"]] == [1, 2]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "reward.png").read_bytes()[:4] == b"\x89PNG" and (out / "model.safetensors").is_file()
