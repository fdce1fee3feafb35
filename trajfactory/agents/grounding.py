"""Grounding for the tutorial replay: the accessibility-tree text as elements, fuzzy label matching with UI
synonyms, role hints, and picking "an item of the list" (a product, a thread, an issue) when a step names none.

An observation line reads `[bid] role 'name' props`; `parse_axtree` keeps the elements (only those of an
open modal dialog while one is open). `ground(elements, label, roles)` returns the best element whose
accessible name fits the label (exact, then a synonym, then a whole-word part, then a fuzzy ratio) or
None below the threshold: a label that is not on the page never grounds to something else.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher

LINE_RE = re.compile(r"^(\t*)\[(\w+)\] (\S+) ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")(.*)$")
QUOTED_RE = re.compile(r"\"([^\"]+)\"|\u201c([^\u201d]+)\u201d|\u2018([^\u2019]+)\u2019|(?<![\w])'(.+?)'(?![\w])")
OPENERS = re.compile(r"^(?:first|then|next|now|finally|afterwards|after that|lastly)\s*,?\s*", re.I)
CLICK_ROLES = ["button", "link", "menuitem", "tab", "checkbox", "radio", "option", "switch"]
TEXT_ROLES = ["textbox", "searchbox", "spinbutton", "combobox"]
# common UI wordings of one control, on any site: tutorials are written against one version or skin of a site.
# A site's own wordings (its button texts across versions, its status names) are its `SiteFacts.synonyms`,
# which the replay passes as `synonyms`.
UI_SYNONYMS = [
    {"sign in", "log in", "login", "signin"}, {"sign out", "log out", "logout"}, {"search", "find"},
    {"search box", "search field"}, {"save changes", "save"}, {"create", "submit"}, {"reply", "post reply", "send reply"},
    {"comment", "add comment", "post comment"}, {"remove", "delete"}, {"filter", "apply filters", "apply"},
    {"message", "body"},
]


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def variants(label: str, synonyms: Sequence[Collection[str]] = ()) -> set[str]:
    """The label and its synonyms: the generic ones, and the site's own groups given as `synonyms`."""
    n = norm(label)
    out = {n}
    for group in [*UI_SYNONYMS, *synonyms]:
        words = {norm(w) for w in group}
        if n in words:
            out |= words
    return out


def match_score(label: str, name: str, synonyms: Sequence[Collection[str]] = ()) -> float:
    """How well an element's accessible name fits a tutorial's label: 1 exact, ~0.9 synonym, less for partial
    (`synonyms`: the site's own label groups beside the generic ones)."""
    n, target = norm(name), norm(label)
    if not n or not target:
        return 0.0
    if n == target:
        return 1.0
    alike = variants(label, synonyms)
    if n in alike:
        return 0.92
    if re.search(rf"\b{re.escape(target)}\b", n):  # "Quantity" in "Quantity of Copper Lantern"
        return 0.85 - min(0.15, 0.01 * (len(n) - len(target)))
    return max(SequenceMatcher(None, v, n).ratio() for v in alike) * 0.8


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
    """Elements of an observation; inside an open modal dialog only its own elements count. A form control with no
    accessible name inside a table row takes the name of the row's header before it, as a sighted reader would."""
    out: list[Element] = []
    modal_depth = None
    row: tuple[int, str] | None = None  # (depth of the table row we are in, its last header's text)
    for line in axtree.splitlines():
        m = LINE_RE.match(line)
        if not m:
            continue
        depth, bid, role, name, props = len(m.group(1)), m.group(2), m.group(3), ast.literal_eval(m.group(4)), m.group(5)
        if modal_depth is not None and depth <= modal_depth:
            modal_depth = None
        if row is not None and depth <= row[0]:
            row = None
        if role == "row":
            row = (depth, "")
        elif row is not None and role in ("rowheader", "columnheader") and name.strip():
            row = (row[0], name)
        elif row is not None and not name.strip() and role in TEXT_ROLES + ["checkbox", "listbox"]:
            name = row[1]  # a form laid out as a table (`<th>Status</th><td><select>`): the header names the field
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


def ground(elements: list[Element], label: str, roles: list[str], threshold: float = 0.7,
           synonyms: Sequence[Collection[str]] = ()) -> Element | None:
    """The best element for `label` among `roles` (earlier roles preferred on ties); None below `threshold`;
    `synonyms`: the site's own label groups."""
    best, best_key = None, (threshold, 0.0)
    for e in elements:
        if e.role not in roles or "disabled" in e.props:
            continue
        s = match_score(label, e.name, synonyms)
        key = (s, 1 - roles.index(e.role) / 10)
        if s >= threshold and key > best_key:
            best, best_key = e, key
    return best




