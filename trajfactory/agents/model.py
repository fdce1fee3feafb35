"""A tool-calling agent over a served model (`ModelClient`): same tools and records as the oracle.

Native tool calls are used when the server parses them (vLLM `--enable-auto-tool-choice`). For
models without tool calling, the text-action fallback reads the action from the reply's content:
a `<tool_call>{json}</tool_call>` block, a fenced ```json block holding such an object, or one
mini-swe-agent style ```bash block (whose command `submit` submits). Parsed calls are stored as
`tool_calls` with ids starting `text_`, so every trajectory has the same shape; on the wire back to
the model they are shown as the text it wrote, with their results as user messages.

A malformed turn raises `PolicyError`, which the episode loop turns into an error observation.
"""

from __future__ import annotations

import json
import re
from typing import Any

from trajfactory.executors.protocol import INFRA_FAILED, Action, PolicyError, Start
from trajfactory.models.client import ModelClient, ModelError
from trajfactory.schema import Message, Policy as PolicyInfo, Task, ToolCall, ToolCallFunction, Usage
from trajfactory.settings import ModelPolicyConfig

POLICY_VERSION = "1"
TEXT_CALL_PREFIX = "text_"

TEXT_ACTIONS_PROMPT = """

Write your reasoning, then exactly one action in one of these forms:
<tool_call>{"name": "bash", "arguments": {"command": "pytest -q tests/test_x.py"}}</tool_call>
<tool_call>{"name": "edit", "arguments": {"path": "src/x.py", "old_str": "a = 1", "new_str": "a = 2"}}</tool_call>
<tool_call>{"name": "submit", "arguments": {}}</tool_call>
or a single fenced bash block, whose output you will see in the next message:
```bash
grep -n "def parse" -r src
```
A bash block that holds only `submit` submits the current state of the repository."""

_TOOL_CALL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCE = re.compile(r"```([A-Za-z_]*)[ \t]*\n(.*?)\n?```", re.DOTALL)


def _call(name: str, arguments: Any, call_id: str) -> ToolCall:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(id=call_id, function=ToolCallFunction(name=str(name), arguments=args))


def _json_call(text: str, call_id: str) -> ToolCall:
    """A `{"name": ..., "arguments": {...}}` object as a tool call; ValueError says what is wrong."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the tool call is not valid JSON ({exc}): {text[:200]!r}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError(f'a tool call must be a JSON object {{"name": ..., "arguments": {{...}}}}; got {text[:200]!r}')
    return _call(obj["name"], obj.get("arguments", {}), call_id)


def parse_text_actions(content: str, turn: int) -> list[ToolCall]:
    """The actions written in a reply's content (empty: none); ValueError names a malformed one."""
    ids = (f"{TEXT_CALL_PREFIX}{turn}_{n}" for n in range(1_000))
    tagged = _TOOL_CALL_TAG.findall(content)
    if tagged:
        return [_json_call(block, next(ids)) for block in tagged]
    fences = _FENCE.findall(content)
    calls = [_json_call(body, next(ids)) for lang, body in fences if lang in ("json", "tool_call")]
    if calls:
        return calls
    shell = [body.strip() for lang, body in fences if lang in ("bash", "sh", "shell", "")]
    if len(shell) > 1:
        raise ValueError(f"found {len(shell)} bash blocks; write exactly one action per reply")
    if shell:
        if shell[0] == "submit":
            return [_call("submit", {}, next(ids))]
        return [_call("bash", {"command": shell[0]}, next(ids))]
    return []


def clip_middle(text: str, limit: int) -> str:
    """`text` cut to `limit` characters: its head (two thirds) and tail, with a marker saying how much went.

    Training clips tool outputs with this (`training/context.py`), and the agent clips its observations with it
    when `max_observation_chars` is set, so a model sees at serve time what it was trained on."""
    if len(text) <= limit:
        return text
    marker = f"\n[... {len(text) - limit} characters clipped ...]\n"
    head = max(limit - len(marker), 0) * 2 // 3
    tail = max(limit - len(marker) - head, 0)
    return text[:head] + marker + (text[-tail:] if tail else "")


