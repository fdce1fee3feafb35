"""Environment ingredients shared by the sandbox backends.

- `ensure_base_image`: the root of every sandbox image, built locally (no registry can be reached):
  debootstrap a minimal Debian bookworm with python3, then `docker import`.
- `find_requirements` / `build_wheelhouse`: a repository's runtime and test dependencies, downloaded
  on the host (containers reach no package index) into a wheelhouse keyed by the requirement set.
- `clone_at_commit`: the repository at one commit, with no history after it.
"""

from __future__ import annotations

import ast
import configparser
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Callable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .base import EnvironmentBuildError

log = logging.getLogger(__name__)

BASE_IMAGE = "trajfactory/base:bookworm-py3"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# python-is-python3: task commands and test runners say `python`
BASE_PACKAGES = "python3,python3-pip,python3-venv,python-is-python3,git,ca-certificates"
ALWAYS_REQUIRED = ("pytest", "pytest-cov", "coverage")
TEST_EXTRAS = ("test", "tests", "testing", "dev")
IMAGE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    # no index answers inside a sandbox: fail at once instead of retrying for a minute
    "PIP_NO_INDEX": "1",
}


def default_cache_root() -> Path:
    return Path(os.environ.get("TRAJFACTORY_CACHE", Path.home() / ".cache" / "trajfactory"))


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ---------------------------------------------------------------------------- base image


