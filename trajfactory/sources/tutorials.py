"""Harvest how-to tutorials: crawl a docs site, read local HTML/Markdown files, or read a dataset dump.

    for item in harvest_tutorials("http://127.0.0.1:8000/"):   # or a folder, a glob, a .parquet/.jsonl dump
        ...   # Tutorial (classified) or Quarantine (empty, binary, too_large, wrong_language, other_site, ...)

Each source yields raw `Page`s; `process` turns them into `Tutorial` records: main text extracted,
language and target site guessed, classified by the keyword prefilter plus the trained classifier.
A bad page becomes a `Quarantine` row with its reason and never stops the others.
"""

from __future__ import annotations

import glob as globlib
import json
import logging
from collections import Counter, deque
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterable, Iterator
from urllib.error import URLError
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.request import ProxyHandler, Request, build_opener

from pydantic import BaseModel, Field

from trajfactory.schema import Quarantine, Tutorial, content_hash, quarantined
from trajfactory.settings.sites import known_sites
from trajfactory.sources.licenses import LICENSE_FILE
from trajfactory.sources.tutorial_classifier import TutorialClassifier, default_classifier
from trajfactory.sources.tutorial_text import extract_html, extract_markdown, foreign_domains, guess_language, guess_site

__all__ = ["CrawlConfig", "HarvestConfig", "Page", "REASONS", "crawl", "dump_pages", "harvest_tutorials", "local_pages",
           "process"]
log = logging.getLogger(__name__)

REASONS = {
    "fetch_failed": "the page could not be fetched (HTTP error, timeout, refused connection)",
    "unreadable": "the file or dump row could not be read",
    "empty": "no main text left after removing boilerplate",
    "binary": "the content is not text (NUL bytes or undecodable bytes)",
    "too_large": "the page is larger than HarvestConfig.max_bytes",
    "wrong_language": "the text is not in one of HarvestConfig.languages",
    "other_site": "a how-to for a site that is none of the bundled apps",
}
"""Quarantine reasons of the tutorial harvest, with what each means."""


class CrawlConfig(BaseModel):
    """How an HTTP crawl walks a docs site."""

    max_pages: int = Field(200, ge=1)
    """Stop after fetching this many pages."""
    timeout_s: float = Field(10.0, gt=0)
    """Limit of one HTTP request."""
    max_bytes: int = Field(2_000_000, ge=1)
    """Read at most this many bytes of a page; a bigger one is quarantined as `too_large` without reading the rest."""
    same_prefix: bool = False
    """Also stay under the start URL's folder, not only on its host."""
    user_agent: str = "trajfactory-harvest/0.1"


class HarvestConfig(BaseModel):
    """What the harvest accepts and how it decides tutorial vs not."""

    max_bytes: int = Field(2_000_000, ge=1)
    """Pages above this size are quarantined (`too_large`)."""
    min_chars: int = Field(80, ge=0)
    """Main text shorter than this is `empty` (a page of nothing but boilerplate)."""
    languages: list[str] = Field(default_factory=lambda: ["en"])
    """Accepted languages (ISO codes); the tasks and the apps are in English."""
    max_binary_ratio: float = Field(0.02, ge=0, le=1)
    """Share of control or undecodable characters above which content is `binary`."""
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)


@dataclass
class Page:
    """One raw document before extraction: where it came from and its bytes (or already-extracted text)."""

    uri: str
    body: bytes
    kind: str = "html"
    """`html`, `markdown` or `text` (a dump row that holds text only)."""
    truncated: bool = False
    """The body was cut at the size limit."""
    source_url: str = ""
    """The page's own URL when `uri` is not one (a dump row); used for the site guess."""


def _quarantine(uri: str, reason: str, detail: str) -> Quarantine:
    return quarantined("harvest", "tutorial", content_hash(uri, reason), reason, detail, uri)


# ------------------------------------------------------------------------ sources


