"""The model web agent and the model judge on web tasks, against real components: the session's CPU vLLM
server (tiny random-weight, text-only model: its text is noise), real Chromium and the bundled apps.

The tiny model's answers are noise, so these tests assert the plumbing: what was sent (recorded by a
forwarding transport in front of the real server), what was recorded, limits, the image fallback, the
verification rule and the agreement report. The end-to-end flow with `policies: [replay, model]` and
`judge: true` writes a dataset version and resumes without redoing a finished episode or judgement.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import ROOT
from test_web_flow import web_recipe
from test_web_tasks import TRACKER, tutorial
from trajfactory.settings import EpisodeLimits
from trajfactory.agents.web_model import ACTION_TOOLS, WebModelPolicy, action_from_call, action_from_text
from trajfactory.executors.browser import BrowserConfig
from trajfactory.executors.browser_pool import BrowserPool
from trajfactory.executors.browser_actions import ACTIONS, ActionError
from trajfactory.agents.replay import ReplayPolicy
from trajfactory.executors.web_env import ScreenshotStore, final_screenshot, run_web_episode
from trajfactory.models.client import ModelClient
from trajfactory.models.service import ModelEndpoint
from trajfactory.schema import Evidence, Verdict, WebTask
from trajfactory.datasets.yields import web_yields
from trajfactory.pipelines.web import judge_web
from trajfactory.synthesizers.web import stage
from trajfactory.verifiers.record import verification
from trajfactory.synthesizers.web.spec import make_web_task, parse_tutorial
from trajfactory.verifiers import judge
from trajfactory.settings import WebAgentConfig, WebJudgeConfig

# The tiny server's context is 1024 tokens: a short system prompt and clipped observations fit it.
SHORT = "You are a web agent. Answer with exactly one action call, e.g. click('12') or fill('7', 'text')."
AGENT = dict(system_prompt=SHORT, max_observation_chars=300, history_turns=2, max_tokens=16)
POLICY_ERRORS = {"empty_response", "no_action", "bad_action", "model_error"}


class Recording(httpx.AsyncHTTPTransport):
    """Forwards every request to the real server and keeps its JSON body."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        return await super().handle_async_request(request)


def _client(server) -> tuple[ModelClient, Recording]:
    transport = Recording()
    return ModelClient(server.base_url, "tiny", transport=transport, max_retries=0), transport


def _has_image(body: dict) -> bool:
    return any(isinstance(m["content"], list) and any(p["type"] == "image_url" for p in m["content"])
               for m in body["messages"])


# ---------------------------------------------------------------- no server


def test_actions_from_tool_calls_and_text():
    assert [t["function"]["name"] for t in ACTION_TOOLS] == list(ACTIONS)
    assert ACTION_TOOLS[0]["function"]["parameters"]["required"] == ["bid"]
    assert action_from_call("fill", '{"bid": "7", "value": "a b"}') == "fill('7', 'a b')"
    assert action_from_call("scroll", {"delta_x": 0, "delta_y": 200}) == "scroll(0, 200)"
    for name, args in (("teleport", "{}"), ("click", "[1]"), ("click", "{}"), ("click", '{"bid": "x y"}'),
                       ("fill", "{not json")):
        with pytest.raises(ActionError):
            action_from_call(name, args)
    assert action_from_text("Sign in first.\n```\nclick('12')\n```\nthen type") == "click('12')"
    assert action_from_text("I think so.\nfill('3', 'x (y)') and wait") == "fill('3', 'x (y)')"
    assert action_from_text("no action here, only words") is None
    with pytest.raises(ActionError, match="element id"):
        action_from_text("click([1, 2])")


# ---------------------------------------------------------------- real Chromium, real apps, real vLLM


@pytest.fixture(scope="module")
def pool():
    with BrowserPool(1, BrowserConfig(action_timeout_ms=2_000)) as p:
        yield p


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ScreenshotStore(tmp_path_factory.mktemp("shots"))


@pytest.fixture(scope="module")
def checked(pool) -> WebTask:
    """The tracker tutorial as a task with state checks from its gold replay."""
    tut = tutorial(TRACKER, "tracker")
    task = stage.establish_checks(make_web_task(parse_tutorial(tut), tut, seed=0), pool)
    assert isinstance(task, WebTask) and task.checks, task
    return task


def replay(task, pool, store=None):
    run = run_web_episode(task, ReplayPolicy(), pool, store)
    return run.trajectory, run.verdict


