"""The browser sandbox with the real system Chromium against the real bundled apps."""

from __future__ import annotations

import re
import threading

import pytest

from trajfactory.executors.browser import ActionError, Browser, BrowserConfig, parse_action
from trajfactory.executors.browser_pool import BrowserPool
from trajfactory.executors.webapps import launch
from trajfactory.schema import Step

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    with Browser(BrowserConfig(action_timeout_ms=1_500)) as b:  # the disabled-button test waits this long
        yield b


def bid(obs, role: str, name: str) -> str:
    """The element id of the first `role 'name'` line of an observation."""
    m = re.search(rf"\[(\w+)\] {re.escape(role)} {re.escape(repr(name))}", obs.axtree)
    assert m, f"no {role} {name!r} in:\n{obs.axtree}"
    return m.group(1)


def login(ep, site):
    user, password = sorted(site.accounts.items())[0]
    obs = ep.step(f"goto('{site.url}/login')")
    ep.step(f"fill('{bid(obs, 'textbox', 'Username')}', '{user}')")
    ep.step(f"fill('{bid(obs, 'textbox', 'Password')}', '{password}')")
    obs = ep.step(f"click('{bid(obs, 'button', site.labels['login'])}')")
    assert "Signed in as" in obs.axtree, obs.axtree
    return obs


def test_click_fill_press_goto_back_scroll(browser):
    with launch("shop", seed=1) as site, browser.new_episode(site.url) as ep:
        obs = ep.observe()
        assert obs.url.rstrip("/") == site.url and obs.last_action_error is None
        assert obs.screenshot[:8] == b"\x89PNG\r\n\x1a\n"
        category = site.state()["products"][0]["category"]
        obs = ep.step(f"click('{bid(obs, 'link', category)}')")
        assert obs.url.endswith(f"/category/{category.lower()}") and obs.last_action_error is None
        assert f"heading {category!r}" in obs.axtree

        name = site.state()["products"][0]["name"]
        obs = ep.step(f"goto('{site.url}/search')")
        box = bid(obs, "searchbox", "Search products")
        obs = ep.step(f"fill('{box}', {name!r})")
        assert f"value={name!r}" in obs.axtree
        obs = ep.step(f"press('{box}', 'Enter')")
        assert "/search?q=" in obs.url and f"link {name!r}" in obs.axtree

        obs = ep.step("go_back()")
        assert obs.url == f"{site.url}/search" and obs.last_action_error is None

        ep.evaluate("document.body.style.minHeight = '4000px'")  # give the short page room to scroll
        obs = ep.step("scroll(0, 200)")
        assert obs.last_action_error is None and ep.evaluate("window.scrollY") == 200

        steps = ep.steps
        assert [s.name for s in steps] == ["click", "goto", "fill", "press", "go_back", "scroll"]
        assert all(s.action_s > 0 and s.observe_s > 0 for s in steps)
        step = steps[0].to_step()
        assert isinstance(step, Step) and step.tool == "click" and step.duration_s > 0


def test_goto_outside_loopback_is_refused(browser):
    with launch("forum", seed=1) as site, browser.new_episode(site.url) as ep:
        obs = ep.step("goto('http://example.com/')")
        assert "refused" in obs.last_action_error and obs.url.startswith(site.url)
        obs = ep.step("goto('file:///etc/passwd')")
        assert "refused" in obs.last_action_error
        # a page that links outside cannot load it either: the context aborts non-loopback requests
        ep.evaluate("document.body.insertAdjacentHTML('beforeend', '<a href=\"http://10.9.9.9/\">away</a>')")
        obs = ep.step(f"click('{bid(ep.observe(), 'link', 'away')}')")
        assert ep.blocked_requests == ["http://10.9.9.9/"] and not obs.url.startswith("http://10.9.9.9")


def test_login_select_option_changes_status(browser):
    with launch("tracker", seed=2) as site, browser.new_episode(site.url) as ep:
        assert "/login" in ep.url
        login(ep, site)
        issue = site.state()["issues"][0]
        obs = ep.step(f"goto('{site.url}/issue/{issue['id']}')")
        new = "closed" if issue["status"] != "closed" else "open"
        label = site.app.status_text[new]
        obs = ep.step(f"select_option('{bid(obs, 'combobox', 'Status')}', {label!r})")
        assert obs.last_action_error is None
        obs = ep.step(f"click('{bid(obs, 'button', site.labels['update_status'])}')")
        assert site.state()["issues"][0]["status"] == new
        assert f"Status set to {label}." in obs.axtree


