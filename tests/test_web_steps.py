"""Web training rows as the served web agent sees each step (`datasets/web_steps.py`): a real browser episode's rows
equal what `WebModelPolicy.wire` sends when driven with that episode's own observations, and `train sft` on the
factory's web version (the `web_version` fixture) trains on those rows, the loss on each step's action only."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from trajfactory.agents.replay import ReplayPolicy
from trajfactory.agents.web_model import WebModelPolicy
from trajfactory.datasets.store import DatasetStore
from trajfactory.datasets.web_steps import step_views, trl_web_step_rows
from trajfactory.executors.browser import Observation
from trajfactory.executors.browser_pool import BrowserPool
from trajfactory.executors.protocol import Start
from trajfactory.executors.web_env import ScreenshotStore, observation_text, run_web_episode
from trajfactory.models.client import ModelClient
from trajfactory.settings import WebAgentConfig
from trajfactory.settings.training import SFTSettings
from trajfactory.training.context import TINY_TRAINING_TEMPLATE
from trajfactory.training.eval_web import web_task_from_row
from trajfactory.training.sft import build_trainer, load_model, load_rows, site_accounts, train_sft

AGENT = WebAgentConfig(actions="text", max_observation_chars=300, history_turns=2)  # short: windows and clips show


class WatchedReplay(ReplayPolicy):
    """The tutorial replay, keeping what the episode showed it: the start and each step's observation."""

    def reset(self, task, start=None, accounts=None):
        self.start, self.seen = start, []
        super().reset(task, start, accounts)

    async def act(self, messages, observation):
        self.seen.append(observation)
        return await super().act(messages, observation)


def _wire(task, start, observations: list[Observation], said: list[str]) -> list[list[dict]]:
    """What the web agent sends at each step, driven with the episode's observations and what it wrote."""
    agent = WebModelPolicy(ModelClient("http://127.0.0.1:9/v1", "unused"), AGENT)  # never called: wire is local
    agent.reset(task, start)
    sent = []
    for obs, action in zip(observations, said):
        sent.append(agent.wire(obs, image=False))
        agent.record(action)
    return sent


@pytest.mark.browser
@pytest.mark.slow
def test_a_web_episodes_step_rows_are_what_the_agent_sends_at_each_step(web_version, tmp_path):
    store = DatasetStore(web_version)
    tasks = store.read_rows("v1", "web_tasks")
    steps = {t["task_id"]: sum(m["role"] == "assistant" for m in t["messages"])
             for t in store.read_rows("v1", "trajectories")}
    row = max((r for r in tasks if r["feasible"]), key=lambda r: (steps.get(r["task_id"], 0), r["task_id"]))
    task = web_task_from_row(row)
    policy = WatchedReplay()
    with BrowserPool(1) as pool:
        run = run_web_episode(task, policy, pool, ScreenshotStore(tmp_path))
    trajectory = run.trajectory.to_row()
    said = [m["content"] for m in trajectory["messages"] if m["role"] == "assistant"]
    assert len(said) > AGENT.history_turns + 1, said  # earlier turns fall out of the window

    rows = trl_web_step_rows([trajectory], site_accounts(tasks), AGENT, only_verified=False)
    sent = _wire(task, policy.start, policy.seen, said)
    assert [r["prompt"] for r in rows] == sent
    assert [r["completion"] for r in rows] == [[{"role": "assistant", "content": s}] for s in said]
    assert [r["step"] for r in rows] == list(range(len(said))) and {r["tools"] for r in rows} == {"[]"}
    # what that means: the site's accounts in the goal, pages shortened to URL, the current one clipped
    last = rows[-1]["prompt"]
    assert "You can sign in as username" in last[1]["content"] and policy.start.info["accounts"]
    assert sum(m["role"] == "assistant" for m in last) == AGENT.history_turns
    assert last[-1]["content"].endswith(observation_text(policy.seen[len(said) - 1], 300))
    assert "Accessibility tree" not in "".join(m["content"] for m in last[2:-1])