@pytest.fixture(scope="module")
def replayed(checked, pool, store):
    return replay(checked, pool, store)


@pytest.mark.browser
@pytest.mark.vllm
def test_model_agent_images_auto_falls_back_and_malformed_replies_are_fed_back(vllm_server, checked, pool, store):
    client, wire = _client(vllm_server)
    config = WebAgentConfig(**AGENT, images="auto", limits=EpisodeLimits(max_steps=3))
    policy = WebModelPolicy(client, config)
    run = run_web_episode(checked, policy, pool, store, max_steps=10, max_observation_chars=300)
    requests = list(policy.requests)
    traj = run.trajectory
    # the policy's 3-step budget is stricter than the rollout's 10; malformed turns count as steps
    assert traj.exit_status == "step_limit" and len(traj.steps) == 3, [s.error for s in traj.steps]
    # turn 1 went out with the screenshot, the text-only server refused it, and every request since is text
    assert [r.status for r in client.requests] == [400, 200, 200, 200]
    assert _has_image(wire.bodies[0]) and not any(_has_image(b) for b in wire.bodies[1:])
    part = wire.bodies[0]["messages"][-1]["content"][1]
    assert part["image_url"]["url"].startswith("data:image/png;base64,")
    assert [(r["turn"], r["image"]) for r in requests] == [(1, True), (1, False), (2, False), (3, False)]
    params = traj.policy.params
    assert params["images"] == "auto" and "not a multimodal model" in params["images_dropped"]
    assert (params["image_requests"], params["text_requests"]) == (1, 3)
    # usage is recorded like the SWE agent's: one model call per step
    assert traj.usage.model_calls == 3 and traj.usage.prompt_tokens > 0 and traj.usage.completion_tokens > 0
    assert traj.messages[0].content == SHORT and all(b["messages"][0]["content"] == SHORT for b in wire.bodies)
    assert all("Task: " + checked.instruction.splitlines()[0] in b["messages"][1]["content"] for b in wire.bodies[1:])
    # every malformed reply is an error step whose message the model sees in its next request
    errors = [s for s in traj.steps if not s.tool]
    assert errors, "the tiny model's noise is never a valid action"
    for s in traj.steps:
        assert (s.error in POLICY_ERRORS and s.observation.startswith("Error:")) if not s.tool else s.tool in {*ACTIONS, "invalid_action"}
    for i, s in enumerate(traj.steps[:-1]):
        if not s.tool:
            assert s.observation in wire.bodies[i + 2]["messages"][-1]["content"]
    assert len([m for m in traj.messages if m.role == "assistant"]) == 3


@pytest.mark.browser
@pytest.mark.vllm
def test_images_on_against_a_text_only_model_ends_as_model_error(vllm_server, checked, pool):
    client, wire = _client(vllm_server)
    config = WebAgentConfig(**AGENT, images="on", max_model_errors=2)
    traj = run_web_episode(checked, WebModelPolicy(client, config), pool, max_steps=10).trajectory
    assert traj.exit_status == "model_error" and [s.error for s in traj.steps] == ["model_error", "model_error"]
    assert all(_has_image(b) for b in wire.bodies) and len(wire.bodies) == 2
    assert "images_dropped" not in traj.policy.params and traj.usage.model_calls == 0


@pytest.mark.browser
@pytest.mark.vllm
def test_judge_on_a_web_trajectory_with_its_screenshot(vllm_server, checked, replayed, store):
    traj, state = replayed
    assert state is not None and state.passed
    sha = final_screenshot(traj)
    assert sha and store.path(sha).is_file()
    text = judge.build_messages(checked, traj, image=store.path(sha), max_axtree_chars=200)[1]["content"]
    assert text[1]["image_url"]["url"].startswith("data:image/png;base64,")
    prompt = text[0]["text"]
    assert checked.instruction.splitlines()[0] in prompt and "select_option(" in prompt and "send_msg_to_user(" in prompt
    assert "URL: http://127.0.0.1:" in prompt and "Page (accessibility tree)" in prompt and "screenshot" not in prompt.split("## Final")[0]

    # free text: the tiny model's noise is no verdict -> an abstention, never a pass
    client, wire = _client(vllm_server)
    free = asyncio.run(judge.judge_trajectory(client, checked, traj, image=store.path(sha), structured="none",
                                              sampling={"max_tokens": 24}, max_axtree_chars=200))
    detail = json.loads(free.evidence.detail)
    assert judge.is_abstention(free) and not free.passed and free.score == 0.0
    assert _has_image(wire.bodies[0]) and not _has_image(wire.bodies[1])  # asked again without the image
    assert detail["image"] is False and "multimodal" in detail["image_dropped"]

    # constrained output through the stage: an abstention, or a parsed verdict with its confidence recorded
    endpoint = ModelEndpoint.at(vllm_server.base_url, "tiny", max_concurrency=1)
    v = judge_web(endpoint, checked, traj, store, WebJudgeConfig(max_tokens=40, max_page_chars=200))
    detail = json.loads(v.evidence.detail)
    assert v.verifier == "judge" and v.trajectory_id == traj.trajectory_id and "image_dropped" in detail
    if judge.is_abstention(v):
        assert not v.passed and v.score == 0.0
    else:
        assert 0.0 <= detail["confidence"] <= 1.0 and judge.judge_confidence(v) == detail["confidence"]