def to_wire(messages: list[Message], max_observation_chars: int | None = None) -> list[dict[str, Any]]:
    """The conversation as sent to the model: text-parsed calls go back as the text that held them, and tool
    outputs are clipped to `max_observation_chars` (None: whole). The trajectory keeps them whole."""
    text_ids: set[str] = set()
    out = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls and m.tool_calls[0].id.startswith(TEXT_CALL_PREFIX):
            text_ids.update(c.id for c in m.tool_calls)
            out.append({"role": "assistant", "content": m.content or ""})
            continue
        wire = m.model_dump(mode="json", exclude_none=True)
        if m.role == "tool":
            if max_observation_chars and isinstance(wire.get("content"), str):
                wire["content"] = clip_middle(wire["content"], max_observation_chars)
            if m.tool_call_id in text_ids:
                wire = {"role": "user", "content": wire.get("content") or ""}
        out.append(wire)
    return out


class ModelPolicy:
    """`ModelPolicy(client, ModelPolicyConfig(...))`: one instance per episode; clients are shared."""

    def __init__(self, client: ModelClient, config: ModelPolicyConfig | None = None):
        self.client = client
        self.config = config or ModelPolicyConfig()
        params = {"version": POLICY_VERSION, "actions": self.config.actions, **self.config.sampling()}
        if self.config.max_observation_chars:
            params["max_observation_chars"] = self.config.max_observation_chars
        self.info = PolicyInfo(name="model", model=client.model, params=params)
        self.usage = Usage()
        self.limits = self.config.limits
        self.tools: list[dict[str, Any]] = []
        self._turn = 0
        self._model_errors = 0

    def system_prompt(self, default: str) -> str:
        """The environment's prompt; the text format is documented when it is accepted."""
        if self.config.actions == "tool_calls":
            return default
        return default + TEXT_ACTIONS_PROMPT

    def reset(self, task: Task, start: Start) -> None:
        self.tools = start.tools
        self.usage = Usage()
        self._turn = 0
        self._model_errors = 0

    def _names(self) -> str:
        return ", ".join(sorted(t["function"]["name"] for t in self.tools))

    async def act(self, messages: list[Message], observation: Any = None) -> Action:
        self._turn += 1
        cfg = self.config
        tools = self.tools if cfg.actions != "text" else None
        extra = {"tool_choice": "auto"} if tools else {}
        try:
            result = await self.client.chat(to_wire(messages, cfg.max_observation_chars), tools=tools, **extra,
                                            **cfg.sampling())
        except ModelError as exc:
            if exc.infrastructure:
                raise PolicyError("infra_error", f"the model server failed: {exc}", stop=INFRA_FAILED,
                                  infra=True) from None
            self._model_errors += 1
            stop = "context_limit" if exc.context_overflow else (
                "model_error" if self._model_errors >= cfg.max_model_errors else None)
            raise PolicyError("model_error", f"Error: the model request failed: {exc}", stop=stop) from None
        self._model_errors = 0
        self.usage.add_call(result.prompt_tokens, result.completion_tokens, self.client.request_cost(result))
        reply = result.message
        if reply.tool_calls:
            return Action(reply, reply.tool_calls)
        content = reply.content or ""
        if not content.strip():
            raise PolicyError("empty_response", "Error: your reply was empty. Call one of the tools "
                              f"({self._names()}).", message=reply)
        if cfg.actions == "tool_calls":
            raise PolicyError("no_tool_call", "Error: your reply called no tool. Call one of the tools "
                              f"({self._names()}); call submit when the fix is complete.",
                              message=reply)
        try:
            calls = parse_text_actions(content, self._turn)
        except ValueError as exc:
            raise PolicyError("bad_action", f"Error: {exc}.", message=reply) from None
        if not calls:
            raise PolicyError("no_action", "Error: your reply held no action. Write exactly one "
                              "<tool_call>{...}</tool_call> or one ```bash block.", message=reply)
        message = Message(role="assistant", content=content, tool_calls=calls)
        return Action(message, calls)
