"""What every bundled web app shares: a seeded sqlite database, sessions, routing, HTML helpers, a server.

An app is a `WebApp` subclass with a schema, seeded content, synonym lists for its labels, and
handlers marked with `@route`. `serve(app)` binds it to a free loopback port in a thread and
returns an `AppInstance`. Each instance owns a fresh in-memory database, so episodes never share
state. Verifiers read `GET /__state__` (needs the instance's state token in `X-State-Token`, so
an agent driving the browser cannot read the answer key).

Every app keeps a server-side activity log, as real sites keep audit and analytics logs: sign-ins and
sign-outs (with the user), searches (normalized query, result count), filters applied (canonical
`key=value` list), item views (product, category, thread, issue, order) and plain page views. It is
part of `/__state__` (table `activity`: kind, object, name, detail, user; no timestamps), so a
read-only task (sign in, search, browse, filter) leaves a trace that a state check can verify.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import sqlite3
import threading
import urllib.request
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, ClassVar
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, Field

from trajfactory.runtime import LoopbackServer
from trajfactory.settings.sites import SiteFacts

from .html import CSS, error_summary, esc, field_html, select_html, table_html  # noqa: F401  (re-exported)

STATE_PATH = "/__state__"
STATE_HEADER = "X-State-Token"

FIRST_NAMES = ["alice", "bruno", "chen", "dana", "emeka", "farah", "goran", "hana", "ivan", "jonas",
               "kira", "lena", "mateo", "nora", "omar", "priya", "quinn", "rosa", "sven", "tara"]
LAST_NAMES = ["Abbott", "Brandt", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad",
              "Ito", "Jensen", "Kowalski", "Lindqvist", "Moreau", "Novak", "Okafor", "Patel"]
PASSWORD_WORDS = ["amber", "birch", "cedar", "delta", "ember", "fjord", "glade", "heron", "indigo"]

BASE_SCHEMA = """
CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT UNIQUE, password TEXT, display_name TEXT,
                    role TEXT DEFAULT 'member');
CREATE TABLE sessions (token TEXT PRIMARY KEY, user_id INTEGER, flash TEXT DEFAULT '');
CREATE TABLE activity (id INTEGER PRIMARY KEY, session TEXT, user_id INTEGER, kind TEXT, object TEXT DEFAULT '',
                       name TEXT DEFAULT '', detail TEXT DEFAULT '');
