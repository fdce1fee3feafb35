"""Publish dataset versions to the Hugging Face Hub: one commit and one tag `vN` per version.

Layout of the dataset repo at tag `vN` (and on the default branch, which holds the newest version pushed)::

    README.md                   the version's card; its `configs:` list the version's shards, one config per table
    manifest.json               the version's manifest, byte for byte (row counts, schemas, shard sha256, lineage)
    tasks/part-00000.parquet    the version's shards, at the paths its manifest names (as in `DATASET_ROOT/NAME/vN/`)
    trajectories/...

So `datasets.load_dataset(REPO_ID, "tasks", revision="v2")` loads v2's `tasks`, and a version directory and its tag
on the Hub hold the same files. Each version is one commit on top of the previous version's tree: a shard whose
path and sha256 (from the manifest) are unchanged is left out of the commit and not uploaded again; shards that
the version no longer has are deleted in the same commit. A version older than the newest one on the Hub is
committed on a short-lived branch started from the nearest older tag, so the default branch keeps the newest.

`hub_pull.py` brings a tag back: `pull_version` (what `--data hf:OWNER/NAME@vN` of `train` and `eval` uses).

The token is the `HF_TOKEN` environment variable (the one `huggingface_hub` reads); it is passed to the client,
never logged, and never written anywhere. `HF_ENDPOINT` selects another Hub endpoint.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trajfactory.datasets.card import render_card
from trajfactory.datasets.store import CARD, MANIFEST, DatasetStore
from trajfactory.schema import TABLE_SCHEMAS

TOKEN_ENV = "HF_TOKEN"
REPO_TYPE = "dataset"
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_TAG_RE = re.compile(r"^v(\d+)$")


class HubInputError(ValueError):
    """Bad input to a push (no versions, unknown version, bad repo id, no token): nothing was sent."""


class HubPushError(RuntimeError):
    """The Hub refused or failed a push step, or a tag on the Hub conflicts with the local version."""


@dataclass
class PushResult:
    """What one version's push did. `status`: `pushed` or `skipped` (already on the Hub, same manifest)."""

    version: str
    status: str
    commit: str | None = None
    uploaded: list[str] = field(default_factory=list)  # paths committed with new content
    upload_bytes: int = 0
    reused: list[str] = field(default_factory=list)  # shards already on the Hub with the same sha256
    deleted: list[str] = field(default_factory=list)
    branch: str | None = None  # the branch the commit was made on


@dataclass(frozen=True)
class _File:
    path: str  # in the repo
    size: int
    sha256: str | None = None  # shards: from the manifest
    local: Path | None = None  # shards: the file to upload
    data: bytes | None = None  # README.md / manifest.json


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID_RE.match(repo_id or "") or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise HubInputError(
            f"repo id {repo_id!r} is not of the form OWNER/NAME (your user or organization, a slash, the dataset "
            "name; letters, digits, '-', '_', '.'), e.g. my-org/my-dataset"
        )
    return repo_id


def token_from_env() -> str:
    token = (os.environ.get(TOKEN_ENV) or "").strip()
    if not token:
        raise HubInputError(
            f"no Hugging Face token: set the {TOKEN_ENV} environment variable to a token with write access to the "
            "repo's owner (https://huggingface.co/settings/tokens)"
        )
    return token


def versions_to_consider(dataset_dir: str | os.PathLike[str], version: str | None) -> tuple[DatasetStore, list[str]]:
    """The store and the versions a push looks at (all, oldest first, or the one asked for); bad input raises."""
    path = Path(dataset_dir)
    store = DatasetStore(path)
    versions = store.versions()
    if not versions:
        if _TAG_RE.match(path.name) and (path / MANIFEST).is_file():
            raise HubInputError(
                f"{path} is one version, not a dataset directory: pass its parent, {path.parent}, "
                f"and --version {path.name}"
            )
        what = "does not exist" if not path.exists() else "is not a directory" if not path.is_dir() else \
            "holds no dataset versions (v1, v2, ...)"
        raise HubInputError(
            f"{path} {what}: pass a dataset directory DATASET_ROOT/NAME, the one `trajfactory dataset list` shows "
            "versions of (e.g. trajfactory-out/datasets/my-dataset)"
        )
    if version is not None:
        if version not in versions:
            raise HubInputError(f"{path} has no version {version!r}; its versions: {', '.join(versions)}")
        versions = [version]
    return store, versions