def debian_mirror(apt_dir: str = "/etc/apt") -> str:
    """The Debian mirror this machine's apt is configured with (bookworm's main archive)."""
    candidates: list[tuple[str, list[str]]] = []
    for path in [Path(apt_dir, "sources.list"), *sorted(Path(apt_dir, "sources.list.d").glob("*"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                    for uri in fields.get("URIs", "").split():
                        candidates.append((uri, fields.get("Suites", "").split()))
        elif path.name == "sources.list" or path.suffix == ".list":
            for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
                candidates.append((m.group(1), [m.group(2)]))
    for uri, suites in candidates:
        if "bookworm" in suites and "security" not in uri:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def base_recipe() -> str:
    """A hash of what goes into the base image: an image built from another recipe is rebuilt."""
    return hashlib.sha256(repr((BASE_PACKAGES, sorted(IMAGE_ENV.items()))).encode()).hexdigest()[:12]


def _image_id(tag: str, recipe: str | None = None) -> str | None:
    fmt = '{{.Id}} {{index .Config.Labels "trajfactory.base-recipe"}}'
    out = _run(["docker", "image", "inspect", "--format", fmt, tag])
    image_id, _, label = out.stdout.strip().partition(" ")
    if out.returncode != 0 or (recipe and label != recipe):
        return None
    return image_id


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)


def _remove_rootfs(root: Path) -> None:
    # debootstrap may leave /proc, /sys or bind-mounted /dev behind: never delete through a mount
    for point in _mounts_under(root):
        subprocess.run(["umount", "-l", point], capture_output=True)
    if _mounts_under(root):
        log.error("leaving %s in place: mounts remain under it", root)
        return
    shutil.rmtree(root, ignore_errors=True)


def ensure_base_image(tag: str = BASE_IMAGE, progress: Callable[[str], None] = print) -> str:
    """Return the id of the base image `tag`, building it with debootstrap + docker import if absent."""
    recipe = base_recipe()
    if image_id := _image_id(tag, recipe):
        return image_id
    default_cache_root().mkdir(parents=True, exist_ok=True)
    with open(default_cache_root() / "base-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent sessions wait for one build instead of racing
        if image_id := _image_id(tag, recipe):
            return image_id
        return _build_base_image(tag, recipe, progress)


def _build_base_image(tag: str, recipe: str, progress: Callable[[str], None]) -> str:
    mirror = debian_mirror()
    work = Path(tempfile.mkdtemp(prefix="trajfactory-rootfs-", dir="/var/tmp"))
    rootfs = work / "rootfs"
    try:
        progress(f"building base image {tag}: debootstrap bookworm from {mirror} (about a minute)")
        cmd = ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs), mirror]
        out = _run(cmd)
        if out.returncode != 0:
            raise EnvironmentBuildError(
                "base_image_failed",
                f"`{' '.join(cmd)}` exited {out.returncode}: {_tail(out.stdout + out.stderr)}; "
                f"the Debian mirror {mirror} must be reachable (set it in /etc/apt/sources.list.d/debian.sources)",
            )
        # pip refuses to install into Debian's Python without this (PEP 668)
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        for cached in [*rootfs.glob("var/cache/apt/archives/*.deb"), *rootfs.glob("var/lib/apt/lists/*_*")]:
            cached.unlink()
        progress(f"importing {rootfs} as {tag}")
        changes = [f"ENV {k}={v}" for k, v in IMAGE_ENV.items()] + ["WORKDIR /", 'CMD ["/bin/bash"]']
        changes.append(f"LABEL trajfactory.base-recipe={recipe}")
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = _run(["docker", "import", *[a for c in changes for a in ("--change", c)], "-", tag], stdin=tar.stdout)
        tar.stdout.close()
        if tar.wait() != 0 or imp.returncode != 0:
            raise EnvironmentBuildError("base_image_failed", f"docker import {tag} failed: {_tail(imp.stderr)}")
    finally:
        _remove_rootfs(work)
    image_id = _image_id(tag, recipe) or ""
    progress(f"base image {tag} ready ({image_id[:19]})")
    return image_id


# ---------------------------------------------------------------------------- requirements


def _clean(reqs, project: str | None = None, extras_of=None) -> list[str]:
    """Valid PEP 508 strings; a requirement on the project itself expands to its named extras."""
    out: list[str] = []
    for raw in reqs or []:
        if not isinstance(raw, str):
            continue
        try:
            req = Requirement(raw.strip())
        except InvalidRequirement:
            log.warning("skipping unparseable requirement %r", raw)
            continue
        if req.url:
            log.warning("skipping direct-reference requirement %r (no network in the build)", raw)
            continue
        if project and canonicalize_name(req.name) == canonicalize_name(project):
            for extra in sorted(req.extras):
                out += extras_of(extra) if extras_of else []
            continue
        out.append(str(req))
    return out


def _poetry_spec(name: str, spec) -> str | None:
    """A simple poetry constraint as PEP 508 (caret/tilde widened to a lower bound)."""
    if isinstance(spec, dict):
        if not isinstance(spec.get("version"), str) or spec.get("optional"):
            return None  # path / git / url / optional dependencies are not simple
        spec = spec["version"]
    if not isinstance(spec, str) or name.lower() == "python":
        return None
    spec = spec.strip()
    if spec in ("", "*"):
        return name
    if spec[0] in "^~" and spec[1:2] != "=":
        return f"{name}>={spec[1:].strip()}"
    return f"{name}{spec}" if spec[0] in "<>=!~" else f"{name}=={spec}"


def _from_pyproject(path: Path) -> list[str]:
    data = tomllib.loads(path.read_text())
    project = data.get("project", {})
    name = project.get("name")
    optional = project.get("optional-dependencies", {}) or {}
    seen: set[str] = set()

    def extras_of(extra: str) -> list[str]:
        if extra in seen:
            return []
        seen.add(extra)
        return _clean(optional.get(extra, []), name, extras_of)

    reqs = _clean(project.get("dependencies", []), name, extras_of)
    for extra in TEST_EXTRAS:
        reqs += extras_of(extra)
    groups = data.get("dependency-groups", {}) or {}
    for group in TEST_EXTRAS:
        reqs += _clean(groups.get(group, []), name)
    poetry = data.get("tool", {}).get("poetry", {})
    tables = [poetry.get("dependencies", {}), poetry.get("dev-dependencies", {})]
    tables += [poetry.get("group", {}).get(g, {}).get("dependencies", {}) for g in TEST_EXTRAS]
    for table in tables:
        for dep, spec in (table or {}).items():
            reqs += _clean([_poetry_spec(dep, spec)], poetry.get("name"))
    return reqs


def _from_setup_cfg(path: Path) -> list[str]:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(path.read_text())
    reqs = cfg.get("options", "install_requires", fallback="").splitlines()
    reqs += cfg.get("options", "tests_require", fallback="").splitlines()
    for extra in TEST_EXTRAS:
        reqs += cfg.get("options.extras_require", extra, fallback="").splitlines()
    return _clean([r.split("#")[0] for r in reqs if r.strip()], cfg.get("metadata", "name", fallback=None))


def _from_setup_py(path: Path) -> list[str]:
    """Literal install_requires / tests_require / extras_require keywords of a setup() call."""
    reqs: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "setup"):
            continue
        for kw in node.keywords:
            try:
                value = ast.literal_eval(kw.value)
            except ValueError:
                continue
            if kw.arg in ("install_requires", "tests_require") and isinstance(value, (list, tuple)):
                reqs += _clean(list(value))
            elif kw.arg == "extras_require" and isinstance(value, dict):
                for extra in TEST_EXTRAS:
                    reqs += _clean(list(value.get(extra, [])))
    return reqs


def _from_requirements_txt(path: Path, repo: Path, depth: int = 0) -> list[str]:
    reqs: list[str] = []
    for line in path.read_text().splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith(("-r ", "--requirement ")) and depth < 3:
            included = (path.parent / line.split(None, 1)[1]).resolve()
            if included.is_file() and included.is_relative_to(repo.resolve()):
                reqs += _from_requirements_txt(included, repo, depth + 1)
        elif line and not line.startswith(("#", "-", ".", "/")) and "://" not in line:
            reqs += _clean([line])
    return reqs


def requirement_files(repo_dir: str | Path) -> list[Path]:
    repo = Path(repo_dir)
    names = [*repo.glob("requirements*.txt"), *repo.glob("*-requirements*.txt"), *repo.glob("*_requirements*.txt")]
    names += [repo / "requirements" / f"{n}.txt" for n in ("base", "main", "test", "tests", "testing", "dev")]
    # documentation and linting requirements are not needed to run tests and often pin heavy tools
    return sorted({p for p in names if p.is_file() and not re.search(r"doc|lint|release", p.name)})


