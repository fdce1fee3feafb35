"""Web tasks from tutorials: spec parsing, tutorial-guided replay with the real Chromium against the
real bundled apps, state verification (feasible and infeasible), trajectory rows and screenshots."""

from __future__ import annotations

import json

import httpx
import pyarrow as pa
import pytest

from trajfactory.agents.grounding import signed_in_as
from trajfactory.agents.replay import PLACEHOLDER_TEXT, ReplayPolicy, ground, parse_axtree, parse_step
from trajfactory.executors.browser import BrowserConfig
from trajfactory.executors.browser_pool import BrowserPool
from trajfactory.executors.web_env import ScreenshotStore, run_web_episode
from trajfactory.executors.webapps import launch
from trajfactory.models.client import ModelClient
from trajfactory.schema import TABLE_SCHEMAS, Quarantine, StatePredicate, Tutorial, WebTask, content_hash
from trajfactory.settings.sites import site_facts
from trajfactory.synthesizers.web import stage
from trajfactory.synthesizers.web.spec import make_infeasible, make_web_task, parse_tutorial, parse_tutorial_with_model
from trajfactory.verifiers.state import evaluate, predicates_from_diff, predicates_from_outcome, unchanged_checks, verify_state

# Seed 0 of each app: product "Copper Lantern" (in stock), forum category "Hardware", tracker issue #1 (status
# in_progress). The tutorials use generic wording ('Add to cart', 'New thread', 'Resolved'); the seeded sites
# say 'Add to basket', 'New topic', 'Done' — the replay has to cope, as with any real tutorial.
SHOP = """How to order a Copper Lantern
You need an account on the shop before you start.
1. Click 'Sign in'.
2. Type your username in the Username field.
3. Type your password in the Password field.
4. Click the 'Sign in' button.
5. Search for "Copper Lantern".
6. Open the 'Copper Lantern' product page.
7. Click 'Add to cart'. You should see the lantern in your cart.
8. Click 'Checkout'.
9. Type 'ada@example.com' in the Email field.
10. Type '1 Main Street' in the Street address field.
11. Type 'Springfield' in the City field.
12. Type '12345' in the ZIP code field.
13. Type '4242 4242 4242 4242' in the Card number field.
14. Click 'Place order'.
You should see a confirmation that your order for the 'Copper Lantern' was placed.
"""
FORUM = """Starting a discussion. Log in with your username and password. Then click 'New thread'.
Type 'Favourite trail snacks?' in the Title field. Choose 'Hardware' from the 'Category' dropdown.
Next, type 'What do you all bring on long runs?' in the Message box. Finally, click the 'Post thread' button.
The new thread 'Favourite trail snacks?' appears in the thread list."""
TRACKER = """How to resolve an issue
Step 1: Sign in with your account.
Step 2: Open the issue 'CSV import has a broken layout on narrow screens'.
Step 3: Set the 'Status' to 'Resolved'.
Step 4: Click 'Update status'.
The issue 'CSV import has a broken layout on narrow screens' is now marked Resolved.
"""


def tutorial(text: str, site: str | None = None) -> Tutorial:
    title = text.splitlines()[0] if text.startswith("How to") else ""
    body = text[len(title):].strip() if title else text
    return Tutorial(tutorial_id=content_hash("test", text), uri=f"test://{site or 'x'}", title=title, text=body, site=site)


# ---------------------------------------------------------------- no browser