@dataclass
class Intent:
    kind: str
    """click | fill | select | press | login | home"""
    label: str = ""
    value: str = ""
    roles: list[str] = field(default_factory=list)
    step: int = 0
    alts: list[str] = field(default_factory=list)
    """Other labels to try when `label` is not on the page ("Log in (or Sign in)", nouns of the phrase)."""
    first_item: bool = False
    """"Open an issue / click a product name": the first item link of the page's main list."""
    options: list[str] = field(default_factory=list)
    """select: candidate option values, in preference order ("for example Open or In progress")."""
    mine: bool = False
    """"the thread that contains your post": prefer list items that show the signed-in user."""
    any_option: bool = False
    """select: the values are only examples ("such as Help or Showcase"); any real option will do."""
    login_submit: bool = True
    """login: submit the form (False when the tutorial's next step clicks the button itself)."""


def first_item(axtree: str, section: str = "", prefer: str = "", avoid: str = "",
               synonyms: Sequence[Collection[str]] = ()) -> str | None:
    """The bid of the first item link of the page's content lists/tables (not navigation, header or breadcrumbs),
    skipping items marked unavailable; within the region/heading named `section` when the page has one; items
    whose row mentions `prefer` (the signed-in user's name, for "your post") first; none inside a region named
    `avoid` (a thread is not in the category list)."""
    rows = []
    for line in axtree.splitlines():
        m = re.match(r"^(\t*)(?:\[(\w+)\] )?(\S+) ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")(.*)$", line)
        if m:
            rows.append((len(m.group(1)), m.group(2), m.group(3), ast.literal_eval(m.group(4)), m.group(5)))
    scope = (0, len(rows))
    if section:
        for i, (d, _, role, name, _) in enumerate(rows):
            if role in ("region", "heading", "group", "complementary") and match_score(section, name, synonyms) >= 0.85:
                j = i + 1
                while j < len(rows) and rows[j][0] > d:
                    j += 1
                scope = (i, j if role != "heading" else len(rows))
                break

    def subtree_text(i: int) -> str:
        j, out = i + 1, []
        while j < len(rows) and rows[j][0] > rows[i][0]:
            out.append(rows[j][3])
            j += 1
        return " ".join(out)

    candidates = []
    stack: list[tuple[int, str, str, int]] = []
    for i, (d, bid, role, name, props) in enumerate(rows):
        while stack and stack[-1][0] >= d:
            stack.pop()
        ancestors = [r for _, r, _, _ in stack] + [n for _, _, n, _ in stack]
        item = next((k for _, r, _, k in reversed(stack) if r in ("listitem", "row")), None)
        stack.append((d, role, name, i))
        if not (scope[0] <= i < scope[1]) or role != "link" or not bid or not name:
            continue
        if any(a in ("navigation", "banner", "contentinfo", "Breadcrumb") for a in ancestors):
            continue
        if avoid and any(match_score(avoid, n, synonyms) >= 0.85 for _, _, n, _ in stack[:-1] if n):
            continue
        if item is None and not any(a in ("cell", "gridcell") for a in ancestors):
            continue
        text = subtree_text(item) if item is not None else ""
        unavailable = bool(re.search(r"out of stock|unavailable|sold out", text, re.I))
        mine = bool(prefer) and prefer.lower() in text.lower()
        candidates.append((unavailable, not mine, i, bid))
    return min(candidates)[3] if candidates else None


SIGNED_IN_RE = [re.compile(r"\b(?:Signed|Logged) in as\s*([^'\"]+)"), re.compile(r"\b(?:Hello|Welcome),\s*([^'\"]+)")]
"""How sites name the signed-in user ("Signed in as Amy Lee"), else greet them (Roundup's "Hello, admin")."""


def signed_in_as(axtree: str) -> str:
    """The display name the page header names the signed-in user by, or ''."""
    m = next((m for pattern in SIGNED_IN_RE if (m := pattern.search(axtree))), None)
    return m.group(1).strip().rstrip(".!").strip() if m else ""


def home_link(elements: list[Element]) -> Element | None:
    """The site's own home link: the first link of the page (the site name in the header)."""
    return next((e for e in elements if e.role == "link" and e.name), None)