def find_requirements(repo_dir: str | Path) -> list[str]:
    """The repository's runtime + test requirements (best effort), plus pytest, pytest-cov, coverage."""
    repo = Path(repo_dir)
    sources: list[tuple[Path, Callable[[Path], list[str]]]] = [
        (repo / "pyproject.toml", _from_pyproject),
        (repo / "setup.cfg", _from_setup_cfg),
        (repo / "setup.py", _from_setup_py),
    ]
    sources += [(p, lambda p: _from_requirements_txt(p, repo)) for p in requirement_files(repo)]
    reqs: list[str] = []
    for path, parse in sources:
        if not path.is_file():
            continue
        try:
            reqs += parse(path)
        except Exception as exc:  # a broken setup file must not stop the build: best effort
            log.warning("could not read dependencies from %s: %s", path, exc)
    named = {canonicalize_name(Requirement(r).name) for r in reqs}
    reqs += [r for r in ALWAYS_REQUIRED if canonicalize_name(r) not in named]
    return sorted(set(reqs), key=str.lower)


def src_layout(repo_dir: str | Path) -> bool:
    """Whether the repository keeps its packages under src/ (the .pth entry points there)."""
    return (Path(repo_dir) / "src").is_dir()


# ---------------------------------------------------------------------------- wheelhouse


def requirements_key(requirements: list[str]) -> str:
    py = f"cp{sys.version_info.major}{sys.version_info.minor}-{sys.platform}"
    return hashlib.sha256("\n".join([py, *sorted(requirements)]).encode()).hexdigest()[:16]


def _failed_requirement(pip_output: str, requirements: list[str]) -> str:
    m = re.search(r"(?:No matching distribution found for|satisfies the requirement) (\S+)", pip_output)
    return m.group(1) if m else ", ".join(requirements)


def build_wheelhouse(repo_dir: str | Path, cache_root: str | Path | None = None) -> tuple[Path, list[str]]:
    """Download the repository's requirements as wheels on the host; cached by the requirement set."""
    requirements = find_requirements(repo_dir)
    root = Path(cache_root or default_cache_root()) / "wheelhouse"
    house = root / requirements_key(requirements)
    if (house / ".complete").exists():
        log.info("wheelhouse %s cached (%d requirements)", house.name, len(requirements))
        return house, requirements
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{house.name}-", dir=root))
    try:
        (tmp / "requirements.txt").write_text("\n".join(requirements) + "\n")
        log.info("downloading %d requirements into wheelhouse %s: %s", len(requirements), house.name, requirements)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        out = _run([*pip, "download", "-q", "--prefer-binary", "-d", str(tmp), "-r", str(tmp / "requirements.txt")])
        if out.returncode != 0:
            req = _failed_requirement(out.stdout + out.stderr, requirements)
            raise EnvironmentBuildError(
                "install_failed",
                f"could not download requirement {req} of {repo_dir}: {_tail(out.stderr or out.stdout)}; "
                f"the requirement must be available from the configured package index "
                f"(`pip download '{req}'` on the host must work) or be fixed in the repository's dependency files",
            )
        # sources-only distributions are built here once: the sandbox has no build backends
        for sdist in [p for p in tmp.iterdir() if p.name.endswith((".tar.gz", ".zip", ".tar.bz2"))]:
            out = _run([*pip, "wheel", "-q", "--no-deps", "-w", str(tmp), str(sdist)])
            if out.returncode != 0:
                raise EnvironmentBuildError(
                    "install_failed",
                    f"could not build a wheel from {sdist.name} (needed by {repo_dir}): {_tail(out.stderr)}; "
                    "a wheel of it must be available from the package index or it must build offline",
                )
            sdist.unlink()
        (tmp / ".complete").touch()
        try:
            tmp.rename(house)
        except OSError:  # another process finished the same wheelhouse first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return house, requirements


# ---------------------------------------------------------------------------- repository checkout


def resolve_commit(source_path: str | Path, commit: str) -> str:
    out = _run(["git", "-C", str(source_path), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"])
    if out.returncode != 0:
        raise EnvironmentBuildError(
            "checkout_failed", f"{commit!r} is not a commit of the repository at {source_path}; give a commit id"
        )
    return out.stdout.strip()


def clone_at_commit(source_path: str | Path, commit: str, dest: str | Path) -> str:
    """A repository at `dest` whose HEAD (detached) is `commit`; nothing later than it is fetched."""
    sha = resolve_commit(source_path, commit)
    dest = str(dest)
    # fetching one commit (not cloning) keeps later commits, e.g. the upstream fix, out of the sandbox
    steps = [
        ["git", "init", "-q", dest],
        ["git", "-C", dest, "fetch", "-q", "--no-tags", str(Path(source_path).resolve()), sha],
        ["git", "-C", dest, "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", sha],
    ]
    for cmd in steps:
        out = _run(cmd)
        if out.returncode != 0:
            raise EnvironmentBuildError("checkout_failed", f"`{' '.join(cmd)}` failed: {_tail(out.stderr)}")
    Path(dest, ".git", "FETCH_HEAD").unlink(missing_ok=True)
    return sha
