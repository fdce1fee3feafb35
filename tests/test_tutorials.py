"""Tutorial harvest: crawl the bundled docs sites, local files, a dataset dump; classifier quality; quarantine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trajfactory.schema import Quarantine, Tutorial
from trajfactory.sources.docsite import DOCS_ROOT, serve_docs
from trajfactory.sources.tutorial_classifier import evaluate, load_labels, prefilter
from trajfactory.sources.tutorial_text import extract_html, guess_language, guess_site
from trajfactory.sources.tutorials import REASONS, CrawlConfig, HarvestConfig, harvest_tutorials

APPS = ["shop", "forum", "tracker"]
LABELS = {row["path"]: row["is_tutorial"] for row in map(json.loads, (DOCS_ROOT / "labels.jsonl").read_text().splitlines())}
# text of the noise every docs page carries; none of it may reach a Tutorial's text
BOILERPLATE = ["We use cookies", "Accept all cookies", "cookie policy", "Cookie notice", "We value your privacy",
               "Related articles", "Was this article helpful", "All rights reserved", "In this section",
               "Subscribe to our newsletter", "dataLayer", "Search help articles"]
# the start of one step line per app that must survive extraction verbatim, list numbering included
STEPS = {"shop": ("add-to-cart.html", "5. Click the Add to cart button."),
         "forum": ("start-thread.html", "4. Click Post thread (or Publish / Create thread)."),
         "tracker": ("my-issues.html", "2. Click Assigned to me (or My issues) in the top navigation.")}


def _name(uri: str) -> str:
    name = uri.rstrip("/").rsplit("/", 1)[-1] if not uri.endswith("/") else "index.html"
    return name.split("#")[0]


@pytest.mark.parametrize("app", APPS)
def test_crawl_finds_every_page_strips_boilerplate_keeps_steps(app):
    with serve_docs(DOCS_ROOT / app) as site:
        out = list(harvest_tutorials(site.url))
    assert not [q for q in out if isinstance(q, Quarantine)]
    by_name = {_name(t.uri): t for t in out}
    assert set(by_name) == {p.name for p in (DOCS_ROOT / app).glob("*.html")}
    assert len(by_name) == len(out), "each page is harvested once (dir/ and dir/index.html are one page)"
    for t in out:
        assert t.site == app and t.language == "en" and t.text
        for noise in BOILERPLATE:
            assert noise.lower() not in t.text.lower(), (t.uri, noise)
        assert t.is_tutorial == LABELS[f"{app}/{_name(t.uri)}"], (t.uri, t.score)
    page, step = STEPS[app]
    assert any(line.startswith(step) for line in by_name[page].text.splitlines()), step
    assert by_name[page].title and by_name[page].text.startswith("# ")


def test_crawl_stays_on_host_and_respects_max_pages(tmp_path):
    other_root = tmp_path / "other"
    other_root.mkdir()
    (other_root / "index.html").write_text("<p>another host</p>")
    root = tmp_path / "docs"
    root.mkdir()
    with serve_docs(other_root) as other:
        links = "".join(f'<li><a href="p{i}.html">page {i}</a></li>' for i in range(5))
        (root / "index.html").write_text(f'<main><h1>Index</h1><ul>{links}</ul><a href="{other.url}">elsewhere</a>'
                                         '<a href="http://example.invalid/x">external</a></main>')
        for i in range(5):
            (root / f"p{i}.html").write_text(f'<h1>Page {i}</h1><a href="{other.url}index.html">other</a>')
        with serve_docs(root) as site:
            items = list(harvest_tutorials(site.url, HarvestConfig(min_chars=0)))
            assert {_name(i.uri) for i in items} == {"index.html"} | {f"p{i}.html" for i in range(5)}
            assert all(i.uri.startswith(site.url) for i in items)
            capped = list(harvest_tutorials(site.url, HarvestConfig(min_chars=0, crawl=CrawlConfig(max_pages=3))))
            assert len(capped) == 3 and len(site.requests) == 6 + 3
        assert other.requests == [], "the crawl never leaves the start URL's host"


def test_local_files_directory_glob_and_markdown(tmp_path):
    by_dir = [t for t in harvest_tutorials(DOCS_ROOT / "tracker") if isinstance(t, Tutorial)]
    assert len(by_dir) == len(list((DOCS_ROOT / "tracker").glob("*.html")))
    by_glob = list(harvest_tutorials(str(DOCS_ROOT / "forum" / "*.html")))
    assert {Path(t.uri).name for t in by_glob} == {p.name for p in (DOCS_ROOT / "forum").glob("*.html")}
    assert all(isinstance(t, Tutorial) and t.site == "forum" for t in by_glob)
    md = tmp_path / "reply-to-thread.md"
    md.write_text("---\ntitle: Reply\n---\n# How to reply to a forum thread\n\nSign in first ([see here](login.md)).\n\n"
                  "1. Open the thread from the **All threads** list.\n2. Type your answer in the **Message** box.\n"
                  "3. Click **Reply** to post it.\n\n[Screenshot: the reply form under the last post]\n")
    [t] = list(harvest_tutorials(md))
    assert t.is_tutorial and t.site == "forum" and t.title == "How to reply to a forum thread"
    assert "3. Click Reply to post it." in t.text.splitlines() and "login.md" not in t.text


def test_hf_dump_parquet_and_jsonl(tmp_path):
    names = ["shop/checkout.html", "shop/pricing.html", "tracker/comment.html", "forum/sign-in.html"]
    rows = {"url": [f"https://docs.example.com/{n}" for n in names],
            "html": [(DOCS_ROOT / n).read_text() for n in names]}
    pq.write_table(pa.table(rows), tmp_path / "dump.parquet")
    out = list(harvest_tutorials(tmp_path / "dump.parquet"))
    assert [t.uri for t in out] == [f"hf-dump:{tmp_path / 'dump.parquet'}#{i}" for i in range(4)]
    assert [t.is_tutorial for t in out] == [LABELS[n] for n in names]
    assert [t.site for t in out] == ["shop", "shop", "tracker", "forum"]  # sign-in: from its URL's path
    texts = [extract_html((DOCS_ROOT / n).read_text())[1] for n in names]
    with (tmp_path / "dump.jsonl").open("w") as fh:
        for n, text in zip(names, texts):
            fh.write(json.dumps({"url": f"https://docs.example.com/{n}", "text": text}) + "\n")
        fh.write("{not json\n")
        fh.write(json.dumps({"url": "https://docs.example.com/x"}) + "\n")
    out = list(harvest_tutorials(f"hf-dump:{tmp_path / 'dump.jsonl'}"))
    tutorials = [t for t in out if isinstance(t, Tutorial)]
    assert [t.is_tutorial for t in tutorials] == [LABELS[n] for n in names]
    assert [t.text for t in tutorials] == texts
    bad = [q for q in out if isinstance(q, Quarantine)]
    assert [(q.reason, q.uri.rsplit("#", 1)[1]) for q in bad] == [("unreadable", "4"), ("unreadable", "5")]


def test_classifier_precision_recall_on_held_out_split():
    """Held-out split: 15 labeled pages (6 tutorials, 9 not, 3 of them hard negatives) the model never trains on.

    Threshold 0.8: with 6 positives one miss gives recall 0.83 and one false positive precision 0.86, so 0.8
    allows one error per class and fails on two; AgentTrek's classifier reports ~0.9 on real web pages.
    The classifier trains on the train split of every shipped labeled page (the web-style ones too).
    """
    report = evaluate(labels=load_labels())
    both = report["prefilter+classifier"]
    assert both.tp + both.fp + both.fn + both.tn == 15
    assert both.precision >= 0.8 and both.recall >= 0.8, both


def test_prefilter_alone_vs_prefilter_plus_classifier():
    report = evaluate(labels=load_labels())
    pre, both = report["prefilter"], report["prefilter+classifier"]
    # the prefilter is tuned for recall: release-note style pages with numbered lists and "step" get through...
    assert pre.recall == 1.0 and pre.fp >= 1 and "FP:shop/known-issues.html" in pre.errors
    # ...and the classifier removes them without losing tutorials the prefilter kept
    assert both.precision > pre.precision and both.recall == pre.recall
    train = [p for p in load_labels() if p.split == "train"]
    assert sum(prefilter(p.text) and not p.is_tutorial for p in train) >= 2, "hard negatives in training too"


@pytest.mark.parametrize("via", ["crawl", "files"])
def test_bad_pages_are_quarantined_with_their_reason(tmp_path, via):
    root = tmp_path / "bad"
    shutil.copytree(DOCS_ROOT / "bad", root)
    # >2 MB, generated here instead of committed
    (root / "huge.html").write_text("<html><body><main>" + "<p>Click Checkout in your cart.</p>" * 70_000 + "</main></body></html>")
    (root / "index.html").write_text((root / "index.html").read_text().replace("</ul>", '<li><a href="huge.html">huge</a></li></ul>'))
    expected = {"empty.html": "empty", "boilerplate-only.html": "empty", "garbage.bin": "binary",
                "anleitung-warenkorb.html": "wrong_language", "guide-forum-fr.html": "wrong_language",
                "other-site-playlist.html": "other_site", "huge.html": "too_large"}
    if via == "crawl":
        with serve_docs(root) as site:
            out = list(harvest_tutorials(site.url))
    else:
        out = list(harvest_tutorials(root))
    got = {_name(q.uri): q for q in out if isinstance(q, Quarantine)}
    assert {k: q.reason for k, q in got.items()} == expected
    for q in got.values():
        assert q.item_kind == "tutorial" and q.stage == "harvest" and q.reason in REASONS
        assert q.uri in q.detail and len(q.detail) > len(q.uri) + 20  # the detail names the page and the cause
    assert "melodify.example.net" in got["other-site-playlist.html"].detail and "de" in got["anleitung-warenkorb.html"].detail
    # the bad pages never stop the good one
    assert [_name(t.uri) for t in out if isinstance(t, Tutorial)] == ["index.html"]


def test_language_and_site_guesses():
    assert guess_language("Klicken Sie auf die Schaltfläche und legen Sie den Artikel in den Warenkorb, wenn Sie ihn "
                          "kaufen wollen. Die Bestellung wird dann mit der Post versendet.") == "de"
    assert guess_language("Cliquez sur le bouton pour publier la discussion dans le forum de votre équipe.") == "fr"
    assert guess_language("Click the button to add the item to your cart and then open the checkout.") == "en"
    assert guess_site("Open the issue, pick a priority and an assignee, then click Update status.") == "tracker"
    assert guess_site("Log in with your username.", "https://docs.example.com/forum/sign-in.html") == "forum"
    assert guess_site("Open melodify.example.net and tap Create playlist.", "/docs/shop/x.html") is None


def test_default_docs_root_portal_reaches_every_app_site():
    with serve_docs() as site:  # the default run serves DOCS_ROOT: a portal page linking the three sites
        out = list(harvest_tutorials(site.url))
    pages = {p.relative_to(DOCS_ROOT).as_posix() for app in APPS for p in (DOCS_ROOT / app).glob("*.html")}
    assert all(isinstance(t, Tutorial) for t in out) and len(out) == len(pages) + 1
    for t in out:
        path = t.uri.removeprefix(site.url)
        if path:
            assert t.site == path.split("/")[0] and t.is_tutorial == LABELS[path if "." in path else path + "index.html"]
