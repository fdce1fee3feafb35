"""The stand-in Hub's HTTP handler: the routes listed in `hub_server.py`, over the storage of `hub_store.py`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from hub_store import INITIAL_GITATTRIBUTES, _NAME_RE, HubError, Repo, _entry, _folders, _is_lfs, _now, _truthy


# ---------------------------------------------------------------- HTTP


def make_handler(hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "hub-stand-in/1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            pass  # the access log is written by _finish

        # -------------------------------------------------------- plumbing

        def do_GET(self) -> None:
            self._handle("GET")

        def do_HEAD(self) -> None:
            self._handle("HEAD")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def _handle(self, method: str) -> None:
            url = urlsplit(self.path)
            self.query = parse_qs(url.query)
            self.segments = [unquote(s) for s in url.path.split("/")[1:]]
            self._body: bytes | None = None
            try:
                with hub.lock:
                    self._route(method, url.path)
            except HubError as err:
                self.body_read()  # keep the connection usable
                headers = {"X-Error-Message": err.message, **err.headers}
                if err.code:
                    headers["X-Error-Code"] = err.code
                self._send(err.status, {"error": err.message, **err.body}, headers=headers)
            except Exception as exc:  # a bug of the stand-in: answer 500 so the client does not hang
                self._send(500, {"error": f"stand-in hub error: {type(exc).__name__}: {exc}"})

        def body_read(self) -> bytes:
            if self._body is None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self._body = b"".join(chunks)
                else:
                    self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            return self._body

        def json_body(self) -> Any:
            raw = self.body_read()
            try:
                return json.loads(raw or b"{}")
            except ValueError:
                raise HubError(400, "body is not JSON") from None

        def _send(self, status: int, payload: Any = None, *, raw: bytes | None = None, headers: dict | None = None,
                  content_type: str = "application/json", length: int | None = None) -> int:
            data = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
            # recorded before the client can read the answer: a test counting requests must see the ones answered
            path = urlsplit(self.path).path
            hub.requests.append((self.command, path, status))
            with open(hub.storage / "access.log", "a") as log:
                log.write(f"{time.strftime('%H:%M:%S')} {self.command} {path} {status}\n")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data) if length is None else length))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return status

        # -------------------------------------------------------- routing

        def _route(self, method: str, path: str) -> int:
            seg = self.segments
            user = hub.user(self.headers) if seg[:1] not in (["lfs-upload"], ["lfs-cdn"]) else None
            if method == "POST" and path == "/api/repos/create":
                return self.create_repo(user)
            if method == "POST" and path == "/api/validate-yaml":
                return self.validate_yaml()
            if method == "GET" and path == "/api/whoami-v2":
                if user is None:
                    raise HubError(401, "Unauthorized")
                return self._send(200, {"type": "user", "name": user, "orgs": []})
            if method == "PUT" and seg[:1] == ["lfs-upload"] and len(seg) == 2:
                return self.lfs_put(seg[1])
            if method in ("GET", "HEAD") and seg[:1] == ["lfs-cdn"] and len(seg) == 2:
                return self.cdn_get(seg[1])
            if seg[:2] == ["api", "datasets"] and len(seg) >= 4:
                repo_id, rest = f"{seg[2]}/{seg[3]}", seg[4:]
                return self.api(method, repo_id, rest, user)
            if seg[:1] == ["datasets"] and len(seg) >= 3 and seg[2].endswith(".git") and seg[3:6] == ["info", "lfs", "objects"]:
                repo_id = f"{seg[1]}/{seg[2][:-4]}"
                if method == "POST" and seg[6:] == ["batch"]:
                    return self.lfs_batch(repo_id, user)
                if method == "POST" and seg[6:] == ["verify"]:
                    return self.lfs_verify(repo_id, user)
            if seg[:1] == ["datasets"] and len(seg) >= 6 and seg[3] == "resolve" and method in ("GET", "HEAD"):
                return self.resolve(f"{seg[1]}/{seg[2]}", seg[4], "/".join(seg[5:]), user)
            raise HubError(404, f"stand-in hub: no route for {method} {path}")

        def api(self, method: str, repo_id: str, rest: list[str], user: str | None) -> int:
            head = rest[0] if rest else None
            if method == "GET" and head is None:
                return self.repo_info(repo_id, "main", user)
            if method == "GET" and head == "revision" and len(rest) == 2:
                return self.repo_info(repo_id, rest[1], user)
            if method == "GET" and head == "refs":
                return self.refs(repo_id, user)
            if method == "GET" and head == "tree" and len(rest) >= 2:
                return self.tree(repo_id, rest[1], "/".join(rest[2:]), user)
            if method == "POST" and head == "paths-info" and len(rest) == 2:
                return self.paths_info(repo_id, rest[1], user)
            if method == "POST" and head == "preupload" and len(rest) == 2:
                return self.preupload(repo_id, rest[1], user)
            if method == "POST" and head == "commit" and len(rest) == 2:
                return self.commit(repo_id, rest[1], user)
            if method == "POST" and head == "tag" and len(rest) == 2:
                return self.tag(repo_id, rest[1], user)
            if method in ("POST", "DELETE") and head == "branch" and len(rest) == 2:
                return self.branch(method, repo_id, rest[1], user)
            raise HubError(404, f"stand-in hub: no route for {method} /api/datasets/{repo_id}/{'/'.join(rest)}")

        # -------------------------------------------------------- repos

        def create_repo(self, user: str | None) -> int:
            body = self.json_body()
            if user is None:
                raise HubError(401, "You must be authenticated to create a repo")
            name, owner = body.get("name") or "", body.get("organization") or user
            if body.get("type") != "dataset":
                raise HubError(400, "this stand-in hub hosts dataset repos only")
            if not _NAME_RE.match(name) or not _NAME_RE.match(owner) or "--" in name or ".." in name:
                raise HubError(400, f"Invalid repo name: {owner}/{name}")
            if owner != user:
                raise HubError(403, f"You don't have the rights to create a dataset under the namespace {owner!r}")
            repo_id = f"{owner}/{name}"
            url = f"{hub.url}/datasets/{repo_id}"
            if repo_id in hub.repos:
                raise HubError(409, "You already created this dataset repo", body={"url": url})
            private = body.get("visibility") == "private" or body.get("private") is True
            repo = Repo(repo_id, private, _now())
            attrs = hub._store_regular(INITIAL_GITATTRIBUTES)
            initial = hub._commit(repo, None, {".gitattributes": attrs}, "initial commit", "")
            repo.branches["main"] = initial.oid
            hub.repos[repo_id] = repo
            hub._save(repo)
            return self._send(200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

        def validate_yaml(self) -> int:
            content = self.json_body().get("content", "")
            if content.startswith("---"):
                front = content.split("---", 2)[1] if content.count("---") >= 2 else ""
                try:
                    meta = yaml.safe_load(front)
                except yaml.YAMLError as exc:
                    return self._send(400, {"errors": [{"message": f"Invalid YAML in README.md: {exc}"}]})
                if meta is not None and not isinstance(meta, dict):
                    return self._send(400, {"errors": [{"message": "README.md metadata must be a mapping"}]})
            return self._send(200, {"errors": [], "warnings": []})

        def repo_info(self, repo_id: str, revision: str, user: str | None) -> int:
            repo = hub.visible_repo(repo_id, user)
            commit = repo.resolve(revision)
            blobs = _truthy(self.query.get("blobs"))
            siblings = []
            for path, blob in sorted(commit.tree.items()):
                sibling: dict[str, Any] = {"rfilename": path}
                if blobs:
                    sibling.update(size=blob.size, blobId=blob.oid)
                    if blob.lfs_sha256:
                        sibling["lfs"] = {"size": blob.size, "sha256": blob.lfs_sha256, "pointerSize": blob.pointer_size}
                siblings.append(sibling)
            card: dict[str, Any] = {}
            if "README.md" in commit.tree:
                text = hub._content(commit.tree["README.md"]).decode()
                if text.startswith("---") and text.count("---") >= 2:
                    card = yaml.safe_load(text.split("---", 2)[1]) or {}
            return self._send(200, {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": repo.owner,
                "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created_at, "private": repo.private,
                "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": card.get("tags", []),
                "cardData": card, "siblings": siblings,
            })

        def refs(self, repo_id: str, user: str | None) -> int:
            repo = hub.visible_repo(repo_id, user)

            def refs_of(kind: str, refs: dict[str, str]) -> list[dict[str, str]]:
                return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid} for n, oid in sorted(refs.items())]

            return self._send(200, {"branches": refs_of("heads", repo.branches), "converts": [],
                                    "tags": refs_of("tags", repo.tags), "pullRequests": []})

        def tree(self, repo_id: str, revision: str, path: str, user: str | None) -> int:
            tree = hub.visible_repo(repo_id, user).resolve(revision).tree
            folders = _folders(tree)
            path = path.strip("/")
            if path and path not in folders:
                if path in tree:
                    return self._send(200, [_entry(path, tree)])
                raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
            prefix = path + "/" if path else ""
            recursive = _truthy(self.query.get("recursive"))
            names = sorted({p for p in [*tree, *folders] if p.startswith(prefix)
                            and (recursive or "/" not in p[len(prefix):])})
            return self._send(200, [_entry(p, tree) for p in names])

        def paths_info(self, repo_id: str, revision: str, user: str | None) -> int:
            tree = hub.visible_repo(repo_id, user).resolve(revision).tree
            form = parse_qs(self.body_read().decode())
            folders = _folders(tree)
            paths = [p.strip("/") for p in form.get("paths", [])]
            return self._send(200, [_entry(p, tree) for p in paths if p in tree or p in folders])

        def branch(self, method: str, repo_id: str, name: str, user: str | None) -> int:
            repo = hub.writable_repo(repo_id, user)
            if method == "DELETE":
                self.body_read()
                if name == "main":
                    raise HubError(403, "Cannot delete the default branch")
                if repo.branches.pop(name, None) is None:
                    raise HubError(404, f"Branch {name} does not exist", "RevisionNotFound")
            else:
                start = self.json_body().get("startingPoint") or "main"
                if name in repo.branches:
                    raise HubError(409, f"Branch {name} already exists")
                repo.branches[name] = repo.resolve(start).oid
            hub._save(repo)
            return self._send(200, {})

        def tag(self, repo_id: str, revision: str, user: str | None) -> int:
            repo = hub.writable_repo(repo_id, user)
            name = self.json_body().get("tag") or ""
            if not name:
                raise HubError(400, "a tag name is required")
            if name in repo.tags or name in repo.branches:
                raise HubError(409, f"Tag {name} already exists")
            repo.tags[name] = repo.resolve(revision).oid
            hub._save(repo)
            return self._send(200, {})

        # -------------------------------------------------------- commits

        def preupload(self, repo_id: str, revision: str, user: str | None) -> int:
            repo = hub.writable_repo(repo_id, user)
            tree = repo.resolve(revision).tree
            files = self.json_body().get("files", [])
            hub.preuploads.append([f["path"] for f in files])
            out = []
            for f in files:
                sample = base64.b64decode(f.get("sample", ""))
                lfs = _is_lfs(f["path"], sample, int(f.get("size", 0)), tree, hub)
                remote = tree.get(f["path"])
                oid = None if remote is None else (remote.lfs_sha256 if lfs else remote.oid)
                out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
            return self._send(200, {"files": out, "commitOid": repo.resolve(revision).oid})

        def commit(self, repo_id: str, branch: str, user: str | None) -> int:
            repo = hub.writable_repo(repo_id, user)
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch} is not a branch", "RevisionNotFound")
            lines = [json.loads(line) for line in self.body_read().splitlines() if line.strip()]
            if not lines or lines[0].get("key") != "header":
                raise HubError(400, "the first NDJSON line must be the commit header")
            header = lines[0]["value"]
            head = repo.branches[branch]
            if header.get("parentCommit") and header["parentCommit"] != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree, ops = dict(repo.commits[head].tree), []
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                path = value["path"].strip("/")
                if key == "file":
                    data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else value["content"].encode()
                    tree[path] = hub._store_regular(data)
                    ops.append({"op": "file", "path": path, "bytes": len(data)})
                elif key == "lfsFile":
                    if not hub._has_lfs(value["oid"], value.get("size")):
                        raise HubError(422, f"Your push was rejected because an LFS pointer pointed to a file that does "
                                            f"not exist: {path} ({value['oid']})")
                    size = (hub.storage / "lfs" / value["oid"]).stat().st_size
                    tree[path] = hub._lfs_blob(value["oid"], size)
                    ops.append({"op": "lfsFile", "path": path, "oid": value["oid"]})
                elif key == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    ops.append({"op": "deletedFile", "path": path})
                elif key == "deletedFolder":
                    gone = [p for p in tree if p.startswith(path + "/")]
                    if not gone:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in gone:
                        del tree[p]
                    ops.append({"op": "deletedFolder", "path": path})
                else:
                    raise HubError(400, f"unknown commit operation {key!r}")
            commit = hub._commit(repo, head, tree, header.get("summary") or "", header.get("description") or "")
            repo.branches[branch] = commit.oid
            hub.commits.append({"repo": repo_id, "branch": branch, "oid": commit.oid, "title": commit.title, "ops": ops})
            hub._save(repo)
            return self._send(200, {"success": True, "commitOid": commit.oid, "pullRequestUrl": None, "hookOutput": "",
                                    "commitUrl": f"{hub.url}/datasets/{repo_id}/commit/{commit.oid}"})

        # -------------------------------------------------------- LFS

        def lfs_batch(self, repo_id: str, user: str | None) -> int:
            hub.writable_repo(repo_id, user)
            body = self.json_body()
            if body.get("operation") != "upload" or "basic" not in body.get("transfers", ["basic"]):
                raise HubError(400, "this stand-in hub offers the basic upload transfer only")
            objects = []
            for obj in body.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                entry: dict[str, Any] = {"oid": oid, "size": size}
                if not re.fullmatch(r"[0-9a-f]{64}", oid):
                    entry["error"] = {"code": 422, "message": f"invalid oid {oid}"}
                elif not hub._has_lfs(oid, size):  # already stored: no actions, the client skips the upload
                    entry["authenticated"] = True
                    entry["actions"] = {
                        "upload": {"href": f"{hub.url}/lfs-upload/{oid}?size={size}&sig={hub.sign(oid)}", "header": {}},
                        "verify": {"href": f"{hub.url}/datasets/{repo_id}.git/info/lfs/objects/verify", "header": {}},
                    }
                objects.append(entry)
            return self._send(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

        def lfs_put(self, oid: str) -> int:
            if not hmac.compare_digest(self.query.get("sig", [""])[0], hub.sign(oid)):
                raise HubError(403, "bad upload signature")
            data = self.body_read()
            if hashlib.sha256(data).hexdigest() != oid or len(data) != int(self.query.get("size", ["-1"])[0]):
                raise HubError(400, f"uploaded content does not match oid {oid} and its size")
            (hub.storage / "lfs" / oid).write_bytes(data)
            hub.uploads.append({"oid": oid, "bytes": len(data)})
            return self._send(200, raw=b"")

        def lfs_verify(self, repo_id: str, user: str | None) -> int:
            hub.writable_repo(repo_id, user)
            body = self.json_body()
            if not hub._has_lfs(body.get("oid", ""), body.get("size")):
                raise HubError(404, f"object {body.get('oid')} was not uploaded")
            return self._send(200, {})

        # -------------------------------------------------------- downloads

        def resolve(self, repo_id: str, revision: str, path: str, user: str | None) -> int:
            repo = hub.visible_repo(repo_id, user)
            commit = repo.resolve(revision)
            blob = commit.tree.get(path)
            if blob is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
            etag = blob.lfs_sha256 or blob.oid
            headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{etag}"'}
            if blob.lfs_sha256:
                headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(blob.size)})
                if hub.cdn_url:  # as on the Hub: a redirect to a signed URL on another origin
                    location = f"{hub.cdn_url}/lfs-cdn/{blob.lfs_sha256}?sig={hub.sign('cdn:' + blob.lfs_sha256)}"
                    return self._send(302, raw=b"", headers={**headers, "Location": location})
            return self._send_content(hub._content(blob), headers)

        def cdn_get(self, sha256: str) -> int:
            hub.cdn_requests.append((self.path, "Authorization" in self.headers))
            if not hmac.compare_digest(self.query.get("sig", [""])[0], hub.sign("cdn:" + sha256)):
                raise HubError(403, "bad download signature")
            return self._send_content((hub.storage / "lfs" / sha256).read_bytes(), {"ETag": f'"{sha256}"'})

        def _send_content(self, data: bytes, headers: dict[str, str]) -> int:
            """200 with the content, or 206 with the part a `Range: bytes=a-b` header asks for."""
            headers = {**headers, "Accept-Ranges": "bytes"}
            status, body = 200, data
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
            if match and data:
                start = int(match[1]) if match[1] else max(0, len(data) - int(match[2] or 0))
                end = int(match[2]) if match[1] and match[2] else len(data) - 1
                if start >= len(data):
                    raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
                end = min(end, len(data) - 1)
                status, body = 206, data[start:end + 1]
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(status, raw=body, headers=headers, content_type="application/octet-stream")

    return Handler
