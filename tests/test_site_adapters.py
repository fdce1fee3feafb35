"""Site adapters: recipe-declared and plugin adapters load; Django's admin (PyPI `django`, a real third-party app)
starts through its adapter with isolated parallel episodes and a template reset; a web-style tutorial for it goes
tutorial -> spec -> gold replay -> checks -> re-verify on a fresh episode; volatile fields stay out of the checks;
a gold replay that grants every permission where the tutorial grants one is rejected."""

from __future__ import annotations

import http.cookiejar
import re
import textwrap
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from trajfactory.executors.browser import BrowserConfig
from trajfactory.executors.browser_pool import BrowserPool
from trajfactory.executors.web_env import run_web_episode
from trajfactory.executors.webapps import SiteAdapter, adapters, get_adapter, launch, register_sites, unregister
from trajfactory.executors.webapps.registry import load_entry_points
from trajfactory.schema import Quarantine, Tutorial, WebTask, content_hash
from trajfactory.settings import WebConfig
from trajfactory.settings.sites import SiteFacts, declared_site, known_sites, site_facts
from trajfactory.sources.tutorial_text import guess_site
from trajfactory.agents.replay import ReplayPolicy, match_score
from trajfactory.synthesizers.web import stage
from trajfactory.synthesizers.web.spec import make_web_task, parse_tutorial
from trajfactory.verifiers.state import verify_state

django = pytest.importorskip("django", reason="the django_admin site needs PyPI django (scripts/setup.sh installs it)")

PLUGIN = '''
from trajfactory.executors.webapps import BundledAdapter
from trajfactory.executors.webapps.shop import ShopApp


class GiftShop(BundledAdapter):
    """A plugin adapter: the bundled shop under another name and facts."""

    def __init__(self, name="giftshop", **options):
        super().__init__(ShopApp, name=name)
        self.facts = self.facts.model_copy(update={"missing_features": ["Wrap as a gift"], **options})
'''


# ---------------------------------------------------------------- registry


@pytest.fixture(autouse=True)
def _forget_test_sites():
    """Sites a test registers leave with it: the registry is per process and other tests guess sites."""
    before = set(adapters())
    yield
    for name in set(adapters()) - before:
        unregister(name)


def test_builtin_sites_are_adapters_on_one_interface():
    assert {"shop", "forum", "tracker", "django_admin"} <= set(adapters())
    for name in ("shop", "forum", "tracker", "django_admin"):
        adapter = get_adapter(name)
        assert isinstance(adapter, SiteAdapter) and adapter.facts.name == name
        assert site_facts(name).missing_features, name  # infeasible twins need them
    with pytest.raises(ValueError, match=r"unknown web site 'nosuch'.*web.sites"):
        get_adapter("nosuch")


def test_recipe_declared_site_loads_with_its_sources_and_facts():
    config = WebConfig(sites=[{"name": "myshop", "kind": "bundled", "options": {"app": "shop"},
                               "sources": ["https://blog.example.org/shop-howtos/"], "missing_features": ["Barter"],
                               "synonyms": [["Place order", "Pay now"]]}])
    register_sites(config.sites)
    assert "myshop" in known_sites() and site_facts("myshop").missing_features == ["Barter"]
    # grounding synonyms are the site's data: the bundled shop's label choices, plus the entry's own wordings
    synonyms = site_facts("myshop").synonyms
    assert ["Add to cart", "Add to basket", "Add to bag"] in synonyms and synonyms[-1] == ["Place order", "Pay now"]
    assert match_score("Pay now", "Place order", synonyms) > 0.9 > match_score("Pay now", "Place order")
    assert not any("Add to basket" in group for group in site_facts("django_admin").synonyms)
    # the source is declared: no keyword guessing, whatever the page says
    assert declared_site("https://blog.example.org/shop-howtos/returns.html") == "myshop"
    assert guess_site("Open a thread in the forum and reply to it.", "https://blog.example.org/shop-howtos/x") == "myshop"
    with launch("myshop", seed=1) as site:
        state = site.state()
        assert state["app"] == "myshop" and state["products"]
    with pytest.raises(ValueError, match="neither a built-in kind"):
        register_sites([{"name": "bad", "kind": "nosuchkind"}])
    with pytest.raises(ValueError, match="options.app must be one of"):
        register_sites([{"name": "bad", "kind": "bundled", "options": {"app": "bakery"}}])


