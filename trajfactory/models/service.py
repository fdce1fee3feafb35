"""The model a run uses, as a context: `with model_endpoint(cfg, work_dir) as ep: client = ep.client()`
(or `model_session(...)`, which reuses an endpoint a caller already holds and opens none when none is needed).

With `serve:` the factory starts vLLM on the model directory (making the built-in tiny model
first when asked for `builtin:tiny`) and stops it when the block ends, also on errors and
cancellation; with `base_url:` it only describes the external endpoint. A served model listens on
loopback unless the nodes of a `cluster:` must reach it (`served_host`: `model.host`, or this
machine's address toward the head). The `ModelEndpoint` it yields is small and picklable, so flows
pass it to their tasks; the API key stays in the environment and is read only when a client is made.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import socket
import subprocess
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ConfigDict, SecretStr

from trajfactory.settings import BUILTIN_TINY, ClusterConfig, ModelConfig
from trajfactory.models.client import ModelClient
from trajfactory.models.server import CACHE_ROOT, VLLMServer, is_loopback

log = logging.getLogger(__name__)

TINY_VERSION = "1"
"""Bump when `init_tiny_model` changes, so cached tiny models are rebuilt."""


class ModelEndpoint(BaseModel):
    """A reachable OpenAI-compatible endpoint: its URL and the recipe's `model:` settings. The only secret inside is the
    key of a model this run serves beyond loopback (`api_key`); a user's own key stays in `model.api_key_env`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | list[str]
    """One URL, or the URLs of the model's replicas (the client spreads requests over them)."""
    settings: ModelConfig
    served: bool = False
    """True when this run started the server (vLLM on `model_dir`)."""
    model_dir: str | None = None
    api_key: SecretStr | None = None
    """The key a served model that listens beyond loopback asks of every request: made afresh for each server start,
    never written to disk, carried to a cluster's nodes with the work (`flows/cluster.run_step`)."""

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def max_concurrency(self) -> int:
        return self.settings.max_concurrency

    @classmethod
    def at(cls, base_url: str | list[str], name: str, **settings) -> "ModelEndpoint":
        """An endpoint someone else runs (`base_url`), with `model:` settings given as keywords."""
        return cls(base_url=base_url, settings=ModelConfig(serve=None, base_url=base_url, name=name, **settings))

    def client(self, **overrides) -> ModelClient:
        """A new client (clients bind to one event loop: make one per `asyncio.run`)."""
        s = self.settings
        kwargs = dict(max_concurrency=s.max_concurrency, timeout_s=s.timeout_s, price_per_1k_prompt=s.price_per_1k_prompt,
                      price_per_1k_completion=s.price_per_1k_completion, gpu_hour_price=s.gpu_hour_price)
        key = self.api_key.get_secret_value() if self.api_key else os.environ.get(s.api_key_env) or None
        return ModelClient(self.base_url, s.name, key, **{**kwargs, **overrides})


def tiny_model_dir(cache_root: str | Path | None = None) -> Path:
    """The built-in tiny model, made once per cache (a file lock keeps parallel runs from racing)."""
    root = Path(cache_root) if cache_root else CACHE_ROOT
    out = root / "models" / f"tiny-v{TINY_VERSION}"
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".tiny-v{TINY_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "config.json").is_file():
            from trajfactory.models.tiny import init_tiny_model

            log.info("making the built-in tiny model in %s", out)
            tmp = out.with_name(out.name + ".tmp")
            init_tiny_model(tmp)
            tmp.rename(out)
    return out


def resolve_model_dir(serve: str) -> Path:
    if serve == BUILTIN_TINY:
        return tiny_model_dir()
    path = Path(serve).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(f"model.serve: {serve!r} is not a model directory (no config.json); give a directory "
                         f"with config.json, weights and tokenizer, or {BUILTIN_TINY!r}")
    return path


def served_host(cfg: ModelConfig, cluster: ClusterConfig | None = None) -> str:
    """The host of a served model's URL: `model.host`; unset, loopback without a cluster, else this machine's address
    on its route to the cluster's head, which the nodes reach."""
    if cfg.host:
        return cfg.host
    return "127.0.0.1" if cluster is None else address_toward(cluster.address)


def address_toward(address: str) -> str:
    """This machine's IP on its route to `address` (`HOST:PORT` or `ray://HOST:PORT`; `auto`: the cluster this
    machine joined, whose head Ray finds), or loopback when nothing routes there."""
    if address == "auto":
        try:
            import ray

            return ray.util.get_node_ip_address()
        except Exception:  # noqa: BLE001 - no Ray, or no cluster joined: nothing else is known about the route
            return "127.0.0.1"
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, int(port)))  # UDP: picks the route and the source address, sends nothing
            return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"


@contextlib.contextmanager
def model_endpoint(cfg: ModelConfig, work_dir: str | Path, cluster: ClusterConfig | None = None
                   ) -> Iterator[ModelEndpoint]:
    """Yield the endpoint of `cfg`; a served model runs exactly as long as the block. With `cluster` (the recipe's
    `cluster:` section), a served model is reached at an address the cluster's nodes reach (`served_host`)."""
    if cfg.base_url:
        yield ModelEndpoint(base_url=cfg.base_url, settings=cfg)
        return
    host = served_host(cfg, cluster)
    # beyond loopback anyone on the network could use (and load) the model: ask every request for a fresh key
    key = None if is_loopback(host) else secrets.token_urlsafe(32)
    model_dir = resolve_model_dir(cfg.serve)
    logs = Path(work_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    gpus = _gpu_count()
    servers = [VLLMServer(model_dir, name=cfg.name, max_model_len=cfg.max_model_len, startup_timeout_s=cfg.startup_timeout_s,
                          log_path=logs / ("vllm.log" if cfg.replicas == 1 else f"vllm-{i}.log"),
                          env={"CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus and cfg.replicas > 1 else None,
                          host=host, api_key=key)
               for i in range(cfg.replicas)]
    log.info("starting %d vLLM server(s) for %s (about a minute each on CPU); logs in %s", cfg.replicas, model_dir, logs)
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        urls = [s.base_url for s in servers]
        log.info("model %r served at %s", cfg.name, ", ".join(urls))
        yield ModelEndpoint(base_url=urls[0] if len(urls) == 1 else urls, settings=cfg, served=True,
                            model_dir=str(model_dir), api_key=SecretStr(key) if key else None)


def _gpu_count() -> int:
    """GPUs the machine has (`nvidia-smi -L`), 0 without any."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


@contextlib.contextmanager
def model_session(cfg: ModelConfig | None, work_dir: str | Path, endpoint: ModelEndpoint | None,
                  needed: bool, cluster: ClusterConfig | None = None) -> Iterator[ModelEndpoint | None]:
    """The endpoint a stage uses: the caller's when given (a run that opened it once), else one opened here for
    this stage alone (a served model stops when the block ends, however it ends), or None when no model is needed.
    `cluster`: the recipe's `cluster:` section, whose nodes must reach a served model (`model_endpoint`)."""
    if endpoint is not None or not needed:
        yield endpoint
        return
    if cfg is None:
        raise ValueError("this stage needs a model (LM rewrite, model statements, model rollouts, the judge, or the web "
                         "model agent / judge) but none is configured: add a `model:` section (`serve: builtin:tiny`, "
                         "a model directory, or `base_url:` of an OpenAI-compatible endpoint)")
    with model_endpoint(cfg, work_dir, cluster) as opened:
        yield opened
