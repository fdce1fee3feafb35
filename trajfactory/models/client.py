"""An async client for OpenAI-compatible chat endpoints (a local vLLM server or an external API).

Bounded concurrency (a semaphore), retries with exponential backoff and jitter on 429, 5xx,
timeouts and connection errors (never on other 4xx), one record per request, and a cost estimate.
The API key is sent as a Bearer header and never appears in logs, reprs or error messages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import mimetypes
import os
import random
import re
import time
from dataclasses import dataclass, field
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from trajfactory.models.replicas import Replicas
from trajfactory.schema import Message, ToolCall, ToolCallFunction

log = logging.getLogger(__name__)

API_KEY_VARS = ("TRAJFACTORY_API_KEY", "OPENAI_API_KEY")
RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
CONTEXT_OVERFLOW = re.compile(r"context length|context window|too many tokens|maximum.*tokens", re.I)
"""An HTTP 400 whose text matches this says the prompt is too long for the model: no other request form cures it."""
IMAGE_REFUSED = re.compile(r"multi-?modal|image|vision", re.I)
"""An HTTP 400 whose text matches this (and is no context overflow) says the model takes no images."""


class ModelError(RuntimeError):
    """A chat request failed for good; `status` is the last HTTP status (None: no response)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status

    @property
    def infrastructure(self) -> bool:
        """The server or the transport failed (no response, 5xx, overload after every retry, a malformed answer):
        nothing the model wrote caused it, so an episode must not show it to the model as its own mistake."""
        return self.status is None or self.status >= 500 or self.status in (200, 408, 409, 429)

    @property
    def context_overflow(self) -> bool:
        """The request was too long for the model's context."""
        return self.status == 400 and bool(CONTEXT_OVERFLOW.search(str(self)))

    @property
    def images_refused(self) -> bool:
        """The model takes no images (ask again without them)."""
        return self.status == 400 and bool(IMAGE_REFUSED.search(str(self))) and not self.context_overflow


