"""Tutorial step text -> replay intents (click / fill / select / press / login / home), model-free.

Tutorials are written loosely: "Click Log in (or Sign in) in the header", "Open the shop home page",
"Click a category name, for example Outdoors", "Pick a value in Status, for example Open or In progress".
`parse_step` keeps what a person would act on: the label (with the alternatives the text offers, as
`alts`), the role hint of the verb or noun ("button", "link", "field"), example values, and whether a
list item is meant instead of a named control. Where a control is ("in the header", "below the form")
is cut off the label. Steps that need no action (look, scroll, read, check that ...) give no intent;
steps the tutorial marks optional ("Optionally type ...") are not replayed. A named control is never
dropped: a step whose label is not on the page fails in the replay, with the step named.
"""

from __future__ import annotations

import re

from trajfactory.agents.grounding import CLICK_ROLES, QUOTED_RE, TEXT_ROLES, Intent

OPENERS = re.compile(r"^(?:first|then|next|now|finally|afterwards|after that|lastly)\s*,?\s*", re.I)
ARTICLES = re.compile(r"^(?:the|a|an|your|its|their|this|that|any|one|some)\s+", re.I)
ROLE_WORDS = re.compile(r"\s+(?:button|link|tab|menu|page|field|box|input|textbox|drop-?down|list|option|icon)s?$", re.I)
# where a control is, not what it is called: "in the header", "at the top right of any page", "below the form"
LABEL_CUT = re.compile(r"\s*(?:\(|,|;|:|\s[\u2014\u2013]\s|\s-\s|\bwhich\b|\bby clicking\b|\bto (?:open|see|get|go|view|email|receive|keep|make)\b|"
                       r"\b(?:in|on|at|from|under|below|above|near|next to|inside|within|of)\s+(?:the|your|a|any|this|each)\b|"
                       r"\b(?:in|on|at)\s+(?:top|bottom)\b|\bfor example\b|\bsuch as\b)", re.I)
ALT_PREFIX = re.compile(r"^(?:or|also|aka|sometimes|(?:it|this) may (?:read|say|be (?:labell?ed|called))|on some \w+:?|"
                        r"(?:it|this) is (?:called|labell?ed|named)|(?:called|labell?ed|named)|e\.\s?g\.?)\s*", re.I)
EXAMPLE_RE = re.compile(r"\b(?:for example|for instance|such as|e\.\s?g\.|like)\s*,?\s+(?:\"([^\"]+)\"|'([^']+)'|([A-Z][\w-]*(?:\s+(?!or\b|and\b)[\w-]+){0,2}))")
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


OR_MORE = re.compile(r"\s*(?:,|\bor\b|\band\b)\s+(?:\"([^\"]+)\"|'([^']+)'|([A-Z][\w-]*(?:\s+(?!or\b|and\b)[\w-]+){0,2}))")


def _examples(text: str) -> list[str]:
    """Example values: 'for example Open or In progress' -> ['Open', 'In progress']."""
    out = []
    for m in EXAMPLE_RE.finditer(text):
        out.append(next(g for g in m.groups() if g))
        end = m.end()
        while more := OR_MORE.match(text, end):
            out.append(next(g for g in more.groups() if g))
            end = more.end()
    return out


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
    cap = re.search(r"\b(?:the|your|a|an)\s+([A-Z][\w' -]{0,40})$", text[:m.start()]) if m else None
    if cap:  # "a word in the Search the forum field" -> "Search the forum"
        return cap.group(1).strip()
    words = re.search(r".*\b(?:the|your|a|an)\s+([\w' -]{1,40})$", text[:m.start()], re.I) if m else None
    return words.group(1).strip() if words else ""