class _Links(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag in ("a", "area"):
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def _links(base: str, html: str) -> list[str]:
    parser = _Links()
    try:
        parser.feed(html)
    except (AssertionError, ValueError):  # malformed markup: keep the links read so far
        pass
    return [_canonical(urljoin(base, h)) for h in parser.hrefs]


def _canonical(url: str) -> str:
    """`dir/index.html` and `dir/` are one page (servers answer both)."""
    url = urldefrag(url)[0]
    return url[: -len("index.html")] if url.endswith("/index.html") else url


def crawl(start_url: str, config: CrawlConfig | None = None) -> Iterator[Page | Quarantine]:
    """Breadth-first crawl from `start_url`, on its host (scheme, host and port) only; no robots.txt, urllib only."""
    cfg = config or CrawlConfig()
    start = _canonical(start_url)
    origin = urlsplit(start)[:2]
    prefix = start.rsplit("/", 1)[0] + "/"
    opener = build_opener(ProxyHandler({}))  # no proxy: loopback docs must never go through one
    queue, seen, fetched = deque([start]), {start}, 0
    while queue and fetched < cfg.max_pages:
        url = queue.popleft()
        fetched += 1
        try:
            with opener.open(Request(url, headers={"User-Agent": cfg.user_agent}), timeout=cfg.timeout_s) as resp:
                ctype = resp.headers.get_content_type()
                body = resp.read(cfg.max_bytes + 1)
                final = resp.geturl()
        except (URLError, OSError, ValueError) as exc:
            yield _quarantine(url, "fetch_failed", f"GET {url} failed: {exc}")
            continue
        page = Page(final, body[: cfg.max_bytes], "markdown" if final.endswith((".md", ".markdown")) else "html",
                    truncated=len(body) > cfg.max_bytes)
        yield page
        if ctype != "text/html" or page.truncated:
            continue
        for link in _links(final, body.decode("utf-8", "replace")):
            parts = urlsplit(link)
            # same host only; off-host links (social, status pages, other docs) are never requested
            if parts[:2] != origin or link in seen or (cfg.same_prefix and not link.startswith(prefix)):
                continue
            seen.add(link)
            queue.append(link)
    if queue:
        log.info("crawl of %s stopped at max_pages=%d with %d links left", start_url, cfg.max_pages, len(queue))


_DOC_SUFFIXES = {".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown", ".txt": "text"}


def local_pages(path_or_glob: str | Path, max_bytes: int = 2_000_000) -> Iterator[Page | Quarantine]:
    """Pages from a directory (recursively: HTML, Markdown, text and any other file but license files), one file,
    or a glob."""
    p = Path(path_or_glob)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                       and not LICENSE_FILE.match(f.name))  # a folder's license is no page (see folder_license)
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in globlib.glob(str(path_or_glob), recursive=True) if Path(f).is_file())
        if not files:
            raise FileNotFoundError(f"{path_or_glob}: no such file, directory or matching glob")
    for f in files:
        try:
            size = f.stat().st_size
            with f.open("rb") as fh:
                body = fh.read(max_bytes + 1)  # never read more than the limit of a huge file
        except OSError as exc:
            yield _quarantine(str(f), "unreadable", f"{f}: {exc}")
            continue
        yield Page(str(f), body[:max_bytes], _DOC_SUFFIXES.get(f.suffix.lower(), "html"), truncated=size > max_bytes)


