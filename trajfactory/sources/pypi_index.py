"""The package index: a project's releases that have an sdist, the newest N of them, and an sdist's download.

It speaks the simple repository API that pip speaks (PEP 691 JSON when the index offers it, PEP 503 HTML
otherwise), so a mirror or a private index serves as well as PyPI: the index is `PIP_INDEX_URL` when set, else
pip's own configured `index-url` (pip.conf), else https://pypi.org/simple. Nothing of a package runs on the host: an sdist is fetched as a file and checked against
the sha256 the index gives (`pip download` would build its metadata, running the package's build backend).
Failures raise `SourceError` naming the source URI.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import ssl
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from trajfactory.sources.mirrors import SourceError

__all__ = ["DEFAULT_INDEX", "INDEX_ENV", "Sdist", "download_sdist", "index_url", "latest_releases", "sdists"]
log = logging.getLogger(__name__)

DEFAULT_INDEX = "https://pypi.org/simple"
INDEX_ENV = "PIP_INDEX_URL"
"""The index pip uses is the index this module asks."""
_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
_SDIST_EXTS = (".tar.gz", ".zip")
"""The sdist formats an index may carry (PEP 527)."""


@dataclass(frozen=True)
class Sdist:
    filename: str
    url: str
    version: str
    """As the file name spells it."""
    sha256: str | None
    yanked: bool
    requires_python: str | None = None
    """The Python versions the release supports, as the index gives them (PEP 503 `data-requires-python`)."""


def index_url() -> str:
    return (os.environ.get(INDEX_ENV) or _configured_index() or DEFAULT_INDEX).rstrip("/")


@lru_cache(maxsize=1)
def _pip_config() -> dict[str, str]:
    """pip's configuration files (global, user, site, PIP_CONFIG_FILE) as `pip config list` shows them."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        found[key] = value.strip().strip("'\"")
    return found


def _configured(option: str) -> str:
    """An option of pip's configuration (its `download` section first, then `global`); '' if none."""
    config = _pip_config()
    return config.get(f"download.{option}") or config.get(f"global.{option}") or ""


def _configured_index() -> str:
    return _configured("index-url")


def _tls(uri: str) -> ssl.SSLContext | bool:
    """The CA bundle pip is told to trust (PIP_CERT, else `cert` in pip's configuration), else the default one."""
    cafile = os.environ.get("PIP_CERT") or _configured("cert")
    if not cafile:
        return True
    if not os.path.isfile(cafile):
        raise SourceError("unreachable", f"{uri!r}: pip's CA bundle {cafile} (PIP_CERT, or `cert` in pip's "
                          "configuration) is not a file; fix the path or unset it", uri)
    return ssl.create_default_context(cafile=cafile)