"""
ACTIVITY_TABLE = "activity"
ACTIVITY_QUERY = ("SELECT a.id, a.kind, a.object, a.name, a.detail, u.username AS user FROM activity a "
                  "LEFT JOIN users u ON u.id=a.user_id ORDER BY a.id")
"""The log as verifiers see it: no session tokens, no timestamps (ids only order the rows)."""


def normalize_query(text: str) -> str:
    """How the log stores a search: lower case, single spaces (as analytics pipelines normalize queries)."""
    return " ".join(text.lower().split())

class AppConfig(BaseModel):
    """How one app instance is started."""

    seed: int = 0
    """Seeds content, labels and layout; the same seed gives the same site."""
    host: str = "127.0.0.1"
    """Loopback only: the sandbox browser may reach nothing else."""
    port: int = Field(0, ge=0, le=65535)
    """0 picks a free port."""


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    session: str
    user: sqlite3.Row | None

    def arg(self, name: str, default: str = "") -> str:
        return self.form.get(name, self.query.get(name, default)).strip()


@dataclass
class Response:
    body: str | bytes = ""
    status: int = 200
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


def redirect(location: str) -> Response:
    # 303 so a POST form submission lands on a GET page (back/refresh never re-posts)
    return Response(status=303, headers=[("Location", location)])


def route(method: str, pattern: str) -> Callable:
    """Mark a `WebApp` method as the handler of `method` requests whose path fully matches `pattern`."""

    def mark(fn: Callable) -> Callable:
        fn._route = (method, re.compile(pattern))
        return fn

    return mark


# ------------------------------------------------------------------------ the app base


class WebApp:
    """One site with its own seeded database; subclasses add SCHEMA, LABELS, seed_content and routes."""

    name: ClassVar[str] = "app"
    FACTS: ClassVar[SiteFacts] = SiteFacts(name="app")
    """What the web half knows about the app without starting it (keywords, tables, volatile columns ...)."""
    SITE_NAMES: ClassVar[list[str]] = ["Site"]
    SCHEMA: ClassVar[str] = ""
    LABELS: ClassVar[dict[str, list[str]]] = {}
    """Label key -> synonyms; the seed picks one per key (domain randomization of button texts)."""
    NAV: ClassVar[list[tuple[str, str]]] = []
    """(label key, href) of the main navigation; the seed shuffles its order."""
    STATE_QUERIES: ClassVar[dict[str, str]] = {}
    """Name -> SQL whose rows `/__state__` returns."""
    LOGIN_REQUIRED: ClassVar[bool] = False
    COMMON_LABELS: ClassVar[dict[str, list[str]]] = {
        "login": ["Log in", "Sign in"], "logout": ["Log out", "Sign out"], "search": ["Search", "Find"],
    }

    def __init__(self, seed: int = 0, site: str | None = None):
        self.seed = seed
        self.site = site or self.name  # the site name its adapter was registered under
        # string seed: stable across processes (hash randomization does not touch str seeds of Random)
        self.rng = random.Random(f"{self.name}:{seed}")
        self.lock = threading.RLock()  # one sqlite connection, requests served one at a time
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(BASE_SCHEMA + self.SCHEMA)
        self.site_name = self.rng.choice(self.SITE_NAMES)
        self.labels = {k: self.rng.choice(v) for k, v in sorted({**self.COMMON_LABELS, **self.LABELS}.items())}
        self.nav = self.rng.sample(self.NAV, len(self.NAV))
        self.accounts = self._seed_users()
        self.seed_content()
        self.db.commit()
        self.state_token = secrets.token_hex(16)
        self.cookie_name = f"sid_{self.name}_{secrets.token_hex(4)}"  # cookies ignore ports: keep instances apart
        self.routes = [(fn._route[0], fn._route[1], getattr(self, n)) for n in dir(type(self))
                       if (fn := getattr(type(self), n, None)) is not None and hasattr(fn, "_route")]

    # ---- seeding
    def _seed_users(self) -> dict[str, str]:
        names = self.rng.sample(FIRST_NAMES, 5)
        accounts = {}
        for i, first in enumerate(names):
            password = f"{self.rng.choice(PASSWORD_WORDS)}-{self.rng.randrange(1000, 9999)}"
            role = "admin" if i == 0 else "member"
            display = f"{first.title()} {self.rng.choice(LAST_NAMES)}"
            self.db.execute("INSERT INTO users (username, password, display_name, role) VALUES (?,?,?,?)",
                            (first, password, display, role))
            accounts[first] = password
        return accounts

    def seed_content(self) -> None:
        """Fill the app's tables from `self.rng`."""

    # ---- queries
    def q(self, sql: str, *args) -> list[sqlite3.Row]:
        return self.db.execute(sql, args).fetchall()

    def q1(self, sql: str, *args) -> sqlite3.Row | None:
        return self.db.execute(sql, args).fetchone()

    def state(self) -> dict[str, Any]:
        with self.lock:
            tables = {k: [dict(r) for r in self.q(sql)] for k, sql in self.STATE_QUERIES.items()}
            tables[ACTIVITY_TABLE] = [dict(r) for r in self.q(ACTIVITY_QUERY)]
        return {"app": self.site, "seed": self.seed, **tables}

    def arrange(self, key: str, sections: list[str]) -> list[str]:
        """`sections` in this seed's order for `key` (a function of the seed only, not of request count)."""
        return random.Random(f"{self.name}:{self.seed}:{key}").sample(sections, len(sections))

    def log(self, req: Request, kind: str, obj: str = "", name: str = "", detail: str = "",
            user_id: int | None = None) -> None:
        """Append one entry to the activity log (the user is the session's, unless given)."""
        uid = user_id if user_id is not None else (req.user["id"] if req.user else None)
        self.db.execute("INSERT INTO activity (session, user_id, kind, object, name, detail) VALUES (?,?,?,?,?,?)",
                        (req.session, uid, kind, obj, name, detail))

    def flash(self, req: Request, message: str) -> None:
        self.db.execute("UPDATE sessions SET flash=? WHERE token=?", (message, req.session))

    # ---- rendering
    def page(self, req: Request, title: str, body: str, status: int = 200) -> Response:
        nav = "".join(f'<li><a href="{href}">{esc(self.labels[key])}</a></li>' for key, href in self.nav)
        if req.user:
            who = (f'<span>Signed in as {esc(req.user["display_name"])}</span><form method="post" '
                   f'action="/logout"><button type="submit">{esc(self.labels["logout"])}</button></form>')
        else:
            who = f'<a href="/login">{esc(self.labels["login"])}</a>'
        row = self.q1("SELECT flash FROM sessions WHERE token=?", req.session)
        flash = f'<p role="status">{esc(row["flash"])}</p>' if row and row["flash"] else ""
        if flash:
            self.db.execute("UPDATE sessions SET flash='' WHERE token=?", (req.session,))
        doc = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · '
               f'{esc(self.site_name)}</title><style>{CSS}</style></head><body><header>'
               f'<a href="/">{esc(self.site_name)}</a><nav aria-label="Main"><ul>{nav}</ul></nav>{who}'
               f'</header><main>{flash}{body}</main><footer>{esc(self.site_name)} · demo site</footer></body></html>')
        return Response(doc, status=status)

    def not_found(self, req: Request, what: str = "Page") -> Response:
        return self.page(req, "Not found", f"<h1>{esc(what)} not found</h1><p><a href=\"/\">Home</a></p>", 404)

    # ---- login (shared by every app)
    @route("GET", r"/login")
    def login_form(self, req: Request, errors: dict | None = None, username: str = "") -> Response:
        errors = errors or {}
        nxt = req.arg("next")
        body = (f"<h1>{esc(self.labels['login'])}</h1>{error_summary(errors)}"
                f'<form method="post" action="/login"><input type="hidden" name="next" value="{esc(nxt)}">'
                + field_html("Username", "username", username, errors.get("username", ""), required=True)
                + field_html("Password", "password", "", errors.get("password", ""), kind="password", required=True)
                + f'<button type="submit">{esc(self.labels["login"])}</button></form>')
        return self.page(req, self.labels["login"], body, 400 if errors else 200)

    @route("POST", r"/login")
    def login(self, req: Request) -> Response:
        username, password = req.arg("username"), req.form.get("password", "")
        errors = {}
        if not username:
            errors["username"] = "Username is required."
        if not password:
            errors["password"] = "Password is required."
        user = self.q1("SELECT * FROM users WHERE username=?", username) if not errors else None
        if not errors and (user is None or user["password"] != password):
            errors["password"] = "Invalid username or password."
        if errors:
            self.log(req, "sign_in_failed", "user", username)
            return self.login_form(req, errors, username)
        self.db.execute("UPDATE sessions SET user_id=? WHERE token=?", (user["id"], req.session))
        self.log(req, "sign_in", "user", user["username"], user_id=user["id"])
        self.flash(req, f"Welcome back, {user['display_name']}.")
        nxt = req.arg("next")
        return redirect(nxt if nxt.startswith("/") and not nxt.startswith("//") else "/")

    @route("POST", r"/logout")
    def logout(self, req: Request) -> Response:
        if req.user:
            self.log(req, "sign_out", "user", req.user["username"])
        self.db.execute("UPDATE sessions SET user_id=NULL WHERE token=?", (req.session,))
        return redirect("/")

    # ---- dispatch
    def handle(self, method: str, raw_path: str, body: bytes, cookies: dict[str, str]) -> tuple[Response, str | None]:
        """Serve one request; returns the response and a new session token to set, if one was made."""
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        form = ({k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
                if method == "POST" else {})
        with self.lock:
            token, new = cookies.get(self.cookie_name, ""), None
            if not self.q1("SELECT 1 FROM sessions WHERE token=?", token):
                token = new = secrets.token_hex(16)
                self.db.execute("INSERT INTO sessions (token) VALUES (?)", (token,))
            user = self.q1("SELECT u.* FROM sessions s JOIN users u ON u.id=s.user_id WHERE s.token=?", token)
            req = Request(method, parts.path, query, form, token, user)
            for m, pattern, fn in self.routes:
                if m == method and (match := pattern.fullmatch(parts.path)):
                    if self.LOGIN_REQUIRED and user is None and parts.path not in ("/login", "/logout"):
                        resp = redirect(f"/login?next={parts.path}")
                    else:
                        resp = fn(req, *match.groups())
                    break
            else:
                resp = self.not_found(req)
            if method == "GET" and resp.status == 200:  # a page view, as an access log records it
                self.log(req, "page", "page", parts.path)
            self.db.commit()
        return resp, new


# ------------------------------------------------------------------------ the server


class _Handler(BaseHTTPRequestHandler):
    app: WebApp  # set on a per-instance subclass

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.split("?")[0] == STATE_PATH and method == "GET":
            if self.headers.get(STATE_HEADER) != self.app.state_token:
                return self._send(Response("not found", 404, "text/plain"), None)
            return self._send(Response(json.dumps(self.app.state()), 200, "application/json"), None)
        cookies = {k: m.value for k, m in SimpleCookie(self.headers.get("Cookie", "")).items()}
        try:
            resp, new_token = self.app.handle(method, self.path, body, cookies)
        except Exception as exc:  # an app bug is a 500 page, never a dead server
            resp, new_token = Response(f'<h1>Server error</h1><p role="alert">{esc(exc)}</p>', 500), None
        self._send(resp, new_token)

    def _send(self, resp: Response, new_token: str | None) -> None:
        data = resp.body.encode() if isinstance(resp.body, str) else resp.body
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")  # back/forward must show the current state
        if new_token:
            self.send_header("Set-Cookie", f"{self.app.cookie_name}={new_token}; Path=/; HttpOnly; SameSite=Lax")
        for k, v in resp.headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, *args) -> None:  # quiet: episodes run many requests
        pass


