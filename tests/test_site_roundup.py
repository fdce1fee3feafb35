"""Roundup (PyPI `roundup`, a real third-party issue tracker) through its site adapter: episodes in parallel are
isolated and `reset()` restores the seeded tracker; web-style tutorial pages for it (data/site_tutorials/roundup)
are harvested, become tasks, and each gold replay's checks hold on the tracker's own database and verify again on a
fresh episode; a wrong episode fails them; a page that is no tutorial (an API reference) makes no task."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import trajfactory
from trajfactory.agents.replay import ReplayPolicy
from trajfactory.executors.browser import BrowserConfig
from trajfactory.executors.browser_pool import BrowserPool
from trajfactory.executors.web_env import run_web_episode
from trajfactory.executors.webapps import adapters, get_adapter, register_sites, unregister
from trajfactory.executors.webapps.roundup_tracker import message_file
from trajfactory.pipelines.web import tutorial_licenses
from trajfactory.schema import Quarantine, WebTask
from trajfactory.settings.sites import declared_site, site_facts
from trajfactory.synthesizers.web import stage
from trajfactory.verifiers.state import verify_state

PAGES = Path(trajfactory.__file__).parent / "data" / "site_tutorials" / "roundup"


class TrackerClient:
    """A plain HTTP client of the tracker's web UI (cookies + Roundup's CSRF nonce), as a second user would be."""

    def __init__(self, url: str):
        self.url, self.jar = url, http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPCookieProcessor(self.jar))

    def post(self, path: str, **form: str) -> str:
        with self.opener.open(self.url + path) as resp:
            nonce = re.search(r'name="@csrf" type="hidden"\s+value="([^"]+)"', resp.read().decode()).group(1)
        data = urllib.parse.urlencode({"@csrf": nonce, **form}).encode()
        req = urllib.request.Request(self.url + path, data, headers={"Referer": self.url + path,
                                                                      "Origin": self.url.split("/tracker")[0]})
        with self.opener.open(req) as resp:
            return resp.read().decode()

    def login(self, username: str, password: str) -> None:
        page = self.post("/", **{"@action": "Login", "__login_name": username, "__login_password": password})
        assert f"Hello, {username}" in page, page[-2000:]

    def set_status(self, issue: str, status: str, note: str) -> None:
        self.post(f"/{issue}", **{"@action": "edit", "status": status, "@note": note})


@pytest.fixture(autouse=True)
def _forget_test_sites():
    """Sites a test registers leave with it: the registry is per process and other tests guess sites."""
    before = set(adapters())
    yield
    for name in set(adapters()) - before:
        unregister(name)


def _status(state: dict, title: str) -> str:
    return next(r["status"] for r in state["issue"] if r["title"] == title)


def test_roundup_episodes_in_parallel_are_isolated_and_reset_restores_the_template():
    adapter = get_adapter("roundup")
    adapter.template(0)  # built once per seed; later starts only copy it

    def episode(status: str) -> tuple[dict, dict, dict, bool]:
        with adapter.start(0) as site:
            user, password = next(iter(site.accounts.items()))
            initial = site.state()
            client = TrackerClient(site.url)
            client.login(user, password)
            client.set_status("issue1", status, f"Moved to {status}.")
            changed = site.state()
            new_file = message_file(site.home, changed["msg"][-1]["id"])
            assert new_file.read_text() == f"Moved to {status}."
            site.reset()
            return initial, changed, site.state(), new_file.exists()

    with ThreadPoolExecutor(2) as ex:
        (i1, c1, r1, left1), (i2, c2, r2, left2) = ex.map(episode, ["deferred", "done-cbb"])
    first = i1["issue"][0]["title"]
    assert i1 == i2 and _status(i1, first) not in ("deferred", "done-cbb")
    # each episode saw only its own change
    assert _status(c1, first) == "deferred" and _status(c2, first) == "done-cbb"
    assert [r for r in c1["issue"] if r["id"] != 1] == [r for r in i1["issue"] if r["id"] != 1]
    assert [(m["author"], m["content"]) for m in c1["msg"][len(i1["msg"]):]] == [("admin", "Moved to deferred.")]
    # reset: the template's rows again, and the message file store without the new message's file
    assert r1 == i1 and r2 == i2 and not left1 and not left2
    assert all(m["content"] for m in r1["msg"]) and len(r1["msg"]) == len(r1["issue"])


def test_roundup_state_normalizes_volatile_fields():
    facts = site_facts("roundup")
    assert facts.volatile_columns("issue") == {"activity", "creation"}
    assert facts.volatile_columns("msg") == {"activity", "creation", "date"}
    with get_adapter("roundup").start(1) as site:
        users = {u["username"]: u for u in site.state()["user"]}
        assert users["admin"]["password"] == "seeded" and users["anonymous"]["password"] == "unusable"


@pytest.fixture(scope="module")
def pool():
    with BrowserPool(1, BrowserConfig(action_timeout_ms=3_000)) as p:
        yield p


@pytest.fixture(scope="module")
def tasks() -> dict[str, WebTask]:
    """The tasks of the harvested pages, by page file name (the API reference is no tutorial: no task)."""
    tutorials, quarantine = stage.harvest([str(PAGES)])
    assert not quarantine, quarantine
    by_page = {Path(t.uri).name: t for t in tutorials}
    assert not by_page["roundup-rest-api.html"].is_tutorial
    made, bad = stage.tasks_from_tutorials(tutorials, seed=0, infeasible_share=0.0)
    assert not bad, bad
    return {Path(t.provenance.tutorial_uri).name: t for t in made}


@pytest.mark.browser
@pytest.mark.parametrize("page,table", [("close-an-issue.html", "issue"), ("add-a-message.html", "msg"),
                                        ("file-a-new-issue.html", "issue")])
def test_roundup_tutorial_to_verified_task_and_reverify_on_a_fresh_episode(pool, tasks, page, table):
    task = tasks[page]
    assert task.environment.app == "roundup"
    checked = stage.establish_checks(task, pool)
    assert isinstance(checked, WebTask), checked
    assert table in {c.table for c in checked.checks if c.origin == "outcome"}, checked.checks
    for check in checked.checks:  # volatile fields never reach a check
        assert not {"activity", "creation", "date"} & set(check.where), check
    run = run_web_episode(checked, ReplayPolicy(), pool)
    assert run.trajectory.exit_status == "submitted"
    verdict = verify_state(checked, run.trajectory, run.initial_state, run.final_state)
    assert verdict.passed, verdict.evidence.detail


@pytest.mark.browser
def test_a_wrong_roundup_episode_fails_the_checks(pool, tasks):
    checked = stage.establish_checks(tasks["close-an-issue.html"], pool)
    assert isinstance(checked, WebTask), checked
    wrong = checked.model_copy(update={"spec": checked.spec.model_copy(update={
        "steps": [s.replace("'resolved'", "'deferred'") for s in checked.spec.steps]})})
    run = run_web_episode(wrong, ReplayPolicy(), pool)
    assert run.trajectory.exit_status == "submitted"  # it did something, just not what the tutorial says
    assert _status(run.final_state, "Weekly summary email arrives twice") == "deferred"
    verdict = verify_state(checked, run.trajectory, run.initial_state, run.final_state)
    assert not verdict.passed and "resolved" in verdict.evidence.detail


def test_a_form_laid_out_as_a_table_names_its_fields_by_their_row_headers():
    # Roundup's issue form: <th>Status</th><td><select>, no <label>: the row header is the field's name
    from trajfactory.agents.grounding import ground, parse_axtree

    tree = ("RootWebArea 'Issue'\n\t[5] textbox ''\n\t[7] table ''\n\t\t[8] row ''\n\t\t\t[9] rowheader 'Priority'\n"
            "\t\t\t[10] cell 'bug'\n\t\t\t\t[11] combobox '', value='bug'\n\t\t\t[12] rowheader 'Status'\n"
            "\t\t\t[13] cell 'chatting'\n\t\t\t\t[14] combobox '', value='chatting'\n\t\t[15] row ''\n"
            "\t\t\t[16] cell ''\n\t\t\t\t[17] textbox ''\n\t[18] textbox ''")
    names = {e.bid: e.name for e in parse_axtree(tree)}
    assert names["11"] == "Priority" and names["14"] == "Status"
    assert names["5"] == names["17"] == names["18"] == ""  # outside a row, or a row without a header: still nameless
    assert ground(parse_axtree(tree), "Status", ["combobox"]).bid == "14"


def test_a_recipe_declares_a_roundup_site_with_its_tutorial_source():
    [adapter] = register_sites([{"name": "bugs", "kind": "roundup", "sources": [str(PAGES)],
                                 "missing_features": ["Merge two issues"]}])
    assert adapter.facts.volatile == site_facts("roundup").volatile
    assert declared_site(str(PAGES / "roundup-rest-api.html")) == "bugs"  # declared, not guessed from keywords
    with adapter.start(0) as site:
        state = site.state()
        assert state["app"] == "bugs" and len(state["issue"]) == 6 and site.url.endswith("/tracker")


def test_the_roundup_pages_license_is_read_from_their_folder_for_the_lineage():
    """The folder declares its license (a LICENSE file with an SPDX line, Roundup's user guide being MIT); the
    dataset's lineage records it per source, and the LICENSE file itself is no page."""
    tutorials, quarantine = stage.harvest([str(PAGES)])
    assert not quarantine and "LICENSE" not in {Path(t.uri).name for t in tutorials}
    assert tutorial_licenses(tutorials, {str(PAGES): str(PAGES)}) == {str(PAGES): "Apache-2.0 AND MIT"}
    django_pages = PAGES.parent / "django_admin"
    assert tutorial_licenses(stage.harvest([str(django_pages)])[0], {str(django_pages): "django-howtos"}) == \
        {"django-howtos": "Apache-2.0"}


@pytest.mark.browser
def test_a_roundup_gold_that_adds_a_second_message_is_rejected(pool, tasks):
    task = tasks["add-a-message.html"]
    extra = ["Type 'Thanks for the report' in the 'Change Note' field.", "Click 'Submit Changes'."]
    out = stage.establish_checks(task.model_copy(update={"spec": task.spec.model_copy(update={
        "steps": [*task.spec.steps, *extra]})}), pool)
    assert isinstance(out, Quarantine) and out.reason == "gold_overreach", out
    assert "msg" in out.detail and "Thanks for the report" in out.detail


@pytest.mark.browser
def test_a_roundup_infeasible_twin_is_reported_with_the_state_untouched(pool):
    tutorials, _ = stage.harvest([str(PAGES / "close-an-issue.html")])
    made, bad = stage.tasks_from_tutorials(tutorials, seed=0, infeasible_share=1.0)
    assert not bad and [t.feasible for t in made] == [True, False]
    assert made[1].provenance.params["missing_feature"] in site_facts("roundup").missing_features
    twin = stage.establish_checks(made[1], pool)
    assert isinstance(twin, WebTask) and not twin.feasible, twin
    assert {c.table for c in twin.checks} >= {"issue", "msg"}


@pytest.mark.browser
def test_the_step_rows_of_a_roundup_episode_are_what_the_web_agent_sends(pool, tasks):
    # the web SFT rows (`datasets/web_steps.py`) on a real tracker's pages: each step's prompt is the request the
    # served web agent builds from that step's observation (the real app's accessibility tree, clipped)
    from test_web_steps import AGENT, WatchedReplay, _wire

    from trajfactory.datasets.web_steps import trl_web_step_rows

    checked = stage.establish_checks(tasks["file-a-new-issue.html"], pool)
    assert isinstance(checked, WebTask), checked
    policy = WatchedReplay()
    run = run_web_episode(checked, policy, pool)
    trajectory = run.trajectory.to_row()
    said = [m["content"] for m in trajectory["messages"] if m["role"] == "assistant"]
    assert len(said) > AGENT.history_turns + 1, said
    accounts = {checked.task_id: get_adapter("roundup").accounts(checked.environment.seed or 0)}
    rows = trl_web_step_rows([trajectory], accounts, AGENT, only_verified=False)
    assert [r["prompt"] for r in rows] == _wire(checked, policy.start, policy.seen, said)
    assert [r["completion"][0]["content"] for r in rows] == said
    assert "issue" in rows[-1]["prompt"][-1]["content"].lower()  # the tracker's own page, as the agent saw it