FIELD_WORDS = r"field|box|input|textbox|area|text area"
LEAD_PLACE = re.compile(r"^(?:on|in|under|below|above|from|at|inside|within|next to|beside)\b[^,.;]{0,80},\s*", re.I)
STEP_VERBS = r"click|tap|type|enter|select|choose|pick|open|press|search|go|fill|write|hit|use|sign|log|tick"
FIELD_ITEM = re.compile(r"^([A-Z][\w ]{0,30}?)\s*(?:[\u2014\u2013:]|\s-)\s+(.+)$")
CONDITIONAL = re.compile(r"^(?:don't|do not|no)\s[^?]{0,40}\?\s", re.I)
OPTIONAL = re.compile(r"^(?:optionally|if you (?:like|want|wish|prefer))\b", re.I)
HOME = re.compile(r"^(?:open|go to|visit|navigate to|return to|head to)\s+(?:the\s+)?(?:[\w'-]+\s+)?(?:(?:home|front|start|main|"
                  r"landing)\s+page|address|url|web ?site|site)\b", re.I)
IN_FIELD = re.compile(rf"^(?:in|into|inside|within)\s+(?:the\s+)?(.+?)\s+(?:{FIELD_WORDS})[.:]?$", re.I)
BY_CLICKING = re.compile(r"\bby (?:clicking|tapping|selecting|choosing)\s+(?:on\s+)?(.+)$", re.I)
CLICK_VERBS = ("click", "tap", "press", "hit", "open", "go", "navigate", "visit", "follow", "select", "choose", "return",
               "head", "sign", "log", "tick", "untick", "use")


def _section(c: str) -> str:
    """'Under Featured products (on some stores ... Staff picks), click ...' -> the section the control is in."""
    m = re.match(r"^(?i:under|in|from)\s+(?:the\s+)?([A-Z][^,(]{1,40}?)\s*(?:\(|,)", c)
    return m.group(1).strip() if m else ""


def _clauses(step: str) -> list[str]:
    """Clauses joined by 'and' / 'then' / ',' + a verb; an ', or <verb> ...' alternative way is left out."""
    step = re.split(rf",?\s+or\s+(?=(?:{STEP_VERBS})\b)", step, 1, flags=re.I)[0]
    return re.split(rf",?\s+(?:and(?: then)?|then)\s+(?=(?:{STEP_VERBS})\b)|,\s+(?=(?:{STEP_VERBS})\b)", step, flags=re.I)


_Q = r"(?:\"[^\"]+\"|\u201c[^\u201d]+\u201d|\u2018[^\u2019]+\u2019|(?<![\w])'.+?'(?![\w]))"


def _field_quote(c: str) -> str:
    """The quoted label that names the field of a fill clause, or '': "the 'Change Note' field", "Fill in 'Title'
    with ...", "into 'Title'". Only the text outside the quotes counts, so a value such as 'Reproduced with the
    word naive' never reads as "<label> with <value>"."""
    spans = list(QUOTED_RE.finditer(c))
    inner = [next(g for g in m.groups() if g is not None) for m in spans]
    for m, text in zip(spans, inner):
        if re.match(rf"\s+(?:{FIELD_WORDS})\b", c[m.end():], re.I):  # "the 'Change Note' field"
            return text
    for m, text in zip(spans, inner):
        if re.search(r"\b(?:in|into)\s+(?:the\s+)?$", c[:m.start()], re.I) and m is not spans[0]:  # "Type 'X' into 'Title'"
            return text
    for a, b in zip(spans, spans[1:]):  # "Fill in 'Title' with 'X'": the quote before a bare "with" names the field
        if re.fullmatch(r"\s+with\s+", c[a.end():b.start()], re.I):
            return inner[spans.index(a)]
    return ""


def _fill(c: str, low: str, index: int, user: str, password: str, focus: str) -> Intent | None:
    q, ex = _quoted(c), _examples(c)
    field = _field_quote(c)
    named = [x for x in q if x not in ex and x != field]  # quoted example values ("such as 'lamp'") are no labels
    value = (user if re.search(r"\byour (user ?name|login|email)\b", low) and not named else
             password if "your password" in low and not named else named[0] if named else "")
    bare = re.sub(QUOTED_RE, " ", c)
    label = (field or _phrase(c, FIELD_WORDS).strip("'\"\u201c\u201d\u2018\u2019 ") or
             ("Username" if value == user and user else "Password" if value == password and password else
              (re.search(r"\b(?:as|in|into) (?:the|your) ([\w ]+?)[.]?$", c, re.I) or [None, ""])[1]) or
             focus or
             _capitalized(bare) or
             (re.search(r"^\w+(?: in| out)?\s+(?:a|an|the|your)\s+([a-z]+)[.]?$", bare.strip()) or [None, ""])[1])
    if not label or label.lower() == "form":  # "Fill in the form:" — the fields follow as their own steps
        return None
    if value:
        return Intent("fill", label, value, TEXT_ROLES, index)
    return Intent("fill", label, ex[0] if ex else _value_for(c, label), TEXT_ROLES, index, options=ex[1:])