def test_error_turns_stand_in_the_history_as_the_agent_recorded_them():
    page = Observation(url="http://site/login", title="", axtree="[3] textbox 'Username'\n" + "x" * 400)
    after = Observation(url="http://site/", title="", axtree="[5] link 'Home'", last_action_error="no element 9")
    task = SimpleNamespace(instruction="Sign in")  # the agent's reset reads the instruction only
    recorded = [{"role": "system", "content": "recorded prompt"}, {"role": "user", "content": "Sign in"},
                {"role": "user", "content": observation_text(page, 8000)},
                {"role": "assistant", "content": "I will click"},
                {"role": "user", "content": "Error: your reply held no action."},
                {"role": "user", "content": "Error: the model request failed: HTTP 500"},
                {"role": "assistant", "content": ""}, {"role": "user", "content": "Error: your reply was empty."},
                {"role": "assistant", "content": "click('9')"},
                {"role": "user", "content": observation_text(after, 8000)},
                {"role": "assistant", "content": "send_msg_to_user('done')"}]
    config = AGENT.model_copy(update={"history_turns": 8})
    views = step_views(recorded, {"alice": "pw"}, config)

    agent = WebModelPolicy(ModelClient("http://127.0.0.1:9/v1", "unused"), config)
    agent.reset(task, Start(system_prompt=_env_prompt(), messages=[], tools=[], observation=page, retry_prompt="",
                            info={"accounts": {"alice": "pw"}}))
    sent = [agent.wire(page, False)]
    agent.record("I will click", "Error: your reply held no action.")
    agent.record("(request failed)", "Error: the model request failed: HTTP 500")
    sent.append(agent.wire(page, False))
    agent.record("(empty)", "Error: your reply was empty.")
    sent.append(agent.wire(page, False))
    agent.record("click('9')")
    sent.append(agent.wire(after, False))
    assert [v for v, _ in views] == sent and len({json.dumps(s) for s in sent}) == 4
    assert [turn["content"] for _, turn in views] == ["I will click", "", "click('9')", "send_msg_to_user('done')"]


def _env_prompt() -> str:
    from trajfactory.executors.browser_actions import action_space
    from trajfactory.executors.web_env import SYSTEM_PROMPT

    return SYSTEM_PROMPT.format(actions=action_space())


@pytest.mark.browser
@pytest.mark.slow
def test_train_sft_on_a_web_version_trains_on_the_step_rows_the_last_turn_only(web_version, tiny_model, tmp_path):
    data = f"{web_version}@v1"
    rows, source = load_rows(data, ["train"], "agent", 300)
    assert source["rows_view"] == "agent" and len(rows) > source["trajectories_in_splits"] > 0
    assert all("prompt" in r and len(r["completion"]) == 1 for r in rows)

    # The loss falls on the step's action and its end-of-turn only, not on the earlier turns its prompt holds.
    tokenizer, model = load_model(tiny_model, str(tiny_model))
    row = max(rows, key=lambda r: sum(m["role"] == "assistant" for m in r["prompt"]))
    assert any(m["role"] == "assistant" for m in row["prompt"])
    trainer = build_trainer([row], tokenizer, model, SFTSettings(max_steps=1, max_length=8192), tmp_path / "t",
                            TINY_TRAINING_TEMPLATE)
    example = trainer.train_dataset[0]
    kept = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    # (the completion starts after the generation prompt `<|im_start|>assistant\n`, as the served model's reply does)
    assert tokenizer.decode(kept) == row["completion"][0]["content"] + "<|im_end|>\n"

    metrics = train_sft(data, tiny_model, tmp_path / "out",
                        SFTSettings(max_steps=2, max_length=2048, clip_tool_output_chars=300, log_every=1))
    assert metrics["data"]["rows_view"] == "agent" and metrics["data"]["rows_in_splits"] == len(rows)
    assert metrics["data"]["web_agent"] == {"actions": "text", "max_observation_chars": 300, "history_turns": 8}
    assert metrics["context"]["rows_used"] + metrics["context"]["rows_dropped"] == len(rows)
    assert metrics["training"]["steps"] == 2 and metrics["context"]["rows_used"] > 0
    whole, _ = load_rows(data, ["train"], "whole", 300)
    assert len(whole) == source["trajectories_in_splits"] and all("messages" in r for r in whole)
