"""Real-style web pages (tests/fixtures/web_pages): main-text extraction keeps the tutorial and drops the chrome,
the rule spec parser finds exactly the steps, and the classifier's precision/recall on pages it never saw.

The pages are written the way CMSs and blogs emit them (WordPress, Medium, MediaWiki, a dev blog, a docs site,
a news site): menus and footers with class names no skip list knows, ads, "You may also like" / "Similar reads",
comment sections with "Leave a comment", cookie bars, bylines, "Prerequisites" lists, tags lines, code blocks,
images with alt text and hard-wrapped prose. None of them was written for the bundled apps' docs sites.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from trajfactory.models.client import ModelClient
from trajfactory.schema import Tutorial, WebEnvironment, WebProvenance, WebTask, WebTaskSpec
from trajfactory.sources.tutorial_classifier import WEB_LABELS_PATH, evaluate, load_labels, train_classifier
from trajfactory.sources.tutorial_text import extract_html, extract_markdown
from trajfactory.synthesizers.web.page_text import prepare, split_sentences
from trajfactory.synthesizers.web.spec import extract_steps, make_infeasible, parse_tutorial
from trajfactory.synthesizers.web.stage import model_specs, tasks_from_tutorials

PAGES = Path(__file__).parent / "fixtures" / "web_pages"

# chrome of each page that must not reach the main text
CHROME = {
    "shop-add-to-cart-blog.html": ["Deals of the week", "Sponsored", "You may also like", "coupon codes", "thoughts on",
                                   "this helped me a lot", "Leave a Reply", "Powered by WordPress", "We use cookies",
                                   "Share this", "Jane Doe"],
    "forum-reply-medium.html": ["Become a member", "More from Sam Lee", "Recommended from Medium", "moderators who want",
                                "Careers", "Sign up"],
    "django-admin-add-user.html": ["JavaScript", "Django tutorials", "Learn Django in 30 days", "Similar reads",
                                   "Django groups explained", "Comments are moderated", "did nothing for me",
                                   "Advertise with us", "LinkedIn"],
    "wiki-tracker-create-issue.html": ["Recent changes", "View history", "Not logged in", "CC BY-SA", "Contents"],
    "tracker-filter-devblog.html": ["Podcasts", "Create account", "Top comments", "bookmark icon", "Read next",
                                    "Ruby on Rails", "Posted on"],
}


def _page(name: str) -> tuple[str, str]:
    raw = (PAGES / name).read_text(encoding="utf-8")
    return extract_markdown(raw) if name.endswith(".md") else extract_html(raw)


@pytest.mark.parametrize("name", sorted(CHROME))
def test_extraction_keeps_the_article_and_drops_chrome_with_unknown_class_names(name):
    title, text = _page(name)
    assert text.startswith(f"# {title}") or f"\n# {title}" in text
    for noise in CHROME[name]:
        assert noise.lower() not in text.lower(), noise


def test_extraction_keeps_code_blocks_images_and_joins_wrapped_paragraphs():
    _, text = _page("django-admin-add-user.html")
    lines = text.splitlines()
    at = lines.index("python manage.py createsuperuser")
    assert lines[at - 1] == "```" and lines[at + 1] == "python manage.py runserver" and lines[at + 2] == "```"
    assert "[Image: Django admin add user form with the username field filled in]" in lines
    assert "3. Fill in Username, Password and Password confirmation." in lines
    # HTML source newlines are spaces: a wrapped <p> is one line
    assert any(ln.startswith("The Django admin lets staff") and ln.endswith("in a default project.") for ln in lines)
    _, md = _page("forum-start-thread.md")
    assert "[Image: The new thread form with the title and category filled in]" in md.splitlines()


EXPECTED = {
    "shop-add-to-cart-blog.html": ("shop", [
        "Open the shop home page at http://localhost:8000/.",
        "Click the name of a product, for example Copper Kettle.",
        "Type 2 in the Quantity box.",
        "Click the Add to cart button."],
        ["A web browser", "The shop running at http://localhost:8000/"],
        "You should now see the cart page with a message that the item was added."),
    "forum-reply-medium.html": ("forum", [
        "Open the thread you want to answer from the All threads list.",
        "Scroll to the bottom of the page, below the last post.",
        "Type your answer in the Message box.",
        "Click Reply to post it."],
        [], "Your reply appears at the end of the thread with your name on it."),
    "forum-start-thread.md": ("forum", [
        "Click New thread at the top of the thread list.",
        'Type a title of at least five characters in the Title box, for example "Printer drivers for Linux".',
        "Pick the Help category and write your question in the Message box.",
        "Click Post thread."],
        ["An account on the forum (see signing up)", "You must be signed in"],
        "Your thread now appears at the top of the Help category."),
    "django-admin-add-user.html": ("django_admin", [  # a site with an adapter (executors/webapps/django_admin.py)
        "Go to http://localhost:8000/admin/ and log in with your superuser.",
        "Under Authentication and Authorization, click Users, then click Add user in the top right corner.",
        "Fill in Username, Password and Password confirmation.",
        "Click Save and continue editing.",
        "In the Permissions section, find blog | post | Can change post in the Available user permissions list and select it.",
        "Click the right arrow to move it to Chosen user permissions.",
        "Click Save."],
        ["Python 3.11 and Django 5.x installed", "A superuser account (create one with the command below)"],
        'You should see the message "The user \u201ceditor\u201d was changed successfully." at the top of the user list.'),
    "wiki-tracker-create-issue.html": ("tracker", [
        "Open the tracker at http://localhost:8000/issues/ and click New issue in the top left corner of the issue list.",
        'Type a short Title such as "Export button does nothing" and describe what you did in Description. '
        "Set the Priority to High if customers are affected.",
        "Click Create."],
        [], "The new issue opens and its number is shown at the top of the page."),
    "tracker-filter-devblog.html": ("tracker", [
        "Open http://localhost:8000/issues/ in your browser.",
        "Select Open in the Status drop-down above the list.",
        "Select your name in the Assignee drop-down.",
        "Click Apply filters."],
        [], "The list now shows only open issues assigned to you."),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rule_parser_steps_of_each_page(name):
    title, text = _page(name)
    site, steps, prereq, outcome = EXPECTED[name]
    spec = parse_tutorial(text, title=title)
    assert spec.steps == steps  # no byline, prerequisite, tag, code, share or comment line became a step
    assert spec.prerequisites == prereq and spec.expected_outcome == outcome and spec.target_site == site


def test_hard_wrapped_prose_urls_and_chrome_lines():
    text = ("By Jane Doe \u00b7 5 min read\n"
            "Open http://localhost:8000/admin/auth/user/ in your browser and look for the\n"
            "list of users. Click the name of the user you want to change, then scroll down\n"
            "to the Permissions section. Select Active and\n"
            "click Save.\n\n"
            "```\n$ curl -s http://localhost:8000/health\n```\n"
            "Tags: admin, users\n"
            "Did you enjoy this guide? Leave a comment below.")
    prepared = prepare(text)
    assert prepared.code == ["$ curl -s http://localhost:8000/health"]
    steps, _ = extract_steps(text)
    assert steps == ["Open http://localhost:8000/admin/auth/user/ in your browser and look for the list of users.",
                     "Click the name of the user you want to change, then scroll down to the Permissions section.",
                     "Select Active and click Save."]
    assert split_sentences("See example.com/a.b or settings.py in v2.1. Then click Save.") == [
        "See example.com/a.b or settings.py in v2.1.", "Then click Save."]


def test_a_new_accounts_password_fields_are_no_sign_in_step():
    title, text = _page("django-admin-add-user.html")
    spec = parse_tutorial(text, title=title)
    tutorial = Tutorial(tutorial_id="t", uri=str(PAGES / "django-admin-add-user.html"), title=title, text=text)
    env = WebEnvironment(app="tracker")
    task = WebTask(task_id="x", instruction="", environment=env, spec=WebTaskSpec(**{**spec.model_dump(), "target_site": "tracker"}),
                   provenance=WebProvenance(tutorial_id="t", tutorial_uri=tutorial.uri, synthesizer="test",
                                            synthesizer_version="1"))
    twin = make_infeasible(task)
    # the missing feature comes right after "log in with your superuser", not after the new user's password fields
    assert twin.provenance.params["infeasible_step"] == 1


def test_classifier_precision_recall_on_held_out_web_pages():
    """Held out: the web-style labeled pages of the `test` split (14) and the fixture pages (10), 11 tutorials and
    13 negatives (API references, blog posts, news, changelogs, a privacy policy), none written for the bundled
    apps and none seen in training. Measured: classifier alone P 1.0 / R 1.0; with the keyword prefilter
    P 1.0 / R 0.91 (the prefilter misses a prose tutorial with no how-to wording). The classifier trained on the
    48 bundled pages alone had P 0.73 there (it passed both API references) and scored tutorials 0.68-0.84."""
    held = [p for p in load_labels(WEB_LABELS_PATH) if p.split == "test"] + load_labels(PAGES / "labels.jsonl")
    assert len(held) == 24 and sum(p.is_tutorial for p in held) == 11
    clf = train_classifier("train")
    report = evaluate(clf, labels=held)
    alone, both = report["classifier"], report["prefilter+classifier"]
    assert alone.precision >= 0.9 and alone.recall >= 0.9, alone
    assert both.precision >= 0.9 and both.recall >= 0.85, both
    for page in held:
        if page.kind in ("api_reference", "blog", "news", "changelog"):
            assert not clf.predict(page.text)[0], (page.path, clf.predict_proba(page.text))
    tutorials = [clf.predict_proba(p.text) for p in held if p.is_tutorial]
    assert min(tutorials) >= 0.8, "calibrated: held-out tutorials score high, not 0.56-0.75"


def test_stage_takes_model_specs_with_the_rule_parser_as_fallback_and_records_the_parser():
    tutorials = []
    for name in ("shop-add-to-cart-blog.html", "tracker-filter-devblog.html"):
        title, text = _page(name)
        tutorials.append(Tutorial(tutorial_id=name, uri=f"test://{name}", title=title, text=text, is_tutorial=True))
    model_spec = {"platform": "web", "target_site": "shop", "task_description": "Add a kettle to the cart",
                  "prerequisites": [], "steps": ["Click Copper Kettle.", "Click Add to cart."],
                  "expected_outcome": "The cart holds one Copper Kettle."}

    def answer(request: httpx.Request) -> httpx.Response:  # a good spec for the shop page, no JSON for the other
        prompt = json.loads(request.content)["messages"][0]["content"]
        content = json.dumps(model_spec) if "Copper Kettle" in prompt else "sorry, I cannot"
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": content}}]})

    specs = model_specs(tutorials, lambda: ModelClient("http://model.invalid/v1", "tiny",
                                                       transport=httpx.MockTransport(answer), max_retries=0))
    tasks, quarantine = tasks_from_tutorials(tutorials, infeasible_share=0, specs=specs)
    assert not quarantine
    by_uri = {t.provenance.tutorial_uri: t for t in tasks}
    shop, tracker = by_uri["test://shop-add-to-cart-blog.html"], by_uri["test://tracker-filter-devblog.html"]
    assert shop.provenance.params["parser"] == "model" and shop.spec.steps == model_spec["steps"]
    assert tracker.provenance.params["parser"].startswith("rule-fallback")
    assert tracker.spec == parse_tutorial(tutorials[1])
    rule_tasks, _ = tasks_from_tutorials(tutorials, infeasible_share=0)  # no model: the rule parser, said so
    assert {t.provenance.params["parser"] for t in rule_tasks} == {"rule"}
