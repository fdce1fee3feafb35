"""What the real apps' adapters share: a site served by a process of its own per episode, on a free loopback port,
over a copy of a seeded template (Django's admin, Roundup).

A subclass of `ServedEpisode` copies its template into `self.dir` and calls `serve(argv, env)`; the base waits until
`ready_path` answers 200, and on close stops the process and removes the folder. `ServedAdapter.start` retries an
episode whose free port was taken between picking and binding it. `read_db` reads an episode's SQLite database.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
import weakref
from pathlib import Path
from typing import Any, ClassVar

from trajfactory.settings.sites import SiteFacts

from .adapter import SiteAdapter

__all__ = ["ServedAdapter", "ServedEpisode", "free_port", "read_db"]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def read_db(db: Path, sql: str, dict_rows: bool = False) -> list:
    """The rows of `sql` over SQLite database `db`, opened read-only."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        if dict_rows:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(sql)]
        return con.execute(sql).fetchall()
    finally:
        con.close()


def copy_db(template: Path, live: Path) -> None:
    """The template database back over the live one (SQLite's backup API, safe while the server has it open)."""
    src, dst = sqlite3.connect(template), sqlite3.connect(live, timeout=10)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def _stop(proc: subprocess.Popen, folder: Path) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    shutil.rmtree(folder, ignore_errors=True)


class ServedEpisode:
    """One episode: its own folder (`self.dir`) and server process."""

    ready_path: ClassVar[str] = "/"
    """Under `self.url`: the page that answers 200 once the server is up."""
    LABELS: ClassVar[dict[str, str]] = {}

    def __init__(self, adapter: "ServedAdapter", seed: int, template: Path):
        self.adapter, self.seed, self.template = adapter, seed, template
        self.dir = Path(tempfile.mkdtemp(prefix=f"tf-{adapter.kind}-episode-"))
        self.port = free_port(adapter.host)

    def serve(self, argv: list[str], env: dict[str, str] | None = None, *, stdout_to_log: bool = True) -> None:
        """Start the server (`argv`, in `self.dir`, its output in `server.log`) and wait until it answers."""
        with open(self.dir / "server.log", "wb") as log:  # the child keeps its own handle
            self._proc = subprocess.Popen(argv, env=env, cwd=self.dir, stdin=subprocess.DEVNULL,
                                          stdout=log if stdout_to_log else subprocess.DEVNULL,
                                          stderr=subprocess.STDOUT if stdout_to_log else log)
        self._finalizer = weakref.finalize(self, _stop, self._proc, self.dir)
        self._wait_ready(self.adapter.start_timeout)

    def _wait_ready(self, timeout: float) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                with opener.open(self.url + self.ready_path, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        log = (self.dir / "server.log").read_text(errors="replace")[-2000:]
        self.close()
        raise RuntimeError(f"{self.adapter.name} site did not answer on {self.url}{self.ready_path} within "
                           f"{timeout}s: {log}")

    @property
    def accounts(self) -> dict[str, str]:
        return self.adapter.accounts(self.seed)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.LABELS)

    def close(self) -> None:
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()
        else:  # the server never started
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "ServedEpisode":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ServedAdapter(SiteAdapter):
    """An adapter whose episodes are `episode` objects over `template(seed)`; options: host, start_timeout,
    cache_dir (where templates are built once; default the temp dir's `trajfactory-sites`)."""

    facts: SiteFacts
    episode: ClassVar[type[ServedEpisode]] = ServedEpisode
    FACTS: ClassVar[SiteFacts]

    def __init__(self, name: str | None = None, host: str = "127.0.0.1", start_timeout: float = 30.0,
                 cache_dir: str | None = None):
        facts = self.FACTS
        super().__init__(facts if name in (None, facts.name) else facts.model_copy(update={"name": name}))
        self.host, self.start_timeout = host, start_timeout
        self._cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "trajfactory-sites"

    def template(self, seed: int) -> Path:
        raise NotImplementedError

    def start(self, seed: int = 0) -> ServedEpisode:
        template = self.template(seed)
        for attempt in range(3):  # the free port may be taken between picking and binding it
            try:
                return self.episode(self, seed, template)
            except RuntimeError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def labels(self, seed: int = 0) -> dict[str, str]:
        return dict(self.episode.LABELS)