def test_spec_numbered_prose_and_step_lines():
    shop = parse_tutorial(tutorial(SHOP))
    assert shop.target_site == "shop" and shop.task_description == "Order a Copper Lantern"
    assert len(shop.steps) == 14 and shop.steps[0] == "Click 'Sign in'." and shop.steps[6] == "Click 'Add to cart'."
    assert shop.expected_outcome == "You should see a confirmation that your order for the 'Copper Lantern' was placed."
    assert shop.prerequisites == ["You need an account on the shop before you start."]

    forum = parse_tutorial(tutorial(FORUM))
    assert forum.target_site == "forum" and forum.task_description == "Starting a discussion"
    assert forum.steps[0] == "Log in with your username and password." and forum.steps[-1] == "Click the 'Post thread' button."
    assert len(forum.steps) == 6 and forum.expected_outcome.startswith("The new thread")

    tracker = parse_tutorial(tutorial(TRACKER))
    assert tracker.target_site == "tracker" and tracker.steps[2] == "Set the 'Status' to 'Resolved'."
    assert tracker.expected_outcome.endswith("is now marked Resolved.")

    inline = parse_tutorial("1. Click 'Sign in'. 2. Type 'x' in the Title field. 3. Click 'Save'.")
    assert inline.steps == ["Click 'Sign in'.", "Type 'x' in the Title field.", "Click 'Save'."]
    assert inline.expected_outcome == "The final step is done: Click 'Save'."
    with pytest.raises(ValueError, match="no instruction steps"):
        parse_tutorial("This page is about the history of kettles.")


def test_step_intents_and_grounding():
    acc = {"zed": "pw-1", "amy": "pw-2"}
    assert [(i.kind, i.label, i.value) for i in parse_step("Type your username in the Username field.", 0, acc)] == \
        [("fill", "Username", "amy")]
    assert [(i.kind, i.label, i.value) for i in parse_step("Choose 'High' from the 'Priority' dropdown.", 0, acc)] == \
        [("select", "Priority", "High")]
    assert [i.kind for i in parse_step('Search for "Kettle" and open the \'Copper Kettle\' page.', 0, acc)] == \
        ["fill", "press", "click"]
    tree = ("RootWebArea 'x'\n\t[3] link 'Basket'\n\t[4] button 'Add to basket'\n\t[5] dialog 'New', modal\n"
            "\t\t[6] textbox 'Title'\n\t\t[7] combobox 'Priority'\n\t\t\t[8] option 'High'")
    els = parse_axtree(tree)
    assert [e.bid for e in els] == ["6", "7", "8"] and els[1].options == ["High"]  # a modal hides the page behind it
    els = parse_axtree(tree.split("\n\t[5]")[0])
    shop = site_facts("shop").synonyms  # the shop's own wordings: its seeded label choices and more
    assert ground(els, "Add to cart", ["button", "link"], synonyms=shop).bid == "4"
    assert ground(els, "Cart", ["link"], synonyms=shop).bid == "3"
    assert ground(els, "Apply gift card", ["button", "link"], synonyms=shop) is None
    # another site's wordings are no generic synonyms: "Basket" is no cart on a site that does not say so
    assert ground(els, "Cart", ["link"]) is None and ground(els, "Cart", ["link"], synonyms=site_facts("forum").synonyms) is None


def test_predicates_and_diff():
    before = {"app": "shop", "orders": [], "products": [{"id": 1, "name": "Mug", "stock": 3}],
              "cart": [{"session": "a1", "product_id": 1, "quantity": 1}]}
    after = {"app": "shop", "orders": [{"id": 1, "username": "amy", "items": "Mug x1"}],
             "products": [{"id": 1, "name": "Mug", "stock": 2}], "cart": []}
    preds = predicates_from_diff(before, after)
    assert {(p.table, p.count, p.delta) for p in preds} == {("orders", 1, True), ("products", 1, False), ("cart", 0, False)}
    assert all(evaluate(p, after, before)[0] for p in preds)
    assert not all(evaluate(p, before, before)[0] for p in preds)
    wrong = {**after, "orders": [{"id": 1, "username": "amy", "items": "Kettle x1"}]}
    assert not evaluate(next(p for p in preds if p.table == "orders"), wrong, before)[0]
    ok, why = evaluate(StatePredicate(table="nope"), after)
    assert not ok and "no table 'nope'" in why