def normalize(name: str) -> str:
    """The PEP 503 form of a project name: `Foo_Bar.baz` is `foo-bar-baz`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def sdists(name: str, uri: str, timeout: float = 60.0) -> list[Sdist]:
    """Every sdist of project `name` the index lists (yanked ones too); `uri` is the source the error messages name."""
    import httpx  # here, not at the top: importing the sources loads no HTTP client

    index = index_url()
    try:
        resp = httpx.get(f"{index}/{normalize(name)}/", headers={"Accept": _ACCEPT}, follow_redirects=True,
                         timeout=timeout, verify=_tls(uri))
    except httpx.TimeoutException as exc:
        raise SourceError("timeout", f"{uri!r}: the package index {index} did not answer within {timeout:g}s; "
                          "retry", uri) from exc
    except httpx.HTTPError as exc:
        raise SourceError("unreachable", f"{uri!r}: cannot reach the package index {index}: {exc}", uri) from exc
    if resp.status_code == 404:
        raise SourceError("not_found", f"{uri!r}: the package index {index} has no project {name!r}; check the name "
                          f"(on PyPI: https://pypi.org/project/{name}/)", uri)
    if resp.status_code >= 400:
        raise SourceError("unreachable", f"{uri!r}: the package index {index} answered {resp.status_code} for "
                          f"{name!r}; retry later", uri)
    kind = resp.headers.get("content-type", "")
    files = resp.json().get("files", []) if "json" in kind else _html_files(resp.text)
    found = []
    for f in files:
        version = _sdist_version(f.get("filename", ""), name)
        if version is None:
            continue
        url, fragment = urldefrag(urljoin(str(resp.url), f.get("url", "")))
        sha = (f.get("hashes") or {}).get("sha256") or (fragment[7:] if fragment.startswith("sha256=") else None)
        found.append(Sdist(f["filename"], url, version, sha, bool(f.get("yanked")),
                           f.get("requires-python") or None))
    return found


def supports(requires_python: str | None, python: str | None) -> bool:
    """Whether a release whose `Requires-Python` is `requires_python` installs on Python `python` (as pip decides it:
    no constraint, no known Python or a constraint it cannot read all count as yes)."""
    if not requires_python or not python:
        return True
    try:
        return SpecifierSet(requires_python).contains(python, prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return True


def latest_releases(name: str, n: int, uri: str, *, pre: bool = False, python: str | None = None,
                    timeout: float = 60.0) -> list[str]:
    """The `n` newest versions of `name` that have an sdist, newest first: never a yanked file, no pre-release or
    development release unless `pre`, and with `python` (the sandbox's Python, `3.11.2`) none whose `Requires-Python`
    excludes it, as pip would choose. Fewer when the project has fewer (logged); none is an error."""
    files = sdists(name, uri, timeout)
    if not files:
        raise SourceError("not_found", f"{uri!r}: {name} has no sdist on the package index {index_url()} (only "
                          "wheels, or no files), so there is no source to mine; pick a project that publishes sdists",
                          uri)
    released = {Version(f.version): f for f in files
                if not f.yanked and (pre or not (Version(f.version).is_prerelease or Version(f.version).is_devrelease))}
    versions = {v: f.version for v, f in released.items() if supports(f.requires_python, python)}
    newer = sorted((v for v in released if v not in versions and (not versions or v > max(versions))), reverse=True)
    if newer:
        too_new = ", ".join(f"{released[v].version} ({released[v].requires_python})" for v in newer[:3])
        log.info("%s: the sandbox's Python %s is too old for %s%s; taking the newest releases that support it "
                 "(the recipe's sandbox.python chooses a newer one)", uri,
                 python, too_new, f" and {len(newer) - 3} more" if len(newer) > 3 else "")
    chosen = sorted(versions, reverse=True)[:n]
    if not chosen:
        skipped = ", ".join(sorted({f.version for f in files}, key=Version))
        hint = "" if pre else f"; write {uri}:pre to take pre-releases too"
        if released:
            raise SourceError("not_found", f"{uri!r}: no release of {name} with an sdist supports the sandbox's Python "
                              f"{python} (the newest, {max(released)}, needs Python "
                              f"{released[max(released)].requires_python}); set the recipe's sandbox.python to a Python "
                              f"it supports (3.13), pin one with pypi:{name}==VERSION to see its install fail, or "
                              "mine another project", uri)
        raise SourceError("not_found", f"{uri!r}: {name} has no release on the package index {index_url()} with an "
                          f"sdist that is not yanked or a pre-release (its sdists: {skipped}){hint}", uri)
    if len(chosen) < n:
        log.warning("%s: %s has %d releases with an sdist, not %d; taking them all", uri, name, len(chosen), n)
    return [versions[v] for v in chosen]


def download_sdist(name: str, version: str, dest: Path, uri: str, timeout: float = 300.0) -> Path:
    """The sdist of `name` `version` saved into `dest` (its name kept), its sha256 checked when the index gives one."""
    files = sdists(name, uri, min(timeout, 60.0))
    wanted = _version(version)
    match = sorted((f for f in files if _version(f.version) == wanted and wanted is not None),
                   key=lambda f: not f.filename.endswith(".tar.gz"))  # a .tar.gz before an old .zip
    if not match:
        versions = ", ".join(sorted({f.version for f in files if not f.yanked}, key=Version)) or "none"
        raise SourceError("not_found", f"{uri!r}: the package index {index_url()} has no sdist of {name} {version}; "
                          f"versions with one: {versions}", uri)
    import httpx  # as in `sdists`

    sdist = match[0]
    dest.mkdir(parents=True, exist_ok=True)
    part, digest = dest / (sdist.filename + ".part"), hashlib.sha256()
    log.info("downloading %s from %s", sdist.filename, sdist.url)
    try:
        with (httpx.stream("GET", sdist.url, follow_redirects=True, timeout=timeout, verify=_tls(uri)) as resp,
              part.open("wb") as out):
            if resp.status_code >= 400:
                raise SourceError("download_failed", f"{uri!r}: {sdist.url} answered {resp.status_code}; retry", uri)
            for chunk in resp.iter_bytes():
                digest.update(chunk)
                out.write(chunk)
    except httpx.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise SourceError("download_failed", f"{uri!r}: downloading {sdist.url} failed: {exc}; retry", uri) from exc
    if sdist.sha256 and digest.hexdigest() != sdist.sha256.lower():
        part.unlink(missing_ok=True)
        raise SourceError("download_failed", f"{uri!r}: {sdist.filename} does not match the sha256 the index gives "
                          f"({digest.hexdigest()[:12]}… is not {sdist.sha256[:12]}…); retry", uri)
    return part.replace(dest / sdist.filename)


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _sdist_version(filename: str, name: str) -> str | None:
    """The version in an sdist's file name `NAME-VERSION.tar.gz` of project `name`; None for wheels, other projects'
    files and versions that are not PEP 440."""
    ext = next((e for e in _SDIST_EXTS if filename.lower().endswith(e)), None)
    if ext is None:
        return None
    project, sep, version = filename[:-len(ext)].rpartition("-")
    if not sep or normalize(project) != normalize(name) or _version(version) is None:
        return None
    return version


class _Anchors(HTMLParser):
    """The file links of a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[dict] = []
        self._open: dict | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            a = dict(attrs)
            self._open = {"url": a.get("href") or "", "yanked": "data-yanked" in a, "filename": "",
                          "requires-python": a.get("data-requires-python")}

    def handle_data(self, data):
        if self._open is not None:
            self._open["filename"] += data

    def handle_endtag(self, tag):
        if tag == "a" and self._open is not None:
            self._open["filename"] = self._open["filename"].strip() or self._open["url"].split("#")[0].rsplit("/")[-1]
            self.files.append(self._open)
            self._open = None


def _html_files(text: str) -> list[dict]:
    parser = _Anchors()
    parser.feed(text)
    return parser.files