def _select(c: str, low: str, verb: str, index: int) -> Intent:
    q, ex = _quoted(c), _examples(c)
    if re.search(r"\bto\b", low) and verb in ("set", "change"):  # "Set the 'Status' to 'Done'"
        label, value = (q[0], q[-1]) if len(q) >= 2 else (_phrase(c, "to") or "", q[0] if q else "")
        return Intent("select", label, value, ["combobox", "listbox"], index)
    value, options, any_option = q[0] if q else "", [], False
    if m := re.match(r"^\w+\s+(?:an?|the|your)\s+([A-Z][\w ]*?),\s*or\s+([A-Z][\w-]*)", c):
        return Intent("select", m.group(1), m.group(2), ["combobox", "listbox"], index)  # "Choose an Assignee, or Me"
    label = q[1] if len(q) >= 2 else (_phrase(c, "dropdown|drop-down|menu|list|field|select") or
                                      (re.search(r"\b(?:as|for|from|in) (?:the|your) ([\w ]+?)[.]?$", c, re.I) or [None, ""])[1] or
                                      (re.search(r"\bvalue (?:in|for|of)\s+([A-Z][\w ]*?)(?=[,.(]|$)", c) or [None, ""])[1])
    listed = re.search(r"(?:\(|[\u2014\u2013]\s*)([^()\u2014\u2013]+?)(?:\)|\s*[\u2014\u2013]|$)", re.sub(r"\s*\([^()]*\)\s*[\u2014\u2013]", " \u2014", c))
    if listed and not ex:  # "Choose a Priority (Low, Medium, High or Critical)"
        options = [o.strip(" .") for o in re.split(r",|\bor\b", listed.group(1)) if o.strip(" .")]
    if m := re.match(r"^\w+\s+(?:the|a|an)\s+([A-Z][\w-]*(?:\s+[A-Z][\w-]*)*)\s+([a-z][a-z ]*?)[.]?$", c):
        label, value = label or m.group(2), value or m.group(1)  # "pick the Help category"
    head = re.split(r"\s*[(\u2014\u2013,]|\s+(?:such as|for example|for instance|like|e\.\s?g\.)\s", c, 1)[0]
    if not label:
        label = _capitalized(head) or _label_phrase(re.sub(r"^\w+\s+", "", head))
        label = re.sub(r"^(?:new|a|the)\s+", "", label, flags=re.I)
    if not value and ex:  # example values: any real option will do when none of them exists
        value, options, any_option = ex[0], ex[1:], True
    if not value and (m := re.search(r",\s*or\s+([A-Z][\w-]*(?: [A-Z][\w-]*)*)", c)):  # "Choose an Assignee, or Me ..."
        value = m.group(1)
    return Intent("select", label, value, ["combobox", "listbox"], index, alts=options, any_option=any_option)


def _click(c: str, low: str, verb: str, index: int, section: str) -> Intent:
    q = _quoted(c)
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
    elif not q and label:  # the phrase's capitalized words ("the Remove button" -> "Remove"), exact matches only
        cap = _capitalized(" " + label)
        alts += [cap] if cap and cap != label else []
    mine = generic and bool(re.search(r"\byour\b", low))
    if generic and not section and re.search(r"\bcategor(?:y|ies)\b", phrase, re.I):
        section = "Categories"  # "Click a category name": an item of the category list, not of the product list
    return Intent("click", label, roles=roles, step=index, alts=alts, first_item=generic, value=section, mine=mine)


