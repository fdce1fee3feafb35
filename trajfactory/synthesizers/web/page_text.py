"""A harvested page's text made ready for step parsing: what web pages add around a tutorial taken out.

Real pages carry more than the steps: a byline ("By Jane Doe · 5 min read"), a "Prerequisites" list, code
blocks, a tags line, share and comment prompts ("Leave a comment"), "You may also like" sections, and prose
hard-wrapped at 80 columns. `prepare` drops the chrome, sets prerequisites and code aside, and joins wrapped
lines, so the rule parser sees one line per paragraph or list item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["PreparedText", "prepare", "split_sentences"]

_HEADING = re.compile(r"^\s*#{1,6}\s+(.*?)\s*#*\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*+\u2022]|\(\d+\)|step\s*\d+\s*[:.)-])\s+\S", re.I)
_FENCE = re.compile(r"^\s*(```|~~~)")
_RULE = re.compile(r"^\s*([-*_=])(?:\s*\1){2,}\s*$")  # a markdown horizontal rule: ---, ***, ___
_IMAGE = re.compile(r"^\s*\[(?:image|screenshot|figure|picture|video)\b", re.I)
_PREREQ_HEADING = re.compile(r"^(?:prerequisites?|requirements|before you (?:begin|start)|what you(?:'ll| will)? need|"
                             r"you(?:'ll| will) need|setup required)\b", re.I)
# headings that open page chrome, not tutorial content: everything up to the next heading goes
_CHROME_HEADING = re.compile(r"^(?:\d+\s+)?(?:comments?|responses?|replies|leave a (?:comment|reply)|discussion|"
                             r"you (?:may|might) also like|similar (?:reads|posts|articles)|related(?: posts| articles| reads)?|"
                             r"read next|more from\b|recommended\b|share this|trending|popular posts|tags|about the author|"
                             r"contents|table of contents|in this (?:article|section)|\d+ thoughts? on)\b", re.I)
_BYLINE = re.compile(r"^(?:by|written by|posted by|posted on|published(?: on| by)?|updated(?: on)?|last updated)\b.{0,120}$"
                     r"|\b\d+\s*min(?:ute)?s?\s+read\b", re.I)
_TAGS = re.compile(r"^(?:tags?|tagged(?: with)?|categories|category|filed under|topics)\s*:|^(?:#[\w-]+\s*)+$", re.I)
# share / comment / subscribe prompts and sign-offs
_PROMPT = re.compile(r"\b(?:leave a (?:comment|reply)|comments? below|share (?:this|it)\b|share on\b|give it a clap|"
                     r"subscribe to (?:our|my|the) (?:newsletter|blog|channel|feed|rss)|sign up for (?:our|the) newsletter|thanks for reading|did you (?:like|enjoy) this|"
                     r"was this (?:article|page|guide) helpful|see also\s*:|related\s*:|follow us)\b", re.I)
_SENTENCE_END = re.compile(r"[.!?:][\"'\u201d\u2019)]*$")


@dataclass
class PreparedText:
    text: str
    """One line per paragraph, list item or heading."""
    prerequisites: list[str] = field(default_factory=list)
    """Items of a "Prerequisites" / "Before you begin" section."""
    code: list[str] = field(default_factory=list)
    """Code blocks, each as its lines joined by newlines (commands to run, not UI steps)."""


def prepare(text: str) -> PreparedText:
    out = PreparedText("")
    lines: list[str] = []
    section = ""  # "", "prereq" or "chrome": where the current heading put us
    code: list[str] | None = None
    for raw in text.splitlines():
        if _FENCE.match(raw):
            if code is None:
                code = []
            else:
                out.code.append("\n".join(code))
                code = None
            continue
        if code is not None:
            code.append(raw)
            continue
        line = raw.strip()
        if not line or _RULE.match(line):
            lines.append("")  # a paragraph break: never join across it
            continue
        if m := _HEADING.match(line):
            title = m.group(1).strip().rstrip(":")
            section = "prereq" if _PREREQ_HEADING.match(title) else "chrome" if _CHROME_HEADING.match(title) else ""
            if not section:
                lines.append(line)
            continue
        if section == "chrome" or _BYLINE.search(line) and len(line) < 160 or _TAGS.search(line) or _PROMPT.search(line):
            continue
        if section == "prereq":
            if _LIST_ITEM.match(line) or not out.prerequisites:
                out.prerequisites.append(re.sub(r"^\s*(?:\d+[.)]|[-*+\u2022])\s+", "", line))
            else:  # a wrapped prerequisite item
                out.prerequisites[-1] += " " + line
            continue
        lines.append(line)
    if code:  # an unclosed fence: keep it as code, not steps
        out.code.append("\n".join(code))
    out.text = "\n".join(_join_wrapped(lines))
    return out


def _join_wrapped(lines: list[str], min_wrap: int = 40) -> list[str]:
    """Join a hard-wrapped line to the line it continues: the previous one ends mid-sentence, is long enough to
    have been wrapped (or this one starts in lower case), and this one is no heading, list item or image."""
    out: list[str] = []
    last = ""  # the previous physical line
    for line in lines:
        prev = out[-1] if out else ""
        if (line and prev and not _HEADING.match(prev) and not _SENTENCE_END.search(prev) and not _HEADING.match(line)
                and not _LIST_ITEM.match(line) and not _IMAGE.match(line) and not _IMAGE.match(prev)
                and (len(last) >= min_wrap or line[:1].islower())):
            out[-1] = f"{prev} {line}"
        else:
            out.append(line)
        last = line
    return [ln for ln in out if ln]


_CLOSER = {"'": "'", '"': '"', "\u201c": "\u201d", "\u2018": "\u2019"}


def split_sentences(text: str) -> list[str]:
    """Sentences of one line: split after . ! ? followed by a space (so URLs, file names and versions stay
    whole), and never inside quotes; quotes are short in tutorials, so a simple scan is enough."""
    out, buf, quote = [], "", ""
    for i, ch in enumerate(text):
        buf += ch
        if quote:
            quote = "" if ch == _CLOSER.get(quote) else quote
        elif ch in "\"\u201c\u2018" or (ch == "'" and (len(buf) < 2 or not buf[-2].isalnum())):
            quote = ch
        elif (ch in ".!?" and (i + 1 == len(text) or text[i + 1].isspace())
              and not re.search(r"\b(?:e\.g|i\.e|etc|vs|approx)\.$", buf)):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return [s for s in out if s.strip(" .")]
