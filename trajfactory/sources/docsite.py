"""Serve a documentation directory over HTTP on a loopback port, for crawls in tests, benches and the default run.

    with serve_docs(DOCS_ROOT / "shop") as site:
        site.url          # http://127.0.0.1:PORT/
        site.requests     # paths requested so far, in order
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

from pydantic import BaseModel, Field

from trajfactory.runtime import LoopbackServer

DOCS_ROOT = Path(__file__).resolve().parent.parent / "data" / "docs"
"""The bundled documentation sites: one folder per web app, plus `bad/` pages for quarantine tests."""

__all__ = ["DOCS_ROOT", "DocSite", "DocSiteConfig", "serve_docs"]


class DocSiteConfig(BaseModel):
    """How a documentation directory is served."""

    host: str = "127.0.0.1"
    """Loopback only: the docs are never exposed beyond this machine."""
    port: int = Field(0, ge=0, le=65535)
    """0 picks a free port."""


class _Handler(SimpleHTTPRequestHandler):
    site: "DocSite"  # set on a per-site subclass

    def do_GET(self) -> None:
        with self.site._lock:
            self.site.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:  # quiet: a crawl makes many requests
        pass


class DocSite:
    """A running docs server: `url`, `root`, the `requests` it has served. Use as a context manager."""

    def __init__(self, root: str | Path, config: DocSiteConfig | None = None):
        config = config or DocSiteConfig()
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: not a directory; serve_docs needs a folder of HTML pages")
        self.requests: list[str] = []
        self._lock = threading.Lock()
        handler = type("DocsHandler", (_Handler,), {"site": self})
        self._server = LoopbackServer(functools.partial(handler, directory=str(self.root)), "docsite",
                                      config.host, config.port)
        self.url = self._server.url + "/"

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> "DocSite":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve_docs(root: str | Path = DOCS_ROOT, config: DocSiteConfig | None = None) -> DocSite:
    """Serve `root` (a folder of HTML/Markdown files) on a free loopback port until the context exits."""
    return DocSite(root, config)
