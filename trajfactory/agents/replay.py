"""The model-free tutorial-guided replay policy (AgentTrek's replay, without the VLM).

Each tutorial step becomes one or more intents (`agents.step_parser`); each intent is grounded against
the current accessibility tree (`agents.grounding`) by fuzzy-matching the step's UI label to
`[bid] role 'name'` lines, with role hints from the verb. A step that cannot be grounded after
`max_tries` looks ends the episode with `report_infeasible(...)` naming the step (or is skipped, for
the deliberately naive `report_infeasible=False` baseline).

`next_action(axtree, last_action_error)` is the rule itself; `act` hands its action to the web environment.
"""

from __future__ import annotations

import ast
import re

from trajfactory.agents.grounding import (CLICK_ROLES, TEXT_ROLES, UI_SYNONYMS, Element, Intent, first_item, ground,
                                          home_link, match_score, norm, parse_axtree, signed_in_as, variants)
from trajfactory.agents.step_parser import PLACEHOLDER_TEXT, parse_step
from trajfactory.executors.browser import Observation
from trajfactory.executors.browser_actions import action_call
from trajfactory.executors.protocol import Action, Start
from trajfactory.schema import Message, Policy as PolicyInfo, Usage, WebTask
from trajfactory.settings.sites import site_facts

__all__ = ["CLICK_ROLES", "NAME", "PLACEHOLDER_TEXT", "TEXT_ROLES", "UI_SYNONYMS", "Element", "Intent", "ReplayPolicy",
           "first_item", "ground", "match_score", "norm", "parse_axtree", "parse_step", "variants"]

NAME = "tutorial-replay"


