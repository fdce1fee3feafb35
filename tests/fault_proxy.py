"""An HTTP proxy in front of a real model server that injects the faults a test schedules: a 5xx answer, a request
that hangs past the client's timeout, or the server gone (connections refused) after some requests."""

from __future__ import annotations

import collections
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultProxy:
    """`plan` holds one fault per coming request ("503", "hang"; an empty plan forwards); with `down_after=N`, the
    proxy stops listening once N requests were forwarded, as a killed server would, until `up()`."""

    def __init__(self, upstream: str, hang_s: float = 8.0):
        parts = urlsplit(upstream)
        self.upstream = f"{parts.scheme}://{parts.netloc}"
        self.port = free_port()
        self.hang_s = hang_s
        self.plan: collections.deque[str] = collections.deque()
        self.down_after: int | None = None
        self.seen: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def up(self) -> "FaultProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._handle(b"")

            def do_POST(self) -> None:
                self._handle(self.rfile.read(int(self.headers.get("content-length") or 0)))

            def _handle(self, body: bytes) -> None:
                with proxy._lock:
                    fault = proxy.plan.popleft() if proxy.plan else "ok"
                    proxy.seen[fault] += 1
                if fault == "hang":
                    time.sleep(proxy.hang_s)
                    return  # no answer at all: the client's timeout ends it
                if fault != "ok":
                    self._send(int(fault), b'{"error": "injected fault"}')
                    return
                resp = httpx.request(self.command, proxy.upstream + self.path, content=body or None, timeout=300,
                                     headers={"content-type": self.headers.get("content-type", "application/json")})
                self._send(resp.status_code, resp.content)
                with proxy._lock:
                    gone = proxy.down_after is not None and proxy.seen["ok"] >= proxy.down_after
                if gone:
                    threading.Thread(target=proxy.down, daemon=True).start()

            def _send(self, status: int, content: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        """Stop listening: new connections are refused, as by a server that was killed."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()
