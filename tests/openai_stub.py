"""A stdlib OpenAI-style chat endpoint on 127.0.0.1 for the tests: each test module scripts the replies."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Respond = Callable[[dict, dict], tuple[int, dict]]
"""(request body, request headers) -> (HTTP status, response body)."""


def completion(message: dict, usage: dict) -> dict:
    return {"choices": [{"index": 0, "finish_reason": "stop", "message": message}], "usage": usage}


def error(message: str) -> dict:
    return {"error": {"message": message}}


class OpenAIStub:
    """Serves POSTs with `respond`; `url` is the `/v1` base URL a ModelClient takes."""

    def __init__(self, respond: Respond):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, payload = respond(json.loads(raw or b"{}"), dict(self.headers))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