def dump_pages(path: str | Path, batch_size: int = 256) -> Iterator[Page | Quarantine]:
    """Rows of a Hugging Face style dump (Parquet or JSON lines) with `url` and `html` or `text` columns.

    Rows are streamed in batches, so memory stays flat; each row's uri is `hf-dump:FILE#ROW`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such dump; expected a .parquet or .jsonl file with url and html/text columns")
    for n, row in enumerate(_dump_rows(path, batch_size)):
        uri = f"hf-dump:{path}#{n}"
        if isinstance(row, str):
            yield _quarantine(uri, "unreadable", row)
            continue
        html, text = row.get("html"), row.get("text")
        if html is None and text is None:
            yield _quarantine(uri, "unreadable", f"{uri}: row has neither an `html` nor a `text` value")
            continue
        body = html if html is not None else text
        yield Page(uri, body.encode("utf-8") if isinstance(body, str) else bytes(body),
                   "html" if html is not None else "text", source_url=row.get("url") or "")


def _dump_rows(path: Path, batch_size: int) -> Iterator[dict | str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        missing = {"html", "text"} - set(pf.schema_arrow.names)
        if missing == {"html", "text"}:
            raise ValueError(f"{path}: the dump needs an `html` or a `text` column; it has {pf.schema_arrow.names}")
        for batch in pf.iter_batches(batch_size=batch_size):
            yield from batch.to_pylist()
    else:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError as exc:
                        yield f"{path}:{n}: not a JSON object: {exc}"


# ------------------------------------------------------------------------ extraction + classification


def _binary_ratio(body: bytes) -> float:
    if b"\x00" in body[:8192]:
        return 1.0
    text = body[:65536].decode("utf-8", "replace")
    bad = sum(1 for ch in text if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\n\r\t\f"))
    return bad / max(len(text), 1)


def _read(page: Page, cfg: HarvestConfig) -> tuple[str, str] | Quarantine:
    """(title, text) of a page, or why it cannot be read."""
    if page.truncated or len(page.body) > cfg.max_bytes:
        return _quarantine(page.uri, "too_large", f"{page.uri}: larger than max_bytes={cfg.max_bytes}; "
                           "split the page or raise HarvestConfig.max_bytes")
    if not page.body.strip():
        return _quarantine(page.uri, "empty", f"{page.uri}: the file is empty (0 bytes of text)")
    ratio = _binary_ratio(page.body)
    if ratio > cfg.max_binary_ratio:
        return _quarantine(page.uri, "binary", f"{page.uri}: not a text page ({ratio:.0%} control or undecodable "
                           "characters); expected UTF-8 HTML, Markdown or text")
    raw = page.body.decode("utf-8", "replace")
    if page.kind == "markdown":
        return extract_markdown(raw)
    if page.kind == "text":
        return extract_markdown(raw) if not raw.lstrip().startswith("<") else extract_html(raw)
    return extract_html(raw)


def process(pages: Iterable[Page | Quarantine], config: HarvestConfig | None = None,
            classifier: TutorialClassifier | None = None) -> Iterator[Tutorial | Quarantine]:
    """Extract, check, classify. Pages whose site the text cannot tell take the majority site of their host/folder.

    Quarantine rows stream out as pages fail; `Tutorial`s follow once the input ends (the site vote needs them all).
    """
    cfg = config or HarvestConfig()
    clf = classifier or default_classifier()
    pending: list[tuple[Page, str, str, str, str | None, bool, float]] = []
    for page in pages:
        if isinstance(page, Quarantine):
            yield page
            continue
        read = _read(page, cfg)
        if isinstance(read, Quarantine):
            yield read
            continue
        title, text = read
        if len(text) < cfg.min_chars:
            yield _quarantine(page.uri, "empty", f"{page.uri}: only {len(text)} characters of main text after "
                              f"removing navigation, scripts and banners (min_chars={cfg.min_chars})")
            continue
        lang = guess_language(text)
        if lang not in cfg.languages:
            yield _quarantine(page.uri, "wrong_language", f"{page.uri}: the text reads as {lang or 'no known language'}"
                              f"; accepted languages are {cfg.languages}")
            continue
        is_tut, score = clf.predict(text)
        site = guess_site(text, page.source_url or page.uri)
        pending.append((page, title, text, lang, site, is_tut, score))
    # a sign-in page rarely names its app; its siblings on the same host or folder do
    votes: dict[str, Counter] = {}
    for page, _, _, _, site, _, _ in pending:
        if site:
            votes.setdefault(_group(page), Counter())[site] += 1
    for page, title, text, lang, site, is_tut, score in pending:
        if site is None and not foreign_domains(text) and votes.get(_group(page)):
            site = votes[_group(page)].most_common(1)[0][0]
        if is_tut and site is None:
            where = ", ".join(foreign_domains(text)) or "no registered site named in the text or its location"
            yield _quarantine(page.uri, "other_site", f"{page.uri}: a how-to, but not for a registered site "
                              f"({where}); expected instructions for one of {known_sites()}, or declare the source's "
                              "site in the recipe (web.sites: [{name: ..., sources: [...]}])")
            continue
        yield Tutorial(tutorial_id=content_hash(page.uri, text), uri=page.uri, title=title, text=text, site=site,
                       language=lang, is_tutorial=is_tut, score=round(score, 4))


def _group(page: Page) -> str:
    """Pages that belong to one docs site: same host for URLs, same folder for files and dumps."""
    url = page.source_url or page.uri
    if url.startswith(("http://", "https://")):
        return urlsplit(url).netloc
    return str(Path(url.split("#", 1)[0]).parent)


def harvest_tutorials(uri: str | Path, config: HarvestConfig | None = None,
                      classifier: TutorialClassifier | None = None) -> Iterator[Tutorial | Quarantine]:
    """Harvest from an http(s) start URL (crawl), a .parquet/.jsonl dump (`hf-dump:` prefix optional), or local files."""
    cfg = config or HarvestConfig()
    s = str(uri)
    if s.startswith(("http://", "https://")):
        pages = crawl(s, cfg.crawl.model_copy(update={"max_bytes": cfg.max_bytes}))
    elif s.startswith("hf-dump:") or s.endswith((".parquet", ".jsonl")):
        pages = dump_pages(s.removeprefix("hf-dump:"))
    else:
        pages = local_pages(s, cfg.max_bytes)
    return process(pages, cfg, classifier)
