"""`trajfactory view`: a local page to browse one dataset version and label its trajectories.

    with serve_viewer("trajfactory-out/datasets/my-dataset", version="v1") as viewer:
        print(viewer.url)            # http://127.0.0.1:PORT/ (loopback only)

The server keeps a light index of the version (ids, policy, family / site, split, verdict of record, one row per
trajectory) and reads a trajectory's full row, its task, verdicts and screenshots from the Parquet shards when the
page asks. Labels stay pending in the server until the reviewer saves them; saving writes ONE new version (parent:
the viewed one) with a `reviews` table (`datasets/reviews.py`), and the page then shows that version.

JSON API (every answer is JSON, errors are `{"error": ...}` with a 4xx status):

    GET  /api/info                         dataset, version, parent, versions, tables, facets (filter values, counts)
    GET  /api/trajectories?verdict=passed|failed|none&family=F&site=S&policy=P&split=X&review=accept|reject|none
                          &offset=0&limit=50              one page of the (filtered) list and its total
    GET  /api/trajectory?id=ID             the trajectory row, its task row, its verdicts, its review, step screenshots
    GET  /api/screenshot?sha=SHA           the PNG (image/png)
    GET  /api/reviews                      pending (unsaved) labels
    POST /api/reviews {trajectory_id, label: accept|reject|null, note}   set or clear a pending label
    POST /api/save {}                      write the pending labels as a new version; answers {version, parent, reviews}

POSTs must carry `X-Trajfactory-Viewer: 1` and every request a loopback `Host`, so another site open in the same
browser can neither write labels (the header forces a CORS preflight, which is never granted) nor read the data
through DNS rebinding.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections import Counter
from datetime import date, datetime
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyarrow.parquet as pq

from trajfactory.datasets.reviews import latest_labels, make_review, write_reviews
from trajfactory.datasets.store import DatasetStore
from trajfactory.runtime import LoopbackServer

PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/viewer.js": ("viewer.js", "text/javascript"),
              "/viewer.css": ("viewer.css", "text/css")}
HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                      "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
FILTERS = ("verdict", "family", "site", "policy", "split", "review")
JUDGE = "judge"  # judge verdicts are measured against the verdict of record, never it (see verifiers/record.py)
MAX_PAGE = 500


class ViewerError(ValueError):
    """A request the viewer cannot serve: the message says what was wrong."""


def check_loopback(host: str) -> str:
    """The IPv4 loopback address to bind for `host` (`localhost` or 127.x.x.x); anything else is refused."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback and ipaddress.ip_address(host).version == 4:
            return host
    except ValueError:
        pass
    raise ViewerError(f"the viewer binds only to a loopback address (127.0.0.1 or localhost), not {host!r}: "
                      "its page can write dataset versions, so no other machine may reach it")


