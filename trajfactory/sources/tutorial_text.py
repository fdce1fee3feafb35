"""Main-text extraction from HTML and Markdown, language guess and target-site guess for harvested pages.

Extraction keeps what a tutorial is made of (headings as `#` lines, list items as `1.` / `-` lines,
paragraphs as lines, code blocks fenced by ``` lines) and drops what every page of a site repeats: scripts,
styles, navigation, header, footer, sidebars, related-article boxes, feedback widgets and cookie banners.
HTML goes through trafilatura (`main_content`), which also finds chrome by the page's shape, after the
boilerplate this module knows by name is pruned; the hand-written extractor below is the fallback when
trafilatura finds no main content.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from trajfactory.settings.sites import all_site_facts, declared_site
from trajfactory.sources.main_content import main_content_lines

__all__ = ["extract_html", "extract_markdown", "foreign_domains", "guess_language", "guess_site", "words"]

# elements whose whole subtree is boilerplate
_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "nav", "header", "footer", "aside", "form",
              "iframe", "head", "button", "select"}
_SKIP_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "dialog", "alertdialog"}
# id/class fragments of boilerplate containers (cookie banners, sidebars, related links, widgets)
_SKIP_MARKS = re.compile(r"cookie|consent|gdpr|banner|sidebar|related|breadcrumb|newsletter|share|social|"
                         r"feedback|advert|promo|popup|modal|toc\b|skip-link|ads?box|ad-?slot|sponsor", re.I)
_BLOCK_TAGS = {"p", "div", "section", "article", "main", "br", "tr", "table", "pre", "blockquote", "dt", "dd",
               "dl", "figure", "figcaption", "hr", "details", "summary", "h1", "h2", "h3", "h4", "h5", "h6", "li",
               "ul", "ol", "caption", "body"}
_VOID_TAGS = {"br", "img", "input", "meta", "link", "hr", "wbr", "source", "col", "area", "base", "embed", "track"}
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
# a cookie/consent line that no container marked (a bare <p> banner); real steps never ask for consent
_COOKIE_LINE = re.compile(r"\bcookies?\b.*\b(accept|agree|consent|preferences|polic|we use|stores?|reject)"
                          r"|\b(accept|agree|consent|we use)\b.*\bcookies?\b", re.I)


def _is_boilerplate(tag: str, attrs: dict) -> bool:
    marks = f"{attrs.get('id') or ''} {attrs.get('class') or ''}"
    return (tag in _SKIP_TAGS or (attrs.get("role") or "") in _SKIP_ROLES or attrs.get("aria-hidden") == "true"
            or bool(marks.strip() and _SKIP_MARKS.search(marks))) and tag not in _VOID_TAGS


class _MainText(HTMLParser):
    """Collects text lines outside boilerplate subtrees; headings and list items keep their markers."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.buf: list[str] = []
        self.prefix = ""
        self.skip_tag: str | None = None
        self.skip_depth = 0
        self.lists: list[list] = []  # stack of [kind, counter]
        self.title = ""
        self.h1 = ""
        self._in_title = False
        self._in_h1 = False

    def flush(self) -> None:
        text = " ".join("".join(self.buf).split())
        if text:
            self.lines.append(self.prefix + text)
        self.buf, self.prefix = [], ""

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "title":
            self._in_title = True
        if self.skip_tag is not None:
            if tag == self.skip_tag and tag not in _VOID_TAGS:
                self.skip_depth += 1
            return
        a = dict(attrs)
        if _is_boilerplate(tag, a) and tag not in ("html", "body", "main"):
            self.skip_tag, self.skip_depth = tag, 1
            return
        if tag in ("ul", "ol"):
            self.flush()
            self.lists.append([tag, 0])
        elif tag == "li":
            self.flush()
            depth = "  " * max(len(self.lists) - 1, 0)
            if self.lists and self.lists[-1][0] == "ol":
                self.lists[-1][1] += 1
                self.prefix = f"{depth}{self.lists[-1][1]}. "
            else:
                self.prefix = f"{depth}- "
        elif tag in _HEADINGS:
            self.flush()
            self.prefix = "#" * _HEADINGS[tag] + " "
            self._in_h1 = tag == "h1" and not self.h1
        elif tag in _BLOCK_TAGS:
            self.flush()
        elif tag in ("td", "th") and "".join(self.buf).strip():
            self.buf.append(" | ")
        elif tag == "img" and a.get("alt"):
            self.buf.append(f" [Image: {a['alt']}] ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in ("ul", "ol"):
            self.flush()
            if self.lists:
                self.lists.pop()
        elif tag in _HEADINGS:
            self._in_h1 = False
            self.flush()
        elif tag in _BLOCK_TAGS:
            self.flush()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
            return
        if self.skip_tag is not None:
            return
        if self._in_h1:
            self.h1 += data
        self.buf.append(data)


def _drop_boilerplate_lines(lines: list[str]) -> list[str]:
    return [ln for ln in lines if not _COOKIE_LINE.search(ln)]


def extract_html(html: str) -> tuple[str, str]:
    """(title, main text) of an HTML page; the title is the first `h1`, else `<title>`."""
    parser = _MainText()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # html.parser gives up on some malformed markup; keep what it read
        pass
    parser.flush()
    title = " ".join((parser.h1 or parser.title).split())
    lines = main_content_lines(html, skip=_is_boilerplate) or parser.lines
    if parser.h1 and not any(ln.startswith("# ") for ln in lines):  # trafilatura may leave the h1 to the metadata
        lines = [f"# {title}", *lines]
    return title, "\n".join(_drop_boilerplate_lines(lines))


_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MD_EMPH = re.compile(r"(\*\*|__|`)")
_MD_ITALIC = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])|(?<!\w)_(?=\S)([^_\n]+?)(?<=\S)_(?!\w)")
_MD_FENCE = re.compile(r"^\s*(```|~~~)")
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)


