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
    alts: list[str] = field(default_factory=list)
    """Other labels to try when `label` is not on the page ("Log in (or Sign in)", nouns of the phrase)."""
    first_item: bool = False
    """"Open an issue / click a product name": the first item link of the page's main list."""



ARTICLES = re.compile(r"^(?:the|a|an|your|its|their|this|that|any|one|some)\s+", re.I)
ROLE_WORDS = re.compile(r"\s+(?:button|link|tab|menu|page|field|box|input|textbox|drop-?down|list|option|icon)s?$", re.I)
# where a control is, not what it is called: "in the header", "at the top right of any page", "below the form"
LABEL_CUT = re.compile(r"\s*(?:\(|,|;|:|\s[\u2014\u2013]\s|\s-\s|\bwhich\b|\bby clicking\b|\bto (?:open|see|get|go|view)\b|"
                       r"\b(?:in|on|at|from|under|below|above|near|next to|inside|within|of)\s+(?:the|your|a|any|this|each)\b|"
                       r"\b(?:in|on|at)\s+(?:top|bottom)\b|\bfor example\b|\bsuch as\b)", re.I)
ALT_PREFIX = re.compile(r"^(?:or|also|aka|sometimes|it may (?:read|say|be (?:labell?ed|called))|on some \w+:?|e\.\s?g\.?)\s*", re.I)
EXAMPLE_RE = re.compile(r"\b(?:for example|for instance|such as|e\.\s?g\.|like)\s*,?\s+(?:\"([^\"]+)\"|'([^']+)'|([A-Z][\w-]*(?: [A-Z][\w-]*)*))")
ITEM_NOUNS = {"product", "products", "thread", "threads", "issue", "issues", "order", "orders", "item", "items", "topic",
              "post", "result", "category", "title", "name", "number", "row", "entry", "article", "ticket"}
PLACEHOLDER_TEXT = "Thanks, this is a test message from the tutorial."


def _alternatives(text: str) -> list[str]:
    """Labels named in parentheses: "(or Sign in)", "(it may read Delete)", "(or Publish / Create thread)"."""
    out = []
    for inner in re.findall(r"\(([^()]*)\)", text):
        inner = ALT_PREFIX.sub("", inner.strip())
        if not inner or re.search(r"\d", inner):
            continue
        for part in re.split(r"\s*/\s*|\s+or\s+|\s*,\s*", inner):
            part = ALT_PREFIX.sub("", part.strip(" .\"'"))
            if part and len(part.split()) <= 4:
                out.append(part)
    return out


def _examples(text: str) -> list[str]:
    return [next(g for g in m.groups() if g) for m in EXAMPLE_RE.finditer(text)]


def _label_phrase(rest: str) -> str:
    """'the Remove button (it may read Delete) at the end of the row' -> 'Remove'."""
    phrase = LABEL_CUT.split(rest, 1)[0].strip(" .\"'")
    phrase = ARTICLES.sub("", phrase)
    return ROLE_WORDS.sub("", phrase).strip()


def _is_generic(phrase: str) -> bool:
    """'a product', 'the thread you want to answer', 'an order number': no UI label, an item of a list."""
    words = phrase.split()
    return bool(words) and not any(w[:1].isupper() for w in words) and bool(ITEM_NOUNS & {w.lower() for w in words})


def _capitalized(text: str) -> str:
    """The first run of capitalized words after the verb: 'Type a Title of at least ...' -> 'Title'."""
    m = re.search(r"(?<=\s)([A-Z][\w-]*(?:\s+[A-Z][\w-]*)*)", re.sub(QUOTED_RE, " ", text))
    return m.group(1) if m else ""


def _value_for(clause: str, label: str) -> str:
    ex = _examples(clause)
    if ex:
        return ex[0]
    if re.search(r"\b(number|quantity|how many|amount)\b", clause + " " + label, re.I):
        return "2"
    return PLACEHOLDER_TEXT


def _quoted(text: str) -> list[str]:
    return [next(g for g in m.groups() if g is not None) for m in QUOTED_RE.finditer(text)]