def test_an_outcome_status_word_is_read_through_the_sites_own_wordings():
    """"marked Done" is the tracker's `resolved` because the tracker declares that wording (`SiteFacts.synonyms`),
    not a list global to every site; a word that is a status already stays as it is."""
    issues = [{"id": 1, "title": "Login broken", "status": "open"}, {"id": 2, "title": "Old", "status": "resolved"},
              {"id": 3, "title": "Busy", "status": "in_progress"}, {"id": 4, "title": "Gone", "status": "closed"}]
    spec = parse_tutorial("1. Open the issue 'Login broken'.\n2. Set the 'Status' to 'Done'.\n")
    tut = Tutorial(tutorial_id="t", uri="x://t", title="t", text="t", site="tracker")
    assert ["Resolved", "Done"] in site_facts("tracker").synonyms
    for word, status in [("Done", "resolved"), ("Doing", "in_progress"), ("Archived", "closed"), ("Open", "open")]:
        task = make_web_task(spec.model_copy(update={"expected_outcome": f"The issue 'Login broken' is now marked {word}."}),
                             tut, app="tracker")
        [pred] = predicates_from_outcome(task, {"app": "tracker", "issues": issues})
        assert pred.where == {"status": status}, (word, pred)


def test_model_spec_falls_back_to_rules_on_a_bad_answer():
    import asyncio

    def bad(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["response_format"]["type"] == "json_schema"  # the constrained-output request is what vLLM gets
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "not json"}}]})

    client = ModelClient("http://model.invalid/v1", "tiny", transport=httpx.MockTransport(bad), max_retries=0)
    spec, parser = asyncio.run(parse_tutorial_with_model(tutorial(TRACKER), client))
    assert parser.startswith("rule-fallback") and spec == parse_tutorial(tutorial(TRACKER))


# ---------------------------------------------------------------- real Chromium, real apps


@pytest.fixture(scope="module")
def pool():
    with BrowserPool(1, BrowserConfig(action_timeout_ms=2_000)) as p:
        yield p


@pytest.fixture(scope="module")
def tasks():
    out = {}
    for app, text in (("shop", SHOP), ("forum", FORUM), ("tracker", TRACKER)):
        tut = tutorial(text, app)
        out[app] = make_web_task(parse_tutorial(tut), tut, seed=0)
    return out


@pytest.fixture(scope="module")
def replays(pool, tasks, tmp_path_factory):
    store = ScreenshotStore(tmp_path_factory.mktemp("shots"))
    return store, {app: run_web_episode(t, ReplayPolicy(), pool, store) for app, t in tasks.items()}


@pytest.mark.browser
@pytest.mark.parametrize("app", ["shop", "forum", "tracker"])
def test_replay_succeeds_and_state_checks_pass(app, tasks, replays):
    task, run = tasks[app], replays[1][app]
    traj = run.trajectory
    assert traj.exit_status == "submitted", [m.content for m in traj.messages if m.role == "assistant"]
    outcome = predicates_from_outcome(task, run.initial_state)
    assert outcome, task.spec.expected_outcome
    diff = predicates_from_diff(run.initial_state, run.final_state)
    assert diff and all(p.origin == "diff" for p in diff)
    checked = task.model_copy(update={"checks": outcome + diff, "gold": [m.content for m in traj.messages if m.role == "assistant"]})
    verdict = verify_state(checked, traj, run.initial_state, run.final_state)
    assert verdict.passed and verdict.score == 1.0, verdict.evidence.detail
    # the untouched start state fails the same checks
    stale = verify_state(checked, traj, run.initial_state, run.initial_state)
    assert not stale.passed and json.loads(stale.evidence.detail)["failed"]


@pytest.mark.browser
def test_expected_state_per_app(replays):
    runs = replays[1]
    order = runs["shop"].final_state["orders"][-1]
    assert "Copper Lantern" in order["items"] and order["zip"] == "12345" and order["city"] == "Springfield"
    thread = runs["forum"].final_state["threads"][-1]
    assert thread["title"] == "Favourite trail snacks?" and thread["category"] == "Hardware"
    assert runs["tracker"].final_state["issues"][0]["status"] == "resolved"


@pytest.mark.browser
def test_wrong_state_fails(pool, tasks, replays):
    task, run = tasks["shop"], replays[1]["shop"]
    checks = predicates_from_outcome(task, run.initial_state) + predicates_from_diff(run.initial_state, run.final_state)
    checked = task.model_copy(update={"checks": checks})
    # a replay stopped early (before checkout) leaves no order
    early = run_web_episode(task, ReplayPolicy(), pool, max_steps=9)
    assert early.trajectory.exit_status == "step_limit"
    verdict = verify_state(checked, early.trajectory, early.initial_state, early.final_state)
    assert not verdict.passed and "orders" in verdict.evidence.detail
    # an order of a different product
    other = json.loads(json.dumps(run.final_state))
    other["orders"][-1]["items"] = other["orders"][-1]["items"].replace("Copper Lantern", "Classic Tent")
    assert not verify_state(checked, run.trajectory, run.initial_state, other).passed