def parse_step(step: str, index: int, accounts: dict[str, str]) -> list[Intent]:
    """One tutorial step -> intents; clauses joined by 'and'/'then'/',' + a verb become separate intents."""
    step = re.sub(r"\[(?:screenshot|image)\b[^\]]*\]", "", OPENERS.sub("", step.strip()), flags=re.I).strip()
    if OPTIONAL.match(step) or CONDITIONAL.match(step):  # the tutorial says it may be left out, or when it applies:
        return []  # "Don't have an account? Click Register ..." is not for a user who signs in with one
    m = FIELD_ITEM.match(step)
    if m and re.match(rf"(?:{STEP_VERBS})\b", m.group(2)):  # "Add a note: type 'X' ...": a lead-in, then the step
        step, m = m.group(2), None
    if m and not _quoted(m.group(1)) and m.group(1).split()[0].lower() not in STEP_VERBS.split("|") + ["set", "change"]:
        label, how = m.group(1).strip(), m.group(2)  # "Title — at least 5 characters, e.g. 'X'"
        q, ex = _quoted(how), _examples(how)
        value = q[0] if q else _value_for(how, label)
        return [Intent("fill", label, value, [*TEXT_ROLES, "listbox"], index, alts=ex[1:], any_option=bool(ex))]
    user, password = (sorted(accounts.items())[0] if accounts else ("", ""))
    out: list[Intent] = []
    focus = ""
    for c in _clauses(step):
        section = _section(c)
        c = LEAD_PLACE.sub("", OPENERS.sub("", c.strip()))
        low, q = c.lower(), _quoted(c)
        verb = low.split()[0] if low.split() else ""
        if f := IN_FIELD.match(c):  # "In the 'Change Note' field, type 'X'": the field the next clause fills
            focus = f.group(1).strip("'\"\u201c\u201d\u2018\u2019 ")
            continue
        if HOME.match(c) and not (by := BY_CLICKING.search(c)):
            out.append(Intent("home", step=index))  # "Open the shop home page", "Open the tracker address"
            continue
        if HOME.match(c) and by:  # "Go to the home page by clicking Home (or Shop)"
            c = "click " + by.group(1)
            low, q, verb = c.lower(), _quoted(c), "click"
        if verb in ("click", "tap") and (f := re.match(r"^\w+\s+(?:into|in)\s+(?:the\s+)?(?:field|box|input)\s+(?:labell?ed|called|named)\s+(.+?)[.]?$", c)):
            focus = q[0] if q else f.group(1).strip(" \"'")  # "Click into the field labelled Search products"
            out.append(Intent("click", focus, roles=TEXT_ROLES, step=index))
        elif verb in ("type", "enter", "fill", "write", "input"):
            if (re.search(r"\buser ?name\b", low) and re.search(r"\bpassword\b", low) and not q
                    and not re.search(r"\bconfirm(?:ation)?\b|\brepeat\b|\bagain\b|\bnew password\b", low)):
                # "Enter your Username and Password." (a new account's "Password confirmation" is a form, no sign-in)
                out.append(Intent("login", step=index))
                continue
            if intent := _fill(c, low, index, user, password, focus):
                out.append(intent)
        elif verb in ("select", "choose", "pick", "set", "change") and (
                len(q) >= 2 or re.search(r"dropdown|drop-down|menu|list|\bas\b|\bto\b|\(|\u2014|\u2013|\bvalue\b|\bsuch as\b", low)
                or _capitalized(c)):
            out.append(_select(c, low, verb, index))
        elif verb == "search":
            out.append(Intent("fill", "search", q[0] if q else re.sub(r"^search (?:for )?", "", c, flags=re.I).rstrip("."),
                              ["searchbox", "textbox"], index))
            out.append(Intent("press", value="Enter", step=index))
        elif verb in ("press", "hit") and re.search(r"\b(enter|return|tab|escape)\b", low) and not q:
            out.append(Intent("press", value=re.search(r"\b(enter|return|tab|escape)\b", low).group(1).title(), step=index))
        elif re.match(r"(sign|log)\s*in\b", low) and not q and not re.search(r"\bbutton\b|\blink\b|\(or\b", low):
            out.append(Intent("login", step=index))  # "Sign in with your account"
        elif verb in CLICK_VERBS:
            out.append(_click(c, low, verb, index, section))
        # anything else (look, find, scroll, read, check that ...) needs no action: the replay moves on
    return out
