"""A stdlib OpenAI-style chat endpoint on 127.0.0.1 for the tests: each test module scripts the replies."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from trajfactory.models.client import ModelClient

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


class Stub:
    """OpenAI-ish chat endpoint on 127.0.0.1: `reply(body) -> content` (or `(status, content)`); keeps the bodies."""

    def __init__(self, reply: Callable[[dict], str | tuple[int, str]]):
        self.bodies: list[dict] = []
        self._reply = reply
        self._server = OpenAIStub(self._respond)
        self.url = self._server.url

    def _respond(self, body: dict, headers: dict) -> tuple[int, dict]:
        self.bodies.append(body)
        out = self._reply(body)
        status, content = out if isinstance(out, tuple) else (200, out)
        if status != 200:
            return status, error(content)
        return 200, completion({"role": "assistant", "content": content}, {"prompt_tokens": 10, "completion_tokens": 5})

    def client(self) -> ModelClient:
        return ModelClient(self.url, "stub-model", max_retries=0)

    def close(self):
        self._server.close()
