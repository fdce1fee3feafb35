"""BrowserGym-style action strings (`click('12')`, `fill('12', 'text')`, ...): the grammar the browser
sandbox executes and web agents emit. Parsing is literal-only (`ast`), never `eval`."""

from __future__ import annotations

import ast
import inspect
import json
import re
from typing import Any, Callable

from trajfactory.schema import ToolCall, ToolCallFunction
from trajfactory.runtime import parse_python

# Signatures only: parse_action binds arguments against them; BrowserEpisode._execute runs them.


class ActionError(ValueError):
    """An action string that cannot run: shown to the agent as `last_action_error`."""


def click(bid: str, button: str = "left"):
    """Click the element with id `bid`; button is left, middle or right."""
def dblclick(bid: str):
    """Double-click the element with id `bid`."""
def hover(bid: str):
    """Move the mouse over the element with id `bid`."""
def fill(bid: str, value: str):
    """Replace the text of the input or textarea `bid` with `value`."""
def clear(bid: str):
    """Empty the input or textarea `bid`."""
def select_option(bid: str, options: str | list):
    """Select the option(s) of the <select> `bid`, by value or visible label."""
def press(bid: str, key_comb: str):
    """Focus `bid` and press a key or combination, e.g. 'Enter', 'Control+a'."""
def scroll(delta_x: float, delta_y: float):
    """Scroll the page by this many pixels (positive delta_y scrolls down)."""
def goto(url: str):
    """Open `url` (local sites only)."""
def go_back():
    """Go back one page in history."""
def go_forward():
    """Go forward one page in history."""
def noop(wait_ms: float = 1000):
    """Do nothing for `wait_ms` milliseconds (let the page update)."""
def send_msg_to_user(text: str):
    """Send a message to the user: the answer, or a report that the task is done."""
def report_infeasible(reason: str):
    """Declare the task impossible on this site, with the reason; ends the episode."""


ACTIONS: dict[str, Callable] = {f.__name__: f for f in (
    click, dblclick, hover, fill, clear, select_option, press, scroll, goto, go_back, go_forward, noop,
    send_msg_to_user, report_infeasible)}
BID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def action_space() -> str:
    """The action grammar as prompt text: one signature and description per line."""
    def params(f: Callable) -> str:
        return ", ".join(p.name + ("" if p.default is p.empty else f"={p.default!r}")
                         for p in inspect.signature(f).parameters.values())

    return "\n".join(f"{name}({params(f)}): {inspect.getdoc(f)}" for name, f in ACTIONS.items())


def parse_action(text: str) -> tuple[str, dict[str, Any]]:
    """`"fill('12', 'blue mug')"` -> ("fill", {"bid": "12", "value": "blue mug"}); literals only, nothing is evaluated."""
    text = text.strip()
    try:
        call = parse_python(text, mode="eval").body
    except SyntaxError as exc:
        raise ActionError(f"cannot parse action {text[:200]!r}: {exc.msg}; write one call like click('12')") from None
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ActionError(f"not an action call: {text[:200]!r}; write one call like click('12')")
    name = call.func.id
    if name not in ACTIONS:
        raise ActionError(f"unknown action {name!r}; known actions: {', '.join(ACTIONS)}")
    try:
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
    except ValueError:
        raise ActionError(f"arguments of {name} must be literals (strings or numbers): {text[:200]!r}") from None
    try:
        bound = inspect.signature(ACTIONS[name]).bind(*args, **kwargs)
    except TypeError as exc:
        raise ActionError(f"{name}{inspect.signature(ACTIONS[name])}: {exc}") from None
    bound.apply_defaults()
    out = dict(bound.arguments)
    for key, value in out.items():
        if key == "bid":
            value = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
            if value is None or not BID_RE.match(value):
                raise ActionError(f"{name}: element id must be a string like '12', got {out[key]!r}")
        elif key == "options":
            if not (isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ActionError(f"{name}: options must be a string or a list of strings, got {value!r}")
        elif key in ("delta_x", "delta_y", "wait_ms"):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ActionError(f"{name}: {key} must be a number, got {value!r}")
            value = min(max(value, 0), 10_000) if key == "wait_ms" else value  # a noop never stalls an episode
        elif key == "button" and value not in ("left", "middle", "right"):
            raise ActionError(f"{name}: button must be 'left', 'middle' or 'right', got {value!r}")
        elif not isinstance(value, str):
            raise ActionError(f"{name}: {key} must be a string, got {value!r}")
        out[key] = value
    return name, out


# ---------------------------------------------------------------- actions as tool calls

_TYPES = {"str": {"type": "string"}, "float": {"type": "number"},
          "str | list": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}}


def _tool(name: str) -> dict[str, Any]:
    params = inspect.signature(ACTIONS[name]).parameters.values()
    props = {p.name: dict(_TYPES[str(p.annotation)]) for p in params}
    required = [p.name for p in params if p.default is p.empty]
    return {"type": "function", "function": {"name": name, "description": inspect.getdoc(ACTIONS[name]),
                                             "parameters": {"type": "object", "properties": props, "required": required}}}


ACTION_TOOLS = [_tool(name) for name in ACTIONS]
"""One OpenAI tool per browser action, from the signatures of `browser_actions`."""


def action_from_call(name: str, arguments: str | dict | None) -> str:
    """A native tool call as an action string (`click('12')`); ActionError says what is wrong."""
    if name not in ACTIONS:
        raise ActionError(f"unknown action {name!r}; known actions: {', '.join(ACTIONS)}")
    try:
        args = json.loads(arguments or "{}") if isinstance(arguments, (str, type(None))) else arguments
    except ValueError as exc:
        raise ActionError(f"the arguments of {name} are not JSON ({exc}): {str(arguments)[:200]!r}") from None
    if not isinstance(args, dict):
        raise ActionError(f"the arguments of {name} must be a JSON object, got {str(arguments)[:200]!r}")
    try:
        bound = inspect.signature(ACTIONS[name]).bind(**args)
    except TypeError as exc:
        raise ActionError(f"{name}{inspect.signature(ACTIONS[name])}: {exc}") from None
    text = f"{name}({', '.join(repr(v) for v in bound.args)})"
    parse_action(text)  # the types of the values
    return text


def action_call(text: str, call_id: str = "action") -> ToolCall:
    """An action string as the tool call the web environment executes (its arguments as parsed, defaults
    included); ActionError says what is wrong with it."""
    name, args = parse_action(text)
    return ToolCall(id=call_id, function=ToolCallFunction(name=name, arguments=json.dumps(args)))
