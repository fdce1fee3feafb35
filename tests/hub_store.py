"""The stand-in Hub's storage model (blobs, commits, repos) and tree helpers; see `hub_server.py`."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatch
from typing import Any


INITIAL_GITATTRIBUTES = b"""*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
"""
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                 body: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.body = status, message, code, headers or {}, body or {}


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class Blob:
    """One file in a tree: regular content in `blobs/`, or an LFS pointer to `lfs/<sha256>`."""

    oid: str  # git blob id (of the pointer, for LFS files)
    size: int
    lfs_sha256: str | None = None
    pointer_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"oid": self.oid, "size": self.size, "lfs_sha256": self.lfs_sha256, "pointer_size": self.pointer_size}


@dataclass
class Commit:
    oid: str
    parent: str | None
    tree: dict[str, Blob]
    title: str
    message: str
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def owner(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str) -> Commit:
        """A branch, a tag or a full commit id -> its commit (404 RevisionNotFound otherwise)."""
        oid = self.branches.get(revision) or self.tags.get(revision)
        if oid is None and revision in self.commits:
            oid = revision
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[oid]

    def files(self, revision: str = "main") -> dict[str, Blob]:
        return dict(self.resolve(revision).tree)

    def history(self, revision: str = "main") -> list[Commit]:
        out, commit = [], self.resolve(revision)
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out


def _resolves_to_loopback(name: str) -> bool:
    try:
        return "127.0.0.1" in {info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)}
    except OSError:
        return False


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"  # the Hub's format


def _folders(tree: dict[str, Blob]) -> set[str]:
    return {"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)}


def _entry(path: str, tree: dict[str, Blob]) -> dict[str, Any]:
    blob = tree.get(path)
    if blob is None:  # a folder: its id is a digest of what is under it
        under = sorted((p, b.oid) for p, b in tree.items() if p.startswith(path + "/"))
        return {"type": "directory", "oid": hashlib.sha1(json.dumps(under).encode()).hexdigest(), "size": 0, "path": path}
    entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
    if blob.lfs_sha256:
        entry["lfs"] = {"oid": blob.lfs_sha256, "size": blob.size, "pointerSize": blob.pointer_size}
    return entry


def _is_lfs(path: str, sample: bytes, size: int, tree: dict[str, Blob], hub) -> bool:
    patterns = []
    if ".gitattributes" in tree:
        for line in hub._content(tree[".gitattributes"]).decode().splitlines():
            parts = line.split()
            if len(parts) > 1 and "filter=lfs" in parts[1:]:
                patterns.append(parts[0])
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch(name, p) or fnmatch(path, p) for p in patterns) or b"\0" in sample or size > LFS_SIZE_THRESHOLD


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[0].lower() in ("1", "true", "yes")
