"""Git mirrors on disk: clone and fetch with timeouts, pin and check out a commit, import a tree as one commit.

A mirror is published atomically (built in a temporary directory, then renamed), so an interrupted harvest
never leaves a half-made mirror behind. `repos.py` decides what to mirror; this module only does git.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import git

log = logging.getLogger(__name__)

REASONS = ("bad_uri", "not_found", "empty", "bad_ref", "unreachable", "timeout", "git_failed", "download_failed")
_GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",  # a private or missing repository must fail, not wait for a password
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=30",
    "GIT_HTTP_LOW_SPEED_LIMIT": "1000",  # a stalled transfer fails after a minute, not at the timeout
    "GIT_HTTP_LOW_SPEED_TIME": "60",
}
_EPOCH = "2000-01-01T00:00:00+0000"
_IMPORT_ENV = {
    "GIT_AUTHOR_NAME": "trajfactory", "GIT_AUTHOR_EMAIL": "trajfactory@localhost", "GIT_AUTHOR_DATE": _EPOCH,
    "GIT_COMMITTER_NAME": "trajfactory", "GIT_COMMITTER_EMAIL": "trajfactory@localhost", "GIT_COMMITTER_DATE": _EPOCH,
}
# Build and cache litter that is never part of a source (sdists ship some of it).
_LITTER = shutil.ignore_patterns(
    ".git", "__pycache__", "*.pyc", "*.egg-info", ".venv", ".tox", ".nox", ".pytest_cache", ".mypy_cache", ".ruff_cache",
    ".benchmarks", ".coverage",
)
_SHA = re.compile(r"^[0-9a-f]{7,40}$")


class SourceError(ValueError):
    """A source that cannot be harvested; `reason` is one of `REASONS`, the message names the input."""

    def __init__(self, reason: str, message: str, uri: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.uri = uri

    def __reduce__(self):
        # Picklable with all three fields, so it survives process pools and Prefect's result store.
        return type(self), (self.reason, str(self), self.uri)


def mirror_remote(url: str, ref: str | None, mirror: Path, uri: str, timeout: float) -> str:
    repo = open_mirror(mirror)
    if repo is not None and ref and _SHA.match(ref) and (sha := _rev_parse(repo, ref)):
        return checkout(repo, sha)  # the pinned commit is already mirrored: no network at all
    try:
        remote_refs = _ls_remote(url, uri, timeout)
    except SourceError as exc:
        if repo is None or exc.reason not in ("unreachable", "timeout"):
            raise
        log.warning("%s: %s; resolving %s in the existing mirror %s", uri, exc, ref or "HEAD", mirror)
        return checkout(repo, _resolve_in_mirror(repo, ref, uri))
    if not remote_refs:
        raise SourceError("empty", f"{uri!r}: the repository has no commits; push at least one commit first", uri)
    wanted = _pick_remote_ref(remote_refs, ref)
    if wanted is None and not (ref and _SHA.match(ref)):
        heads = sorted(r.split("/", 2)[2] for r in remote_refs
                       if r.startswith(("refs/heads/", "refs/tags/")) and not r.endswith("^{}"))[:10]
        what = f"ref {ref!r}" if ref else "HEAD"
        raise SourceError("bad_ref", f"{uri!r}: the remote has no {what}; pin one of {heads} as URL@REF", uri)
    if repo is None:
        repo = clone(url, mirror, uri, timeout)
    elif wanted is None or not _rev_parse(repo, wanted):
        fetch(repo, uri, timeout)
    target = wanted or (ref if ref and len(ref) == 40 else None)
    if target and not _rev_parse(repo, target):
        fetch(repo, uri, timeout, target)  # a commit that no branch or tag reaches any more
    return checkout(repo, _resolve_in_mirror(repo, wanted or ref, uri))


def mirror_local_repo(path: Path, ref: str | None, mirror: Path, uri: str, timeout: float) -> str:
    with git.Repo(path) as user:
        if not user.head.is_valid():
            raise SourceError("empty", f"{uri!r}: the git repository at {path} has no commits; commit first", uri)
        try:
            sha = user.commit(ref or "HEAD").hexsha
        except (git.BadName, ValueError) as exc:
            raise SourceError("bad_ref", f"{uri!r}: {path} has no commit {ref!r}: {exc}", uri) from exc
        if not ref and not user.bare and user.is_dirty(untracked_files=True):
            log.warning("%s has uncommitted changes; harvesting its HEAD %s without them", path, sha[:12])
    repo = open_mirror(mirror) or clone(str(path), mirror, uri, timeout)
    if not _rev_parse(repo, sha):
        fetch(repo, uri, timeout)
        if not _rev_parse(repo, sha):
            fetch(repo, uri, timeout, sha)
    return checkout(repo, _resolve_in_mirror(repo, sha, uri))


def _ls_remote(url: str, uri: str, timeout: float) -> dict[str, str]:
    out = _network_git(["ls-remote", "--", url], None, uri, timeout)
    refs = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        refs[name.strip()] = sha.strip()
    return refs


def _pick_remote_ref(refs: dict[str, str], ref: str | None) -> str | None:
    if ref is None:
        return refs.get("HEAD")
    for name in (f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", f"refs/heads/{ref}", ref):
        if name in refs:
            return refs[name]
    return None


def clone(url: str, mirror: Path, uri: str, timeout: float) -> git.Repo:
    log.info("cloning %s into %s", uri, mirror)
    tmp = Path(tempfile.mkdtemp(prefix=f".{mirror.name}-", dir=mirror.parent))
    try:
        _network_git(["clone", "--no-checkout", "--quiet", "--", url, str(tmp / "repo")], None, uri, timeout)
        _publish(tmp / "repo", mirror)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    repo = open_mirror(mirror)
    if repo is None:
        raise SourceError("git_failed", f"{uri!r}: the clone in {mirror} is not a readable repository", uri)
    return repo


def fetch(repo: git.Repo, uri: str, timeout: float, sha: str | None = None) -> None:
    log.info("fetching %s into %s", sha or "all refs", repo.working_dir)
    try:
        _network_git(["fetch", "--quiet", "--tags", "--force", "--prune", "origin", *([sha] if sha else [])],
                     repo.working_dir, uri, timeout)
    except SourceError as exc:
        if sha is None:
            raise
        log.warning("%s: fetching commit %s failed: %s", uri, sha, exc)


def _network_git(args: list[str], cwd: str | os.PathLike | None, uri: str, timeout: float) -> str:
    try:
        return git.Git(cwd).execute(["git", *args], kill_after_timeout=timeout, env=_GIT_ENV)
    except git.GitCommandError as exc:
        raise _git_error(exc, uri, timeout) from exc


def _git_error(exc: git.GitCommandError, uri: str, timeout: float) -> SourceError:
    text = str(exc.stderr or exc).replace("stderr:", "").strip().strip("'")
    detail = " ".join(text.split())[-400:]
    low = text.lower()
    if "timeout:" in low:
        return SourceError("timeout", f"{uri!r}: git did not answer within {timeout:g}s; retry or raise timeout_s", uri)
    missing = ("not found", "does not exist", "does not appear to be a git repository", "no such file",
               "terminal prompts disabled", "authentication failed", "could not read username", "error: 404")
    if any(s in low for s in missing):
        return SourceError("not_found", f"{uri!r}: no such repository (or it is private): {detail}", uri)
    offline = ("could not resolve host", "failed to connect", "connection timed out", "connection refused",
               "network is unreachable", "could not read from remote", "operation timed out", "unable to access")
    if any(s in low for s in offline):
        return SourceError("unreachable", f"{uri!r}: cannot reach the remote: {detail}", uri)
    return SourceError("git_failed", f"{uri!r}: git failed: {detail}", uri)


def _resolve_in_mirror(repo: git.Repo, ref: str | None, uri: str) -> str:
    names = [f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref] if ref else ["refs/remotes/origin/HEAD", "HEAD"]
    for name in names:
        if sha := _rev_parse(repo, name):
            return sha
    hint = "pin an existing branch, tag or sha"
    raise SourceError("bad_ref", f"{uri!r}: no commit {ref or 'HEAD'!r} in the repository; {hint}", uri)


def _rev_parse(repo: git.Repo, rev: str) -> str | None:
    try:
        return repo.git.rev_parse("--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
    except git.GitCommandError:
        return None


def checkout(repo: git.Repo, sha: str) -> str:
    """Check out `sha` in the mirror's work tree, close the handle, return `sha`."""
    # Force and clean so the work tree is exactly the pinned commit, whatever ran there before.
    repo.git.checkout("--force", "--quiet", "--detach", sha)
    repo.git.clean("-ffdxq")
    repo.close()
    return sha


