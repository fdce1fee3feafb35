"""The recipe's `model:` section: which model the factory's agents, LM synthesizers and judges use.

Either the factory serves a model itself with vLLM (`serve:`; `builtin:tiny` is the factory's own tiny
model, made on first use), or it talks to any OpenAI-compatible endpoint (`base_url:`), with the key read
from the environment variable named by `api_key_env` (never from the recipe, never logged).
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from trajfactory.settings.agents import Section

BUILTIN_TINY = "builtin:tiny"
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]*$")


class ModelConfig(Section):
    """Where the served model lives, how hard to drive it, and what it costs."""

    serve: str | None = BUILTIN_TINY
    """A local model directory to serve with vLLM, or `builtin:tiny` (the factory's own tiny model).
    Leave it empty (`serve: null`) and give `base_url` to use an external endpoint instead."""
    base_url: str | list[str] | None = None
    """An external OpenAI-compatible base URL, e.g. `https://api.example.com/v1` (with `serve: null`); a list names
    replicas of one model, and the client spreads requests over them and fails over when one stops answering."""
    replicas: int = Field(1, ge=1)
    """vLLM servers to start with `serve:`, each a replica the client spreads requests over. With GPUs, replica `i`
    gets GPU `i % gpus` (`CUDA_VISIBLE_DEVICES`); on a CPU each is one more process of the same cores."""
    api_key_env: str = "TRAJFACTORY_API_KEY"
    """Name of the environment variable holding the endpoint's API key (unset: no key is sent)."""
    name: str = "tiny"
    """Model id sent in requests (the served name when the factory serves it)."""
    max_concurrency: int = Field(8, ge=1)
    """Requests in flight at the server at once, across every episode and synthesizer of a stage."""
    max_model_len: int = Field(2048, ge=256)
    """Longest context (prompt + completion) of a served model, in tokens."""
    timeout_s: float = Field(120, gt=0)
    """Limit of one request (retries on timeouts, 429 and 5xx come on top)."""
    startup_timeout_s: float = Field(600, gt=0)
    """How long a served model may take to answer its first health check."""
    price_per_1k_prompt: float = Field(0.0, ge=0)
    price_per_1k_completion: float = Field(0.0, ge=0)
    gpu_hour_price: float = Field(0.0, ge=0)
    """Cost estimate inputs: per-token prices (an API) and/or the GPU-hour price (a served model)."""
    host: str | None = None
    """Where the nodes of a `cluster:` reach a served model: the host of the URL the run hands out. Unset: loopback
    (`127.0.0.1`) without a cluster; with one, this machine's address on its route to the cluster's head. The server
    listens on loopback when this is loopback, else on every interface (`0.0.0.0`)."""

    @field_validator("base_url")
    @classmethod
    def _http(cls, url: str | list[str] | None) -> str | list[str] | None:
        if isinstance(url, list) and not url:
            raise ValueError("an empty list of base URLs; give one URL, or a list of the replicas' URLs")
        for one in [url] if isinstance(url, str) else url or []:
            if not one.startswith(("http://", "https://")):
                raise ValueError(f"{one!r} is not an http(s) URL; write e.g. http://127.0.0.1:8000/v1")
        return url

    @field_validator("host")
    @classmethod
    def _host(cls, host: str | None) -> str | None:
        if host is not None and not _HOST.match(host):
            raise ValueError(f"model.host {host!r} is not a host name or IP address (no scheme, no port); write e.g. "
                             "`10.0.0.5`, the address of this machine that the cluster's nodes reach")
        return host

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        if bool(self.serve) == bool(self.base_url):
            raise ValueError("give exactly one of `serve:` (a model directory or builtin:tiny) and `base_url:` "
                             "(an external OpenAI-compatible endpoint; then set `serve: null`)")
        return self

    def digest_fields(self) -> dict:
        """What changes the model's outputs (not prices, timeouts or where the key lives)."""
        return {"serve": self.serve, "base_url": self.base_url, "name": self.name}
