"""Main content of an HTML page with trafilatura, as the line text the tutorial stages read.

trafilatura finds the article among menus, ads, "similar reads", comment sections and footers by the shape of
the page, so chrome whose class names no skip list knows stays out too. Its XML output is turned into lines:
headings as `#` lines, list items as `1.` / `-` lines, paragraphs and table rows as lines, images as
`[Image: alt]`, and code blocks fenced by ```` ``` ```` lines (code is not prose: the step parser keeps it apart).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import lxml.html
import trafilatura
from lxml import etree

__all__ = ["main_content_lines"]

# trafilatura logs every page it finds too short to be an article; those are ordinary here
logging.getLogger("trafilatura").setLevel(logging.ERROR)

_BR = "\x00"
_BLOCKS = {"head", "p", "list", "code", "quote", "table", "graphic", "div"}


def main_content_lines(html: str, skip: Callable[[str, dict], bool] | None = None) -> list[str]:
    """The main content's lines ([] when trafilatura finds none).

    `skip(tag, attrs)` names elements to drop before trafilatura looks (boilerplate the caller already knows).
    """
    if not html.strip():
        return []
    try:
        tree = _pruned(html, skip) if skip else html
        doc = trafilatura.bare_extraction(tree, include_comments=False, include_tables=True, include_images=True,
                                          include_formatting=True, include_links=False, deduplicate=False, fast=True)
    except (ValueError, TypeError, etree.LxmlError):  # markup lxml cannot build a tree of
        return []
    body = getattr(doc, "body", None)
    if body is None or (len(body) == 1 and body[0].tag == "p"):  # one flat paragraph: trafilatura's last resort,
        return []  # the whole page's text with its structure gone
    out: list[str] = []
    _block_children(body, out, [])
    return [ln for ln in out if ln.strip()]


def _pruned(html: str, skip: Callable[[str, dict], bool]):
    try:
        root = lxml.html.document_fromstring(html)
    except ValueError:  # a str with an XML encoding declaration: lxml wants its bytes
        root = lxml.html.document_fromstring(html.encode("utf-8"))
    doomed = [el for el in root.iter() if isinstance(el.tag, str) and el.tag not in ("html", "body", "main", "head")
              and el.getparent() is not None and skip(el.tag, dict(el.attrib))]
    for el in doomed:
        if el.getparent() is not None:  # not inside an element dropped already
            el.drop_tree()
    return root


def _block_children(el, out: list[str], lists: list[list]) -> None:
    run: list[str] = []  # inline pieces between two blocks (trafilatura leaves some list items as bare text)

    def flush() -> None:
        out.extend(t for t in map(_squash, "".join(run).split(_BR)) if t)
        run.clear()

    for child in el:
        if _is_block(child) or child.tag == "graphic":
            flush()
            _block(child, out, lists)
        else:
            run.append(_inline(child).replace("\n", _BR))
        run.append(child.tail or "")
    flush()


def _block(el, out: list[str], lists: list[list]) -> None:
    tag = el.tag if isinstance(el.tag, str) else ""
    if tag == "head":
        rend = el.get("rend") or ""
        level = int(rend[1:]) if rend[:1] == "h" and rend[1:].isdigit() else 2
        if text := _squash(_inline(el)):
            out.append("#" * min(max(level, 1), 6) + " " + text)
    elif tag == "list":
        lists.append([el.get("rend") or "ul", 0])
        for item in el:
            if item.tag != "item":
                _block(item, out, lists)
                continue
            kind = lists[-1]
            kind[1] += 1
            indent = "  " * (len(lists) - 1)
            # a definition list's terms and definitions are paragraphs, not list items
            marker = "" if kind[0] == "dl" else f"{kind[1]}. " if kind[0] == "ol" else "- "
            for i, text in enumerate(_inline(item).split("\n")):
                out.append((indent + marker if i == 0 else indent) + text)
            for sub in item:  # the item's own paragraphs, nested lists and code blocks follow it
                if sub.tag in ("list", "p", "quote", "table") or (sub.tag == "code" and _is_block_code(sub)):
                    _block(sub, out, lists)
        lists.pop()
    elif tag == "code":
        code = "".join(el.itertext()).strip("\n")
        if code.strip():
            out += ["```", *[ln.rstrip() for ln in code.splitlines() if ln.strip()], "```"]
    elif tag == "table":
        for row in el.iter("row"):
            cells = [_squash(_inline(c)) for c in row if c.tag == "cell"]
            if any(cells):
                out.append(" | ".join(cells).strip(" |"))
    elif tag == "graphic":
        if alt := _squash(el.get("alt") or el.get("title") or ""):
            out.append(f"[Image: {alt}]")
    elif tag in ("quote", "div") or any(_is_block(c) for c in el):
        if el.text and el.text.strip():
            out.append(_squash(el.text))
        _block_children(el, out, lists)
    else:
        out += _inline(el).split("\n")


def _is_block(el) -> bool:
    tag = el.tag if isinstance(el.tag, str) else ""
    return tag in _BLOCKS - {"graphic", "code"} or (tag == "code" and _is_block_code(el))


def _is_block_code(el) -> bool:
    """A `<pre>` block: trafilatura nests its `<code>` in another; inline code spans one line."""
    return el.find("code") is not None or "\n" in "".join(el.itertext()).strip()


def _inline(el) -> str:
    """An element's text with images as `[Image: alt]` and `<br>` as newlines, without nested blocks (lists, code
    blocks, paragraphs of a list item: they get their own lines)."""
    parts = [el.text or ""]
    for child in el:
        tag = child.tag if isinstance(child.tag, str) else ""
        if tag in ("list", "p", "quote", "table") or (tag == "code" and _is_block_code(child)):
            pass
        elif tag == "graphic":
            if alt := (child.get("alt") or child.get("title") or "").strip():
                parts.append(f" [Image: {alt}] ")
        elif tag == "lb":
            parts.append(_BR)
        else:
            parts.append(_inline(child))
        parts.append(child.tail or "")
    # source newlines are hard wraps (spaces to a browser); only <br> breaks a line
    return "\n".join(t for t in map(_squash, "".join(parts).split(_BR)) if t)


def _squash(text: str) -> str:
    return " ".join(text.split())