def _open_repo(path: Path) -> git.Repo | None:
    """The repository rooted at `path` (a parent repository does not count)."""
    try:
        repo = git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None
    if repo.bare or Path(repo.working_tree_dir).resolve() == path.resolve():
        return repo
    repo.close()
    return None


def is_repo_root(path: Path) -> bool:
    repo = _open_repo(path)
    if repo is not None:
        repo.close()
    return repo is not None


def open_mirror(mirror: Path) -> git.Repo | None:
    if not mirror.exists():
        return None
    repo = _open_repo(mirror)
    if repo is None or not repo.head.is_valid():
        log.warning("%s is not a usable git mirror; removing it to mirror again", mirror)
        if repo is not None:
            repo.close()
        shutil.rmtree(mirror)
        return None
    return repo


def import_tree(
    src: Path, root: Path, name: str, message: str, uri: str, *, include_ignored: bool = False,
    mirror: Path | None = None,
) -> tuple[Path, str]:
    """Copy `src` into a fresh repository with one deterministic commit; the mirror is named by its sha."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{slug(name)}-", dir=root))
    try:
        work = tmp / "repo"
        shutil.copytree(src, work, symlinks=True, ignore=lambda d, names: _skip(d, names, root))
        if not any(work.iterdir()):
            raise SourceError("empty", f"{uri!r}: {src} holds no files; point at a directory with the project", uri)
        # No template: hooks or config from the user's init.templateDir must not reach the repository.
        git.Git(work).execute(["git", "init", "--quiet", "--initial-branch=main", "--template=", str(work)])
        repo = git.Repo(work)
        with repo.config_writer() as config:
            config.set_value("core", "autocrlf", "false")
            # The user's global ignores, attributes and hooks must not change the sha.
            config.set_value("core", "excludesFile", os.devnull)
            config.set_value("core", "attributesFile", os.devnull)
            config.set_value("core", "hooksPath", os.devnull)
            config.set_value("commit", "gpgsign", "false")
        repo.git.add("--all", *(["--force"] if include_ignored else []))
        if not repo.git.diff("--cached", "--name-only"):
            raise SourceError("empty", f"{uri!r}: every file in {src} is git-ignored; nothing to harvest", uri)
        repo.git.commit("--quiet", "--no-verify", "-m", message, env=_IMPORT_ENV)
        sha = repo.head.commit.hexsha
        repo.close()
        mirror = mirror or root / f"{slug(name)}-{sha[:12]}"
        _publish(work, mirror)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return mirror, sha


def _skip(directory: str, names: list[str], root: Path) -> set[str]:
    skipped = set(_LITTER(directory, names))
    if Path(directory).resolve() == root.parent and root.name in names:
        skipped.add(root.name)  # a mirror root inside the harvested directory must not copy itself
    return skipped


def _publish(work: Path, mirror: Path) -> None:
    """Move a finished repository into place atomically; a concurrent harvest that got there first wins."""
    try:
        os.rename(work, mirror)
    except OSError:
        if not mirror.is_dir():
            raise
        log.info("%s appeared meanwhile; keeping it", mirror)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "repo"