@pytest.mark.browser
def test_infeasible_task(pool, tasks, replays):
    with launch("shop", 0) as site:  # the seeded site's real labels: the missing feature must really be missing
        labels = site.labels
    bad = make_infeasible(tasks["shop"], labels)
    assert not bad.feasible and bad.task_id != tasks["shop"].task_id and "Apply gift card" in bad.spec.steps[4]
    run = run_web_episode(bad, ReplayPolicy(), pool)
    assert run.trajectory.exit_status == "infeasible" and run.trajectory.steps[-1].tool == "report_infeasible"
    assert "Apply gift card" in run.trajectory.steps[-1].arguments["reason"]
    verdict = verify_state(bad, run.trajectory, run.initial_state, run.final_state)
    assert verdict.passed, verdict.evidence.detail
    # a policy that never reports infeasibility skips the step, places the order, and fails
    naive = run_web_episode(bad, ReplayPolicy(report_infeasible=False), pool)
    assert naive.trajectory.exit_status == "submitted" and naive.final_state["orders"]
    verdict = verify_state(bad, naive.trajectory, naive.initial_state, naive.final_state)
    failed = json.loads(verdict.evidence.detail)["failed"]
    assert not verdict.passed and {f["check"] for f in failed} == {"reported report_infeasible as the last action", "state unchanged"}


@pytest.mark.browser
def test_rows_fit_records_and_screenshots_by_hash(tasks, replays):
    store, runs = replays
    rows = [r.trajectory.to_row() for r in runs.values()]
    table = pa.Table.from_pylist(rows, schema=TABLE_SCHEMAS["trajectories"])
    assert table.num_rows == 3
    tasks_table = pa.Table.from_pylist([t.to_row() for t in tasks.values()], schema=TABLE_SCHEMAS["web_tasks"])
    assert tasks_table.column("target_site").to_pylist() == ["shop", "forum", "tracker"]
    traj = runs["shop"].trajectory
    roles = [m.role for m in traj.messages]
    assert roles[:3] == ["system", "user", "user"] and roles[3] == "assistant"
    assert all(m.tool_calls is None for m in traj.messages)
    assert len([r for r in roles if r == "assistant"]) == len(traj.steps)
    for step in traj.steps:
        sha = step.arguments["screenshot"]
        assert store.path(sha).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = store.path(traj.steps[0].arguments["screenshot"]).read_bytes()
    before = len(list(store.dir.iterdir()))
    assert store.put(png) == store.put(png) == traj.steps[0].arguments["screenshot"]
    assert len(list(store.dir.iterdir())) == before


# ---------------------------------------------------------------- loose wording, read-only tasks, the funnel


def intents(step: str) -> list[tuple]:
    return [(i.kind, i.label, i.value, i.alts, i.first_item) for i in parse_step(step, 0, {"amy": "pw"})]


