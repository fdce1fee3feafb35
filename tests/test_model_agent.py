"""The model agent and concurrent rollouts against real components: a real textkit task in real Docker
sandboxes, the session's CPU vLLM server (tiny random-weight model: its text is noise), and a
stdlib stub OpenAI server scripted with exact replies for the malformed-output paths."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from openai_stub import OpenAIStub, completion, error
from trajfactory.settings import EpisodeLimits
from trajfactory.agents.model import ModelPolicy, ModelPolicyConfig, parse_text_actions
from trajfactory.agents.oracle import OraclePolicy
from trajfactory.settings import SynthesisConfig, ValidationConfig
from trajfactory.settings import SandboxConfig
from trajfactory.executors.docker import DockerBackend
from trajfactory.executors.episode import run_episodes
from trajfactory.executors.pool import SandboxPool
from trajfactory.executors.protocol import Action
from trajfactory.executors.swe_env import SweEnvironments, run_swe_episode, verify_trajectory
from trajfactory.models.client import ModelClient
from trajfactory.schema import Message, Policy as PolicyInfo, Source, ToolCall, ToolCallFunction, Usage
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.stage import build_environment

LIMITS = SandboxConfig(memory="1g", cpus=1, pids=256, command_timeout_s=60)
SUBMIT = {"role": "assistant", "content": None,
          "tool_calls": [{"id": "s", "type": "function", "function": {"name": "submit", "arguments": "{}"}}]}


# ---------------------------------------------------------------- fixtures and instruments


@pytest.fixture(scope="module")
def demo(docker_backend, tmp_path_factory):
    """One real textkit task set (small synthesis), built once for the module."""
    work = tmp_path_factory.mktemp("model-agent")
    source = harvest_repo("builtin:textkit", work / "mirrors")
    assert isinstance(source, Source), source
    env = build_environment(docker_backend, source)
    candidates, _ = stage.synthesize(source, SynthesisConfig(max_candidates_per_repo=6), work / "checkouts")
    config = ValidationConfig(reference_runs=1)
    ref = stage.reference(docker_backend, env, source, config, LIMITS)
    with SandboxPool(docker_backend, env, size=1, limits=LIMITS) as pool:
        validations = [stage.validate(pool, c, ref, config) for c in candidates]
    tasks = stage.tasks_from(source, env, candidates, validations)
    assert tasks, [v.status for v in validations]
    return SimpleNamespace(env=env, tasks=tasks)


@pytest.fixture(scope="module")
def backend(docker_backend):
    """Docker sandboxes labelled for this module, so its containers can be counted apart from others'."""
    return DockerBackend(labels={"trajfactory.test": f"model-agent-{uuid.uuid4().hex[:8]}"},
                         client=docker_backend.client)


def alive(backend) -> list:
    """Containers of this module that exist (label trajfactory=1, narrowed to the module's label)."""
    labels = ["trajfactory=1", *(f"{k}={v}" for k, v in backend.labels.items())]
    # One engine call: `containers.list` inspects each hit and races with a container's removal.
    return backend.client.api.containers(all=True, filters={"label": labels})


class ContainerCounter:
    """Polls the engine while a run goes on: the most containers of this module alive at once."""

    def __init__(self, backend):
        self.backend, self.max, self._stop = backend, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            self.max = max(self.max, len(alive(self.backend)))
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class ScriptedModel:
    """A stdlib OpenAI-style server on 127.0.0.1 that answers with scripted (status, message) pairs."""

    def __init__(self, script: list[tuple[int, dict]], prompt_tokens: int = 50):
        self.script, self.bodies = list(script), []
        self._prompt_tokens = prompt_tokens
        self._server = OpenAIStub(self._respond)
        self.url = self._server.url

    def _respond(self, body: dict, headers: dict) -> tuple[int, dict]:
        self.bodies.append(body)
        status, message = self.script.pop(0) if self.script else (200, SUBMIT)
        if status != 200:
            return status, error("scripted failure")
        return 200, completion(message, {"prompt_tokens": self._prompt_tokens, "completion_tokens": 5})

    def close(self):
        self._server.close()


