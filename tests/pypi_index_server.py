"""A package index stand-in on loopback, for tests (PyPI is a remote service): the simple repository API that pip
and `trajfactory.sources.pypi_index` speak, over real HTTP (or HTTPS with a certificate the test makes), serving files the test adds.

    GET /simple/{project}/      PEP 691 JSON when asked for `application/vnd.pypi.simple.v1+json` (unless `html_only`),
                                else PEP 503 HTML (links with `#sha256=` and `data-yanked`); 404 for an unknown project
    GET /files/{filename}       a file's bytes

`sdist(name, version, tree)` builds a real sdist (`NAME-VERSION.tar.gz` with a `PKG-INFO`) of a directory.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import re
import ssl
import tarfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

JSON = "application/vnd.pypi.simple.v1+json"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sdist(name: str, version: str, tree: Path, extra: dict[str, str] | None = None) -> bytes:
    """A `.tar.gz` sdist of `tree` under `NAME-VERSION/`, with a PKG-INFO and the `extra` files (path -> text)."""
    top = f"{name}-{version}"
    files = {"PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nLicense: MIT\n", **(extra or {})}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(tree.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                tar.add(path, f"{top}/{path.relative_to(tree)}", recursive=False)
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class IndexFile:
    filename: str
    data: bytes
    yanked: bool = False
    sha256: str = ""
    requires_python: str = ""


class PackageIndex:
    """The index's projects and files; `url` is what PIP_INDEX_URL takes."""

    def __init__(self, html_only: bool = False, tls: tuple[Path, Path] | None = None):
        """`tls`: (certificate, key) files to serve HTTPS with."""
        self.projects: dict[str, list[IndexFile]] = {}
        self.html_only = html_only
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}/simple"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add(self, project: str, filename: str, data: bytes, *, yanked: bool = False, sha256: str = "",
            requires_python: str = "") -> None:
        """Publish a file (`sha256` overrides the real hash, to serve a file that does not match it;
        `requires_python`: its Requires-Python, as the index gives it)."""
        self.projects.setdefault(normalize(project), []).append(
            IndexFile(filename, data, yanked, sha256 or hashlib.sha256(data).hexdigest(), requires_python))

    def file(self, filename: str) -> IndexFile | None:
        return next((f for files in self.projects.values() for f in files if f.filename == filename), None)

    def __enter__(self) -> "PackageIndex":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _requires(spec: str) -> str:
    """The PEP 503 attribute, its `<` and `>` escaped as an index writes them."""
    return f' data-requires-python="{html.escape(spec)}"' if spec else ""


def _handler(index: PackageIndex):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            index.requests.append(self.path)
            if m := re.fullmatch(r"/simple/([^/]+)/?", self.path):
                files = index.projects.get(normalize(m[1]))
                if files is None:
                    return self._send(404, b"Not Found", "text/plain")
                if JSON in self.headers.get("Accept", "") and not index.html_only:
                    body = {"meta": {"api-version": "1.1"}, "name": normalize(m[1]), "files": [
                        {"filename": f.filename, "url": f"../../files/{f.filename}", "hashes": {"sha256": f.sha256},
                         "yanked": f.yanked, **({"requires-python": f.requires_python} if f.requires_python else {})}
                        for f in files]}
                    return self._send(200, json.dumps(body).encode(), JSON)
                links = "".join(f'<a href="../../files/{f.filename}#sha256={f.sha256}"'
                                f'{" data-yanked=" + chr(34) + chr(34) if f.yanked else ""}'
                                f'{_requires(f.requires_python)}>{f.filename}</a><br>\n'
                                for f in files)
                return self._send(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>".encode(), "text/html")
            if (m := re.fullmatch(r"/files/([^/]+)", self.path)) and (f := index.file(m[1])):
                return self._send(200, f.data, "application/octet-stream")
            return self._send(404, b"Not Found", "text/plain")

    return Handler