class DatasetView:
    """One version of a dataset, indexed for the page, and the reviewer's pending labels."""

    def __init__(self, path: str | Path, version: str | None = None, reviewer: str = ""):
        self.store, self.reviewer = DatasetStore(path), reviewer
        if not self.store.versions():
            raise ViewerError(f"{path}: no dataset versions here; pass a dataset directory (DATASET_ROOT/NAME) "
                              "that holds v1, v2, ...")
        self.pending: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.open(version or self.store.latest())

    def open(self, version: str) -> None:
        try:
            self.manifest = self.store.manifest(version)
        except (ValueError, FileNotFoundError) as exc:
            raise ViewerError(f"unknown version {version!r} of {self.store.root}; its versions: "
                              f"{', '.join(self.store.versions())}") from exc
        self.version, self.files = version, self.store.data_files(version)
        tasks = {}
        for table, kind in (("tasks", "swe"), ("web_tasks", "web")):
            cols = [c for c in ("task_id", "family", "environment", "target_site", "split") if c in self._names(table)]
            for row in self._scan(table, cols):
                env = row.get("environment") or {}
                site = (env.get("app") or row.get("target_site") or None) if kind == "web" else None
                tasks[row["task_id"]] = {"kind": kind, "family": row.get("family"), "site": site,
                                         "split": row.get("split") or None}  # "" = not split
        record = self._verdicts_of_record()
        self.reviews = self._scan("reviews", None)
        self.screenshots = {r["sha256"]: i for i, p in enumerate(self.files.get("screenshots", []))
                            for r in pq.read_table(p, columns=["sha256"]).to_pylist()}
        self.rows, self.shard, self.by_id = [], {}, {}
        for i, path in enumerate(self.files.get("trajectories", [])):
            for row in pq.read_table(path, columns=["trajectory_id", "task_id", "policy", "sample", "exit_status"]).to_pylist():
                task = tasks.get(row["task_id"], {})
                self.shard[row["trajectory_id"]] = i
                self.rows.append({"trajectory_id": row["trajectory_id"], "task_id": row["task_id"],
                                  "kind": task.get("kind"), "policy": (row["policy"] or {}).get("name"),
                                  "sample": row["sample"], "exit_status": row["exit_status"],
                                  "family": task.get("family"), "site": task.get("site"), "split": task.get("split"),
                                  "verdict": record.get(row["trajectory_id"], "none")})
                self.by_id[row["trajectory_id"]] = self.rows[-1]

    def _names(self, table: str) -> list[str]:
        return pq.read_schema(self.files[table][0]).names if self.files.get(table) else []

    def _scan(self, table: str, columns: list[str] | None, **where: Any) -> list[dict[str, Any]]:
        filters = [(k, "=", v) for k, v in where.items()] or None
        return [r for p in self.files.get(table, []) for r in pq.read_table(p, columns=columns, filters=filters).to_pylist()]

    def _verdicts_of_record(self) -> dict[str, str]:
        """trajectory_id -> passed | failed: the web verification where there is one (state checks, or a confident
        judge), else the trajectory's non-judge verdicts (tests, state), all of which must pass."""
        out: dict[str, str] = {}
        for v in self._scan("verdicts", ["trajectory_id", "subject", "verifier", "passed"]):
            if v["trajectory_id"] and v["subject"] != "gold" and v["verifier"] != JUDGE:
                out[v["trajectory_id"]] = "failed" if out.get(v["trajectory_id"]) == "failed" or not v["passed"] else "passed"
        for w in self._scan("web_verification", ["trajectory_id", "verified", "verified_by"]):
            if w["verified_by"] == "none":
                out.pop(w["trajectory_id"], None)
            else:
                out[w["trajectory_id"]] = "passed" if w["verified"] else "failed"
        return out

    def labels(self) -> dict[str, dict[str, Any]]:
        """Each trajectory's current label: the saved ones, overruled by the pending ones."""
        return {**latest_labels(self.reviews), **{t: r.to_row() for t, r in self.pending.items()}}

    # ------------------------------------------------------------ API

    def info(self) -> dict[str, Any]:
        labels = self.labels()
        facets = {f: Counter(str(r[f]) for r in self.rows if r[f] is not None) for f in ("family", "site", "policy", "split")}
        facets["verdict"] = Counter(r["verdict"] for r in self.rows)
        facets["review"] = Counter(labels[r["trajectory_id"]]["label"] if r["trajectory_id"] in labels else "none"
                                   for r in self.rows)
        return {"dataset": self.store.root.name, "version": self.version, "parent": self.manifest.get("parent"),
                "versions": self.store.versions(), "reviewer": self.reviewer, "pending": len(self.pending),
                "tables": {t: e["rows"] for t, e in self.manifest["tables"].items()},
                "has_split": any(r["split"] for r in self.rows),  # a `split` column with values in it
                "facets": {f: dict(sorted(c.items())) for f, c in facets.items()}}

    def list(self, query: dict[str, str]) -> dict[str, Any]:
        labels = self.labels()
        rows = [{**r, "review": labels.get(r["trajectory_id"], {}).get("label", "none"),
                 "pending": r["trajectory_id"] in self.pending} for r in self.rows]
        for f in FILTERS:
            if query.get(f):
                rows = [r for r in rows if str(r[f]) == query[f]]
        try:
            offset, limit = max(0, int(query.get("offset", 0))), min(MAX_PAGE, max(1, int(query.get("limit", 50))))
        except ValueError:
            raise ViewerError("offset and limit must be integers") from None
        return {"total": len(rows), "offset": offset, "limit": limit, "rows": rows[offset:offset + limit]}

    def trajectory(self, trajectory_id: str) -> dict[str, Any]:
        if trajectory_id not in self.shard:
            raise ViewerError(f"no trajectory {trajectory_id!r} in {self.version}")
        path = self.files["trajectories"][self.shard[trajectory_id]]
        row = pq.read_table(path, filters=[("trajectory_id", "=", trajectory_id)]).to_pylist()[0]
        row["tools"] = _json(row["tools"])
        row["policy"]["params"] = _json(row["policy"]["params"])
        for step in row["steps"]:
            step["arguments"] = _json(step["arguments"])
            sha = step["arguments"].pop("screenshot", None) if isinstance(step["arguments"], dict) else None
            step["screenshot"] = sha
            step["screenshot_stored"] = sha in self.screenshots
        task = next(iter(self._scan("tasks", None, task_id=row["task_id"]) or
                         self._scan("web_tasks", None, task_id=row["task_id"])), None)
        for key in ("validation", "provenance"):
            if task and isinstance(task.get(key), str):
                task[key] = _json(task[key])
        return {"trajectory": row, "task": task, "index": self.by_id[trajectory_id],
                "verdicts": self._scan("verdicts", None, trajectory_id=trajectory_id),
                "web_verification": self._scan("web_verification", None, trajectory_id=trajectory_id),
                "review": self.labels().get(trajectory_id), "pending": trajectory_id in self.pending}

    def screenshot(self, sha: str) -> bytes:
        if sha not in self.screenshots:
            raise ViewerError(f"no screenshot {sha!r} in {self.version}")
        path = self.files["screenshots"][self.screenshots[sha]]
        png = pq.read_table(path, filters=[("sha256", "=", sha)]).column("png")[0].as_py()
        return png["bytes"] if isinstance(png, dict) else png  # an `Image` struct (bytes, path), or older bare bytes

    def label(self, body: dict[str, Any]) -> dict[str, Any]:
        tid, label, note = body.get("trajectory_id"), body.get("label"), body.get("note") or ""
        if tid not in self.shard:
            raise ViewerError(f"no trajectory {tid!r} in {self.version}")
        if not isinstance(note, str):
            raise ViewerError("note must be a string")
        with self.lock:
            if label is None:
                self.pending.pop(tid, None)
            else:
                task_id = self.by_id[tid]["task_id"]
                self.pending[tid] = make_review(tid, task_id, label, note, self.reviewer, self.version)
        return {"pending": len(self.pending), "review": self.labels().get(tid)}

    def save(self) -> dict[str, Any]:
        with self.lock:
            if not self.pending:
                raise ViewerError("nothing to save: accept or reject a trajectory first")
            parent, n = self.version, len(self.pending)
            version = write_reviews(self.store, parent, list(self.pending.values()))
            self.pending.clear()
            self.open(version.name)
        return {"version": version.name, "parent": parent, "reviews": n, "path": str(version.path)}


