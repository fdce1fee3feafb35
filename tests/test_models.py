"""The model layer against real components: the tiny model with transformers, a real CPU vLLM
server (started once per session), ModelClient against it and against a stdlib stub server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from openai_stub import OpenAIStub, completion, error

from trajfactory.executors.swe_env import TOOLS
from trajfactory.models.client import ModelClient, ModelError
from trajfactory.models.server import (
    VLLMServer,
    process_group_alive,
    process_group_pids,
)
from trajfactory.schema import Message

SECRET = "sk-test-5ecret-never-print-me"
TOOL_CONVERSATION = [
    {"role": "system", "content": "You fix bugs."},
    {"role": "user", "content": "The tests fail."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": '{"command": "ls"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "setup.py"},
]


# ---------------------------------------------------------------- fixtures


class Stub:
    """A stdlib OpenAI-ish server on 127.0.0.1: answers with the scripted statuses, then 200s."""

    def __init__(self, statuses: list[int], delay_s: float = 0.0, message: dict | None = None):
        self.statuses, self.delay_s = list(statuses), delay_s
        message = message or {"role": "assistant", "content": "ok"}
        self.calls, self.in_flight, self.max_in_flight = 0, 0, 0
        self.auth_headers: list[str | None] = []
        self.lock = threading.Lock()
        self._message = message
        self._server = OpenAIStub(self._respond)
        self.url = self._server.url

    def _respond(self, body: dict, headers: dict) -> tuple[int, dict]:
        with self.lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.auth_headers.append(headers.get("Authorization"))
            status = self.statuses.pop(0) if self.statuses else 200
        time.sleep(self.delay_s)
        with self.lock:
            self.in_flight -= 1
        if status != 200:
            return status, error(f"scripted {status}")
        return 200, completion(self._message, {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})

    def close(self):
        self._server.close()


@pytest.fixture
def stub_factory():
    made = []

    def make(statuses, delay_s=0.0, message=None):
        made.append(Stub(statuses, delay_s, message))
        return made[-1]

    yield make
    for s in made:
        s.close()


class CountingTransport(httpx.AsyncHTTPTransport):
    """Counts requests in flight at the HTTP layer: the instrument for the concurrency bound."""

    def __init__(self):
        super().__init__()
        self.in_flight = self.max_in_flight = 0

    async def handle_async_request(self, request):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await super().handle_async_request(request)
        finally:
            self.in_flight -= 1


# A stand-in for vLLM's python: serves /v1/models and forks a child that ignores SIGTERM, so the
# process-group handling (and the SIGKILL escalation) is checked in seconds instead of a vLLM start.
FAKE_VLLM = textwrap.dedent(
    """
    import os, signal, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer
    port = int(sys.argv[sys.argv.index("--port") + 1])
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(600)
        os._exit(0)
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b'{"data": []}')
        def log_message(self, *a): pass
    HTTPServer(("127.0.0.1", port), H).serve_forever()
    """
)


@pytest.fixture
def fake_vllm_python(tmp_path) -> Path:
    (tmp_path / "fake_vllm.py").write_text(FAKE_VLLM)
    script = tmp_path / "python"
    # `-c` is how VLLMServer probes the interpreter for vLLM; everything else starts the stand-in.
    script.write_text(
        f'#!/bin/sh\n[ "$1" = "-c" ] && exec {sys.executable} "$@"\nexec {sys.executable} {tmp_path}/fake_vllm.py "$@"\n'
    )
    script.chmod(0o755)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    return script


def wait_gone(pgid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_group_alive(pgid):
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------- the tiny model


def test_tiny_model_loads_with_transformers_and_generates(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    cfg = model.config
    assert cfg.model_type == "qwen2" and cfg.hidden_size // cfg.num_attention_heads == 64  # vLLM CPU needs 64
    assert (tiny_model / "model.safetensors").is_file()
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5 or out[0, -1].item() == tok.eos_token_id
    for marker in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>"):
        assert len(tok(marker, add_special_tokens=False)["input_ids"]) == 1, marker


def test_tiny_model_is_deterministic_for_a_seed(tiny_model, tmp_path):
    from trajfactory.models.tiny import init_tiny_model

    def digest(d: Path, name: str) -> str:
        return hashlib.sha256((d / name).read_bytes()).hexdigest()

    same = init_tiny_model(tmp_path / "same", seed=0)
    other = init_tiny_model(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert digest(same, name) == digest(tiny_model, name), name
    assert digest(other, "model.safetensors") != digest(tiny_model, "model.safetensors")


def test_chat_template_renders_tools_tool_calls_and_results(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = tok.apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert "<tools>" in text and '"name": "edit"' in text
    assert '<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>' in text
    assert "<tool_response>\nsetup.py\n</tool_response>" in text
    assert text.startswith("<|im_start|>system\nYou fix bugs.") and text.endswith("<|im_start|>assistant\n")


# ---------------------------------------------------------------- the real vLLM server


@pytest.mark.vllm
def test_vllm_chat_completion_through_client_records_usage(vllm_server):
    client = ModelClient(vllm_server.base_url, "tiny", price_per_1k_prompt=1.0, price_per_1k_completion=2.0)
    result = asyncio.run(client.chat([Message(role="user", content="hello")], max_tokens=8, temperature=0))
    assert result.message.role == "assistant" and isinstance(result.message.content, str)
    assert result.prompt_tokens > 0 and 0 < result.completion_tokens <= 8
    [rec] = client.requests
    assert rec.status == 200 and rec.retries == 0 and rec.prompt_tokens == result.prompt_tokens
    assert client.cost_usd() == pytest.approx(rec.prompt_tokens / 1000 + rec.completion_tokens * 2 / 1000)


@pytest.mark.vllm
def test_vllm_accepts_tools_and_tool_call_history(vllm_server):
    client = ModelClient(vllm_server.base_url, "tiny")
    result = asyncio.run(client.chat(TOOL_CONVERSATION, tools=TOOLS, tool_choice="auto", max_tokens=8))
    assert result.message.role == "assistant" and client.requests[0].status == 200
    assert result.prompt_tokens > 300  # the tool schemas were rendered into the prompt


@pytest.mark.vllm
def test_vllm_concurrency_bound_is_respected(vllm_server):
    transport = CountingTransport()
    client = ModelClient(vllm_server.base_url, "tiny", max_concurrency=2, transport=transport)

    async def run():
        prompts = [[Message(role="user", content=f"count to {n}")] for n in range(6)]
        return await asyncio.gather(*(client.chat(p, max_tokens=16) for p in prompts))

    results = asyncio.run(run())
    assert len(results) == 6 and len(client.requests) == 6
    assert transport.max_in_flight == 2


@pytest.mark.vllm
def test_vllm_server_process_group_is_gone_after_stop(vllm_server):
    pgid = vllm_server.pgid
    members = process_group_pids(pgid)
    assert len(members) >= 2  # the API server and vLLM's engine process
    # on CPU the one worker runs inside the engine-core process (no third interpreter to start)
    log = vllm_server.log_path.read_text(errors="replace")
    assert "(EngineCore pid=" in log and "Worker pid=" not in log, log[-3000:]
    vllm_server.stop()
    vllm_server.stop()  # idempotent
    assert not process_group_alive(pgid) and not process_group_pids(pgid)


# ---------------------------------------------------------------- process handling (a stand-in vLLM)


def test_process_group_is_gone_after_an_exception_in_with(fake_vllm_python):
    model = fake_vllm_python.parent / "model"
    server = VLLMServer(model, python=fake_vllm_python, stop_grace_s=1.0, log_path=model.parent / "vllm.log")
    with pytest.raises(RuntimeError, match="boom"):
        with server:
            pgid = server.pgid
            assert len(process_group_pids(pgid)) == 2 and httpx.get(f"{server.base_url}/models").status_code == 200
            raise RuntimeError("boom")
    assert not process_group_alive(pgid)  # the SIGTERM-ignoring child was killed too


def test_process_group_is_gone_after_sigterm(fake_vllm_python, tmp_path):
    code = (
        "import sys, time; from trajfactory.models.server import VLLMServer\n"
        f"s = VLLMServer({str(tmp_path / 'model')!r}, python={str(fake_vllm_python)!r},"
        f" stop_grace_s=1.0, log_path={str(tmp_path / 'vllm.log')!r})\n"
        "s.start(); print(s.pgid, flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pgid = int(proc.stdout.readline())
    assert process_group_alive(pgid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    assert wait_gone(pgid, timeout=5)


# ---------------------------------------------------------------- client retries and secrets (a stub server)


def test_client_retries_503_then_succeeds(stub_factory):
    stub = stub_factory([503, 503])
    client = ModelClient(stub.url, "m", backoff_base_s=0.05)
    result = asyncio.run(client.chat([{"role": "user", "content": "hi"}]))
    assert result.message.content == "ok" and stub.calls == 3
    assert client.requests[0].retries == 2 and client.requests[0].status == 200


def test_client_does_not_retry_400(stub_factory):
    stub = stub_factory([400])
    client = ModelClient(stub.url, "m", backoff_base_s=0.05)
    with pytest.raises(ModelError) as err:
        asyncio.run(client.chat([{"role": "user", "content": "hi"}]))
    assert err.value.status == 400 and stub.calls == 1 and client.requests[0].retries == 0


def test_client_gives_up_after_max_retries(stub_factory):
    stub = stub_factory([500] * 10)
    client = ModelClient(stub.url, "m", max_retries=2, backoff_base_s=0.01)
    with pytest.raises(ModelError, match="after 2 retries"):
        asyncio.run(client.chat([{"role": "user", "content": "hi"}]))
    assert stub.calls == 3


def test_client_bounds_concurrency_at_the_server(stub_factory):
    stub = stub_factory([], delay_s=0.2)
    client = ModelClient(stub.url, "m", max_concurrency=2)

    async def run():
        await asyncio.gather(*(client.chat([{"role": "user", "content": "hi"}]) for _ in range(6)))

    asyncio.run(run())
    assert stub.calls == 6 and stub.max_in_flight == 2


def test_client_returns_tool_calls_as_schema_messages(stub_factory):
    call = {"id": "call_7", "type": "function", "function": {"name": "bash", "arguments": '{"command": "ls"}'}}
    stub = stub_factory([], message={"role": "assistant", "content": None, "tool_calls": [call]})
    client = ModelClient(stub.url, "m")
    result = asyncio.run(client.chat([{"role": "user", "content": "hi"}], tools=TOOLS))
    assert result.message == Message.model_validate({"role": "assistant", "tool_calls": [call]})
    assert json.loads(result.message.tool_calls[0].function.arguments) == {"command": "ls"}


def test_api_key_is_sent_but_never_shown(stub_factory, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("TRAJFACTORY_API_KEY", raising=False)
    stub = stub_factory([503, 401])
    client = ModelClient(stub.url, "m", backoff_base_s=0.01)
    with pytest.raises(ModelError) as err:
        asyncio.run(client.chat([{"role": "user", "content": "hi"}]))
    assert stub.auth_headers == [f"Bearer {SECRET}"] * 2
    shown = [repr(client), str(err.value), caplog.text, repr(client.requests)]
    assert all(SECRET not in s for s in shown)


def test_model_from_env(monkeypatch):
    from trajfactory.models.client import model_from_env

    monkeypatch.delenv("TRAJFACTORY_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="TRAJFACTORY_BASE_URL"):
        model_from_env()
    monkeypatch.setenv("TRAJFACTORY_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("TRAJFACTORY_MODEL", "m")
    monkeypatch.setenv("TRAJFACTORY_API_KEY", SECRET)
    client = model_from_env(max_concurrency=3)
    assert client.base_url == "http://127.0.0.1:9/v1" and client.model == "m" and SECRET not in repr(client)