@dataclass
class RequestRecord:
    """What one `chat` call cost: one record per call, retries included."""

    started_at: float
    """Unix time when the call started."""
    latency_s: float = 0.0
    """Wall time of the whole call, retries and backoff included."""
    status: int | None = None
    """HTTP status of the last attempt; None when no attempt got a response."""
    retries: int = 0
    replica: int = 0
    """Which of the client's replicas answered the last attempt (0 with one base URL)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class ChatResult:
    message: Message
    """The assistant message, with `tool_calls` when the model called tools."""
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    raw: dict[str, Any] = field(repr=False)
    """The response body as the server sent it."""


def _api_key_from_env() -> str | None:
    for var in API_KEY_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


def message_from_choice(choice: dict[str, Any]) -> Message:
    """The schema `Message` of an OpenAI `choices[i]` entry; tool-call arguments stay JSON strings."""
    msg = choice.get("message") or {}
    calls = None
    if msg.get("tool_calls"):
        calls = []
        for n, tc in enumerate(msg["tool_calls"]):
            fn = tc.get("function") or {}
            args = fn.get("arguments", "{}")
            calls.append(
                ToolCall(
                    id=tc.get("id") or f"call_{n}",
                    function=ToolCallFunction(
                        name=fn.get("name", ""), arguments=args if isinstance(args, str) else json.dumps(args)
                    ),
                )
            )
    return Message(role="assistant", content=msg.get("content"), tool_calls=calls)


def image_data_uri(image: str | Path | bytes) -> str:
    """A `data:` URI of a PNG/JPEG/... file or of raw bytes (type sniffed from the magic number)."""
    if isinstance(image, bytes):
        data = image
        mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/webp" if data[8:12] == b"WEBP" else "image/png"
    else:
        path = Path(image)
        data = path.read_bytes()
        mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class ModelClient:
    """`await client.chat(messages, tools=TOOLS, temperature=0.7)` against `{base_url}/chat/completions`."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str,
        api_key: str | None = None,
        *,
        max_concurrency: int = 8,
        timeout_s: float = 60,
        max_retries: int = 4,
        price_per_1k_prompt: float = 0.0,
        price_per_1k_completion: float = 0.0,
        gpu_hour_price: float = 0.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency}: must be at least 1")
        self.replicas = Replicas([base_url] if isinstance(base_url, str) else base_url)
        """Several base URLs are replicas of one model: requests spread over them and fail over (`replicas.py`)."""
        self.base_url = self.replicas.urls[0]
        self.model = model
        self._api_key = api_key or _api_key_from_env()
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.price_per_1k_prompt = price_per_1k_prompt
        self.price_per_1k_completion = price_per_1k_completion
        self.gpu_hour_price = gpu_hour_price
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._transport = transport
        self.requests: list[RequestRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None

    def __repr__(self) -> str:  # the key is never shown, only whether there is one
        key = "set" if self._api_key else "none"
        return (
            f"ModelClient(base_url={self.base_url!r}, model={self.model!r}, api_key={key}, "
            f"max_concurrency={self.max_concurrency})"
        )

    def _redact(self, text: str) -> str:
        text = text.replace(self._api_key, "***") if self._api_key else text
        for url in self.replicas.urls:
            text = text.replace(url, "<endpoint>")
        return text

    def _ensure(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        # httpx pools and semaphores belong to one event loop; a new asyncio.run() gets fresh ones.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._http = httpx.AsyncClient(
                headers=headers,
                timeout=self.timeout_s,
                transport=self._transport,
                limits=httpx.Limits(max_connections=self.max_concurrency),
            )
            self._sem = asyncio.Semaphore(self.max_concurrency)
            self._loop = loop
        return self._http, self._sem

    async def aclose(self) -> None:
        if self._http is not None and self._loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http, self._loop, self._sem = None, None, None

    async def __aenter__(self) -> "ModelClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.backoff_max_s)
            except ValueError:
                pass  # an HTTP date: use our own schedule
        # "Full jitter": spreads the retries of many concurrent callers.
        return random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))

    async def chat(
        self, messages: list[Message | dict[str, Any]], tools: list[dict] | None = None, **sampling: Any
    ) -> ChatResult:
        """One chat completion; `sampling` goes into the request body (temperature, max_tokens, seed...)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                m.model_dump(mode="json", exclude_none=True) if isinstance(m, Message) else m for m in messages
            ],
            **sampling,
        }
        if tools:
            body["tools"] = tools
        http, sem = self._ensure()
        record = RequestRecord(started_at=time.time())
        self.requests.append(record)
        start = time.monotonic()
        async with sem:
            attempt = 0
            while True:
                retry_after = None
                replica = record.replica = self.replicas.pick()
                url = f"{self.replicas.urls[replica]}/chat/completions"
                try:
                    resp = await http.post(url, json=body)
                    record.status = resp.status_code
                    if resp.status_code == 200:
                        self.replicas.done(replica, healthy=True)
                        break
                    detail = self._redact(resp.text[:500])
                    retry_after = resp.headers.get("retry-after")
                    error = f"chat request -> HTTP {resp.status_code}: {detail}"
                    retryable = resp.status_code in RETRY_STATUSES
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    error = f"chat request -> {type(exc).__name__}: {self._redact(str(exc))}"
                    retryable = True
                self.replicas.done(replica, healthy=not retryable)  # a 4xx is the request's fault, not the replica's
                if not retryable or attempt >= self.max_retries:
                    record.error, record.latency_s = error, time.monotonic() - start
                    raise ModelError(
                        error + (f" (after {attempt} retries)" if attempt else ""), status=record.status
                    )
                # another replica takes the retry at once; with none left, back off
                delay = 0.0 if self.replicas.another_up(replica) else self._backoff(attempt, retry_after)
                log.warning("%s: %s; retry %d/%d in %.2f s", url, error, attempt + 1, self.max_retries, delay)
                attempt += 1
                record.retries = attempt
                await asyncio.sleep(delay)
        record.latency_s = time.monotonic() - start
        try:
            data = resp.json()
            choice = data["choices"][0]
        except (ValueError, KeyError, IndexError) as exc:
            record.error = f"bad response body: {exc!r}"
            raise ModelError(f"chat request -> 200 but not a chat completion: {self._redact(resp.text[:500])}", 200)
        usage = data.get("usage") or {}
        record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        record.completion_tokens = int(usage.get("completion_tokens") or 0)
        return ChatResult(
            message=message_from_choice(choice),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            latency_s=record.latency_s,
            raw=data,
        )

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.requests)

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.requests)

    def request_cost(self, result: ChatResult) -> float:
        """One request's estimated cost: token prices, plus the GPU hour over its latency shared by the requests the
        server runs at once."""
        return (result.prompt_tokens / 1000 * self.price_per_1k_prompt
                + result.completion_tokens / 1000 * self.price_per_1k_completion
                + result.latency_s / 3600 * self.gpu_hour_price / self.max_concurrency)

    def cost_usd(self) -> float:
        """Token prices, plus `gpu_hour_price` times the wall-clock span the requests kept the server busy."""
        tokens = (
            self.prompt_tokens / 1000 * self.price_per_1k_prompt
            + self.completion_tokens / 1000 * self.price_per_1k_completion
        )
        if not self.requests or not self.gpu_hour_price:
            return tokens
        first = min(r.started_at for r in self.requests)
        last = max(r.started_at + r.latency_s for r in self.requests)
        return tokens + (last - first) / 3600 * self.gpu_hour_price


def model_from_env(model: str | None = None, **kwargs: Any) -> ModelClient:
    """A client for an external OpenAI-compatible endpoint: `TRAJFACTORY_BASE_URL`, `TRAJFACTORY_MODEL`,
    and the key from `TRAJFACTORY_API_KEY` or `OPENAI_API_KEY`."""
    base_url = os.environ.get("TRAJFACTORY_BASE_URL")
    if not base_url:
        raise ValueError("TRAJFACTORY_BASE_URL is not set; set it to an OpenAI-compatible base URL, e.g. "
                         "https://api.example.com/v1 (a local server: `trajfactory model serve DIR`)")
    model = model or os.environ.get("TRAJFACTORY_MODEL")
    if not model:
        raise ValueError("no model name: pass model=... or set TRAJFACTORY_MODEL to the endpoint's model id")
    return ModelClient(base_url, model, **kwargs)
