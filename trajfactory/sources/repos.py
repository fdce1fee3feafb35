"""Harvest repositories: git URLs, local paths and PyPI sdists become `Source` records pinned to a commit.

Every source ends up as a git mirror `mirror_root/<name>-<hash>` whose work tree is checked out at the
pinned commit; the user's own working tree is never touched. Directories and sdists are imported as one
deterministic commit (fixed author, committer and date), so the same content always gets the same sha.
Failures raise `SourceError`, whose `reason` is a short code that quarantine rows carry.
"""

from __future__ import annotations

import logging
import os
import re
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import git

from trajfactory.schema import Source, content_hash, utcnow
from trajfactory.sources import mirrors, pypi_index
from trajfactory.sources.licenses import METADATA_FILES, find_license_file, guess_license, license_from_metadata
from trajfactory.sources.mirrors import REASONS, SourceError

__all__ = ["FORMS", "NETWORK_TIMEOUT_S", "REASONS", "SourceError", "SourceUri", "expand_uri", "harvest", "parse_uri"]
log = logging.getLogger(__name__)

NETWORK_TIMEOUT_S = 300.0
"""Limit of one clone, fetch, ls-remote or pip download."""

FORMS = ("a git URL (https://, git@host:, file://, PATH.git, optionally @REF), a local directory, pypi:NAME==VERSION, "
         "or pypi:NAME@latest:N (the N newest releases with an sdist; @latest:N:pre counts pre-releases too)")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_GIT_SCHEMES = {"https", "http", "ssh", "git", "file"}
_SCP = re.compile(r"^[\w.-]+@[\w.-]+:(?!//)")
_NAME = r"([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
_PYPI = re.compile(rf"^pypi:{_NAME}==([A-Za-z0-9][A-Za-z0-9.+!_-]*)$", re.I)
_PYPI_LATEST = re.compile(rf"^pypi:{_NAME}@latest:(-?[0-9]+)(:pre)?$", re.I)
_PYPI_HINT = "write pypi:NAME==VERSION (one release) or pypi:NAME@latest:N (the N newest), e.g. pypi:inflection==0.5.1"
_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/+-]*$")
_ARCHIVES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip", ".tar")


@dataclass(frozen=True)
class SourceUri:
    kind: Literal["git", "local", "pypi"]
    location: str
    """Clone URL, absolute local path, or PyPI project name."""
    ref: str | None = None
    """Git ref (branch, tag or sha) to pin, or the PyPI version."""
    latest: int = 0
    """`pypi:NAME@latest:N`: N, the number of newest releases it stands for (0 for one pinned source)."""
    pre: bool = False
    """`@latest:N:pre`: pre-releases count among the newest."""

    @property
    def name(self) -> str:
        if self.kind == "pypi":
            return self.location.lower()
        parts = [p for p in re.split(r"[/:]", self.location) if p and p != ".git"]
        return parts[-1].removesuffix(".git") if parts else "repo"

    @property
    def normalized(self) -> str:
        """The location without ref, scheme, user or `.git`, so equivalent spellings share an id."""
        if self.kind == "pypi":
            return "pypi:" + re.sub(r"[-_.]+", "-", self.location).lower()
        scheme = _SCHEME.match(self.location)
        if scheme and scheme[1].lower() != "file":
            netloc, _, path = self.location[scheme.end():].partition("/")
            return f"{netloc.rpartition('@')[2].lower()}/{path.rstrip('/').removesuffix('.git')}"
        if _SCP.match(self.location):
            host, _, path = self.location.partition("@")[2].partition(":")
            return f"{host.lower()}/{path.rstrip('/').removesuffix('.git')}"
        path = os.path.normpath(self.location[len("file://"):] if scheme else self.location)
        return path.removesuffix("/.git") or "/"  # `repo/.git` is `repo`, but `repo.git` is another directory