def _json(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def make_handler(view: DatasetView, page_dir: Any) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "trajfactory-viewer"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: the CLI prints the URL, not every request
            pass

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in HEADERS.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj, default=_default).encode(), "application/json")

        def _host_ok(self) -> bool:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
            return host in ("localhost", "127.0.0.1") or host.startswith("127.")

        def _handle(self, method: str) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                if not self._host_ok():
                    return self._json(403, {"error": "the viewer answers only requests addressed to a loopback host"})
                if method == "GET" and url.path in PAGE_FILES:
                    name, ctype = PAGE_FILES[url.path]
                    return self._send(200, (page_dir / name).read_bytes(), ctype)
                if method == "GET" and url.path == "/api/screenshot":
                    return self._send(200, view.screenshot(query.get("sha", "")), "image/png")
                if method == "POST":
                    if self.headers.get("X-Trajfactory-Viewer") != "1":
                        return self._json(403, {"error": "POST needs the header X-Trajfactory-Viewer: 1"})
                    length = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                    if not isinstance(body, dict):
                        raise ViewerError("the request body must be a JSON object")
                routes = {("GET", "/api/info"): view.info, ("GET", "/api/trajectories"): lambda: view.list(query),
                          ("GET", "/api/trajectory"): lambda: view.trajectory(query.get("id", "")),
                          ("GET", "/api/reviews"): lambda: {"pending": [r.to_row() for r in view.pending.values()]},
                          ("POST", "/api/reviews"): lambda: view.label(body), ("POST", "/api/save"): view.save}
                if (method, url.path) not in routes:
                    return self._json(404, {"error": f"no such page: {method} {url.path}"})
                self._json(200, routes[(method, url.path)]())
            except (ViewerError, ValueError) as exc:
                self._json(400, {"error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - the page shows it; the server keeps serving
                self._json(500, {"error": f"{type(exc).__name__}: {exc}"})

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

    return Handler


class Viewer:
    """The running viewer: `url`, `view` (the `DatasetView`), `close()`; a context manager."""

    def __init__(self, view: DatasetView, server: LoopbackServer):
        self.view, self.server = view, server
        self.url = f"{server.url}/"

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> "Viewer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve_viewer(path: str | Path, version: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 reviewer: str = "") -> Viewer:
    """Index `path`'s `version` (default: the newest) and serve the page on loopback `host:port` (0: a free port)."""
    bind = check_loopback(host)
    view = DatasetView(path, version, reviewer)
    page_dir = resources.files("trajfactory") / "data" / "viewer"
    return Viewer(view, LoopbackServer(make_handler(view, page_dir), "viewer", host=bind, port=port))
