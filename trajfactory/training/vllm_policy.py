"""GRPO rollouts generated on a vLLM server that follows the trainer's weights (`GRPOSettings.generation: vllm`).

    with VLLMGeneration(model_dir, tokenizer, max_context=2048) as gen:
        gen.sync(lm, step=1)        # the trainer's weights reach the server (it starts on the first sync)
        client = gen.client()       # a `TokenChatClient`: the factory's model agent generates through it
        ...
        gen.summary()               # requests and tokens the server answered, every sync with its check

The trainer starts its own server: vLLM's OpenAI server (`models/server.py`, the same interpreter choice: the CPU
build in its own venv here, a CUDA vLLM on a GPU) on a private model directory that holds the base model's config and
tokenizer and the trainer's weights. `VLLMChatClient` keeps an episode as one growing token sequence exactly like the
in-process `LocalChatClient` (`training/local_policy.py`): each turn posts the running token ids as the `prompt` of
`/v1/completions` with `logprobs: 0` and `return_tokens_as_token_ids`, so the reply comes back as the sampled token ids
and the log-probability of each under the sampling distribution (`--logprobs-mode processed_logprobs`: after
temperature and top-p, like `LocalChatClient`'s). Each request carries its seed (the sample's seed and the turn).

Weight sync, before every optimizer step's rollouts (`sync`): the trainer's weights are written as safetensors into the
served directory, in the served dtype; the server reloads them in place through `/collective_rpc` (vLLM's dev mode,
`VLLM_SERVER_DEV_MODE=1`) calling `load_weights_from` of the worker extension `training/vllm_worker.py` (vLLM's
layer-wise `reload_weights`, then the tied output layer re-tied: see there); then `/reset_prefix_cache` drops the KV
cache of the old weights. A check follows: the server's prompt log-probabilities of a fixed probe text must equal the
trainer's own (largest difference under `PROBE_TOLERANCE`), else the run stops; every sync is recorded with both.
On this 2-core CPU with the tiny model a sync takes 0.25-0.45 s, the server's start 35-80 s once per run (the first
sync's `seconds` include it; `bench/grpo_generation.py`).

On a GPU the same code runs by configuration: the served dtype is the base model's (bf16 for most), vLLM takes its
share of GPU memory (`vllm_gpu_memory_utilization`) beside the trainer. Writing the weights to disk and reloading them
is what is built; for large models vLLM's NCCL weight transfer (`/init_weight_transfer_engine`, `/update_weights`)
would skip the disk; it needs a process group between trainer and server and is not built.

With LoRA the server serves the merged model: every sync writes the base weights with each adapter's delta
(`get_delta_weight`: B·A times its scaling) added, under the base model's own names (`served_state`), so the server
needs neither `--enable-lora` nor an adapter format; the trainer's model is not touched. The probe check compares the
merged served model with the trainer's adapter forward pass.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from trajfactory.models.client import ModelError
from trajfactory.models.server import VLLMServer, vllm_python
from trajfactory.training import vllm_worker
from trajfactory.training.local_policy import TokenChatClient

log = logging.getLogger(__name__)

SERVED_NAME = "policy"
PROBE_TEXT = "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n"
PROBE_TOLERANCE = 0.05
"""Largest allowed difference between the server's and the trainer's log-probability of a probe token (nats). Both are
float32 on CPU (differences ~1e-5); bf16 on a GPU differs more, far less than a stale weight would."""
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt")


def served_state(lm) -> tuple[Any, dict[str, Any]]:
    """The transformers model to save and the weights to serve: a plain model's own state; a peft (LoRA) model's
    base weights with every active adapter merged in, under the base model's names (the adapters' own tensors left
    out). The trainer's model is not changed."""
    import torch

    if not hasattr(lm, "get_base_model"):
        return lm, {k: v.detach() for k, v in lm.state_dict().items()}
    base = lm.get_base_model()
    deltas: dict[str, Any] = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer") and not module.merged:
                active = [a for a in module.active_adapters if a in getattr(module, "lora_A", {})]
                if active:
                    deltas[f"{name}.weight"] = sum(module.get_delta_weight(a) for a in active)
    state: dict[str, Any] = {}
    for key, value in base.state_dict().items():
        parts = key.split(".")
        if any(p.startswith("lora_") for p in parts):
            continue
        key = ".".join(p for p in parts if p != "base_layer")
        value = value.detach()
        if key in deltas:
            value = value + deltas[key].to(value.dtype)
        state[key] = value
    if getattr(base.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to the embedding: the server re-ties it (`vllm_worker.py`)
    return base, state


class VLLMChatClient(TokenChatClient):
    """Generation on a vLLM server's `/v1/completions`, the prompt given as token ids (module docstring)."""

    def __init__(self, base_url: str, tokenizer, *, max_context: int, name: str = SERVED_NAME,
                 timeout_s: float = 600.0):
        super().__init__(tokenizer, max_context=max_context, name=name)
        self.url = base_url.rstrip("/") + "/completions"
        self.timeout_s = timeout_s
        self.requests = 0

    async def _sample(self, ids: list[int], max_new: int, temperature: float, top_p: float, seed: int | None
                      ) -> tuple[list[int], list[float]]:
        body: dict[str, Any] = {"model": self.model, "prompt": ids, "max_tokens": max_new, "temperature": temperature,
                                "top_p": top_p, "logprobs": 0, "return_tokens_as_token_ids": True}
        if seed is not None:
            body["seed"] = seed
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as http:
                reply = await http.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise ModelError(f"the GRPO vLLM server at {self.url} did not answer: {exc}") from None
        if reply.status_code != 200:
            raise ModelError(f"the GRPO vLLM server answered {reply.status_code}: {reply.text[:500]}",
                             reply.status_code)
        self.requests += 1
        logprobs = reply.json()["choices"][0]["logprobs"] or {}
        sampled = [int(t.removeprefix("token_id:")) for t in logprobs.get("tokens") or []]
        return sampled, [float(x) for x in logprobs.get("token_logprobs") or []]


class VLLMGeneration:
    """The vLLM server GRPO's rollouts generate on, started from the model under training (module docstring)."""

    def __init__(self, model_dir: Path, tokenizer, *, max_context: int, served_dtype=None, seed: int = 0,
                 gpu_memory_utilization: float | None = None, startup_timeout_s: float = 600.0,
                 python: str | None = None):
        self.model_dir, self.tokenizer, self.max_context = Path(model_dir), tokenizer, max_context
        self.served_dtype, self.seed = served_dtype, seed
        self.gpu_memory_utilization, self.startup_timeout_s, self.python = (gpu_memory_utilization,
                                                                            startup_timeout_s, python)
        self.server: VLLMServer | None = None
        self.started_s: float | None = None
        self.syncs: list[dict[str, Any]] = []
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._clients: list[VLLMChatClient] = []
        self._counters: dict[str, float] = {}

    # -------------------------------------------------------------- the server

    @property
    def root(self) -> str:
        return self.server.base_url.removesuffix("/v1")

    def _dtype(self, on_cpu: bool) -> str:
        """The served dtype: float32 on CPU (vLLM's CPU build would cast float32 weights to bf16, so its sampling
        log-probabilities would drift from the trainer's); else the base model's (None: vLLM's `auto`)."""
        import torch

        if on_cpu:
            return "float32"
        return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(
            self.served_dtype, "auto")

    def _start(self, lm) -> None:
        _, on_cpu = vllm_python(self.python)
        self._tmp = tempfile.TemporaryDirectory(prefix="trajfactory-grpo-vllm-")
        tmp = Path(self._tmp.name)
        served = tmp / "model"
        served.mkdir()
        for f in self.model_dir.iterdir():  # config, tokenizer, chat template: the base's; the weights: the trainer's
            if f.is_file() and not any(f.match(p) for p in WEIGHT_FILES):
                shutil.copy2(f, served / f.name)
        self._write_weights(lm, served, on_cpu)
        shutil.copy2(vllm_worker.__file__, tmp / "trajfactory_weight_load.py")  # importable without trajfactory
        args = ["--worker-extension-cls", "trajfactory_weight_load.WeightLoad", "--logprobs-mode",
                "processed_logprobs", "--dtype", self._dtype(on_cpu), "--seed", str(self.seed)]
        if self.gpu_memory_utilization is not None and not on_cpu:
            args += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        self.server = VLLMServer(served, name=SERVED_NAME, python=self.python, max_model_len=self.max_context,
                                 extra_args=args, log_path=tmp / "vllm.log", startup_timeout_s=self.startup_timeout_s,
                                 env={"VLLM_SERVER_DEV_MODE": "1", "PYTHONPATH": str(tmp)})
        log.info("GRPO generation: starting the vLLM server on the model under training (about 30 s on CPU)")
        started = time.monotonic()
        self.server.start()
        self.started_s = round(time.monotonic() - started, 1)

    def _write_weights(self, lm, served: Path, on_cpu: bool) -> None:
        import torch

        dtype = torch.float32 if on_cpu else (self.served_dtype or None)
        base, state = served_state(lm)
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
                 for k, v in state.items()}
        base.save_pretrained(served, state_dict=state, safe_serialization=True)

    def _post(self, path: str, **body: Any) -> Any:
        reply = httpx.post(self.root + path, json=body or None, timeout=600)
        if reply.status_code != 200:
            raise RuntimeError(f"the GRPO vLLM server refused {path} ({reply.status_code}): {reply.text[:500]}; "
                               f"log {self.server.log_path}:\n{self.server.log_tail()}")
        return reply.json() if reply.content else None

    def sync(self, lm, step: int) -> dict[str, Any]:
        """Bring the trainer's current weights onto the server (started on the first call) and check them there."""
        started = time.monotonic()
        if self.server is None:
            self._start(lm)
        else:
            _, on_cpu = vllm_python(self.python)
            self._write_weights(lm, self.server.model_dir, on_cpu)
            self._post("/collective_rpc", method="load_weights_from", args=[str(self.server.model_dir)])
            self._post("/reset_prefix_cache")
        seconds = round(time.monotonic() - started, 3)
        served, trained = self.probe_logprobs(), self._trainer_logprobs(lm)
        diff = max(abs(a - b) for a, b in zip(served, trained, strict=True))
        record = {"step": step, "seconds": seconds, "probe_logprob_server": round(sum(served), 5),
                  "probe_logprob_trainer": round(sum(trained), 5), "probe_max_abs_diff": diff}
        self.syncs.append(record)
        log.info("step %d: weights on the vLLM server in %.2f s (probe difference %.2g)", step, seconds, diff)
        if diff > PROBE_TOLERANCE:
            raise RuntimeError(f"the vLLM server's weights differ from the trainer's after the sync of step {step}: "
                               f"a probe token's log-probability differs by {diff:.3g} (> {PROBE_TOLERANCE}); log "
                               f"{self.server.log_path}:\n{self.server.log_tail()}")
        return record

    def _probe_ids(self) -> list[int]:
        return self.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"][:64]

    def probe_logprobs(self) -> list[float]:
        """The server's log-probability of each probe token after the first, given the ones before it."""
        ids = self._probe_ids()
        out = self._post("/v1/completions", model=SERVED_NAME, prompt=ids, max_tokens=1, temperature=0,
                         prompt_logprobs=0)
        rows = out["choices"][0]["prompt_logprobs"][1:]
        return [float(row[str(t)]["logprob"]) for row, t in zip(rows, ids[1:], strict=True)]

    def _trainer_logprobs(self, lm) -> list[float]:
        import torch

        ids = torch.tensor([self._probe_ids()], device=lm.device)
        was_training = lm.training
        lm.eval()
        try:
            with torch.no_grad():
                logps = torch.log_softmax(lm(ids).logits[0, :-1].float(), -1)
        finally:
            lm.train(was_training)
        return logps.gather(1, ids[0, 1:, None]).squeeze(1).tolist()

    def client(self) -> VLLMChatClient:
        if self.server is None:
            raise RuntimeError("VLLMGeneration.client() before the first sync(): no server runs yet")
        client = VLLMChatClient(self.server.base_url, self.tokenizer, max_context=self.max_context)
        self._clients.append(client)
        return client

    def _server_counters(self) -> dict[str, float]:
        """The server's own count of finished requests and generated tokens (its Prometheus `/metrics`)."""
        text = httpx.get(self.root + "/metrics", timeout=60).text
        counters = {"requests": 0.0, "generated_tokens": 0.0}
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name.startswith("vllm:request_success_total"):
                counters["requests"] += float(value)
            elif name.startswith("vllm:generation_tokens_total"):
                counters["generated_tokens"] += float(value)
        return counters

    def summary(self) -> dict[str, Any]:
        """What metrics.json records of the generation: the server's counters, the client's requests, every sync."""
        if self.server is not None and self.server.running:
            self._counters = self._server_counters()
        return {"kind": "vllm", "server_start_s": self.started_s, "server_pid": self.server and self.server.proc.pid,
                "server_requests": int(self._counters.get("requests", 0)),
                "server_generated_tokens": int(self._counters.get("generated_tokens", 0)),
                "rollout_requests": sum(c.requests for c in self._clients), "weight_syncs": list(self.syncs)}

    def close(self) -> None:
        """Stop the server (its whole process group) and remove its directory; safe to call twice."""
        if self.server is not None:
            self.server.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> VLLMGeneration:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
