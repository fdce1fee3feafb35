"""Environment ingredients shared by the sandbox backends: the base image and the checkout.

- `ensure_base_image`: the root of every sandbox image, built locally (no registry can be reached):
  debootstrap a minimal Debian release with python3, then `docker import`. The release is the sandbox's Python
  (`BASE_SUITES`, the recipe's `sandbox.python`): bookworm's 3.11 by default, trixie's 3.13 for projects whose
  releases need a newer one, bullseye's 3.9 for those that need an older one.
- `clone_at_commit`: the repository at one commit, with no history after it.

A repository's requirements, wheelhouse and project install are in `requirements.py`; the options of its own
pytest configuration in `pytest_options.py`, and what its maintainers' own runner collects in `collection.py`.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable


from .base import EnvironmentBuildError, InfrastructureError

log = logging.getLogger(__name__)

BASE_SUITES = {"3.9": "bullseye", "3.11": "bookworm", "3.13": "trixie"}
"""The sandbox Pythons on offer (the recipe's `sandbox.python`) and the Debian release whose `python3` each one is:
Debian's own builds, from the same mirror as the machine's apt, so nothing but Debian's packages is fetched."""
DEFAULT_PYTHON = "3.11"


def base_image_tag(python: str | None = None) -> str:
    """The base image of the sandbox Python `python` (`3.13`; None: the default, 3.11)."""
    python = python or DEFAULT_PYTHON
    if python not in BASE_SUITES:
        offered = ", ".join(f"{v} (Debian {s})" for v, s in BASE_SUITES.items())
        raise ValueError(f"no sandbox image offers Python {python!r}: use one of {offered}")
    return f"trajfactory/base:{BASE_SUITES[python]}-py3"


def base_suite(tag: str) -> str:
    """The Debian release a base image tag is built from (`trajfactory/base:trixie-py3` -> `trixie`)."""
    m = re.fullmatch(r"trajfactory/base:([a-z]+)-py3", tag)
    if not m or m.group(1) not in BASE_SUITES.values():
        raise ValueError(f"{tag!r} is not a base image this factory builds: use one of "
                         + ", ".join(base_image_tag(v) for v in BASE_SUITES))
    return m.group(1)


BASE_IMAGE = base_image_tag()
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# python-is-python3: task commands and test runners say `python`; gcc, g++, libc6-dev and python3-dev: a project's C
# and C++ extensions are built with its image, as its maintainers build them in place (`wheelhouse.INSTALL_PROJECT`)
BASE_PACKAGES = "python3,python3-pip,python3-venv,python-is-python3,git,ca-certificates,gcc,g++,libc6-dev,python3-dev"
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
    """The Debian mirror this machine's apt is configured with (bookworm's main archive; it serves every release of
    `BASE_SUITES`)."""
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


def base_recipe(suite: str = "bookworm") -> str:
    """A hash of what goes into the base image of the Debian release `suite`: an image built from another recipe is
    rebuilt (bookworm's hash is the one it had before other releases were offered, so its images stay)."""
    what = (BASE_PACKAGES, sorted(IMAGE_ENV.items())) + (() if suite == "bookworm" else (suite,))
    return hashlib.sha256(repr(what).encode()).hexdigest()[:12]


def _image_id(tag: str, recipe: str | None = None) -> str | None:
    fmt = '{{.Id}} {{index .Config.Labels "trajfactory.base-recipe"}}'
    out = _run(["docker", "image", "inspect", "--format", fmt, tag])
    if out.returncode != 0 and "no such image" not in out.stderr.lower():
        # an engine that does not answer is not a missing image: building one would debootstrap for nothing
        raise InfrastructureError(f"`docker image inspect {tag}` failed: {_tail(out.stderr, 3)}; "
                                  "the Docker engine must be running (start dockerd, or set DOCKER_HOST)")
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
    """Return the id of the base image `tag` (`base_image_tag`), building it with debootstrap + docker import if
    absent."""
    suite = base_suite(tag)
    recipe = base_recipe(suite)
    if image_id := _image_id(tag, recipe):
        return image_id
    default_cache_root().mkdir(parents=True, exist_ok=True)
    with open(default_cache_root() / "base-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent sessions wait for one build instead of racing
        if image_id := _image_id(tag, recipe):
            return image_id
        return _build_base_image(tag, suite, recipe, progress)


def _build_base_image(tag: str, suite: str, recipe: str, progress: Callable[[str], None]) -> str:
    mirror = debian_mirror()
    work = Path(tempfile.mkdtemp(prefix="trajfactory-rootfs-", dir="/var/tmp"))
    rootfs = work / "rootfs"
    try:
        progress(f"building base image {tag}: debootstrap {suite} from {mirror} (about a minute)")
        cmd = ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", suite, str(rootfs), mirror]
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