def test_module_class_and_entry_point_plugins_load(tmp_path, monkeypatch):
    (tmp_path / "tf_giftshop.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    [adapter] = register_sites([{"name": "giftshop", "kind": "tf_giftshop:GiftShop", "keywords": {"giftwrap": 5}}])
    assert adapter.facts.missing_features == ["Wrap as a gift"] and adapter.facts.keywords == {"giftwrap": 5}
    # an installed package's entry point, group trajfactory.sites
    dist = tmp_path / "tf_giftshop-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tf-giftshop\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[trajfactory.sites]\ngiftshop = tf_giftshop:GiftShop\n")
    loaded = load_entry_points()
    assert "giftshop" in [a.name for a in loaded]
    with launch("giftshop", seed=0) as site:
        assert site.state()["app"] == "giftshop"


def test_bundled_reset_restores_the_seeded_state():
    with launch("tracker", seed=2) as site:
        before = site.state()
        site.app.db.execute("DELETE FROM issues")
        assert not site.state()["issues"]
        site.reset()
        assert site.state() == before


# ---------------------------------------------------------------- django admin


class AdminClient:
    """A plain HTTP client of the Django admin (cookies + CSRF), as a second user of the same site would be."""

    def __init__(self, url: str):
        self.url, self.jar = url, http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPCookieProcessor(self.jar))

    def _csrf(self, path: str) -> str:
        with self.opener.open(self.url + path) as resp:
            return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', resp.read().decode()).group(1)

    def post(self, path: str, **form: str) -> str:
        data = urllib.parse.urlencode({"csrfmiddlewaretoken": self._csrf(path), **form}).encode()
        req = urllib.request.Request(self.url + path, data, headers={"Referer": self.url + path})
        with self.opener.open(req) as resp:
            return resp.geturl()

    def login(self, username: str, password: str) -> None:
        assert "/login/" not in self.post("/admin/login/?next=/admin/", username=username, password=password,
                                          next="/admin/")

    def add_user(self, username: str, password: str) -> None:
        self.post("/admin/auth/user/add/", username=username, password1=password, password2=password,
                  usable_password="true")


def _usernames(state: dict) -> set[str]:
    return {r["username"] for r in state["auth_user"]}


def test_django_admin_episodes_in_parallel_are_isolated_and_reset_restores_the_template():
    adapter = get_adapter("django_admin")
    adapter.template(0)  # built once per seed; later starts only copy it

    def episode(new_user: str) -> tuple[dict, dict, dict]:
        with adapter.start(0) as site:
            user, password = next(iter(site.accounts.items()))
            initial = site.state()
            client = AdminClient(site.url)
            client.login(user, password)
            client.add_user(new_user, "Larch-5521-q")
            changed = site.state()
            site.reset()
            return initial, changed, site.state()

    with ThreadPoolExecutor(2) as ex:
        (i1, c1, r1), (i2, c2, r2) = ex.map(episode, ["nadia", "oskar"])
    assert _usernames(c1) - _usernames(i1) == {"nadia"} and _usernames(c2) - _usernames(i2) == {"oskar"}
    new = next(r for r in c1["auth_user"] if r["username"] == "nadia")
    assert new["password"] == "set" and next(r for r in c1["auth_user"] if r["username"] == "admin")["last_login"]
    # reset: the template's rows again (the admin's sign-in time was undone too)
    assert r1 == i1 and r2 == i2  # (how long a reset takes is bench/web_yield.py's figure, not a test's)


def _tutorial(text: str) -> Tutorial:
    title, body = text.strip().split("\n", 1)
    return Tutorial(tutorial_id=content_hash("site-adapters", text), uri="https://blog.example.net/django-admin-perms",
                    title=title, text=body)