def test_loose_steps_parse_and_ground_but_missing_targets_do_not():
    (kind, label, _, alts, item), = intents("Click Log in (or Sign in) in the header.")
    assert (kind, label, alts[0], item) == ("click", "Log in", "Sign in", False)
    assert intents("Open the shop home page.")[0][0] == "home"
    assert intents("Go to the home page by clicking Home (or Shop) in the top bar.")[0][1:4] == ("Home", "", ["Shop"])
    assert intents("Click a category name, for example Outdoors.") == [("click", "Outdoors", "Categories", [], True)]
    assert intents("Pick a value in Status, for example Open or In progress.")[0][:4] == ("select", "Status", "Open", ["In progress"])
    assert intents("Choose an Assignee, or Me for your own issues.")[0][:3] == ("select", "Assignee", "Me")
    assert intents("Select the new status — Open, In progress or Closed — and click Update status.")[0][:2] == ("select", "status")
    assert intents("Optionally type words in Title contains.") == []  # the tutorial says it may be left out
    # a named control is never dropped: the replay must find it or fail on it
    assert intents("Use the Subscribe to category button to get email updates.")[0][:2] == ("click", "Subscribe to category")
    els = parse_axtree("RootWebArea 'x'\n\t[3] link 'Sign in'\n\t[4] button '  ADD TO   basket '\n\t[5] button 'Apply'")
    assert ground(els, "Log in", ["link"]).bid == "3" and ground(els, "add to cart", ["button"], synonyms=site_facts("shop").synonyms).bid == "4"
    assert ground(els, "Filter", ["button"]).bid == "5"  # a synonym of the seeded label
    assert ground(els, "Subscribe to category", ["button", "link"]) is None and ground(els, "Export", ["button"]) is None
    # "your post": the signed-in user as any site greets them, not only as the bundled apps do
    for header, name in [("StaticText 'Signed in as Amy Lee'", "Amy Lee"), ("StaticText 'Hello, admin'", "admin"),
                         ("StaticText 'Welcome, carla.'", "carla"), ("link 'Log in'", ""),
                         ("StaticText 'Hello, everyone!'\n\tStaticText 'Signed in as Amy Lee'", "Amy Lee")]:
        assert signed_in_as(f"RootWebArea 'x'\n\t{header}\n") == name, header


def test_a_fill_and_a_click_in_one_sentence_keep_both_and_a_value_never_swaps_with_its_field():
    """Regressions found on Roundup's pages: the fill of "type 'X' in the 'Change Note' field and click 'Submit
    Changes'" kept in each wording, and "with" inside a quoted value read as "Fill in <label> with <value>"."""
    note, submit = ("fill", "Change Note", "Reproduced", [], False), ("click", "Submit Changes", "", [], False)
    for step in ["Type 'Reproduced' in the 'Change Note' field and click 'Submit Changes'.",
                 "In the 'Change Note' field, type 'Reproduced' and click 'Submit Changes'.",
                 "Add a note: type 'Reproduced' in the 'Change Note' field and click 'Submit Changes'.",
                 "Fill in 'Change Note' with 'Reproduced', then click 'Submit Changes'."]:
        assert intents(step) == [note, submit], step
    spec = parse_tutorial("First, log in. Then click the issue 'Search'. In the 'Change Note' field, type 'Reproduced' "
                          "and click 'Submit Changes'.")
    assert [i.kind for s in spec.steps for i in parse_step(s, 0, {"amy": "pw"})] == ["login", "click", "fill", "click"]
    worded = intents("Type 'Search fails with the word naive' in the 'Change Note' field.")
    assert worded == [("fill", "Change Note", "Search fails with the word naive", [], False)]
    assert intents("Type 'Fixed with the word patch' into 'Title'.")[0][1:3] == ("Title", "Fixed with the word patch")
    # the field's quoted name is never the value: an unquoted or example value goes in it instead
    assert intents("Type your message in the 'Change Note' field.")[0][1:3] == ("Change Note", PLACEHOLDER_TEXT)
    assert intents("Type a note such as 'Thanks' in the 'Change Note' field.")[0][1:3] == ("Change Note", "Thanks")


def test_log_predicates_and_the_read_only_rule():
    log = lambda *rows: [{"id": i, "kind": k, "object": o, "name": n, "detail": "results=3", "user": u}
                         for i, (k, o, n, u) in enumerate(rows, 1)]
    before = {"app": "shop", "cart": [], "activity": []}
    after = {"app": "shop", "cart": [], "activity": log(("sign_in", "user", "amy", "amy"), ("page", "page", "/", "amy"),
                                                        ("search", "product", "lamp", "amy"), ("search", "product", "tent", "amy"))}
    preds = predicates_from_diff(before, after)
    wheres = [p.where for p in preds if p.table == "activity"]
    assert {"kind": "sign_in", "object": "user", "name": "amy", "user": "amy"} in wheres
    assert {"kind": "search", "object": "product", "name": "tent"} in wheres  # the last search, no ids or counts
    assert not any(w.get("name") in ("lamp", "/") for w in wheres) and any(p.table == "cart" and p.count == 0 for p in preds)
    other = {**after, "activity": log(("sign_in", "user", "bob", "bob"), ("search", "product", "kettle", "bob"))}
    assert not any(evaluate(p, other, before)[0] for p in preds if p.table == "activity")
    # data changed: checks come from the data alone, as before
    changed = {**after, "cart": [{"product_id": 1, "quantity": 1}]}
    assert all(p.table == "cart" for p in predicates_from_diff(before, changed))
    # infeasible: browsing is not touching, a data change is
    task = make_infeasible(make_web_task(parse_tutorial(tutorial(SHOP)), tutorial(SHOP, "shop")), {})
    assert [c.table for c in unchanged_checks(before)] == ["cart"]
    assert json.loads(verify_state(task, None, before, after).evidence.detail)["failed"][0]["check"].startswith("reported")
    assert "state unchanged" in verify_state(task, None, before, changed).evidence.detail


