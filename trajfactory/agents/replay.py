"""The model-free tutorial-guided replay policy (AgentTrek's replay, without the VLM).

Each tutorial step becomes one or more intents (click / fill / select / press / login); each
intent is grounded against the current accessibility tree by fuzzy-matching the step's UI label
to `[bid] role 'name'` lines, with role hints from the verb. A step that cannot be grounded after
`max_tries` looks ends the episode with `report_infeasible(...)` (or is skipped, for the
deliberately naive `report_infeasible=False` baseline).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher

from trajfactory.schema import Policy as PolicyInfo, WebTask

NAME = "tutorial-replay"
LINE_RE = re.compile(r"^(\t*)\[(\w+)\] (\S+) ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")(.*)$")
QUOTED_RE = re.compile(r"\"([^\"]+)\"|\u201c([^\u201d]+)\u201d|\u2018([^\u2019]+)\u2019|(?<![\w])'(.+?)'(?![\w])")
OPENERS = re.compile(r"^(?:first|then|next|now|finally|afterwards|after that|lastly)\s*,?\s*", re.I)
CLICK_ROLES = ["button", "link", "menuitem", "tab", "checkbox", "radio", "option", "switch"]
TEXT_ROLES = ["textbox", "searchbox", "spinbutton", "combobox"]
# common UI wordings of one control: tutorials are written against one version or skin of a site
UI_SYNONYMS = [
    {"sign in", "log in", "login", "signin"}, {"sign out", "log out", "logout"},
    {"cart", "basket", "bag", "shopping bag", "shopping cart"}, {"add to cart", "add to basket", "add to bag"},
    {"checkout", "check out", "proceed to checkout"}, {"place order", "confirm purchase", "buy now", "confirm order"},
    {"my orders", "order history", "orders"}, {"search", "find"},
    {"new thread", "new topic", "start a discussion", "new discussion"}, {"post thread", "publish", "create thread"},
    {"reply", "post reply", "send reply"}, {"edit", "edit post"}, {"save changes", "update post", "save"},
    {"new issue", "create issue", "report a bug"}, {"create", "submit issue", "save issue", "submit"},
    {"update status", "save status", "apply change"}, {"comment", "add comment", "post comment"},
    {"resolved", "done"}, {"closed", "archived"}, {"open", "to do"}, {"in progress", "doing"},
    {"issues", "all issues", "tickets"}, {"message", "body"},
]


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def variants(label: str) -> set[str]:
    n = norm(label)
    out = {n}
    for group in UI_SYNONYMS:
        if n in group:
            out |= group
    return out


def match_score(label: str, name: str) -> float:
    """How well an element's accessible name fits a tutorial's label: 1 exact, ~0.9 synonym, less for partial."""
    n, target = norm(name), norm(label)
    if not n or not target:
        return 0.0
    if n == target:
        return 1.0
    if n in variants(label):
        return 0.92
    if re.search(rf"\b{re.escape(target)}\b", n):  # "Quantity" in "Quantity of Copper Lantern"
        return 0.85 - min(0.15, 0.01 * (len(n) - len(target)))
    return max(SequenceMatcher(None, v, n).ratio() for v in variants(label)) * 0.8


@dataclass
class Element:
    bid: str
    role: str
    name: str
    props: str
    depth: int
    in_modal: bool
    options: list[str] = field(default_factory=list)


def parse_axtree(axtree: str) -> list[Element]:
    """Elements of an observation; inside an open modal dialog only its own elements count."""
    out: list[Element] = []
    modal_depth = None
    for line in axtree.splitlines():
        m = LINE_RE.match(line)
        if not m:
            continue
        depth, bid, role, name, props = len(m.group(1)), m.group(2), m.group(3), ast.literal_eval(m.group(4)), m.group(5)
        if modal_depth is not None and depth <= modal_depth:
            modal_depth = None
        el = Element(bid, role, name, props, depth, modal_depth is not None)
        if role == "dialog" and "modal" in props:
            modal_depth = depth
        if role == "option":  # options belong to the nearest combobox above them
            for prev in reversed(out):
                if prev.role == "combobox" and prev.depth < depth:
                    prev.options.append(name)
                    break
        out.append(el)
    if any(e.in_modal for e in out):
        out = [e for e in out if e.in_modal]
    return out


def ground(elements: list[Element], label: str, roles: list[str], threshold: float = 0.7) -> Element | None:
    """The best element for `label` among `roles` (earlier roles preferred on ties); None below `threshold`."""
    best, best_key = None, (threshold, 0.0)
    for e in elements:
        if e.role not in roles or "disabled" in e.props:
            continue
        s = match_score(label, e.name)
        key = (s, 1 - roles.index(e.role) / 10)
        if s >= threshold and key > best_key:
            best, best_key = e, key
    return best


@dataclass
class Intent:
    kind: str
    """click | fill | select | press | login"""
    label: str = ""
    value: str = ""
    roles: list[str] = field(default_factory=list)
    step: int = 0


def _quoted(text: str) -> list[str]:
    return [next(g for g in m.groups() if g is not None) for m in QUOTED_RE.finditer(text)]


def _phrase(text: str, before: str) -> str:
    """The words right before `before` (button, field, ...), e.g. 'the Checkout button' -> 'Checkout'."""
    m = re.search(rf"\s+(?:{before})\b", text, re.I)
    words = re.search(r".*\b(?:the|your|a|an)\s+([\w' -]{1,40})$", text[:m.start()], re.I) if m else None
    return words.group(1).strip() if words else ""


def parse_step(step: str, index: int, accounts: dict[str, str]) -> list[Intent]:
    """One tutorial step -> intents; clauses joined by 'and'/'then' + a verb become separate intents."""
    clauses = re.split(r",?\s+(?:and(?: then)?|then)\s+(?=(?:click|type|enter|select|choose|open|press|search|go|fill)\b)",
                       OPENERS.sub("", step.strip()), flags=re.I)
    user, password = (sorted(accounts.items())[0] if accounts else ("", ""))
    out: list[Intent] = []
    for c in clauses:
        low, q = c.lower(), _quoted(c)
        verb = low.split()[0] if low.split() else ""
        if verb in ("type", "enter", "fill", "write", "input"):
            value = (user if re.search(r"\byour (user ?name|login|email)\b", low) and not q else
                     password if "your password" in low and not q else q[0] if q else "")
            if re.search(r"\bwith\b", low) and len(q) >= 2:  # "Fill in 'Title' with 'X'"
                label, value = q[0], q[1]
            else:
                label = (q[1] if len(q) >= 2 else _phrase(c, "field|box|input|textbox|area|text area") or
                         ("Username" if value == user and user else "Password" if value == password and password else
                          (re.search(r"\bas (?:the|your) ([\w ]+?)[.]?$", c, re.I) or [None, ""])[1]))
            out.append(Intent("fill", label, value, TEXT_ROLES, index))
        elif verb in ("select", "choose", "pick", "set", "change") and (len(q) >= 2 or re.search(r"dropdown|menu|list|\bas\b|\bto\b", low)):
            if re.search(r"\bto\b", low) and verb in ("set", "change"):  # "Set the 'Status' to 'Done'"
                label, value = (q[0], q[-1]) if len(q) >= 2 else (_phrase(c, "to") or "", q[0] if q else "")
            else:
                value = q[0] if q else ""
                label = q[1] if len(q) >= 2 else (_phrase(c, "dropdown|menu|list|field|select") or
                                                  (re.search(r"\b(?:as|for|from|in) (?:the|your) ([\w ]+?)[.]?$", c, re.I) or [None, ""])[1])
            out.append(Intent("select", label, value, ["combobox", "listbox"], index))
        elif verb == "search":
            out.append(Intent("fill", "search", q[0] if q else re.sub(r"^search (?:for )?", "", c, flags=re.I).rstrip("."),
                              ["searchbox", "textbox"], index))
            out.append(Intent("press", value="Enter", step=index))
        elif verb in ("press", "hit") and re.search(r"\b(enter|return|tab|escape)\b", low) and not q:
            out.append(Intent("press", value=re.search(r"\b(enter|return|tab|escape)\b", low).group(1).title(), step=index))
        elif re.match(r"(sign|log)\s*in\b", low) and not q:  # "Sign in with your account"
            out.append(Intent("login", step=index))
        elif verb in ("click", "tap", "press", "hit", "open", "go", "navigate", "visit", "follow", "select", "choose", "return", "head"):
            hint = re.search(r"\b(button|link|tab|menu|page|product|thread|issue|topic)\b", low)
            roles = (["button", *[r for r in CLICK_ROLES if r != "button"]] if hint and hint.group(1) == "button"
                     else ["link", *[r for r in CLICK_ROLES if r != "link"]] if hint else CLICK_ROLES)
            label = q[0] if q else (_phrase(c, "button|link|tab|menu|page") or
                                    re.sub(r"^\w+\s+(?:on |to )?(?:the |your )?", "", c, flags=re.I).rstrip(". "))
            out.append(Intent("click", label, roles=roles, step=index))
        # anything else (wait, review, scroll to ...) needs no action: the replay moves on
    return out


class ReplayPolicy:
    """Ground each tutorial step in the accessibility tree and emit BrowserGym action strings.

    `act(axtree, last_action_error)` returns the next action, or None once the task is done.
    """

    def __init__(self, report_infeasible: bool = True, max_tries: int = 2, threshold: float = 0.7):
        self.report_infeasible, self.max_tries, self.threshold = report_infeasible, max_tries, threshold
        self.info = PolicyInfo(name=NAME if report_infeasible else f"{NAME}-no-infeasible",
                               params={"max_tries": max_tries, "threshold": threshold})
        self.task: WebTask | None = None

    def reset(self, task: WebTask, accounts: dict[str, str] | None = None) -> None:
        self.task, self.accounts = task, dict(accounts or {})
        self.queue: list[Intent] = [i for n, s in enumerate(task.spec.steps) for i in parse_step(s, n, self.accounts)]
        self.pending: Intent | None = None
        self.tries = 0
        self.last_bid = ""
        self.finished = False
        self.skipped: list[str] = []
        """Steps the naive baseline could not ground and skipped."""

    def _fail(self, intent: Intent, why: str) -> str | None:
        self.tries += 1
        if self.tries < self.max_tries:
            self.queue.insert(0, intent)
            return "noop(300)"  # let the page settle, then look again
        self.tries = 0
        step = self.task.spec.steps[intent.step]
        if self.report_infeasible:
            self.finished = True
            return f"report_infeasible({f'Step {intent.step + 1} ({step!r}) cannot be done: {why}'!r})"
        self.skipped.append(step)
        return None

    def act(self, axtree: str, last_action_error: str | None = None) -> str | None:
        if self.finished:
            return None
        if last_action_error and self.pending is not None:  # the grounded action failed: try that intent again
            action = self._fail(self.pending, f"the action failed: {last_action_error}")
            self.pending = None
            if action:
                return action
        elements = parse_axtree(axtree)
        while self.queue:
            intent = self.queue.pop(0)
            action = self._ground(intent, elements)
            if action is None:
                continue
            return action
        self.finished = True
        return f"send_msg_to_user({'Done: ' + self.task.spec.task_description!r})"

    def _ground(self, intent: Intent, elements: list[Element]) -> str | None:
        self.pending = intent
        if intent.kind == "login":
            user, password = sorted(self.accounts.items())[0] if self.accounts else ("", "")
            if ground(elements, "Username", ["textbox"], self.threshold):
                button = Intent("click", "Sign in", roles=["button"], step=intent.step)
                self.queue[:0] = [Intent("fill", "Username", user, ["textbox"], intent.step),
                                  Intent("fill", "Password", password, ["textbox"], intent.step), button]
            else:  # not on the login form yet: follow the sign-in link first
                self.queue[:0] = [Intent("click", "Sign in", roles=["link", "button"], step=intent.step), intent]
            return self._ground(self.queue.pop(0), elements)
        if intent.kind == "press":
            if not self.last_bid:
                return self._fail(intent, "no field to press a key in")
            self.tries = 0
            return f"press({self.last_bid!r}, {intent.value!r})"
        el = ground(elements, intent.label, intent.roles, self.threshold)
        if el is None:
            return self._fail(intent, f"no {'/'.join(intent.roles[:2])} labelled {intent.label!r} on the page")
        self.tries = 0
        if intent.kind == "click":
            return f"click({el.bid!r})"
        if intent.kind == "fill":
            self.last_bid = el.bid
            return f"fill({el.bid!r}, {intent.value!r})"
        option = max(el.options, key=lambda o: match_score(intent.value, o), default=intent.value)
        if el.options and match_score(intent.value, option) < self.threshold:
            return self._fail(intent, f"{el.name!r} has no option {intent.value!r} (options: {', '.join(el.options)})")
        return f"select_option({el.bid!r}, {option!r})"
