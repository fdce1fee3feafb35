"""A Hugging Face Hub stand-in on loopback, for tests.

The Hub cannot be reached from the test machines, so the tests point the real `huggingface_hub` client (and
`datasets`) at this server with `HF_ENDPOINT`. It speaks the Hub's HTTP protocol for dataset repos, as far as
creating a repo, committing to it, tagging it and reading it back need:

    POST   /api/repos/create                                        create a repo (409 when it exists)
    POST   /api/validate-yaml                                       README front matter check before a commit
    GET    /api/whoami-v2                                           the token's user
    GET    /api/datasets/{repo}[/revision/{rev}]                    repo info: sha, private, siblings, cardData
    GET    /api/datasets/{repo}/refs                                branches and tags with their commits
    GET    /api/datasets/{repo}/tree/{rev}[/{path}]                 files and folders (recursive=, with LFS info)
    POST   /api/datasets/{repo}/paths-info/{rev}                    info on given paths (form data)
    POST   /api/datasets/{repo}/preupload/{rev}                     upload mode (regular | lfs) and remote oid per file
    POST   /api/datasets/{repo}/commit/{branch}                     NDJSON commit: header, file, lfsFile, deleted*
    POST   /api/datasets/{repo}/tag/{rev}                           create a tag (409 when it exists)
    POST   /api/datasets/{repo}/branch/{branch}, DELETE same        create (from startingPoint) / delete a branch
    POST   /datasets/{repo}.git/info/lfs/objects/batch              LFS batch API (basic transfer)
    PUT    /lfs-upload/{oid}?sig=...                                presigned LFS upload (no Authorization)
    POST   /datasets/{repo}.git/info/lfs/objects/verify             LFS verify
    HEAD   /datasets/{repo}/resolve/{rev}/{path}, GET same          regular files: 200 with ETag (git blob id),
                                                                    X-Repo-Commit, Content-Length, content (Range);
                                                                    LFS files: 302 to a signed URL on another origin
                                                                    with X-Linked-Etag (sha256), X-Linked-Size,
                                                                    X-Repo-Commit, as the Hub redirects to its CDN
    HEAD   /lfs-cdn/{sha256}?sig=..., GET same                      the "CDN" (this server as http://localhost:PORT)

Git-like semantics the clients rely on: every commit has a 40-hex id, a parent and a full tree; branches and
tags point at commits; a file's content is read per revision; an LFS file's blob id is the git id of its
pointer and its `lfs.oid` the sha256 of its content; a commit may name `parentCommit` and is refused (412) when
the branch moved. New repos get an initial commit with a `.gitattributes` that stores `*.parquet` in LFS, as on
the Hub. Tokens are checked: a wrong token is refused with 401 ("Invalid credentials in Authorization header"),
writes need a token whose user owns the namespace, and a private repo is invisible (404) to anyone else.

Xet storage is not spoken: clients must run with `HF_HUB_DISABLE_XET=1`, which makes `huggingface_hub` use the
LFS protocol above.

Everything the server stores lives under `storage`: `lfs/<sha256>` (LFS objects), `blobs/<git id>` (regular
files), `repos/datasets/<owner>/<name>.json` (commits, trees, refs) and `access.log`. `uploads`, `commits`,
`preuploads`, `cdn_requests` and `requests` record what reached the server, for the tests to count.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hub_http import make_handler
from hub_store import Blob, Commit, HubError, Repo, _now, _resolves_to_loopback, git_blob_id, lfs_pointer


class HubServer:
    """The stand-in Hub: `with HubServer(storage, {token: user}) as hub:` serves on `hub.url` until exit."""

    def __init__(self, storage: Path, tokens: dict[str, str], host: str = "127.0.0.1"):
        self.storage = Path(storage)
        self.tokens = dict(tokens)
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self.uploads: list[dict[str, Any]] = []  # LFS objects whose bytes reached the server
        self.commits: list[dict[str, Any]] = []  # every commit made through /commit, with its operations
        self.preuploads: list[list[str]] = []  # paths asked about in each /preupload call
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self._secret = secrets.token_bytes(16)  # signs the presigned LFS upload URLs
        for sub in ("lfs", "blobs", "repos"):
            (self.storage / sub).mkdir(parents=True, exist_ok=True)
        self._httpd = ThreadingHTTPServer((host, 0), make_handler(self))
        self._httpd.daemon_threads = True
        port = self._httpd.server_address[1]
        self.url = f"http://{host}:{port}"
        # LFS downloads are redirected to a "CDN" on another origin, as on the Hub: the same server under the name
        # localhost (the client keeps its Authorization header for the Hub's own origin only)
        self.cdn_url = f"http://localhost:{port}" if host == "127.0.0.1" and _resolves_to_loopback("localhost") else None
        self.cdn_requests: list[tuple[str, bool]] = []  # (path, whether an Authorization header came along)
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ for tests

    def repo(self, repo_id: str) -> Repo:
        return self.repos[repo_id]

    def read(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        return self._content(self.repos[repo_id].files(revision)[path])

    # ------------------------------------------------------------ storage

    def _content(self, blob: Blob) -> bytes:
        if blob.lfs_sha256:
            return (self.storage / "lfs" / blob.lfs_sha256).read_bytes()
        return (self.storage / "blobs" / blob.oid).read_bytes()

    def _store_regular(self, data: bytes) -> Blob:
        oid = git_blob_id(data)
        (self.storage / "blobs" / oid).write_bytes(data)
        return Blob(oid=oid, size=len(data))

    def _lfs_blob(self, sha256: str, size: int) -> Blob:
        pointer = lfs_pointer(sha256, size)
        return Blob(oid=git_blob_id(pointer), size=size, lfs_sha256=sha256, pointer_size=len(pointer))

    def _has_lfs(self, sha256: str, size: int | None = None) -> bool:
        path = self.storage / "lfs" / sha256
        return path.is_file() and (size is None or path.stat().st_size == size)

    def _save(self, repo: Repo) -> None:
        state = {
            "repo_id": repo.repo_id,
            "private": repo.private,
            "created_at": repo.created_at,
            "branches": repo.branches,
            "tags": repo.tags,
            "commits": {
                oid: {"parent": c.parent, "title": c.title, "message": c.message, "date": c.date,
                      "tree": {p: b.to_json() for p, b in sorted(c.tree.items())}}
                for oid, c in repo.commits.items()
            },
        }
        path = self.storage / "repos" / "datasets" / f"{repo.repo_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state, indent=1))

    def _commit(self, repo: Repo, parent: str | None, tree: dict[str, Blob], title: str, message: str) -> Commit:
        date = _now()
        body = json.dumps({"parent": parent, "tree": {p: b.oid for p, b in sorted(tree.items())}, "title": title,
                           "message": message, "date": date, "nonce": secrets.token_hex(4)})
        commit = Commit(hashlib.sha1(body.encode()).hexdigest(), parent, tree, title, message, date)
        repo.commits[commit.oid] = commit
        return commit

    # ------------------------------------------------------------ auth

    def user(self, headers: Any) -> str | None:
        """The token's user; None without a token; 401 for a token the Hub does not know."""
        auth = headers.get("Authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        user = self.tokens.get(token) if scheme.lower() == "bearer" else None
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def visible_repo(self, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and user != repo.owner):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def writable_repo(self, repo_id: str, user: str | None) -> Repo:
        if user is None:
            raise HubError(401, "You must be authenticated to write to a repo")
        repo = self.visible_repo(repo_id, user)
        if user != repo.owner:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def sign(self, oid: str) -> str:
        return hmac.new(self._secret, oid.encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- tree helpers