READ_ONLY = """How to find a tent
1. Click Log in (or Sign in) in the header.
2. Enter your Username and Password.
3. Click the Log in button.
4. Search for "tent".
5. Click a product name to open its page.
"""


class OtherUser(ReplayPolicy):
    """The same replay, signed in as the second seeded account."""

    def reset(self, task, start=None, accounts=None):
        accounts = start.info["accounts"] if start is not None else accounts or {}
        super().reset(task, accounts=dict(sorted(accounts.items())[1:]))


@pytest.mark.browser
def test_read_only_tutorial_gets_log_checks_and_other_rollouts_fail(pool):
    task = make_web_task(parse_tutorial(tutorial(READ_ONLY, "shop")), tutorial(READ_ONLY, "shop"), seed=0)
    checked = stage.establish_checks(task, pool)
    assert isinstance(checked, WebTask), checked
    with launch("shop", 0) as site:
        user = sorted(site.accounts)[0]
    described = [c.description for c in checked.checks]
    assert f"user {user!r} signed in" in described and "a search of products for 'tent' was made" in described
    assert any(d.startswith("product ") and d.endswith("was viewed") for d in described)
    assert run_web_episode(checked, ReplayPolicy(), pool).verdict.passed
    for wrong, policy, missed in ((READ_ONLY.replace('"tent"', '"lantern"'), ReplayPolicy(), "for 'tent'"),
                                  (READ_ONLY, OtherUser(), f"user {user!r} signed in")):
        other = make_web_task(parse_tutorial(tutorial(wrong, "shop")), tutorial(wrong, "shop"), seed=0)
        run = run_web_episode(other, policy, pool)
        assert run.trajectory.exit_status == "submitted"
        verdict = verify_state(checked, run.trajectory, run.initial_state, run.final_state)
        assert not verdict.passed and missed in verdict.evidence.detail, verdict.evidence.detail
    assert not verify_state(checked, run.trajectory, run.initial_state, run.initial_state).passed  # doing nothing


@pytest.mark.browser
def test_funnel_on_bundled_docs_verifies_many_more_and_names_outdated_steps(pool):
    with stage.tutorial_sources(["builtin:docs"]) as uris:
        tutorials, _ = stage.harvest(uris)
    tasks, _ = stage.tasks_from_tutorials(tutorials, infeasible_share=0.25)
    established = [stage.establish_checks(t, pool) for t in tasks]
    checked = [r for r in established if isinstance(r, WebTask)]
    verdicts = [run_web_episode(t, ReplayPolicy(), pool).verdict for t in checked]
    feasible = sum(v.passed for t, v in zip(checked, verdicts) if t.feasible)
    assert feasible >= 12, [q.detail for q in established if isinstance(q, Quarantine)]  # 2 before the activity log
    assert all(v.passed for t, v in zip(checked, verdicts) if not t.feasible)
    bad = {"/".join(q.uri.rsplit("/", 2)[-2:]): q for t, q in zip(tasks, established) if isinstance(q, Quarantine) and t.feasible}
    for page, step in (("tracker/tracker-faq.html", "Export"), ("tracker/comment.html", "Notify watchers"),
                       ("forum/browse-categories.html", "Subscribe to category")):
        assert bad[page].reason == "replay_failed" and step in bad[page].detail and "Step " in bad[page].detail