def hub_card(name: str, manifest: dict[str, Any], local_card: str | None, repo_id: str) -> str:
    """The version's README.md on the Hub: its card (or one rendered from the manifest) whose `configs:` name exactly
    the version's shards as laid out in the repo, and a note on loading the version by its tag.

    The card's own configs are kept (names, splits), each data_files pattern replaced by the list of the version's
    shards it matches, so no other file in the repo can enter a split; without configs, one config per non-empty
    table, split by shard name prefix for tables written with a `split` column (`train-00000.parquet`)."""
    text = local_card if local_card is not None else render_card(name, manifest, {})
    front: dict[str, Any] = {}
    body = text
    if text.startswith("---"):
        parts = text.split("---", 2)
        if len(parts) == 3:
            front = yaml.safe_load(parts[1]) or {}
            body = parts[2].lstrip("\n")
    shards = [s["path"] for entry in manifest["tables"].values() for s in entry["shards"]]
    configs = front.get("configs")
    if isinstance(configs, list) and configs and all(isinstance(c, dict) and "data_files" in c for c in configs):
        front["configs"] = [{**c, "data_files": _explicit(c["data_files"], shards)} for c in configs]
    else:
        front["configs"] = [
            {"config_name": table, "data_files": [{"split": split, "path": paths}
                                                  for split, paths in _shards_by_split(entry).items()]}
            for table, entry in manifest["tables"].items()
            if entry["rows"]  # `datasets` cannot load a split with no rows (as in card.render_card)
        ]
    version = manifest["version"]
    first = front["configs"][0] if front["configs"] else {"config_name": "tasks", "data_files": [{"split": "train"}]}
    split = first["data_files"][0].get("split", "train") if first["data_files"] else "train"
    body = body.replace('"PATH_OR_REPO"', f'"{repo_id}"').rstrip()
    body += (
        f"\n\n## On the Hub\n\nThis is `{version}` of `{repo_id}`, tagged `{version}`; every version is a tag "
        f"and the default branch holds the newest.\n\n```python\nfrom datasets import load_dataset\n"
        f'ds = load_dataset("{repo_id}", "{first["config_name"]}", revision="{version}", split="{split}")\n```\n'
    )
    return "---\n" + yaml.safe_dump(front, sort_keys=False).rstrip() + "\n---\n\n" + body


def _explicit(data_files: Any, shards: list[str]) -> Any:
    """A config's data_files (a pattern, a list of them, or a list of {split, path}) as {split, [shard paths]};
    any other form is left as it is."""
    if isinstance(data_files, str) or (isinstance(data_files, list) and all(isinstance(p, str) for p in data_files)):
        data_files = [{"split": "train", "path": data_files}]
    if not isinstance(data_files, list) or not all(isinstance(i, dict) and "path" in i for i in data_files):
        return data_files
    out = []
    for item in data_files:
        patterns = [item["path"]] if isinstance(item["path"], str) else list(item["path"])
        matched = [s for s in shards if any(_glob_match(s, p) for p in patterns)]
        out.append({**item, "path": matched or patterns})  # a pattern that matches no shard is left as it was
    return out


def _glob_match(path: str, pattern: str) -> bool:
    """fsspec-style glob: `*` does not cross `/`, `**` does."""
    regex = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return re.fullmatch(regex.replace("\0", ".*"), path) is not None