def _md_inline(line: str) -> str:
    line = _MD_IMAGE.sub(lambda m: f"[Image: {m.group(1)}]" if m.group(1).strip() else "", line)
    line = _MD_EMPH.sub("", _MD_LINK.sub(r"\1", line))
    return _MD_ITALIC.sub(lambda m: m.group(1) or m.group(2), line)


def extract_markdown(md: str) -> tuple[str, str]:
    """(title, text) of a Markdown page: links become their text, images `[Image: alt]`, emphasis marks go,
    structure stays (code blocks keep their ``` fences and their lines as written)."""
    md = _FRONT_MATTER.sub("", md)
    lines, title, in_code = [], "", False
    for raw in md.splitlines():
        if _MD_FENCE.match(raw):
            in_code = not in_code
            lines.append("```")
            continue
        if in_code:
            if raw.strip():
                lines.append(raw.rstrip())
            continue
        line = _md_inline(raw).rstrip()
        if line.strip():
            lines.append(line.strip() if not re.match(r"^\s+([-*+]|\d+[.)])\s", line) else line)
            if not title and line.startswith("# "):
                title = line[2:].strip()
    lines = _drop_boilerplate_lines(lines)
    return title or (lines[0].lstrip("# ") if lines else ""), "\n".join(lines)


_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.U)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


STOPWORDS: dict[str, set[str]] = {
    "en": set("the and to of a in is you your for on it that this with as are be or if click then from by at "
              "an will can not have".split()),
    "de": set("der die das und zu den ist sie nicht von mit sich des auf für ein eine dem im wenn auch oder "
              "werden wird ihr ihre klicken können".split()),
    "fr": set("le la les et de des du un une est pour dans que qui sur pas vous votre avec au aux ce cette "
              "ou par en cliquez".split()),
    "es": set("el la los las y de del que en un una es por para con no su se al lo como haga clic".split()),
    "nl": set("de het een en van is dat op te in voor met zijn niet u uw er aan bij als klik".split()),
}


def guess_language(text: str, min_hits: int = 5) -> str | None:
    """ISO code of the language whose stopwords cover most of the text; None when too little text to tell."""
    toks = words(text)
    if not toks:
        return None
    hits = {lang: sum(t in sw for t in toks) for lang, sw in STOPWORDS.items()}
    best = max(hits, key=hits.get)
    return best if hits[best] >= min(min_hits, max(1, len(toks) // 10)) else None


def guess_site(text: str, uri: str = "", min_score: float = 4.0) -> str | None:
    """Which registered site the page is about: the site its source is declared for (`SiteFacts.sources`), else
    keyword scores of the text (each site's `SiteFacts.keywords`), else a site named in the URL's path.

    None when none tells, or when the text points at another site's domain (see `foreign_domains`).
    """
    if uri and (declared := declared_site(uri)):
        return declared
    keywords = {f.name: f.keywords for f in all_site_facts()}
    if not keywords:
        return None
    toks = words(text)
    scores = {app: sum(kw.get(t, 0.0) for t in toks) for app, kw in keywords.items()}
    best = max(scores, key=scores.get)
    # per-100-words density too, so a long off-topic page with a stray "order" is not ours
    if scores[best] >= min_score and 100 * scores[best] / max(len(toks), 1) >= 1.5:
        return best
    if foreign_domains(text):
        return None
    named = [app for app in keywords if app in set(re.split(r"[/.:#?=_-]+", uri.lower()))]
    return named[0] if len(named) == 1 else None


_DOMAIN = re.compile(r"\b(?:[a-z0-9-]+\.)+(?:com|net|org|io|app|de|fr|co|dev)\b", re.I)


def foreign_domains(text: str) -> list[str]:
    """Domain names the main text sends the reader to; our own docs never name one (their apps run on loopback)."""
    return sorted({m.group(0).lower() for m in _DOMAIN.finditer(text)})