def _judged(traj, task, passed: bool, confidence: float | None) -> Verdict:
    """A judge verdict as `judge_trajectory` records it (None: an abstention)."""
    detail = {"status": "abstain", "why": "not JSON"} if confidence is None else \
        {"status": "verdict", "passed": passed, "confidence": confidence, "rationale": "r"}
    return Verdict(verdict_id=f"j-{traj.trajectory_id}", task_id=task.task_id, trajectory_id=traj.trajectory_id,
                   verifier="judge", verifier_version="1", passed=passed and confidence is not None,
                   score=0.0, evidence=Evidence(detail=json.dumps(detail)))


@pytest.mark.browser
@pytest.mark.vllm
def test_unchecked_task_is_verified_only_by_a_confident_judge_pass(vllm_server, checked, replayed, pool, store):
    # a task whose replay left no state to check (its own id, as every task's content differs)
    unchecked = checked.model_copy(update={"checks": [], "task_id": "unchecked-" + checked.task_id})
    traj, state = replay(unchecked, pool, store)
    assert state is None and traj.exit_status == "submitted" and traj.trajectory_id != replayed[0].trajectory_id
    endpoint = ModelEndpoint.at(vllm_server.base_url, "tiny", max_concurrency=1)
    real = judge_web(endpoint, unchecked, traj, store, WebJudgeConfig(max_tokens=40, max_page_chars=200))
    [rec] = verification([unchecked], [traj], [real], min_confidence=0.8)
    confidence = judge.judge_confidence(real)
    assert rec.verified == (real.passed and confidence is not None and confidence >= 0.8)
    assert rec.verified_by == ("none" if judge.is_abstention(real) else "judge")

    def record(v: Verdict):
        return verification([unchecked], [traj], [v], min_confidence=0.8)[0]

    sure = record(_judged(traj, unchecked, True, 0.95))
    assert (sure.verified, sure.verified_by, sure.judge_confidence) == (True, "judge", 0.95)
    assert "0.95" in sure.reason
    assert not record(_judged(traj, unchecked, True, 0.6)).verified  # a pass below min_confidence
    assert not record(_judged(traj, unchecked, False, 0.99)).verified
    abstained = record(_judged(traj, unchecked, False, None))
    assert (abstained.verified, abstained.verified_by, abstained.judge_status) == (False, "none", "abstain")

    # where state checks exist they decide: a confident judge pass does not verify a failed state check
    rtraj, rstate = replayed
    failed = rstate.model_copy(update={"passed": False})
    over = verification([checked], [rtraj], [failed, _judged(rtraj, checked, True, 0.99)])[0]
    assert (over.verified, over.verified_by, over.state_passed, over.judge_passed) == (False, "state", False, True)

    # the agreement of judge with state checks, in the yields: one agreeing pair, one abstention, one judge-only
    verdicts = [rstate, _judged(rtraj, checked, True, 0.9), _judged(traj, unchecked, True, 0.95)]
    other = rtraj.model_copy(update={"trajectory_id": "other"})
    verdicts += [rstate.model_copy(update={"trajectory_id": "other"}), _judged(other, checked, False, None)]
    summary = web_yields([], [], [checked, unchecked], [rtraj, traj, other], verdicts)
    [agree] = summary["judge_agreement"]
    assert (agree["n"], agree["answered"], agree["abstained"], agree["unlabeled"]) == (2, 1, 1, 1)
    assert agree["agreement"] == 1.0 and agree["tp"] == 1 and agree["abstain_pos"] == 1 and "kappa" in agree
    assert (agree["judge_only"], agree["judge_only_verified"]) == (1, 1)
    [replay_row] = summary["by_policy"]
    assert replay_row["trajectories"] == 3 and replay_row["verified_by_state"] == 2 and replay_row["verified_by_judge"] == 1


