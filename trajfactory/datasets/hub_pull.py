"""Pull one dataset version from the Hugging Face Hub into the trajfactory cache, verified against its manifest.

The other half of `hub.py`: at tag `vN` a dataset repo holds `manifest.json` and the shards at the paths of the local
version directory, so a pulled tag is laid out as a local store holds it::

    $TRAJFACTORY_CACHE/hub/OWNER__NAME/       a DatasetStore root
      v2/manifest.json  v2/README.md  v2/tasks/part-00000.parquet ...
      v2/.hub.json                              where it came from: repo, tag, commit, endpoint

    root, version = pull_version("my-org/swe", "v2")      # or None: the newest `vN` tag
    DatasetStore(root).read_rows(version, "tasks")

A version is downloaded into a temp directory, every shard checked against the manifest's sha256, and only then
renamed into place, so a cached version is always whole and verified, and is reused without any request. The token
is `$HF_TOKEN` (needed for private repos; never logged), the endpoint `$HF_ENDPOINT`, both read at call time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from trajfactory.datasets.hub import REPO_TYPE, TOKEN_ENV, HubInputError, check_repo_id
from trajfactory.datasets.store import MANIFEST, DatasetStore
from trajfactory.executors.images import default_cache_root

log = logging.getLogger(__name__)

HUB_PREFIX = "hf:"
ORIGIN = ".hub.json"  # in a pulled version directory: where it came from
_REF_RE = re.compile(r"(.+?)(?:@(v\d+))?")
_TAG_RE = re.compile(r"^v(\d+)$")


class HubPullError(ValueError):
    """A dataset version that cannot be pulled: names the repo and tag, and what would be right."""


def parse_hub_ref(text: str) -> tuple[str, str | None] | None:
    """`hf:OWNER/NAME[@vN]` -> (repo id, version or None for the newest); None when `text` is no `hf:` reference."""
    if not text.startswith(HUB_PREFIX):
        return None
    m = _REF_RE.fullmatch(text[len(HUB_PREFIX):])
    if m is None:
        raise HubPullError(f"{text}: not of the form hf:OWNER/NAME[@vN]")
    try:
        check_repo_id(m[1])
    except HubInputError as exc:
        raise HubPullError(f"{text}: {exc}") from None
    return m[1], m[2]


def hub_cache_dir(repo_id: str, cache_root: str | os.PathLike[str] | None = None) -> Path:
    """The DatasetStore root that pulled versions of `repo_id` go into."""
    return Path(cache_root or default_cache_root()) / "hub" / repo_id.replace("/", "__")


def hub_origin(store: DatasetStore, version: str) -> dict[str, Any] | None:
    """Where a pulled version came from (repo_id, revision, commit, endpoint); None for a version written here."""
    path = store.root / version / ORIGIN
    return json.loads(path.read_text()) if path.is_file() else None


def pull_version(repo_id: str, version: str | None = None, cache_root: str | os.PathLike[str] | None = None, *,
                 token: str | None = None, endpoint: str | None = None) -> tuple[Path, str]:
    """Download tag `version` (the newest `vN` tag when None) of the dataset repo `repo_id` into the cache, verify
    every shard against the manifest, and return (the dataset directory, the version) for `DatasetStore`.

    A cached version asked for by name is reused without a request; the newest one needs one request (the tags).
    `token` defaults to `$HF_TOKEN`, `endpoint` to `$HF_ENDPOINT` or the Hub. Raises `HubPullError` naming the input.
    """
    ref = f"{HUB_PREFIX}{repo_id}" + (f"@{version}" if version else "")
    try:
        check_repo_id(repo_id)
    except HubInputError as exc:
        raise HubPullError(f"{ref}: {exc}") from None
    if version is not None and not _TAG_RE.match(version):
        raise HubPullError(f"{ref}: {version!r} is not a version tag; give vN, e.g. {HUB_PREFIX}{repo_id}@v1")
    root = hub_cache_dir(repo_id, cache_root)
    store = DatasetStore(root)
    if version is not None and _cached(store, version):
        log.info("%s: using the verified copy in %s", ref, root / version)
        return root, version

    from huggingface_hub import HfApi

    token = token or (os.environ.get(TOKEN_ENV) or "").strip() or None
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token, library_name="trajfactory")
    with _pull_errors(ref, api.endpoint, token, store):
        refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
    tags = {t.name: t.target_commit for t in refs.tags if _TAG_RE.match(t.name)}
    ordered = sorted(tags, key=lambda t: int(t[1:]))
    if not tags:
        raise HubPullError(f"{ref}: {repo_id} on {api.endpoint} has no version tags (v1, v2, ...); publish one with "
                           f"`trajfactory dataset push DATASET_DIR {repo_id}`")
    version = version or ordered[-1]
    if version not in tags:
        raise HubPullError(f"{ref}: {repo_id} has no tag {version}; its version tags: {', '.join(ordered)}")
    commit = tags[version]
    origin = hub_origin(store, version) if (root / version).is_dir() else None
    if _cached(store, version) and origin and origin.get("commit") == commit:
        log.info("%s@%s: using the verified copy in %s", ref, version, root / version)
        return root, version

    log.info("%s: downloading %s@%s (commit %s) into %s", ref, repo_id, version, commit[:12], root / version)
    work = root / f".pull-{version}-{uuid.uuid4().hex[:8]}"
    (work / version).mkdir(parents=True)
    try:
        with _pull_errors(ref, api.endpoint, token, store):
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id, repo_type=REPO_TYPE, revision=commit, local_dir=work / version, token=token,
                              endpoint=endpoint, ignore_patterns=[".gitattributes"], library_name="trajfactory")
        shutil.rmtree(work / version / ".cache", ignore_errors=True)  # the client's download metadata
        pulled = DatasetStore(work)
        problems = pulled.verify(version)
        if not problems and pulled.manifest(version).get("version") != version:
            problems = [f"{MANIFEST} is of version {pulled.manifest(version).get('version')!r}, not {version}"]
        if problems:
            raise HubPullError(f"{ref}: the download of {repo_id}@{version} does not match its manifest, so it was "
                               f"removed: {'; '.join(problems[:5])}")
        (work / version / ORIGIN).write_text(json.dumps(
            {"repo_id": repo_id, "revision": version, "commit": commit, "endpoint": api.endpoint}, indent=1) + "\n")
        if not (_cached(store, version) and (hub_origin(store, version) or {}).get("commit") == commit):
            shutil.rmtree(root / version, ignore_errors=True)  # a copy of another commit, or not whole
            try:
                (work / version).rename(root / version)
            except OSError:  # another pull put it there first
                if not _cached(store, version):
                    raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root, version


def _cached(store: DatasetStore, version: str) -> bool:
    """Whether the cache holds a whole pulled `version`: its origin record (written only after verification) and
    every shard of its manifest at its size (a cheap check; the sha256 were checked when it was pulled)."""
    vdir = store.root / version
    if not (vdir / ORIGIN).is_file() or not (vdir / MANIFEST).is_file():
        return False
    try:
        tables = store.manifest(version)["tables"]
        return all((vdir / s["path"]).is_file() and (vdir / s["path"]).stat().st_size == s["bytes"]
                   for entry in tables.values() for s in entry["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


class _pull_errors:
    """The client's HTTP and connection errors as one-line `HubPullError`s naming the reference (token redacted)."""

    def __init__(self, ref: str, endpoint: str, token: str | None, store: DatasetStore):
        self.ref, self.endpoint, self.token, self.store = ref, endpoint, token, store

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, HubPullError):
            return False
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

        repo_id = self.ref[len(HUB_PREFIX):].split("@")[0]
        cached = [v for v in self.store.versions() if _cached(self.store, v)]
        offline = f"; cached here: {', '.join(f'{HUB_PREFIX}{repo_id}@{v}' for v in cached)}" if cached else ""
        if isinstance(exc, RepositoryNotFoundError):
            msg = (f"{self.ref}: no dataset repo {repo_id} on {self.endpoint}, or it is private and the token in "
                   f"{TOKEN_ENV} {'cannot read it' if self.token else 'is not set'}")
        elif isinstance(exc, HfHubHTTPError) and exc.response is not None:
            status = exc.response.status_code
            said = exc.server_message or str(exc).strip().splitlines()[0]
            if status == 401:
                msg = f"{self.ref}: the Hub at {self.endpoint} refused the token in {TOKEN_ENV} (401: {said})"
            else:
                msg = f"{self.ref}: the Hub at {self.endpoint} failed: HTTP {status}: {said}"
        elif isinstance(exc, OfflineModeIsEnabled) or "HF_HUB_OFFLINE" in str(exc):
            msg = f"{self.ref}: not in the cache and HF_HUB_OFFLINE is set{offline}"
        elif isinstance(exc, OSError) or type(exc).__module__.startswith(("httpx", "httpcore")):
            msg = f"{self.ref}: cannot download from the Hub at {self.endpoint}: {exc}{offline}"
        else:
            return False
        raise HubPullError(msg.replace(self.token, "***") if self.token else msg) from None
