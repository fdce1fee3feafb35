"""Up to `size` Chromiums (`executors/browser.py`), one per concurrent worker, launched on first use; each episode
borrows one and gets a fresh browser context of its own.

    with BrowserPool(size=2) as pool, pool.episode(site.url) as ep:
        obs = ep.observe()
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from queue import Queue
from typing import Iterator

from trajfactory.executors.browser import Browser, BrowserConfig, BrowserEpisode


class BrowserPool:
    """Up to `size` Chromium processes, one per concurrent worker, launched on first use."""

    def __init__(self, size: int = 1, config: BrowserConfig | None = None, fresh: bool = False):
        """`fresh`: each `acquire` launches a Chromium that `release` closes (the pool as sent to another node)."""
        self.size, self.config, self.fresh = size, config or BrowserConfig(), fresh
        self._free: Queue[Browser] = Queue()
        self._all: list[Browser] = []
        self._lock = threading.Lock()

    def acquire(self) -> Browser:
        if self.fresh:
            return Browser(self.config)
        with self._lock:
            if self._free.empty() and len(self._all) < self.size:
                self._all.append(Browser(self.config))
                return self._all[-1]
        return self._free.get()

    def release(self, browser: Browser) -> None:
        if self.fresh:
            browser.close()
        else:
            self._free.put(browser)

    @contextmanager
    def episode(self, start_url: str | None = None) -> Iterator[BrowserEpisode]:
        browser = self.acquire()
        try:
            with browser.new_episode(start_url) as ep:
                yield ep
        finally:
            self.release(browser)

    def __reduce__(self):
        # Sent to another node (a Ray worker): Chromiums cannot travel, so each episode there launches its own
        return (BrowserPool, (self.size, self.config, True))

    def close(self) -> None:
        with self._lock:
            for b in self._all:
                b.close()
            self._all.clear()

    def __enter__(self) -> "BrowserPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