def parse_uri(uri: str) -> SourceUri:
    """Validate the form of a source URI (no network, no cloning); garbage raises `SourceError("bad_uri")`."""
    text = uri.strip() if isinstance(uri, str) else ""
    if not text:
        raise SourceError("bad_uri", f"{uri!r}: empty source; expected {FORMS}", str(uri))
    if text.lower().startswith("pypi:"):
        if latest := _PYPI_LATEST.match(text):
            if int(latest[2]) < 1:
                raise SourceError("bad_uri", f"{text!r} asks for {latest[2]} releases; N of @latest:N is 1 or more, "
                                  "e.g. pypi:inflection@latest:2", text)
            return SourceUri("pypi", latest[1], latest=int(latest[2]), pre=bool(latest[3]))
        match = _PYPI.match(text)
        if not match:
            raise SourceError("bad_uri", f"{text!r} is not a PyPI source; {_PYPI_HINT} or pypi:inflection@latest:2",
                              text)
        return SourceUri("pypi", match[1], match[2])
    scheme = _SCHEME.match(text)
    if scheme:
        if scheme[1].lower() not in _GIT_SCHEMES:
            raise SourceError("bad_uri", f"{text!r}: {scheme[1]}:// is not a git transport; expected {FORMS}", text)
        path_at = text.find("/", scheme.end())
        no_host = path_at == scheme.end() and scheme[1].lower() != "file"
        if path_at < 0 or path_at == len(text) - 1 or no_host:
            raise SourceError("bad_uri", f"{text!r} names no repository; expected e.g. https://host/owner/repo", text)
        return _with_ref("git", text, path_at)
    if _SCP.match(text):
        return _with_ref("git", text, text.index(":"))
    path = os.path.expanduser(text)
    left = path.rpartition("@")[0]
    if "@" in path and not os.path.exists(path) and (os.path.exists(left) or left.rstrip("/").endswith(".git")):
        path, _, ref = path.rpartition("@")
        _check_ref(text, ref)
    else:
        ref = None
    location = os.path.abspath(path)
    return SourceUri("git" if location.rstrip("/").endswith(".git") else "local", location, ref)


def _with_ref(kind: Literal["git"], text: str, path_at: int) -> SourceUri:
    head, at, ref = text[path_at:].rpartition("@")
    if not at:
        return SourceUri(kind, text)
    _check_ref(text, ref)
    return SourceUri(kind, text[:path_at] + head, ref)


def _check_ref(text: str, ref: str) -> None:
    if not _REF.match(ref) or ".." in ref:
        raise SourceError("bad_uri", f"{text!r}: {ref!r} is not a branch, tag or sha; write URL@REF, e.g. @main", text)


def expand_uri(uri: str, *, python: str | None = None, timeout_s: float = NETWORK_TIMEOUT_S) -> list[str]:
    """The sources `uri` stands for: `pypi:NAME@latest:N` the pinned `pypi:NAME==VERSION` of its N newest releases
    with an sdist (asked of the package index now, newest first; with `python`, those that support that Python),
    any other form itself."""
    parsed = parse_uri(uri)
    if not parsed.latest:
        return [uri.strip()]
    versions = pypi_index.latest_releases(parsed.location, parsed.latest, uri.strip(), pre=parsed.pre,
                                          python=python, timeout=min(timeout_s, 60.0))
    return [f"pypi:{parsed.location}=={version}" for version in versions]


