"""The browser sandbox: one Chromium per worker, a fresh context per episode, BrowserGym-style actions.

    with BrowserPool(size=1) as pool, pool.episode(site.url) as ep:   # executors/browser_pool.py
        obs = ep.observe()            # obs.axtree: "[12] button 'Add to cart'" lines; obs.screenshot: PNG
        obs = ep.step("click('12')")  # a bad action never raises: it becomes obs.last_action_error

Element ids (`bid`s) are `data-tf-id` attributes written over the DOM in document order before each
observation; an element keeps its id for the life of its document, so re-observing a page gives
the same ids. The accessibility tree is Chromium's own (CDP `Accessibility.getFullAXTree`), joined
to the ids through a DOM snapshot. Playwright's sync API is bound to the thread that started it,
so each `Browser` runs every Playwright call on its own worker thread; any thread may drive it.
Requests to anything but loopback hosts are aborted: episodes see only their local sites.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from trajfactory.executors.browser_actions import (  # noqa: F401 - re-exported
    ACTIONS, ActionError, action_space, parse_action,
)
from trajfactory.executors.axtree import render_axtree
from trajfactory.executors.base import InfrastructureError
from trajfactory.schema import Step, utcnow

log = logging.getLogger(__name__)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
LOOPBACK = ["127.0.0.1", "localhost", "::1"]

MARK_JS = """() => {
  let next = window.__tfNext || 1;
  for (const el of document.querySelectorAll('*')) {
    if (!el.hasAttribute('data-tf-id')) el.setAttribute('data-tf-id', String(next++));
  }
  window.__tfNext = next;
}"""


class BrowserConfig(BaseModel):
    """How Chromium is launched and how episodes behave."""

    executable_path: str = "/usr/bin/chromium"
    """The system Chromium (Debian package); `playwright install` is not used."""
    args: list[str] = Field(default_factory=lambda: list(CHROMIUM_ARGS))
    headless: bool = True
    viewport_width: int = 1280
    viewport_height: int = 720
    action_timeout_ms: float = 5_000
    """How long an action waits for its element to become actionable."""
    navigation_timeout_ms: float = 15_000
    screenshot: bool = True
    """Take a PNG screenshot with every observation."""
    allowed_hosts: list[str] = Field(default_factory=lambda: list(LOOPBACK))
    """Hosts that `goto` and page requests may reach; everything else is refused."""


@dataclass
class Observation:
    url: str
    title: str
    axtree: str
    """One line per node: `[bid] role 'name' props`, indented by depth."""
    screenshot: bytes | None = None
    last_action: str = ""
    last_action_error: str | None = None
    chat_messages: list[dict[str, str]] = field(default_factory=list)
    """Messages the agent sent with `send_msg_to_user` / `report_infeasible`."""
    done: bool = False
    """True once the agent called `report_infeasible` or `send_msg_to_user` ended the task."""


@dataclass
class StepRecord:
    index: int
    action: str
    name: str
    """The action function, e.g. `click`; empty when the string did not parse."""
    arguments: dict[str, Any]
    observation: Observation
    started_at: datetime
    action_s: float
    observe_s: float

    @property
    def error(self) -> str | None:
        return self.observation.last_action_error

    def to_step(self, max_observation_chars: int = 20_000) -> Step:
        return Step(index=self.index, tool=self.name or "invalid_action", arguments=self.arguments,
                    observation=self.observation.axtree[:max_observation_chars], error=self.error,
                    started_at=self.started_at, duration_s=self.action_s + self.observe_s)


class BrowserEpisode:
    """One episode: its own browser context (cookies, storage) and page; made by `Browser.new_episode`."""

    def __init__(self, browser: "Browser", context, page, allowed_hosts: list[str] | None = None):
        self.browser, self.config = browser, browser.config
        self.allowed_hosts = list(allowed_hosts or browser.config.allowed_hosts)
        """Hosts this episode may reach: its site's (`SiteFacts.hosts`), else the browser's."""
        self._context, self._page, self._cdp = context, page, None
        self.steps: list[StepRecord] = []
        self.chat_messages: list[dict[str, str]] = []
        self.infeasible_reason: str | None = None
        self.blocked_requests: list[str] = []
        """URLs the page tried to reach outside the allowed hosts (aborted)."""
        self.done = False
        self.closed = False

    # ---- public API (any thread)
    def observe(self, last_action: str = "", error: str | None = None) -> Observation:
        return self.browser.call(self._observe, last_action, error)

    def step(self, action: str) -> Observation:
        """Execute one action string; errors of any kind land in `last_action_error`."""
        return self.browser.call(self._step, action)

    def evaluate(self, expression: str, arg: Any = None) -> Any:
        """Evaluate JavaScript in the page (for verifiers and tests, not for the agent)."""
        return self.browser.call(lambda: self._page.evaluate(expression, arg))

    @property
    def url(self) -> str:
        return self.browser.call(lambda: self._page.url)

    def cookies(self) -> list[dict]:
        return self.browser.call(self._context.cookies)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(InfrastructureError):  # a dead Chromium took the context with it
                self.browser.call(self._context.close)

    def __enter__(self) -> "BrowserEpisode":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- worker-thread internals
    def _allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and (parts.hostname or "") in self.allowed_hosts

    def _guard(self, route) -> None:
        if self._allowed(route.request.url):
            route.continue_()
        else:
            self.blocked_requests.append(route.request.url)
            route.abort("blockedbyclient")

    def _step(self, action: str) -> Observation:
        started, t0 = utcnow(), time.perf_counter()
        name, args, error = "", {}, None
        try:
            name, args = parse_action(action)
            self._execute(name, args)
        except ActionError as exc:
            error = str(exc)
        except Exception as exc:  # Playwright errors carry a long call log: keep its first line
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
        t1 = time.perf_counter()
        self._settle()
        obs = self._observe(action, error)
        self.steps.append(StepRecord(len(self.steps), action, name, args, obs, started, t1 - t0, time.perf_counter() - t1))
        return obs

    def _locate(self, bid: str):
        loc = self._page.locator(f'[data-tf-id="{bid}"]')
        if loc.count() == 0:
            raise ActionError(f"no element with id {bid!r} on this page; use an id from the latest observation")
        return loc.first

    def _execute(self, name: str, a: dict[str, Any]) -> None:
        timeout = self.config.action_timeout_ms
        if name in ("send_msg_to_user", "report_infeasible"):
            text = a["text"] if name == "send_msg_to_user" else a["reason"]
            self.chat_messages.append({"role": "assistant", "action": name, "content": text})
            if name == "report_infeasible":
                self.infeasible_reason, self.done = text, True
        elif name == "goto":
            if not self._allowed(a["url"]):
                raise ActionError(f"goto refused: {a['url']!r} is not a local site (allowed hosts: "
                                  f"{', '.join(self.allowed_hosts)})")
            self._page.goto(a["url"], timeout=self.config.navigation_timeout_ms)
        elif name in ("go_back", "go_forward"):
            getattr(self._page, name)(timeout=self.config.navigation_timeout_ms)
        elif name == "scroll":
            self._page.evaluate("([x, y]) => window.scrollBy(x, y)", [a["delta_x"], a["delta_y"]])
        elif name == "noop":
            self._page.wait_for_timeout(a["wait_ms"])
        elif name == "click":
            self._locate(a["bid"]).click(button=a["button"], timeout=timeout)
        elif name == "dblclick":
            self._locate(a["bid"]).dblclick(timeout=timeout)
        elif name == "hover":
            self._locate(a["bid"]).hover(timeout=timeout)
        elif name == "fill":
            self._locate(a["bid"]).fill(a["value"], timeout=timeout)
        elif name == "clear":
            self._locate(a["bid"]).clear(timeout=timeout)
        elif name == "select_option":
            self._locate(a["bid"]).select_option(a["options"], timeout=timeout)
        elif name == "press":
            self._locate(a["bid"]).press(a["key_comb"], timeout=timeout)
        else:  # parse_action only lets declared actions through
            raise ActionError(f"action {name!r} is declared but not implemented")

    def _settle(self) -> None:
        pages = self._context.pages
        if pages and pages[-1] is not self._page:  # a click opened a tab: follow it, like a user would
            self._page, self._cdp = pages[-1], None
        try:
            self._page.wait_for_load_state("load", timeout=self.config.navigation_timeout_ms)
        except Exception:  # a page that never finishes loading is still observed as it is
            pass

    def _observe(self, last_action: str = "", error: str | None = None) -> Observation:
        for attempt in range(3):
            try:
                return self._observe_once(last_action, error)
            except Exception as exc:  # the page navigated mid-observation: let it load and look again
                if attempt == 2 or "context was destroyed" not in str(exc) and "navigat" not in str(exc):
                    raise
                self._settle()
        raise AssertionError("unreachable")

    def _observe_once(self, last_action: str, error: str | None) -> Observation:
        page = self._page
        page.evaluate(MARK_JS)
        if self._cdp is None:
            self._cdp = self._context.new_cdp_session(page)
        snap = self._cdp.send("DOMSnapshot.captureSnapshot", {"computedStyles": []})
        strings, bids = snap["strings"], {}
        for doc in snap["documents"]:
            for backend_id, attrs in zip(doc["nodes"]["backendNodeId"], doc["nodes"]["attributes"]):
                for i in range(0, len(attrs) - 1, 2):
                    if strings[attrs[i]] == "data-tf-id":
                        bids[backend_id] = strings[attrs[i + 1]]
        tree = render_axtree(self._cdp.send("Accessibility.getFullAXTree")["nodes"], bids)
        shot = page.screenshot(type="png") if self.config.screenshot else None
        return Observation(url=page.url, title=page.title(), axtree=tree, screenshot=shot, last_action=last_action,
                           last_action_error=error, chat_messages=list(self.chat_messages), done=self.done)


class Browser:
    """One Chromium process; every Playwright call runs on this browser's own worker thread."""

    def __init__(self, config: BrowserConfig | None = None):
        self.config = config or BrowserConfig()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
        self._thread: threading.Thread | None = None
        self._pw = self._chromium = None
        if not Path(self.config.executable_path).is_file():
            self._worker.shutdown()
            raise FileNotFoundError(f"no Chromium at {self.config.executable_path!r}; install the Debian package "
                                    "`chromium` (apt-get install -y chromium) or set BrowserConfig.executable_path")
        try:
            self.call(self._start)
        except BaseException:
            self._worker.shutdown()
            raise

    def call(self, fn: Callable, *args, **kwargs) -> Any:
        """`fn` on the browser's thread. A failure because Chromium is gone (crashed, killed) is an
        `InfrastructureError`, which callers retry; `new_episode` relaunches a dead Chromium."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        try:
            return self._worker.submit(fn, *args, **kwargs).result()
        except Exception as exc:
            if isinstance(exc, InfrastructureError) or self.connected():
                raise
            raise InfrastructureError(f"Chromium is gone ({type(exc).__name__}: {str(exc)[:300]}); the next "
                                      "episode relaunches it") from exc

    def connected(self) -> bool:
        """Whether Chromium still answers (known for sure only after a call that needed it)."""
        try:
            return bool(self._worker.submit(lambda: self._chromium is not None and self._chromium.is_connected())
                        .result(timeout=30))
        except Exception:
            return False

    def relaunch(self) -> None:
        """A new Chromium in place of a dead one (its Playwright driver too)."""

        def restart() -> None:
            for stop in (getattr(self._chromium, "close", None), getattr(self._pw, "stop", None)):
                with contextlib.suppress(Exception):
                    stop and stop()
            self._chromium = self._pw = None
            self._start()

        self._worker.submit(restart).result()

    def _start(self) -> None:
        from playwright.sync_api import sync_playwright

        self._thread = threading.current_thread()
        self._pw = sync_playwright().start()
        try:
            self._chromium = self._pw.chromium.launch(executable_path=self.config.executable_path,
                                                      args=self.config.args, headless=self.config.headless)
        except Exception:
            self._pw.stop()
            raise

    def new_episode(self, start_url: str | None = None, allowed_hosts: list[str] | None = None) -> BrowserEpisode:
        """A fresh context (no cookies, no storage) with one page, at `start_url` if given; `allowed_hosts`: what
        its requests may reach (default: the browser's `allowed_hosts`)."""

        def make() -> BrowserEpisode:
            ctx = self._chromium.new_context(viewport={"width": self.config.viewport_width,
                                                       "height": self.config.viewport_height})
            ctx.set_default_timeout(self.config.action_timeout_ms)
            episode = BrowserEpisode(self, ctx, ctx.new_page(), allowed_hosts)
            ctx.route("**/*", episode._guard)
            if start_url:
                if not episode._allowed(start_url):
                    ctx.close()
                    raise ValueError(f"start_url {start_url!r} is not a local site; allowed hosts: {episode.allowed_hosts}")
                episode._page.goto(start_url, timeout=self.config.navigation_timeout_ms)
            return episode

        try:
            return self.call(make)
        except InfrastructureError as exc:  # died between episodes: nothing of this one was lost
            log.warning("%s; relaunching Chromium", exc)
            self.relaunch()
            return self.call(make)

    def close(self) -> None:
        if self._chromium is not None:
            def stop() -> None:
                for done in (self._chromium.close, self._pw.stop):
                    with contextlib.suppress(Exception):  # a dead Chromium cannot be closed, only forgotten
                        done()

            self.call(stop)
            self._chromium = None
        self._worker.shutdown(wait=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["ACTIONS", "ActionError", "Browser", "BrowserConfig", "BrowserEpisode", "Observation",
           "StepRecord", "action_space", "parse_action", "render_axtree"]