# ---------------------------------------------------------------- the flow


RUN = ("import json, sys; from trajfactory.flows.web import run_web; from trajfactory.settings import Recipe; "
       "out = run_web(Recipe.model_validate(json.loads(sys.argv[1]))); "
       "print('RESULT ' + json.dumps(out, default=str))")


def _run(recipe: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", RUN, json.dumps(recipe)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])


def _journal(work: Path, stage_name: str) -> list[str]:
    path = work / "journal.jsonl"
    lines = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
    return [ln["key"] for ln in lines if ln["stage"] == stage_name]


@pytest.mark.browser
@pytest.mark.vllm
def test_web_flow_with_model_agent_and_judge(vllm_server, tmp_path, monkeypatch):
    from trajfactory.datasets.store import DatasetStore

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    (tmp_path / "tutorials" / "tracker").mkdir(parents=True)
    title, body = TRACKER.split("\n", 1)
    (tmp_path / "tutorials" / "tracker" / "howto.md").write_text(f"# {title}\n\n{body.strip()}\n")
    work = tmp_path / "work" / "web"
    recipe = web_recipe(tmp_path, {"tutorials": [str(tmp_path / "tutorials")], "infeasible_share": 0, "browsers": 1,
                                   "dataset_name": "web", "policies": ["replay", "model"], "judge": True,
                                   "model_samples": 2, "model_max_tasks": 1, "agent": {**AGENT, "limits": {"max_steps": 2}},
                                   "judge_settings": {"max_tokens": 40, "max_page_chars": 200}},
                        model={"serve": None, "base_url": vllm_server.base_url, "name": "tiny"})
    out = _run(recipe)
    store = DatasetStore(tmp_path / "datasets" / "web")
    assert out["version"] == "v1" and store.verify("v1") == []
    trajectories = store.read_rows("v1", "trajectories")
    by_policy = {}
    for tr in trajectories:
        by_policy.setdefault(tr["policy"]["name"], []).append(tr)
    assert sorted(by_policy) == ["model", "tutorial-replay"] and len(by_policy["model"]) == 2
    assert {tr["sample"] for tr in by_policy["model"]} == {0, 1}
    for tr in by_policy["model"]:
        params = json.loads(tr["policy"]["params"])
        assert tr["usage"]["model_calls"] >= 1 and len(tr["steps"]) == 2 and "images_dropped" in params
    verdicts = store.read_rows("v1", "verdicts")
    judged = {v["trajectory_id"] for v in verdicts if v["verifier"] == "judge"}
    assert judged == {tr["trajectory_id"] for tr in trajectories}  # every trajectory is judged
    stated = {v["trajectory_id"]: v["passed"] for v in verdicts if v["verifier"] == "state"}
    assert stated[by_policy["tutorial-replay"][0]["trajectory_id"]]
    rows = {r["trajectory_id"]: r for r in store.read_rows("v1", "web_verification")}
    assert set(rows) == {tr["trajectory_id"] for tr in trajectories}
    assert all(r["verified_by"] == "state" and r["verified"] == stated[t] for t, r in rows.items())
    agree = out["summary"]["judge_agreement"][0]
    assert agree["n"] == 3 and agree["answered"] + agree["abstained"] == 3
    policies = {row["policy"]: row for row in out["summary"]["by_policy"]}
    assert policies["model"]["malformed_turns"] >= 1 and policies["model"]["image_fallbacks"] == 2
    card = (tmp_path / "datasets" / "web" / "v1" / "README.md").read_text()
    assert "### judge_agreement" in card and "### by_policy" in card

    # a resumed run redoes no finished model episode and no judgement
    rolled, judgements = _journal(work, "model-rollout"), _journal(work, "judge")
    assert len(rolled) == 2 and len(judgements) == 3
    again = _run(recipe)
    assert again["version"] == "v2"
    assert _journal(work, "model-rollout") == rolled and _journal(work, "judge") == judgements