def harvest(uri: str, mirror_root: str | Path, *, timeout_s: float = NETWORK_TIMEOUT_S) -> Source:
    """Mirror `uri` under `mirror_root`, pin it to one commit, and describe it with provenance."""
    parsed = parse_uri(uri)
    if parsed.latest:
        raise SourceError("bad_uri", f"{uri!r} stands for {parsed.latest} releases; harvest each of expand_uri's", uri)
    root = Path(mirror_root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    kind = parsed.kind
    # A git source keeps one mirror for all its refs; each PyPI version is a repository of its own.
    key = content_hash(parsed.normalized, parsed.ref if kind == "pypi" else "", length=12)
    mirror = root / f"{mirrors.slug(parsed.name)}-{key}"
    if kind == "pypi":
        mirror, commit = _harvest_pypi(parsed, mirror, uri, timeout_s)
    elif kind == "git":
        commit = mirrors.mirror_remote(parsed.location, parsed.ref, mirror, uri, timeout_s)
    else:
        path = Path(parsed.location)
        if not path.exists():
            raise SourceError("not_found", f"{uri!r}: no such directory {path}; expected {FORMS}", uri)
        if not path.is_dir():
            raise SourceError("bad_uri", f"{uri!r}: {path} is a file; expected a directory or {FORMS}", uri)
        if mirrors.is_repo_root(path):
            commit = mirrors.mirror_local_repo(path, parsed.ref, mirror, uri, timeout_s)
        elif parsed.ref:
            raise SourceError("bad_uri", f"{uri!r}: {path} is no git repository, so it has no ref {parsed.ref!r}", uri)
        else:
            mirror, commit = mirrors.import_tree(path, root, parsed.name, f"Import {path.name}", uri)
    license_file, license_ = _detect_license(mirror, commit)
    slug, date = _describe(mirror, commit, parsed.location if kind == "git" else "")
    log.info("harvested %s at %s into %s (license %s)", uri, commit[:12], mirror, license_)
    return Source(
        source_id=content_hash(parsed.normalized, commit), kind=kind, uri=uri.strip(), name=parsed.name,
        commit=commit, path=str(mirror), license=license_, license_file=license_file, fetched_at=utcnow(),
        version=parsed.ref, repo_slug=slug, commit_date=date,
    )


# ---------------------------------------------------------------- plain directories and PyPI sdists


def _harvest_pypi(parsed: SourceUri, mirror: Path, uri: str, timeout: float) -> tuple[Path, str]:
    name, version = parsed.location, parsed.ref
    repo = mirrors.open_mirror(mirror)
    if repo is not None:
        return mirror, mirrors.checkout(repo, repo.head.commit.hexsha)  # PyPI files are immutable: the mirror is final
    cache = mirror.parent / "_sdists" / f"{mirrors.slug(name)}-{version}"
    archive = _download_sdist(name, version, cache, uri, timeout)
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=mirror.parent) as tmp:
        top = _unpack(archive, Path(tmp) / "sdist", uri)
        message = f"{parsed.normalized.removeprefix('pypi:')} {version} (sdist from PyPI)"
        return mirrors.import_tree(top, mirror.parent, parsed.name, message, uri, include_ignored=True, mirror=mirror)


def _download_sdist(name: str, version: str, cache: Path, uri: str, timeout: float) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    cached = [p for p in cache.iterdir() if p.name.lower().endswith(_ARCHIVES)]
    if cached:
        return cached[0]
    log.info("downloading the sdist of %s %s from the package index %s", name, version, pypi_index.index_url())
    return pypi_index.download_sdist(name, version, cache, uri, timeout)


def _unpack(archive: Path, dest: Path, uri: str) -> Path:
    """Unpack an sdist; return its single top-level directory (or `dest` when there is none)."""
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(dest)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter="data")  # refuses absolute paths and links out of dest
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        archive.unlink(missing_ok=True)  # most likely a partial download: the next harvest fetches it again
        raise SourceError("download_failed", f"{uri!r}: cannot unpack {archive.name} ({exc}); retry", uri) from exc
    entries = list(dest.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


_HOSTED = re.compile(r"(?:github\.com|gitlab\.com|bitbucket\.org|codeberg\.org)[/:]([\w.-]+)/([\w.-]+?)(?:\.git)?(?=[/\s\"'#?)]|$)")


def repo_slug(text: str) -> str | None:
    """`owner/name` of the first code-host URL in `text` (a git URL, or a project's metadata), or None."""
    m = _HOSTED.search(text)
    return f"{m.group(1)}/{m.group(2)}" if m else None


def _describe(mirror: Path, commit: str, url: str) -> tuple[str | None, object]:
    """(owner/name from the URL or the project's metadata files, the commit's time)."""
    with git.Repo(mirror) as repo:
        c = repo.commit(commit)
        slug = repo_slug(url) if url else None
        if slug is None:
            blobs = {b.name: b for b in c.tree.blobs}
            for name in ("PKG-INFO", "pyproject.toml", "setup.cfg", "setup.py"):
                if name in blobs and (slug := repo_slug(blobs[name].data_stream.read().decode("utf-8", "replace"))):
                    break
        return slug, c.committed_datetime


def _detect_license(mirror: Path, commit: str) -> tuple[str | None, str | None]:
    with git.Repo(mirror) as repo:
        blobs = {b.name: b for b in repo.commit(commit).tree.blobs}
        license_file = find_license_file(list(blobs))
        if license_file:
            found = guess_license(blobs[license_file].data_stream.read().decode("utf-8", "replace"))
            if found:
                return license_file, found
        metadata = {n: blobs[n].data_stream.read() for n in METADATA_FILES if n in blobs}
    return license_file, license_from_metadata(metadata)