def _shards_by_split(entry: dict[str, Any]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for shard in entry["shards"]:
        prefix = shard["path"].rsplit("/", 1)[-1].rsplit("-", 1)[0]
        split = prefix if "splits" in entry and prefix != "part" else "train"
        groups.setdefault(split, []).append(shard["path"])
    return groups


def push_dataset(
    dataset_dir: str | os.PathLike[str],
    repo_id: str,
    *,
    version: str | None = None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> list[PushResult]:
    """Push the versions of `dataset_dir` (DATASET_ROOT/NAME) to the dataset repo `repo_id`, oldest first.

    Without `version`, every version that is not yet a tag on the Hub is pushed; a version whose tag is there with
    the same manifest is skipped; a tag with other content raises `HubPushError` naming it. The repo is created
    (private with `private=True`) when missing. `token` defaults to `$HF_TOKEN`; `endpoint` to `$HF_ENDPOINT` or
    the Hub. `progress` gets one line per step and version. Bad input raises `HubInputError` before any request.
    """
    check_repo_id(repo_id)
    store, versions = versions_to_consider(dataset_dir, version)
    token = token or token_from_env()
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token, library_name="trajfactory")
    with _hub_errors(repo_id, api.endpoint, token, f"creating {repo_id}"):
        url = api.create_repo(repo_id, repo_type=REPO_TYPE, private=True if private else None, exist_ok=True)
        if private and not api.repo_info(repo_id, repo_type=REPO_TYPE).private:
            progress(f"{repo_id} already exists and is public: --private only applies to a repo it creates")
    progress(f"{repo_id}: {url}")
    results = []
    for name in versions:
        with _hub_errors(repo_id, api.endpoint, token, f"pushing {name} to {repo_id}"):
            results.append(_push_version(api, store, name, repo_id, progress))
    return results


def _push_version(api: Any, store: DatasetStore, version: str, repo_id: str,
                  progress: Callable[[str], None]) -> PushResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    manifest = store.manifest(version)
    vdir = store.root / version
    manifest_bytes = (vdir / MANIFEST).read_bytes()
    refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
    tags = {t.name: t.target_commit for t in refs.tags}
    if version in tags:
        info = api.get_paths_info(repo_id, [MANIFEST], revision=tags[version], repo_type=REPO_TYPE)
        local = _File(MANIFEST, len(manifest_bytes), data=manifest_bytes)
        if info and hasattr(info[0], "blob_id") and _unchanged(local, info[0]):
            progress(f"{version}: already on the Hub with the same manifest (tag {version}), skipped")
            return PushResult(version, "skipped", commit=tags[version])
        raise HubPushError(
            f"tag {version} already exists on {repo_id} with different content (its {MANIFEST} "
            f"{'differs from' if info else 'is missing, unlike'} the local {version}'s); a published version is "
            f"immutable: write a new version, or delete tag {version} on the Hub if it was pushed by mistake"
        )

    if problems := store.verify(version):
        raise HubInputError(f"{vdir} does not match its manifest, refusing to publish it: {'; '.join(problems[:5])}")

    # The default branch holds the newest version: an older one is committed on a side branch.
    number = int(version[1:])
    on_hub = sorted((int(m[1]), t) for t in tags if (m := _TAG_RE.match(t)))
    branch, base = "main", None
    if any(n > number for n, _ in on_hub):
        older = [t for n, t in on_hub if n < number]
        branch, base = f"trajfactory-push-{version}", (older[-1] if older else "main")
        if branch in {b.name for b in refs.branches}:  # left by an interrupted push of ours
            api.delete_branch(repo_id, branch=branch, repo_type=REPO_TYPE)
        api.create_branch(repo_id, branch=branch, revision=tags.get(base, base), repo_type=REPO_TYPE)
    try:
        parent = next((b.target_commit for b in api.list_repo_refs(repo_id, repo_type=REPO_TYPE).branches
                       if b.name == branch), None)
        if parent is None:
            raise HubPushError(f"{repo_id} has no branch {branch!r} to commit {version} on")
        remote = {f.path: f for f in api.list_repo_tree(repo_id, recursive=True, revision=parent, repo_type=REPO_TYPE)
                  if hasattr(f, "blob_id")}

        local_card = (vdir / CARD).read_text() if (vdir / CARD).is_file() else None
        readme = hub_card(store.root.name, manifest, local_card, repo_id).encode()
        files = [_File(CARD, len(readme), data=readme), _File(MANIFEST, len(manifest_bytes), data=manifest_bytes)]
        for entry in manifest["tables"].values():
            files += [_File(s["path"], s["bytes"], sha256=s["sha256"], local=vdir / s["path"]) for s in entry["shards"]]

        result = PushResult(version, "pushed", branch=branch)
        operations: list[Any] = []
        for f in files:
            if _unchanged(f, remote.get(f.path)):
                if f.sha256:
                    result.reused.append(f.path)
                continue
            operations.append(CommitOperationAdd(f.path, f.data if f.data is not None else str(f.local)))
            result.uploaded.append(f.path)
            result.upload_bytes += f.size
        ours = {f.path for f in files}
        table_dirs = set(TABLE_SCHEMAS) | set(manifest["tables"])
        for path in sorted(remote):
            if path not in ours and path.split("/", 1)[0] in table_dirs and "/" in path:
                operations.append(CommitOperationDelete(path))
                result.deleted.append(path)

        shards = [p for p in result.uploaded if p not in (CARD, MANIFEST)]
        metadata = [p for p in result.uploaded if p in (CARD, MANIFEST)]
        progress(
            f"{version}: uploading {len(shards)} changed shard(s){' + ' + ', '.join(metadata) if metadata else ''} "
            f"({_human(result.upload_bytes)}); {len(result.reused)} unchanged shard(s) already on the Hub; "
            f"{len(result.deleted)} to delete"
            + (f"; on branch {branch}, since a newer version is on main" if branch != "main" else "")
        )
        rows = ", ".join(f"{t} {e['rows']}" for t, e in manifest["tables"].items())
        info = api.create_commit(
            repo_id, operations, repo_type=REPO_TYPE, revision=branch, parent_commit=parent,
            commit_message=f"{store.root.name} {version}",
            commit_description=f"trajfactory dataset version {version} (parent: {manifest.get('parent')}); rows: {rows}",
        )
        result.commit = info.oid
        api.create_tag(repo_id, tag=version, revision=info.oid, repo_type=REPO_TYPE,
                       tag_message=f"{store.root.name} {version}")
        progress(f"{version}: committed {info.oid[:12]} and tagged {version}")
        return result
    finally:
        if branch != "main":
            api.delete_branch(repo_id, branch=branch, repo_type=REPO_TYPE)


def _unchanged(local: _File, remote: Any) -> bool:
    """Whether the repo already holds this content at this path (LFS files by sha256, others by git blob id)."""
    if remote is None or remote.size != local.size:
        return False
    if getattr(remote, "lfs", None) is not None:
        sha = local.sha256 or hashlib.sha256(local.data or b"").hexdigest()
        return remote.lfs.sha256 == sha
    data = local.data if local.data is not None else local.local.read_bytes()
    return remote.blob_id == _git_blob_id(data)


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


class _hub_errors:
    """Turn the client's HTTP and connection errors into one-line `HubPushError`s (the token redacted)."""

    def __init__(self, repo_id: str, endpoint: str, token: str, step: str):
        self.repo_id, self.endpoint, self.token, self.step = repo_id, endpoint, token, step

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, (HubInputError, HubPushError)):
            if isinstance(exc, (HubInputError, HubPushError)) and self.token in str(exc):
                raise type(exc)(str(exc).replace(self.token, "***")) from None
            return False
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

        owner = self.repo_id.split("/")[0]
        if isinstance(exc, HfHubHTTPError) and exc.response is not None:
            status = exc.response.status_code
            said = (exc.server_message or str(exc).strip().splitlines()[0]).replace(self.token, "***")
            if status == 401 and not isinstance(exc, RepositoryNotFoundError):
                msg = (f"the Hub at {self.endpoint} refused the token in {TOKEN_ENV} while {self.step} "
                       f"(401 Unauthorized: {said}); set {TOKEN_ENV} to a valid token with write access to {owner!r}")
            elif status == 403:
                msg = (f"the token in {TOKEN_ENV} may not write to {self.repo_id} (403 Forbidden while {self.step}: "
                       f"{said}); use a token with write access to {owner!r}")
            elif isinstance(exc, RepositoryNotFoundError):
                msg = (f"{self.repo_id} was not found on {self.endpoint}, or the token in {TOKEN_ENV} cannot see it "
                       f"(while {self.step}: {said})")
            elif status == 412:
                msg = f"{self.repo_id} changed on the Hub while {self.step} (someone else pushed); run the push again"
            else:
                msg = f"the Hub at {self.endpoint} failed while {self.step}: HTTP {status}: {said}"
        elif isinstance(exc, OSError) or type(exc).__module__.startswith(("httpx", "httpcore")):
            msg = f"cannot reach the Hub at {self.endpoint} while {self.step}: {exc}"
        else:
            return False
        raise HubPushError(msg.replace(self.token, "***")) from None
