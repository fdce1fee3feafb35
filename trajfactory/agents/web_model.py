"""The model web agent: a served model (`ModelClient`) acts in the browser with BrowserGym action strings.

Each turn sends the goal (with the site's accounts), the earlier turns (their pages shortened to URL and
error) and the current observation: URL, last action error, the accessibility tree clipped to
`max_observation_chars` and, when images are on, the screenshot as an `image_url` data-URI part. The
reply holds one action, either as a native tool call (one tool per action, `actions: tool_calls|both`)
or written in the text (`actions: text|both`): the first action call inside a ``` fence, else the last
line holding one. Both are checked by `browser_actions.parse_action`.

A turn without an executable action (empty reply, no action, an action that does not parse, a failed
request) raises `PolicyError`; the episode loop records it as an error step (it counts against the step
limit) and the model sees the error next turn. `images: auto` sends screenshots until the server
answers HTTP 400 that the model takes no images; the turn is then asked again without it, images stay
off for the episode, and `info.params` records it (`images_dropped`, `image_requests`, `text_requests`).
Make one policy per episode. What a request holds is the pure `agent_view`, which `datasets/web_steps.py` also
renders training rows with, so a model is trained on the requests it is served.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from trajfactory.executors.browser import Observation
from trajfactory.executors.browser_actions import (ACTION_TOOLS, ACTIONS, ActionError, action_call, action_from_call,
                                                   action_space, parse_action)
from trajfactory.executors.protocol import INFRA_FAILED, Action, PolicyError, Start
from trajfactory.executors.web_env import observation_text
from trajfactory.models.client import ChatResult, ModelClient, ModelError, image_data_uri
from trajfactory.schema import Message, Policy as PolicyInfo, Usage, WebTask
from trajfactory.settings import WebAgentConfig

__all__ = ["ACTION_TOOLS", "WebModelPolicy", "action_from_call", "action_from_text", "agent_view", "goal_text",
           "outcome_text", "system_prompt"]

POLICY_NAME = "model"
POLICY_VERSION = "1"
TEXT_PROMPT = ("\nThink briefly if you need to, then write exactly one action as a call, for example:\n"
               "```\nclick('12')\n```")
_CALL = re.compile(r"\b(" + "|".join(sorted(ACTIONS, key=len, reverse=True)) + r")\s*\(")
_FENCE = re.compile(r"```[A-Za-z_]*[ \t]*\n?(.*?)```", re.DOTALL)

# ---------------------------------------------------------------- actions: tool calls and text


def action_from_text(content: str) -> str | None:
    """The action written in a reply: the first call inside a ``` fence, else the last line holding one.

    None: the reply names no action; ActionError: the call it holds does not parse.
    """
    fenced = [ln for block in _FENCE.findall(content) for ln in block.splitlines() if _CALL.search(ln)]
    lines = fenced[:1] or [ln for ln in content.splitlines() if _CALL.search(ln)][-1:]
    if not lines:
        return None
    text = lines[0][_CALL.search(lines[0]).start():].strip()
    error: ActionError | None = None
    for end in sorted((i + 1 for i, c in enumerate(text) if c == ")"), reverse=True):  # prose may follow the call
        try:
            parse_action(text[:end])
            return text[:end]
        except ActionError as exc:
            error = error or exc
    raise error or ActionError(f"unclosed action call {text[:200]!r}; write one call like click('12')")


# ---------------------------------------------------------------- what the model is sent (training renders it too)


def system_prompt(config: WebAgentConfig, default: str) -> str:
    """A custom prompt (with the action grammar for `{actions}`), else the environment's plus the text format."""
    if config.system_prompt:
        return config.system_prompt.replace("{actions}", action_space())
    return default + (TEXT_PROMPT if config.actions != "tool_calls" else "")


def goal_text(instruction: str, accounts: dict[str, str] | None) -> str:
    """The goal turn: the task, and the site's test accounts to sign in with."""
    creds = "; ".join(f"username {u!r} with password {p!r}" for u, p in sorted((accounts or {}).items()))
    return f"Task: {instruction}" + (f"\nYou can sign in as {creds}." if creds else "")


def outcome_text(obs: Observation) -> str:
    """What came of an action, as an earlier turn shows it: the page it led to, shortened to URL and error."""
    err = f"\nLast action error: {obs.last_action_error}" if obs.last_action_error else ""
    return f"URL: {obs.url}{err}"


def agent_view(system: str, goal: str, history: Sequence[Sequence[str | None]], obs: Observation,
               config: WebAgentConfig) -> list[dict[str, Any]]:
    """The text messages of one request: the system prompt, the goal, the last `history_turns` earlier turns (each
    `[what the model wrote, what came of it]`), then the current page clipped to `max_observation_chars`;
    consecutive user turns become one message."""
    n = config.history_turns
    kept = list(history[-n:]) if n else []
    turns: list[tuple[str, str]] = [("user", goal)]
    for said, came in kept:
        turns += [("assistant", str(said)), ("user", str(came))]
    turns.append(("user", "Current page:\n" + observation_text(obs, config.max_observation_chars)))
    merged: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for role, text in turns:
        if merged[-1]["role"] == role:
            merged[-1]["content"] += "\n\n" + text
        else:
            merged.append({"role": role, "content": text})
    return merged


# ---------------------------------------------------------------- the policy


class WebModelPolicy:
    """`WebModelPolicy(endpoint.client(), WebAgentConfig(...))`: one per episode."""

    def __init__(self, client: ModelClient, config: WebAgentConfig | None = None):
        self.client = client
        self.config = config or WebAgentConfig()
        self.limits = self.config.limits
        self.usage = Usage()
        self.reset_info()

    def reset_info(self) -> None:
        cfg = self.config
        params = {"version": POLICY_VERSION, "actions": cfg.actions, "images": cfg.images,
                  "max_observation_chars": cfg.max_observation_chars, "history_turns": cfg.history_turns,
                  **cfg.sampling(), "image_requests": 0, "text_requests": 0}
        self.info = PolicyInfo(name=POLICY_NAME, model=self.client.model, params=params)

    def system_prompt(self, default: str) -> str:
        """A custom prompt (with the action grammar for `{actions}`), else the environment's plus the text format."""
        return system_prompt(self.config, default)

    # -- episode

    def reset(self, task: WebTask, start: Start) -> None:
        self.task = task
        self.usage = Usage()
        self.reset_info()
        self.images = self.config.images != "off"
        self._system = self.system_prompt(start.system_prompt)
        self.requests: list[dict[str, Any]] = []
        """One entry per request: turn, whether it carried an image, HTTP status, error."""
        self._history: list[list[str | None]] = []  # [what the model wrote, what came of it]
        self._turn = self._model_errors = 0
        self._goal = goal_text(task.instruction, start.info.get("accounts"))

    def record(self, said: str, came: str | None = None) -> None:
        """One turn into the history: what the model wrote, and what came of it (None: the next page says)."""
        self._history.append([said, came])

    # -- one turn

    def wire(self, obs: Observation, image: bool) -> list[dict[str, Any]]:
        """The request's messages: goal, earlier turns (pages shortened), the current page (+ screenshot)."""
        if self._history and self._history[-1][1] is None:  # what came of the last action: this page
            self._history[-1][1] = outcome_text(obs)
        merged = agent_view(self._system, self._goal, self._history, obs, self.config)
        if image and obs.screenshot:
            last = merged[-1]
            last["content"] = [{"type": "text", "text": last["content"]},
                               {"type": "image_url", "image_url": {"url": image_data_uri(obs.screenshot)}}]
        return merged

    async def _chat(self, obs: Observation) -> ChatResult:
        cfg = self.config
        tools = ACTION_TOOLS if cfg.actions != "text" else None
        extra = {"tool_choice": "auto"} if tools else {}
        while True:
            image = self.images and obs.screenshot is not None
            entry: dict[str, Any] = {"turn": self._turn, "image": image, "status": None, "error": None}
            self.requests.append(entry)
            self.info.params["image_requests" if image else "text_requests"] += 1
            try:
                result = await self.client.chat(self.wire(obs, image), tools=tools, **extra, **cfg.sampling())
                entry["status"] = 200
                return result
            except ModelError as exc:
                entry["status"], entry["error"] = exc.status, str(exc)[:300]
                if not (image and cfg.images == "auto" and exc.images_refused):
                    raise
                # the model takes no images: ask this turn again in text, and keep images off
                self.images = False
                self.info.params["images_dropped"] = f"turn {self._turn}: {str(exc)[:200]}"

    async def act(self, messages: list[Message], observation: Observation) -> Action:
        self._turn += 1
        try:
            result = await self._chat(observation)
        except ModelError as exc:
            if exc.infrastructure:
                raise PolicyError("infra_error", f"the model server failed: {exc}", stop=INFRA_FAILED,
                                  infra=True) from None
            self._model_errors += 1
            stop = "context_limit" if exc.context_overflow else (
                "model_error" if self._model_errors >= self.config.max_model_errors else None)
            self.record("(request failed)", f"Error: the model request failed: {exc}")
            raise PolicyError("model_error", f"Error: the model request failed: {exc}", stop=stop) from None
        self._model_errors = 0
        self.usage.add_call(result.prompt_tokens, result.completion_tokens, self.client.request_cost(result))
        reply = result.message
        content = reply.content or ""
        try:
            if reply.tool_calls:
                if len(reply.tool_calls) != 1:
                    raise ActionError(f"{len(reply.tool_calls)} actions in one reply; call exactly one")
                call = reply.tool_calls[0].function
                action = action_from_call(call.name, call.arguments)
                said = action
            elif not content.strip():
                return self._error("empty_response", "Error: your reply was empty. Write exactly one action, "
                                   "e.g. click('12').", content)
            elif self.config.actions == "tool_calls":
                return self._error("no_action", "Error: your reply called no tool. Call exactly one action tool.", content)
            else:
                action, said = action_from_text(content), content
                if action is None:
                    return self._error("no_action", "Error: your reply held no action. Write exactly one action "
                                       "call such as click('12') or fill('7', 'text').", content)
        except ActionError as exc:
            written = content or json.dumps([c.model_dump() for c in reply.tool_calls or []])
            return self._error("bad_action", f"Error: {exc}", written)
        self.record(said)
        return Action(Message(role="assistant", content=said), [action_call(action, f"turn_{self._turn}")])

    def _error(self, reason: str, observation: str, written: str) -> Action:
        self.record(written or "(empty)", observation)
        raise PolicyError(reason, observation, message=Message(role="assistant", content=written))