@pytest.fixture
def scripted():
    made = []
    yield lambda script, **kw: made.append(ScriptedModel(script, **kw)) or made[-1]
    for m in made:
        m.close()


def call(name: str, arguments: str, call_id: str = "c1") -> dict:
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]}


async def rollouts(backend, env, tasks, make_policy, concurrency=2, **kw):
    """Episodes over fresh sandboxes of `env`: (trajectories, run stats, sandboxes started)."""
    with SweEnvironments(backend, env, LIMITS, concurrency) as envs:
        episodes, stats = await run_episodes(tasks, envs, make_policy, concurrency=concurrency, **kw)
    return [e.trajectory for e in episodes], stats, envs.started


def run(demo, backend, make_policy, tasks=None, **kw):
    trajectories, stats, _ = asyncio.run(rollouts(backend, demo.env, tasks or demo.tasks[:1], make_policy, **kw))
    return trajectories, stats


# ---------------------------------------------------------------- text actions (no components)


def test_text_actions_are_parsed_from_content():
    [c] = parse_text_actions("Let me look.\n```bash\nls -la src\n```\n", 1)
    assert (c.function.name, json.loads(c.function.arguments), c.id) == ("bash", {"command": "ls -la src"}, "text_1_0")
    [c] = parse_text_actions('<tool_call>\n{"name": "edit", "arguments": {"path": "a.py"}}\n</tool_call>', 2)
    assert c.function.name == "edit" and json.loads(c.function.arguments) == {"path": "a.py"}
    [c] = parse_text_actions('```json\n{"name": "submit", "arguments": {}}\n```', 3)
    assert c.function.name == "submit"
    assert parse_text_actions("```bash\nsubmit\n```", 4)[0].function.name == "submit"
    assert parse_text_actions("I am thinking.", 5) == []
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_text_actions("<tool_call>{oops</tool_call>", 6)
    with pytest.raises(ValueError, match="exactly one"):
        parse_text_actions("```bash\nls\n```\n```bash\npwd\n```", 7)


# ---------------------------------------------------------------- scripted model, real sandbox


@pytest.mark.docker
def test_malformed_outputs_become_error_observations_in_order(demo, backend, scripted):
    model = scripted([
        (200, {"role": "assistant", "content": "I think the bug is in the tokenizer."}),  # no tool call
        (200, call("bash", '{"command": "ls"')),  # bad JSON arguments
        (200, call("frobnicate", "{}")),  # unknown tool
        (200, {"role": "assistant", "content": ""}),  # empty content
        (400, {}),  # HTTP error (not retried)
        (200, SUBMIT),
    ])
    client = ModelClient(model.url, "stub", max_retries=0)
    [traj], stats = run(demo, backend, lambda t, s: ModelPolicy(client))
    assert traj.exit_status == "submitted"
    assert [s.error for s in traj.steps] == [
        "no_tool_call", "bad_json", "unknown_tool", "empty_response", "model_error", None]
    feedback = [m.content for m in traj.messages[2:] if m.role in ("user", "tool")]
    assert feedback[0].startswith("Error: your reply called no tool")
    assert feedback[1].startswith("Error: the arguments are not a JSON object")
    assert feedback[2].startswith("Error: unknown tool 'frobnicate'")
    assert feedback[3].startswith("Error: your reply was empty")
    assert feedback[4].startswith("Error: the model request failed") and "HTTP 400" in feedback[4]
    # Each error was in the conversation the model saw next.
    assert model.bodies[1]["messages"][-1]["content"] == feedback[0]
    assert model.bodies[5]["messages"][-1]["content"] == feedback[4]
    assert traj.usage.model_calls == 5 == sum(m.role == "assistant" for m in traj.messages)
    assert traj.policy.name == "model" and traj.policy.model == "stub"
    assert model.bodies[0]["tools"] and model.bodies[0]["tool_choice"] == "auto"


