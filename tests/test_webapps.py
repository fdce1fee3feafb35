"""The bundled web apps, driven over real HTTP: pages, login, validation errors, state API, isolation, seeding."""

from __future__ import annotations

import http.cookiejar
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

from trajfactory.executors.webapps import APPS, AppConfig, launch


class Client:
    """A cookie-keeping HTTP client: one user's browser session without the browser."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def _open(self, path: str, data: dict | None = None) -> tuple[int, str, str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        try:
            with self.opener.open(self.base + path, body, timeout=10) as r:
                return r.status, r.url, r.read().decode()
        except urllib.error.HTTPError as exc:  # 4xx pages carry the validation errors
            return exc.code, exc.url, exc.read().decode()

    def get(self, path: str) -> tuple[int, str, str]:
        return self._open(path)

    def post(self, path: str, **data) -> tuple[int, str, str]:
        return self._open(path, data)

    def login(self, site) -> str:
        user, password = sorted(site.accounts.items())[0]
        status, _, html = self.post("/login", username=user, password=password)
        assert status == 200 and "Signed in as" in html
        return user


@pytest.mark.parametrize("name", sorted(APPS))
def test_app_serves_pages_and_login(name):
    with launch(name, seed=1) as site:
        assert site.url.startswith("http://127.0.0.1:")
        c = Client(site.url)
        status, url, html = c.get("/")
        assert status == 200 and "<!doctype html>" in html
        if name == "tracker":  # the admin console sits behind a login wall
            assert "/login" in url
        status, _, html = c.post("/login", username=sorted(site.accounts)[0], password="wrong")
        assert status == 400 and 'role="alert"' in html and "Invalid username or password" in html
        status, _, html = c.post("/login", username="", password="")
        assert status == 400 and "Username is required." in html and 'aria-invalid="true"' in html
        c.login(site)
        assert c.get("/__state__")[0] == 404  # the answer key needs the instance's token


def test_unknown_app_names_the_bundled_ones():
    with pytest.raises(ValueError, match="shop"):
        launch("wiki", seed=0)


def test_shop_cart_checkout_validation_and_state():
    with launch("shop", seed=2) as site:
        c = Client(site.url)
        product = next(p for p in site.state()["products"] if p["stock"] >= 2)
        status, _, html = c.post("/cart/add", product_id=product["id"], quantity="0")
        assert status == 400 and "at least 1" in html
        status, _, html = c.post("/cart/add", product_id=product["id"], quantity=str(product["stock"] + 1))
        assert status == 400 and f"Only {product['stock']} in stock." in html
        status, url, html = c.post("/cart/add", product_id=product["id"], quantity="2")
        assert url.endswith("/cart") and product["name"] in html
        assert [(r["product_id"], r["quantity"]) for r in site.state()["cart"]] == [(product["id"], 2)]

        assert "/login" in c.get("/checkout")[1]  # checkout needs an account
        user = c.login(site)
        assert site.state()["cart"][0]["username"] == user
        status, _, html = c.post("/checkout", full_name="Ann Lee", email="not-an-email", address="1 Main St",
                                 city="Springfield", zip="12ab", card="4111", shipping="standard")
        assert status == 400 and "ZIP code must be 5 digits." in html and "Enter a valid email" in html
        assert "Card number must be 16 digits." in html and site.state()["orders"] == []
        status, url, html = c.post("/checkout", full_name="Ann Lee", email="ann@example.com", address="1 Main St",
                                   city="Springfield", zip="12345", card="4111 1111 1111 1111", shipping="express")
        assert status == 200 and "/orders/1" in url and "Thank you" in html
        state = site.state()
        assert state["cart"] == [] and len(state["orders"]) == 1
        order = state["orders"][0]
        assert (order["username"], order["zip"], order["shipping"]) == (user, "12345", "express")
        assert next(p for p in state["products"] if p["id"] == product["id"])["stock"] == product["stock"] - 2


def test_shop_search_finds_products():
    with launch("shop", seed=2) as site:
        name = site.state()["products"][0]["name"]
        status, _, html = Client(site.url).get("/search?q=" + urllib.parse.quote(name))
        assert status == 200 and "result" in html and name in html


def test_forum_create_reply_edit_and_validation():
    with launch("forum", seed=3) as site:
        c = Client(site.url)
        assert "/login" in c.get("/new")[1]
        user = c.login(site)
        status, _, html = c.post("/new", title="Hey", category="", body="")
        assert status == 400 and "Title must be at least 5 characters." in html and "Choose a category." in html
        category = site.app.categories[0]
        status, url, _ = c.post("/new", title="Which kettle should I buy?", category=category, body="Budget is $50.")
        tid = int(url.rsplit("/", 1)[1])
        thread = next(t for t in site.state()["threads"] if t["id"] == tid)
        assert (thread["title"], thread["category"], thread["author"], thread["posts"]) == (
            "Which kettle should I buy?", category, user, 1)
        assert c.post(f"/thread/{tid}/reply", body="x")[0] == 400
        c.post(f"/thread/{tid}/reply", body="Following this.")
        posts = [p for p in site.state()["posts"] if p["thread_id"] == tid]
        assert [p["body"] for p in posts] == ["Budget is $50.", "Following this."]
        status, _, html = c.post(f"/post/{posts[1]['id']}/edit", body="")
        assert status == 400 and "at least 2 characters" in html
        c.post(f"/post/{posts[1]['id']}/edit", body="Following this closely.")
        edited = next(p for p in site.state()["posts"] if p["id"] == posts[1]["id"])
        assert edited["body"] == "Following this closely." and edited["edited"] == 1
        other = next(p for p in site.state()["posts"] if p["author"] != user)
        assert c.post(f"/post/{other['id']}/edit", body="hijack")[0] == 403
        status, _, html = c.get("/search?q=kettle")
        assert "Which kettle should I buy?" in html


def test_tracker_filters_create_dialog_status_and_comments():
    with launch("tracker", seed=4) as site:
        c = Client(site.url)
        c.login(site)
        issues = site.state()["issues"]
        status, _, html = c.get("/issues?status=open")
        n_open = sum(i["status"] == "open" for i in issues)
        assert status == 200 and f"{n_open} issue" in html and "<dialog" in html
        status, _, html = c.post("/issues/new", title="Bad", priority="urgent", assignee="")
        assert status == 400 and "Title must be at least 5 characters." in html and "showModal()" in html
        status, url, _ = c.post("/issues/new", title="Export drops the last row", priority="high", assignee="")
        new = site.state()["issues"][-1]
        assert url.endswith(f"/issue/{new['id']}") and (new["status"], new["priority"]) == ("open", "high")
        assert c.post(f"/issue/{new['id']}/status", status="bogus")[0] == 400
        c.post(f"/issue/{new['id']}/status", status="resolved")
        state = site.state()
        assert state["issues"][-1]["status"] == "resolved"
        assert state["history"][-1]["old"] == "open" and state["history"][-1]["new"] == "resolved"
        assert c.post(f"/issue/{new['id']}/comment", body="")[0] == 400
        c.post(f"/issue/{new['id']}/comment", body="Fixed in build 42.")
        assert site.state()["comments"][-1]["body"] == "Fixed in build 42."


def test_parallel_instances_are_isolated():
    with launch("shop", seed=5) as a, launch("shop", seed=5) as b:
        assert a.url != b.url and a.state() == b.state()
        before = b.state()
        product = next(p for p in a.state()["products"] if p["stock"])
        clients = [Client(a.url) for _ in range(4)]
        # four users add to cart at once on instance a: the threaded server and its db lock hold up
        threads = [threading.Thread(target=c.post, args=("/cart/add",), kwargs={"product_id": product["id"], "quantity": "1"})
                   for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(a.state()["cart"]) == 4
        assert b.state() == before


def test_same_seed_same_site_other_seed_differs():
    def snapshot(seed: int) -> tuple:
        with launch("shop", config=AppConfig(seed=seed)) as site:
            c = Client(site.url)
            return site.labels, site.state()["products"], site.accounts, c.get("/")[2]

    assert snapshot(7) == snapshot(7)
    labels, products, accounts, html = snapshot(8)
    labels7, products7, accounts7, html7 = snapshot(7)
    assert products != products7 and accounts != accounts7 and html != html7
    sites = [APPS[name](seed) for name in APPS for seed in range(6)]
    assert len({(s.name, tuple(s.labels.items()), tuple(s.nav)) for s in sites}) > len(APPS) * 3  # labels/layout vary


def test_activity_log_records_read_only_actions_per_instance():
    with launch("shop", seed=0) as a, launch("shop", seed=0) as b, launch("tracker", seed=0) as t:
        c = Client(a.url)
        c.post("/login", username=sorted(a.accounts)[0], password="wrong")
        user = c.login(a)
        c.get("/search?q=%20%20Tent%20")
        tent = [p for p in a.state()["products"] if "tent" in p["name"].lower()]
        c.get("/category/outdoors")
        c.get(f"/product/{tent[0]['id']}")
        log = a.state()["activity"]
        entries = {(e["kind"], e["object"], e["name"], e["user"]) for e in log}
        assert ("sign_in_failed", "user", user, None) in entries and ("sign_in", "user", user, user) in entries
        assert ("search", "product", "tent", user) in entries  # normalized query, with its result count
        assert next(e for e in log if e["kind"] == "search")["detail"] == f"results={len(tent)}"
        assert ("view", "category", "Outdoors", user) in entries and ("view", "product", tent[0]["name"], user) in entries
        assert all("session" not in e and "at" not in e for e in log)  # no volatile fields for verifiers
        c.post("/logout")
        assert ("sign_out", user) in {(e["kind"], e["name"]) for e in a.state()["activity"]}
        assert b.state()["activity"] == []  # another instance of the same seed saw none of it

        c = Client(t.url)
        user = c.login(t)
        c.get("/issues?status=open&assignee=me&q=CSV")
        c.get("/issue/1")
        kinds = {(e["kind"], e["name"]) for e in t.state()["activity"]}
        assert ("filter", f"assignee={user};q=csv;status=open") in kinds and ("search", "csv") in kinds
        assert ("view", t.state()["issues"][0]["title"]) in kinds