class ReplayPolicy:
    """Ground each tutorial step in the accessibility tree and emit BrowserGym action strings.

    `next_action(axtree, last_action_error)` returns the next action string, or None once the task is done.
    """

    def __init__(self, report_infeasible: bool = True, max_tries: int = 2, threshold: float = 0.7):
        self.report_infeasible, self.max_tries, self.threshold = report_infeasible, max_tries, threshold
        self.info = PolicyInfo(name=NAME if report_infeasible else f"{NAME}-no-infeasible",
                               params={"max_tries": max_tries, "threshold": threshold})
        self.usage = Usage()
        self.limits = None
        self.task: WebTask | None = None

    def system_prompt(self, default: str) -> str:
        return default

    async def act(self, messages: list[Message], observation: Observation) -> Action | None:
        text = self.next_action(observation.axtree, observation.last_action_error)
        if text is None:
            return None
        return Action(Message(role="assistant", content=text), [action_call(text)])

    def reset(self, task: WebTask, start: Start | None = None, accounts: dict[str, str] | None = None) -> None:
        if start is not None:
            accounts = start.info.get("accounts", accounts)
        self.task, self.accounts = task, dict(accounts or {})
        facts = site_facts(task.environment.app)
        self.synonyms: list[list[str]] = list(facts.synonyms) if facts else []
        """The site's own wordings of its controls (`SiteFacts.synonyms`), beside the generic ones."""
        self.queue: list[Intent] = [i for n, s in enumerate(task.spec.steps) for i in parse_step(s, n, self.accounts)]
        for intent, nxt in zip(self.queue, self.queue[1:]):  # "Enter your Username and Password." + "Click Log in"
            if intent.kind == "login" and nxt.kind == "click" and any(
                    norm(label) in variants("log in", self.synonyms) for label in [nxt.label, *nxt.alts] if label):
                intent.login_submit = False
        self.retry: tuple[Intent, list[Intent]] | None = None
        """The last fill of an example value with other examples left, and the intents done since."""
        self.pending: Intent | None = None
        self.tries = 0
        self.failing: Intent | None = None
        self.last_bid = ""
        self.finished = False
        self.axtree = ""
        self.auto_login = False
        self.skipped: list[str] = []
        """Steps the naive baseline could not ground and skipped."""

    def _fail(self, intent: Intent, why: str) -> str | None:
        if intent is not self.failing:  # tries count per intent (a grounded element may still lack the option)
            self.failing, self.tries = intent, 0
        self.tries += 1
        if self.tries < self.max_tries:
            self.queue.insert(0, intent)
            return "noop(300)"  # let the page settle, then look again
        self.tries = 0
        if self.retry and self.retry[0].options:  # "such as 'lamp' or 'Garden'": try the next example value
            fill, done = self.retry
            self.retry = None
            again = Intent("fill", fill.label, fill.options[0], fill.roles, fill.step, options=fill.options[1:])
            self.queue[:0] = [again, *done, intent]
            return "noop(100)"
        step = self.task.spec.steps[intent.step]
        if self.report_infeasible:
            self.finished = True
            return f"report_infeasible({f'Step {intent.step + 1} ({step!r}) cannot be done: {why}'!r})"
        self.skipped.append(step)
        return None

    def next_action(self, axtree: str, last_action_error: str | None = None) -> str | None:
        if self.finished:
            return None
        if last_action_error and self.pending is not None:  # the grounded action failed: try that intent again
            action = self._fail(self.pending, f"the action failed: {last_action_error}")
            self.pending = None
            if action:
                return action
        elements = parse_axtree(axtree)
        self.axtree = axtree
        while self.queue:
            intent = self.queue.pop(0)
            action = self._ground(intent, elements)
            if action is None:
                continue
            if self.retry and intent is not self.retry[0] and not action.startswith("noop"):
                self.retry[1].append(intent)
            return action
        self.finished = True
        return f"send_msg_to_user({'Done: ' + self.task.spec.task_description!r})"

    def _ground(self, intent: Intent, elements: list[Element]) -> str | None:
        self.pending = intent
        if intent.kind == "login":
            user, password = sorted(self.accounts.items())[0] if self.accounts else ("", "")
            if ground(elements, "Username", ["textbox"], self.threshold, self.synonyms):
                button = [Intent("click", "Sign in", roles=["button"], step=intent.step)] if intent.login_submit else []
                self.queue[:0] = [Intent("fill", "Username", user, ["textbox"], intent.step),
                                  Intent("fill", "Password", password, ["textbox"], intent.step), *button]
            else:  # not on the login form yet: follow the sign-in link first, the page's own ("Log in to reply",
                # which comes back here) before the header's
                links = [e for e in elements if e.role == "link" and match_score("Sign in", e.name, self.synonyms) >= 0.9]
                if len(links) > 1:
                    self.queue.insert(0, intent)
                    return f"click({max(links, key=lambda e: e.depth).bid!r})"
                self.queue[:0] = [Intent("click", "Sign in", roles=["link", "button"], step=intent.step), intent]
            return self._ground(self.queue.pop(0), elements)
        if intent.kind == "press":
            if not self.last_bid:
                return self._fail(intent, "no field to press a key in")
            return f"press({self.last_bid!r}, {intent.value!r})"
        if intent.kind == "home":  # "Open the shop home page": the site's own home link in the header
            home = home_link(elements)
            return f"click({home.bid!r})" if home else self._fail(intent, "no home link on the page")
        if intent.first_item and intent.mine and self._needs_login(elements):  # "your post": sign in first
            return self._login_first(intent, elements)
        el = None
        for n, label in enumerate(l for l in [intent.label, *intent.alts] if l):
            el = ground(elements, label, intent.roles, self.threshold if n == 0 else max(self.threshold, 0.85), self.synonyms)
            if el is not None:
                break
        if el is None and intent.kind == "click" and intent.first_item:
            avoid = "" if intent.value and match_score("Categories", intent.value, self.synonyms) >= 0.85 else "Categories"
            bid = first_item(self.axtree, intent.value, signed_in_as(self.axtree) if intent.mine else "", avoid,
                             self.synonyms)
            if bid:
                return f"click({bid!r})"
        if el is None and self._needs_login(elements, on_form_only=intent.first_item):
            # not signed in, and the step's control is not there: sign in first (the site asks for it), then retry
            return self._login_first(intent, elements)
        if el is None:
            return self._fail(intent, f"no {'/'.join(intent.roles[:2])} labelled {intent.label!r} on the page")
        if intent.kind == "click":
            return f"click({el.bid!r})"
        if intent.kind == "fill" and not el.options:
            self.last_bid = el.bid
            if intent.options:
                self.retry = (intent, [])
            return f"fill({el.bid!r}, {intent.value!r})"
        current = (re.search(r"value=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")", el.props) or [None, "''"])[1]
        current = ast.literal_eval(current)
        wanted = [v for v in [intent.value, *intent.alts] if v]
        if not wanted:  # no value named: the first real option other than the current one
            choice = next((o for o in el.options if norm(o) != norm(current) and not re.match(r"^(?:any|none|-+|select\b|choose\b)", o, re.I)), "")
            return f"select_option({el.bid!r}, {choice!r})" if choice else self._fail(intent, f"{el.name!r} has no option")
        scored = [(match_score(v, o, self.synonyms), norm(o) != norm(current), o) for v in wanted for o in el.options]
        good = [x for x in scored if x[0] >= self.threshold]
        if el.options and not good and intent.any_option:  # only examples were named: any real option will do
            choice = next((o for o in el.options if not re.match(r"^(?:any|none|-+|select\b|choose\b)", o, re.I)), "")
            good = [(1.0, True, choice)] if choice else []
            if choice:
                return f"select_option({el.bid!r}, {choice!r})"
        if el.options and not good:
            return self._fail(intent, f"{el.name!r} has no option {intent.value!r} (options: {', '.join(el.options)})")
        if intent.value and good and max(good)[0] >= self.threshold and any(g[0] >= self.threshold and norm(v) == norm(intent.value)
                                                                              for g, v in zip(scored, [v for v in wanted for _ in el.options])):
            option = max(el.options, key=lambda o: match_score(intent.value, o, self.synonyms))
        else:  # listed candidates ("Open, In progress, Resolved or Closed"): prefer one that changes the value
            option = max(good, key=lambda x: (x[1], x[0]))[2] if good else intent.value
        return f"select_option({el.bid!r}, {option!r})"

    def _needs_login(self, elements: list[Element], on_form_only: bool = False) -> bool:
        """Not signed in (a login form, or a sign-in link) and not yet tried; `on_form_only`: only a login wall
        counts (an empty list of items does not fill up by signing in)."""
        return bool(self.accounts) and not self.auto_login and bool(
            ground(elements, "Username", ["textbox"], 0.9, self.synonyms)
            or (not on_form_only and ground(elements, "Log in", ["link"], 0.9, self.synonyms)))

    def _login_first(self, intent: Intent, elements: list[Element]) -> str | None:
        self.auto_login = True
        self.queue[:0] = [Intent("login", step=intent.step), intent]
        return self._ground(self.queue.pop(0), elements)