@pytest.mark.docker
def test_a_failing_model_server_is_no_turn_of_the_conversation(demo, backend, scripted):
    """A 503 after the client's retries is the infrastructure's failure: the episode ends `infra_failed`, the
    error (and the server's address) never enters `messages`, and the build drops it into quarantine."""
    from trajfactory.datasets.release import release

    model = scripted([(200, call("bash", '{"command": "ls"}')), (503, {}), (503, {})])
    client = ModelClient(model.url, "stub", max_retries=1, backoff_base_s=0.01)
    [traj], stats = run(demo, backend, lambda t, s: ModelPolicy(client))
    assert traj.exit_status == "infra_failed" and traj.steps[-1].error == "infra_error"
    assert "HTTP 503" in traj.steps[-1].observation and model.url not in traj.steps[-1].observation
    assert [m.role for m in traj.messages] == ["system", "user", "assistant", "tool"]  # nothing after the last tool
    assert not any("failed" in (m.content or "") and m.role == "user" for m in traj.messages)
    out = release(demo.tasks[:1], [traj], [])
    assert out.trajectories == [] and [q.reason for q in out.quarantine] == ["infra_failed"]
    assert "HTTP 503" in out.quarantine[0].detail


@pytest.mark.docker
def test_text_action_fallback_runs_a_bash_block(demo, backend, scripted):
    model = scripted([
        (200, {"role": "assistant", "content": "First the layout.\n```bash\ngit status --short | wc -l\n```"}),
        (200, {"role": "assistant", "content": '<tool_call>{"name": "bash", "arguments": {"command": "echo hi"}}'
                                               "</tool_call>"}),
        (200, {"role": "assistant", "content": "Done.\n```bash\nsubmit\n```"}),
    ])
    policy = ModelPolicy(ModelClient(model.url, "stub"), ModelPolicyConfig(actions="text"))
    [traj], _ = run(demo, backend, lambda t, s: policy)
    assert traj.exit_status == "submitted"
    assert [(s.tool, s.arguments) for s in traj.steps] == [
        ("bash", {"command": "git status --short | wc -l"}), ("bash", {"command": "echo hi"}), ("submit", {})]
    assert traj.steps[0].exit_code == 0 and traj.steps[0].observation.startswith("0\n")
    assert "```bash" in traj.messages[0].content and "<tool_call>" in traj.messages[0].content
    first, last = model.bodies[0], model.bodies[-1]
    assert "tools" not in first  # a model without tool calling gets no schemas
    # On the wire the model sees its own text and the outputs as user turns, not tool-call records.
    assert [m["role"] for m in last["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert last["messages"][3]["content"].startswith("0\n") and "tool_calls" not in last["messages"][2]


@pytest.mark.docker
def test_cost_limit_ends_the_episode(demo, backend, scripted):
    model = scripted([(200, call("bash", '{"command": "true"}'))] * 5, prompt_tokens=1000)
    client = ModelClient(model.url, "stub", price_per_1k_prompt=1.0)
    policy = ModelPolicy(client, ModelPolicyConfig(limits=EpisodeLimits(max_cost_usd=1.5)))
    [traj], _ = run(demo, backend, lambda t, s: policy)
    assert traj.exit_status == "cost_limit"
    assert traj.usage.model_calls == 2 and traj.usage.cost_usd == pytest.approx(2.0)


# ---------------------------------------------------------------- the real vLLM server


@pytest.fixture(scope="module")
def vllm_batch(demo, backend, vllm_server):
    """2 tasks x 2 samples, concurrency 2, a 2-step limit: the tiny model's noise never submits."""
    client = ModelClient(vllm_server.base_url, "tiny", max_concurrency=2)
    config = ModelPolicyConfig(max_tokens=16, temperature=1.0, limits=EpisodeLimits(max_steps=2))
    tasks, samples = (demo.tasks[:2], 2) if len(demo.tasks) >= 2 else (demo.tasks[:1], 4)
    with ContainerCounter(backend) as counter:
        trajs, stats, started = asyncio.run(rollouts(
            backend, demo.env, tasks, lambda t, s: ModelPolicy(client, config.model_copy(update={"seed": s})),
            concurrency=2, samples=samples))
    return SimpleNamespace(trajs=trajs, stats=stats, started=started, client=client, counter=counter, tasks=tasks,
                           samples=samples)


@pytest.mark.vllm
@pytest.mark.docker
def test_vllm_requests_are_made_and_recorded(vllm_batch):
    for traj in vllm_batch.trajs:
        assert traj.usage.prompt_tokens > 300 and traj.usage.completion_tokens > 0  # the tool schemas were sent
        assert traj.usage.model_calls == sum(m.role == "assistant" for m in traj.messages) == 2
        assert traj.policy.name == "model" and traj.policy.model == "tiny"
        assert traj.policy.params["max_tokens"] == 16 and "seed" in traj.policy.params
    assert sum(t.usage.model_calls for t in vllm_batch.trajs) == len(vllm_batch.client.requests) == 8
    assert all(r.status == 200 for r in vllm_batch.client.requests)


@pytest.mark.vllm
@pytest.mark.docker
def test_vllm_step_limit_and_timings(vllm_batch):
    for traj, ep in zip(vllm_batch.trajs, vllm_batch.stats.episodes):
        assert traj.exit_status == "step_limit" and len(traj.steps) >= 2
        assert ep.trajectory_id == traj.trajectory_id and len(ep.turns) == 2
        assert ep.model_s > 0 and ep.setup_s > 0
        assert ep.loop_s == pytest.approx(ep.model_s + ep.sandbox_s + ep.overhead_s, abs=1e-6)
    assert vllm_batch.stats.overhead_per_turn_s >= 0


@pytest.mark.vllm
@pytest.mark.docker
def test_concurrency_bound_and_distinct_samples(vllm_batch, backend):
    assert 1 <= vllm_batch.counter.max <= 2  # measured at the engine
    assert vllm_batch.stats.max_environments_alive <= 2
    assert vllm_batch.started == 4  # a fresh sandbox per episode
    ids = [t.trajectory_id for t in vllm_batch.trajs]
    assert len(set(ids)) == 4
    assert [(t.task_id, t.sample) for t in vllm_batch.trajs] == [
        (task.task_id, s) for task in vllm_batch.tasks for s in range(vllm_batch.samples)]
    assert alive(backend) == []


@pytest.mark.vllm
@pytest.mark.docker
def test_vllm_token_and_time_limits(demo, backend, vllm_server):
    client = ModelClient(vllm_server.base_url, "tiny")
    tokens = ModelPolicyConfig(max_tokens=8, limits=EpisodeLimits(max_tokens=1, max_steps=50))
    [traj], _ = run(demo, backend, lambda t, s: ModelPolicy(client, tokens))
    assert traj.exit_status == "token_limit" and traj.usage.model_calls == 1

    # A generation of 200 forced tokens takes well over 0.15 s even on an idle CPU (the tiny model decodes a token
    # per engine step, ~1-3 ms each, after the prefill): the wall-clock limit cuts the first request short.
    timed = ModelPolicyConfig(max_tokens=200, extra_body={"ignore_eos": True},
                              limits=EpisodeLimits(max_seconds=0.15, max_steps=500))
    [traj], stats = run(demo, backend, lambda t, s: ModelPolicy(client, timed))
    assert traj.exit_status == "time_limit", [s.observation for s in traj.steps]
    assert traj.usage.model_calls == 0  # no reply came back: the request itself was cut short
    assert 0.14 <= stats.episodes[0].loop_s < 0.15 + 5


# ---------------------------------------------------------------- oracle, errors, cancellation


def _normalised(traj):
    """A trajectory's content with pytest's timings masked (`in 0.12s` differs run to run)."""
    mask = lambda s: re.sub(r"\d+\.\d+s", "T", s or "")  # noqa: E731
    return ([(m.role, mask(m.content), m.tool_calls, m.tool_call_id) for m in traj.messages],
            [(s.tool, s.arguments, mask(s.observation), s.exit_code, s.error) for s in traj.steps],
            traj.final.patch, traj.exit_status, traj.trajectory_id)


@pytest.mark.docker
def test_oracle_through_run_episodes_equals_the_sync_rollout(demo, backend):
    task = demo.tasks[0]
    sync = run_swe_episode(task, OraclePolicy(), backend, demo.env, LIMITS)
    [concurrent], stats = run(demo, backend, lambda t, s: OraclePolicy())
    assert concurrent.exit_status == "submitted"
    assert _normalised(concurrent) == _normalised(sync)
    assert stats.episodes[0].sandbox_s > 0 and stats.episodes[0].model_s < 1
    with backend.start(demo.env, LIMITS) as sandbox:
        assert verify_trajectory(sandbox, task, concurrent).passed


class Sleeper:
    """A policy whose every action sleeps: episodes stay in flight until cancelled."""

    def __init__(self):
        self.info, self.usage, self.limits = PolicyInfo(name="sleeper"), Usage(), None

    def system_prompt(self, default):
        return default

    def reset(self, task, start):
        pass

    async def act(self, messages, observation):
        call = ToolCall(id="c", function=ToolCallFunction(name="bash", arguments='{"command": "sleep 50"}'))
        return Action(Message(role="assistant", tool_calls=[call]), [call])


class Crasher(Sleeper):
    async def act(self, messages, observation):
        raise RuntimeError("policy bug")


def _wait_for_containers(backend, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(alive(backend)) < n:
        assert time.monotonic() < deadline, "the episodes never started their sandboxes"
        time.sleep(0.2)


@pytest.mark.docker
def test_cancellation_leaves_no_container(demo, backend):
    tasks = (demo.tasks * 2)[:2]

    async def main():
        job = asyncio.ensure_future(rollouts(backend, demo.env, tasks, lambda t, s: Sleeper(), concurrency=2))
        while len(await asyncio.to_thread(alive, backend)) < 2:
            assert not job.done(), job
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # the sleeps are running now
        job.cancel()
        t0 = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await job
        return time.monotonic() - t0

    took = asyncio.run(main())
    assert alive(backend) == []
    assert took < 30  # the sandboxes were closed, not waited out


@pytest.mark.docker
def test_keyboard_interrupt_leaves_no_container(demo, backend, tmp_path):
    (tmp_path / "task.json").write_text(demo.tasks[0].model_dump_json())
    script = f"""
import asyncio, faulthandler, json, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as a user's shell delivers it, whatever we inherit
faulthandler.register(signal.SIGUSR1)  # the test asks for every thread's stack if the shutdown hangs
sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
from test_model_agent import Sleeper, rollouts
from trajfactory.executors.base import EnvironmentHandle
from trajfactory.executors.docker import DockerBackend
from trajfactory.schema import Task
task = Task.model_validate_json(open({str(tmp_path / 'task.json')!r}).read())
env = EnvironmentHandle(**{demo.env.__dict__!r})
backend = DockerBackend(labels={backend.labels!r})
asyncio.run(rollouts(backend, env, [task], lambda t, s: Sleeper(), samples=2, concurrency=2))
"""
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:  # a file, not a pipe: a chatty child never blocks on a full pipe
        proc = subprocess.Popen([sys.executable, "-c", script], stderr=stderr, text=True)
    hung = ""
    try:
        _wait_for_containers(backend, 2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=180)  # generous: a loaded 2-core machine is slow to tear down
        except subprocess.TimeoutExpired:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            hung = "".join(line for line in status.splitlines(True) if line.startswith(("State", "SigIgn", "SigCgt")))
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2.0)
        left = alive(backend)
    finally:
        if proc.poll() is None:  # a hung shutdown fails this test, not the later ones that count containers
            proc.kill()
            for c in alive(backend):
                backend.client.api.remove_container(c["Id"], force=True)
    err = log.read_text()
    assert not hung, f"still running 180 s after SIGINT:\n{hung}\n{err[-6000:]}"
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-2000:]
    assert left == []


@pytest.mark.docker
def test_a_failing_episode_is_recorded_or_raised_and_closes_its_sandbox(demo, backend):
    [traj], stats = run(demo, backend, lambda t, s: Crasher())
    assert traj.exit_status == "error: RuntimeError: policy bug" and stats.episodes[0].error
    with pytest.raises(RuntimeError, match="policy bug"):
        run(demo, backend, lambda t, s: Crasher(), raise_errors=True)
    assert alive(backend) == []