def test_dialog_validation_error_is_visible(browser):
    with launch("tracker", seed=3) as site, browser.new_episode(site.url) as ep:
        obs = login(ep, site)
        assert "dialog" not in obs.axtree  # closed dialogs are not in the accessibility tree
        obs = ep.step(f"click('{bid(obs, 'button', site.labels['new_issue'])}')")
        assert re.search(r"\[\w+\] dialog .*modal", obs.axtree), obs.axtree
        dialog_text = obs.axtree[obs.axtree.index("dialog"):]
        obs = ep.step(f"fill('{bid(obs, 'textbox', 'Title')}', 'Bad')")
        obs = ep.step(f"click('{bid(obs, 'button', site.labels['create'])}')")
        assert "Title must be at least 5 characters." in obs.axtree and "invalid" in obs.axtree
        assert "dialog" in obs.axtree and len(site.state()["issues"]) == len(site.app.q("SELECT id FROM issues"))
        assert dialog_text


def test_ids_are_stable_across_observations(browser):
    with launch("shop", seed=4) as site, browser.new_episode(site.url) as ep:
        first, second = ep.observe(), ep.observe()
        assert first.axtree == second.axtree
        again = ep.step(f"goto('{site.url}/')")  # a fresh document of the same page numbers the same way
        assert again.axtree == first.axtree
        ids = re.findall(r"\[(\w+)\]", first.axtree)
        assert len(ids) == len(set(ids)) > 10


def test_bad_actions_become_errors_not_exceptions(browser):
    with launch("forum", seed=5) as site, browser.new_episode(site.url) as ep:
        for action, expected in [("click(", "cannot parse"), ("click('99999')", "no element with id '99999'"),
                                 ("rm('-rf')", "unknown action"), ("fill('1')", "missing a required argument"),
                                 ("click(__import__('os'))", "must be literals"), ("scroll('a', 1)", "must be a number")]:
            obs = ep.step(action)
            assert expected in (obs.last_action_error or ""), (action, obs.last_action_error)
            assert obs.axtree  # the agent still sees the page
        assert [s.name for s in ep.steps][:2] == ["", "click"] and ep.steps[0].to_step().tool == "invalid_action"
        # a disabled element times out into an error, never an exception
        ep.evaluate("document.querySelector('button').disabled = true")
        button = ep.evaluate("document.querySelector('button').dataset.tfId")
        obs = ep.step(f"click('{button}')")
        assert obs.last_action_error and "Timeout" in obs.last_action_error


def test_messages_and_infeasible_are_recorded(browser):
    with launch("shop", seed=6) as site, browser.new_episode(site.url) as ep:
        obs = ep.step("send_msg_to_user('The cheapest kettle costs $12.49.')")
        assert obs.chat_messages == [{"role": "assistant", "action": "send_msg_to_user",
                                      "content": "The cheapest kettle costs $12.49."}]
        assert not obs.done
        obs = ep.step("report_infeasible('The shop sells no bicycles.')")
        assert obs.done and ep.infeasible_reason == "The shop sells no bicycles."
        assert obs.chat_messages[-1]["action"] == "report_infeasible"


def test_parallel_episodes_do_not_share_cookies():
    """Two workers, two Chromiums from one pool, plus two contexts of one Chromium: sessions stay apart."""
    with launch("tracker", seed=7) as site, BrowserPool(size=2) as pool:
        results: dict[str, str] = {}

        def worker(tag: str, do_login: bool) -> None:
            with pool.episode(site.url) as ep:
                if do_login:
                    login(ep, site)
                ep.step(f"goto('{site.url}/issues')")
                results[tag] = ep.url

        threads = [threading.Thread(target=worker, args=("in", True)), threading.Thread(target=worker, args=("out", False))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results["in"].endswith("/issues") and "/login" in results["out"]

        browser = pool.acquire()
        try:
            with browser.new_episode(site.url) as a, browser.new_episode(site.url) as b:
                login(a, site)
                assert a.cookies() and all(c["value"] not in {x["value"] for x in a.cookies()} for c in b.cookies())
                b.step(f"goto('{site.url}/issues')")
                assert "/login" in b.url
        finally:
            pool.release(browser)


def test_parse_action_rejects_everything_but_literal_calls():
    assert parse_action("select_option('7', ['a', 'b'])") == ("select_option", {"bid": "7", "options": ["a", "b"]})
    for bad in ["click('1'); goto('x')", "click", "obj.click('1')", "click(bid=[1])", "press('1', key_comb=3)"]:
        with pytest.raises(ActionError):
            parse_action(bad)