# written as a blog page's main text reads after extraction: a byline, a prerequisite, a code block, wrapped prose
TUTORIAL = textwrap.dedent("""\
    How to add a user in the Django admin and give them one permission
    By Sam Writer · 4 min read

    Before you begin, make sure you have a superuser account (python manage.py createsuperuser).
    Giving a colleague exactly the permission they need, and no more, keeps your
    admin tidy. Here is how.

    1. Log in to the Django administration site with your superuser.
    2. Click 'Users', then click 'Add user'.
    3. Type 'editor' in the Username field.
    4. Type 'Spruce-7731-x' in the Password field.
    5. Type 'Spruce-7731-x' in the Password confirmation field.
    6. Click 'Save'.
    7. Select 'Authentication and Authorization | group | Can view group' in the 'Available user permissions' list.
    8. Click the {choose} arrow.
    9. Click 'Save'.

    The permission 'Can view group' is now added to the user 'editor'.
    """)


@pytest.fixture(scope="module")
def pool():
    with BrowserPool(1, BrowserConfig(action_timeout_ms=3_000)) as p:
        yield p


@pytest.mark.browser
def test_django_admin_tutorial_to_verified_task_and_reverify_on_a_fresh_episode(pool):
    tut = _tutorial(TUTORIAL.format(choose="'Choose selected user permissions'"))
    spec = parse_tutorial(tut)
    assert spec.target_site == "django_admin"  # told by the site's declared keywords
    task = make_web_task(spec, tut, seed=0)
    checked = stage.establish_checks(task, pool)
    assert isinstance(checked, WebTask), checked
    tables = {c.table for c in checked.checks}
    assert {"auth_user", "auth_user_user_permissions"} <= tables
    granted = [c for c in checked.checks if c.table == "auth_user_user_permissions" and c.origin == "diff"]
    assert [c.where for c in granted] == [{"codename": "view_group", "permission": "Can view group", "username": "editor"}]
    # volatile fields never reach a check: sign-in and join times; the password only as "set"
    for check in checked.checks:
        assert not {"last_login", "date_joined"} & set(check.where), check
    assert next(c for c in checked.checks if c.table == "auth_user").where["password"] == "set"
    # determinism: the checked task verifies again on a fresh episode (new server, new database copy)
    run = run_web_episode(checked, ReplayPolicy(), pool)
    assert run.trajectory.exit_status == "submitted"
    verdict = verify_state(checked, run.trajectory, run.initial_state, run.final_state)
    assert verdict.passed, verdict.evidence.detail
    assert run.verdict is not None and run.verdict.passed


@pytest.mark.browser
def test_a_gold_that_grants_every_permission_is_rejected(pool):
    tut = _tutorial(TUTORIAL.format(choose="'Choose all user permissions'"))
    out = stage.establish_checks(make_web_task(parse_tutorial(tut), tut, seed=0), pool)
    assert isinstance(out, Quarantine) and out.reason == "gold_overreach", out
    assert "auth_user_user_permissions" in out.detail and "Can view group" in out.detail


def test_django_admin_infeasible_twin_asks_for_a_feature_the_site_lacks():
    tut = _tutorial(TUTORIAL.format(choose="'Choose selected user permissions'"))
    tasks, bad = stage.tasks_from_tutorials([tut.model_copy(update={"is_tutorial": True})], infeasible_share=1.0)
    assert not bad and [t.feasible for t in tasks] == [True, False]
    assert tasks[1].provenance.params["missing_feature"] in site_facts("django_admin").missing_features


def test_facts_are_plain_data():
    assert SiteFacts(name="wiki").volatile_columns("pages") == set()
    assert site_facts("shop").volatile_columns("cart") == {"session", "token"}
    assert site_facts("django_admin").volatile_columns("auth_user") == {"last_login", "date_joined"}


@pytest.mark.browser
def test_django_admin_infeasible_twin_is_reported_with_the_state_untouched(pool):
    tut = _tutorial(TUTORIAL.format(choose="'Choose selected user permissions'")).model_copy(update={"is_tutorial": True})
    tasks, _ = stage.tasks_from_tutorials([tut], infeasible_share=1.0)
    twin = stage.establish_checks(tasks[1], pool)
    assert isinstance(twin, WebTask) and not twin.feasible, twin
    assert {c.table for c in twin.checks} >= {"auth_user", "auth_user_user_permissions"}
