"""A web trajectory as the served web agent sees it: TRL prompt-completion rows, one per assistant step.

    rows = trl_web_step_rows(trajectories, accounts, WebAgentConfig(max_observation_chars=300), verdicts, web)
    rows[0]["prompt"]       # exactly what `WebModelPolicy.wire` sends at that step (text mode, no image)
    rows[0]["completion"]   # the assistant turn the trajectory recorded there

A web trajectory records every page whole in its turn (`executors/web_env.py`), while the web agent
(`agents/web_model.py`) sends, at each step, the system prompt, the goal with the site's test accounts, the last
`history_turns` earlier turns with their pages shortened to URL and error, and the current page clipped to
`max_observation_chars`. These rows are rendered by the agent's own `agent_view`, from the recorded turns read back
into the agent's history: a page turn (`observation_text`'s `URL: ...` / `Accessibility tree:` form) is the
observation of the next step and what came of the last action; any other user turn after an action is that action's
error, as the agent recorded it (a failed model request, which leaves no assistant turn, stands as
`(request failed)`). The accounts are the site's (`SiteAdapter.accounts(seed)`), passed in by task id.

A page is exactly as served when the agent's `max_observation_chars` is at most the one the trajectory was recorded
with (8,000 for tutorial replays, the agent's own for model rollouts): the recorded tree is the served tree's prefix.
The tool schemas are the trajectory's (none for text actions). TRL puts the loss of a prompt-completion row on the
completion only, so each step trains once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from trajfactory.agents.web_model import agent_view, goal_text, outcome_text, system_prompt
from trajfactory.datasets.formats import _messages, _selected, _tools
from trajfactory.executors.browser import Observation
from trajfactory.executors.browser_actions import action_space
from trajfactory.executors.web_env import SYSTEM_PROMPT
from trajfactory.settings import WebAgentConfig

VIEW = "agent"
"""The `view` of these rows in `train sft`'s metrics (whole trajectories: `whole`)."""
_PAGE = re.compile(r"URL: (?P<url>[^\n]*)\n(?:Last action error: (?P<error>.*?)\n)?Accessibility tree:\n(?P<tree>.*)",
                   re.DOTALL)


def page_observation(text: str) -> Observation | None:
    """The page a recorded user turn shows (`web_env.observation_text` read back), or None for another turn."""
    m = _PAGE.fullmatch(text or "")
    if m is None:
        return None
    return Observation(url=m["url"], title="", axtree=m["tree"], last_action_error=m["error"])


def step_views(messages: list[dict], accounts: dict[str, str] | None, config: WebAgentConfig
               ) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """(what the agent is sent, the recorded assistant turn) for each assistant turn of one web trajectory."""
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        return []
    system = system_prompt(config, SYSTEM_PROMPT.format(actions=action_space()))
    goal = goal_text(users[0].get("content") or "", accounts)
    history: list[list[str | None]] = []
    page: Observation | None = None
    out = []
    for m in messages[messages.index(users[0]) + 1:]:
        if m["role"] == "assistant":
            if page is None:
                raise ValueError("a web trajectory's assistant turn comes before any page; not a browser episode")
            out.append((agent_view(system, goal, history, page, config), m))
            history.append([m.get("content") or "(empty)", None])
        elif m["role"] == "user":
            seen = page_observation(m.get("content") or "")
            if seen is not None:
                page = seen
                if history and history[-1][1] is None:
                    history[-1][1] = outcome_text(seen)
            elif history and history[-1][1] is None:
                history[-1][1] = m.get("content") or ""
            elif page is not None:
                history.append(["(request failed)", m.get("content") or ""])
    return out


def trl_web_step_rows(trajectory_rows: Iterable[dict], accounts: dict[str, dict[str, str]], config: WebAgentConfig,
                      verdict_rows: Iterable[dict] = (), web_verification_rows: Iterable[dict] = (),
                      review_rows: Iterable[dict] = (), *, only_verified: bool = True,
                      accepted_only: bool = False) -> list[dict[str, Any]]:
    """TRL conversational prompt-completion rows, one per assistant step of each (verified) web trajectory:
    `prompt`, `completion`, `tools` (JSON), where it came from and `step` (module docstring). `accounts`: task id ->
    the site's test accounts."""
    rows = []
    for t, ok in _selected(trajectory_rows, verdict_rows, web_verification_rows, review_rows, accepted_only):
        if only_verified and not ok:
            continue
        views = step_views(_messages(t["messages"]), accounts.get(t["task_id"]), config)
        for step, (prompt, turn) in enumerate(views):
            rows.append({"prompt": prompt, "completion": [turn], "tools": _tools(t["tools"]),
                         "trajectory_id": t["trajectory_id"], "task_id": t["task_id"],
                         "policy": t["policy"]["name"], "split": t.get("split") or "train", "step": step})
    return rows