def _phrase(text: str, before: str) -> str:
    """The words right before `before` (button, field, ...), e.g. 'the Checkout button' -> 'Checkout'."""
    m = re.search(rf"\s+(?:{before})\b", text, re.I)
    words = re.search(r".*\b(?:the|your|a|an)\s+([\w' -]{1,40})$", text[:m.start()], re.I) if m else None
    return words.group(1).strip() if words else ""


LEAD_PLACE = re.compile(r"^(?:on|in|under|below|above|from|at|inside|within|next to|beside)\b[^,.;]{0,80},\s*", re.I)
STEP_VERBS = r"click|tap|type|enter|select|choose|pick|open|press|search|go|fill|write|hit"
FIELD_ITEM = re.compile(r"^([A-Z][\w ]{0,30}?)\s*(?:[\u2014\u2013:]|\s-)\s+(.+)$")


def _section(c: str) -> str:
    """'Under Featured products (on some stores ... Staff picks), click ...' -> the section the control is in."""
    m = re.match(r"^(?:under|in|from)\s+(?:the\s+)?([A-Z][^,(]{1,40}?)\s*(?:\(|,)", c)
    return m.group(1).strip() if m else ""


def parse_step(step: str, index: int, accounts: dict[str, str]) -> list[Intent]:
    """One tutorial step -> intents; clauses joined by 'and'/'then'/',' + a verb become separate intents."""
    step = re.sub(r"\[(?:screenshot|image)\b[^\]]*\]", "", OPENERS.sub("", step.strip()), flags=re.I).strip()
    if (m := FIELD_ITEM.match(step)) and not _quoted(m.group(1)):  # "Title — at least 5 characters, e.g. 'X'"
        label, how = m.group(1).strip(), m.group(2)
        q = _quoted(how)
        value = q[0] if q else _value_for(how, label)
        return [Intent("fill", label, value, [*TEXT_ROLES, "listbox"], index, alts=_examples(how)[1:])]
    clauses = re.split(rf",?\s+(?:and(?: then)?|then)\s+(?=(?:{STEP_VERBS})\b)|,\s+(?=(?:{STEP_VERBS})\b)", step, flags=re.I)
    user, password = (sorted(accounts.items())[0] if accounts else ("", ""))
    out: list[Intent] = []
    for c in clauses:
        section = _section(c)
        c = LEAD_PLACE.sub("", OPENERS.sub("", c.strip()))
        low, q = c.lower(), _quoted(c)
        verb = low.split()[0] if low.split() else ""
        if verb in ("type", "enter", "fill", "write", "input"):
            if re.search(r"\buser ?name\b", low) and re.search(r"\bpassword\b", low) and not q:
                out.append(Intent("login", step=index))  # "Enter your Username and Password."
                continue
            value = (user if re.search(r"\byour (user ?name|login|email)\b", low) and not q else
                     password if "your password" in low and not q else q[0] if q else "")
            if re.search(r"\bwith\b", low) and len(q) >= 2:  # "Fill in 'Title' with 'X'"
                label, value = q[0], q[1]
            else:
                label = (q[1] if len(q) >= 2 else _phrase(c, "field|box|input|textbox|area|text area") or
                         ("Username" if value == user and user else "Password" if value == password and password else
                          (re.search(r"\b(?:as|in|into) (?:the|your) ([\w ]+?)[.]?$", c, re.I) or [None, ""])[1]) or
                         _capitalized(c))
            if not label:  # "Fill in the form:" — the fields follow as their own steps
                continue
            out.append(Intent("fill", label, value or _value_for(c, label), TEXT_ROLES, index))
        elif verb in ("select", "choose", "pick", "set", "change") and (
                len(q) >= 2 or re.search(r"dropdown|drop-down|menu|list|\bas\b|\bto\b|\(|\u2014|\u2013", low)
                or _capitalized(c)):
            options: list[str] = []
            if re.search(r"\bto\b", low) and verb in ("set", "change"):  # "Set the 'Status' to 'Done'"
                label, value = (q[0], q[-1]) if len(q) >= 2 else (_phrase(c, "to") or "", q[0] if q else "")
            else:
                value = q[0] if q else ""
                label = q[1] if len(q) >= 2 else (_phrase(c, "dropdown|drop-down|menu|list|field|select") or
                                                  (re.search(r"\b(?:as|for|from|in) (?:the|your) ([\w ]+?)[.]?$", c, re.I) or [None, ""])[1])
                listed = re.search(r"(?:\(|[\u2014\u2013]\s*)([^()\u2014\u2013]+?)(?:\)|\s*[\u2014\u2013]|$)", c)
                if listed:  # "Choose a Priority (Low, Medium, High or Critical)"
                    options = [o.strip(" .") for o in re.split(r",|\bor\b", listed.group(1)) if o.strip(" .")]
                if not label:
                    head = re.split(r"\s*[(\u2014\u2013,]", c, 1)[0]
                    label = _capitalized(head) or _label_phrase(re.sub(r"^\w+\s+", "", head))
                    label = re.sub(r"^(?:new|a|the)\s+", "", label, flags=re.I)
                if not value:
                    value = next(iter(_examples(c)), "")
            out.append(Intent("select", label, value, ["combobox", "listbox"], index, alts=options))
        elif verb == "search":
            out.append(Intent("fill", "search", q[0] if q else re.sub(r"^search (?:for )?", "", c, flags=re.I).rstrip("."),
                              ["searchbox", "textbox"], index))
            out.append(Intent("press", value="Enter", step=index))
        elif verb in ("press", "hit") and re.search(r"\b(enter|return|tab|escape)\b", low) and not q:
            out.append(Intent("press", value=re.search(r"\b(enter|return|tab|escape)\b", low).group(1).title(), step=index))
        elif re.match(r"(sign|log)\s*in\b", low) and not q and not re.search(r"\bbutton\b|\blink\b|\(or\b", low):
            out.append(Intent("login", step=index))  # "Sign in with your account"
        elif verb in ("click", "tap", "press", "hit", "open", "go", "navigate", "visit", "follow", "select", "choose",
                      "return", "head", "sign", "log", "tick", "untick"):
            hint = re.search(r"\b(button|link|tab|menu|page|product|thread|issue|topic)\b", low)
            roles = (["button", *[r for r in CLICK_ROLES if r != "button"]] if hint and hint.group(1) == "button"
                     else ["link", *[r for r in CLICK_ROLES if r != "link"]] if hint else CLICK_ROLES)
            rest = c if verb in ("sign", "log") else re.sub(r"^\w+\s+(?:on |to |into )?", "", c)
            phrase = _label_phrase(rest)
            alts = [*_alternatives(c), *_examples(c)]
            generic = not q and _is_generic(phrase)
            label = q[0] if q else ("" if generic else phrase)
            if generic:
                label, alts = (alts[0], alts[1:]) if alts else ("", [])
            elif not q and label:  # the phrase's capitalized words, then its single words (exact matches only)
                cap = _capitalized(" " + label)
                alts += [cap] if cap and cap != label else []
                alts += [w for w in reversed(label.split()) if len(w) > 3 and len(label.split()) > 1]
            out.append(Intent("click", label, roles=roles, step=index, alts=alts, first_item=generic,
                              value=section))
        # anything else (wait, review, scroll to ...) needs no action: the replay moves on
    return out