class AppInstance:
    """One running app: its own server thread and database. Use as a context manager."""

    def __init__(self, app: WebApp, config: AppConfig):
        self.app = app
        self._handler = handler = type(f"{app.name}Handler", (_Handler,), {"app": app})
        self._server = LoopbackServer(handler, f"webapp-{app.name}", config.host, config.port)
        self.url = self._server.url

    @property
    def accounts(self) -> dict[str, str]:
        """username -> password of the seeded users (for task instructions, never shown on the site)."""
        return dict(self.app.accounts)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.app.labels)

    def state(self) -> dict[str, Any]:
        """The app's state as verifiers see it, read over HTTP from `/__state__`."""
        req = urllib.request.Request(self.url + STATE_PATH, headers={STATE_HEADER: self.app.state_token})
        # no proxy: an http_proxy from the environment must never see loopback traffic
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10) as resp:
            return json.loads(resp.read())

    def reset(self) -> None:
        """Back to the seeded state: a freshly seeded database behind the same URL (old sessions end)."""
        old = self.app
        fresh = type(old)(old.seed, site=old.site)
        with old.lock:
            self._handler.app = self.app = fresh
        with old.lock:
            old.db.close()

    def close(self) -> None:
        self._server.close()
        with self.app.lock:
            self.app.db.close()

    def __enter__(self) -> "AppInstance":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(app: WebApp, config: AppConfig | None = None) -> AppInstance:
    return AppInstance(app, config or AppConfig(seed=app.seed))