def first_item(axtree: str, section: str = "") -> str | None:
    """The bid of the first item link of the page's content lists/tables (not navigation, header or breadcrumbs),
    skipping items marked unavailable; within the region/heading named `section` when the page has one."""
    rows = []
    for line in axtree.splitlines():
        m = re.match(r"^(\t*)(?:\[(\w+)\] )?(\S+) ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")(.*)$", line)
        if m:
            rows.append((len(m.group(1)), m.group(2), m.group(3), ast.literal_eval(m.group(4)), m.group(5)))
    scope = (0, len(rows))
    if section:
        for i, (d, _, role, name, _) in enumerate(rows):
            if role in ("region", "heading", "group") and match_score(section, name) >= 0.85:
                j = i + 1
                while j < len(rows) and rows[j][0] > d:
                    j += 1
                scope = (i, j if role != "heading" else len(rows))
                break
    candidates = []
    stack: list[tuple[int, str, str]] = []
    for i, (d, bid, role, name, props) in enumerate(rows):
        while stack and stack[-1][0] >= d:
            stack.pop()
        ancestors = [r for _, r, _ in stack] + [n for _, _, n in stack]
        stack.append((d, role, name))
        if not (scope[0] <= i < scope[1]) or role != "link" or not bid or not name:
            continue
        if any(a in ("navigation", "banner", "contentinfo", "Breadcrumb") for a in ancestors):
            continue
        if not any(a in ("listitem", "row", "cell", "gridcell") for a in ancestors):
            continue
        k, text = i + 1, []
        while k < len(rows) and rows[k][0] >= d and rows[k][2] != "link" and k < i + 6:
            text.append(rows[k][3])
            k += 1
        unavailable = bool(re.search(r"out of stock|unavailable|sold out", " ".join(text), re.I))
        candidates.append((unavailable, i, bid))
    return min(candidates)[2] if candidates else None


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
        self.axtree = ""
        self.auto_login = False
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
        self.axtree = axtree
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
        el = None
        for n, label in enumerate(l for l in [intent.label, *intent.alts] if l):
            el = ground(elements, label, intent.roles, self.threshold if n == 0 else max(self.threshold, 0.85))
            if el is not None:
                break
        if el is None and intent.kind == "click" and intent.first_item:
            bid = first_item(self.axtree, intent.value)
            if bid:
                self.tries = 0
                return f"click({bid!r})"
        if el is None and self.accounts and not self.auto_login and (
                ground(elements, "Username", ["textbox"], 0.9) or ground(elements, "Log in", ["link"], 0.9)):
            # not signed in, and the step's control is not there: sign in first (the site asks for it), then retry
            self.auto_login = True
            self.queue[:0] = [Intent("login", step=intent.step), intent]
            return self._ground(self.queue.pop(0), elements)
        if el is None:
            return self._fail(intent, f"no {'/'.join(intent.roles[:2])} labelled {intent.label!r} on the page")
        self.tries = 0
        if intent.kind == "click":
            return f"click({el.bid!r})"
        if intent.kind == "fill" and not el.options:
            self.last_bid = el.bid
            return f"fill({el.bid!r}, {intent.value!r})"
        current = (re.search(r"value=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")", el.props) or [None, "''"])[1]
        current = ast.literal_eval(current)
        wanted = [v for v in [intent.value, *intent.alts] if v]
        if not wanted:  # no value named: the first real option other than the current one
            choice = next((o for o in el.options if norm(o) != norm(current) and not re.match(r"^(?:any|none|-+|select\b|choose\b)", o, re.I)), "")
            return f"select_option({el.bid!r}, {choice!r})" if choice else self._fail(intent, f"{el.name!r} has no option")
        scored = [(match_score(v, o), norm(o) != norm(current), o) for v in wanted for o in el.options]
        good = [x for x in scored if x[0] >= self.threshold]
        if el.options and not good:
            return self._fail(intent, f"{el.name!r} has no option {intent.value!r} (options: {', '.join(el.options)})")
        if intent.value and good and max(good)[0] >= self.threshold and any(g[0] >= self.threshold and norm(v) == norm(intent.value)
                                                                              for g, v in zip(scored, [v for v in wanted for _ in el.options])):
            option = max(el.options, key=lambda o: match_score(intent.value, o))
        else:  # listed candidates ("Open, In progress, Resolved or Closed"): prefer one that changes the value
            option = max(good, key=lambda x: (x[1], x[0]))[2] if good else intent.value
        return f"select_option({el.bid!r}, {option!r})"
