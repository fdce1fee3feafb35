"""Local namespace sandboxes for machines where no Docker engine answers.

An environment is a directory: a venv with the repository's wheelhouse installed (`--no-index`), the
project itself installed in it (its metadata, entry points and scripts; its code is imported from the
sandbox's copy of the checkout, see `wheelhouse.INSTALL_PROJECT`) and a checkout of the repository at its
commit; `env.json` records the options of the project's pytest configuration the harness keeps
(`TRAJFACTORY_ADDOPTS` in every sandbox). A sandbox (`local_sandbox.py`) copies the checkout into a scratch
directory and runs each command under bubblewrap: the host filesystem read-only, only the scratch directory
writable, its own /tmp, no network, its own pid namespace, and a pids/memory cgroup where the
host allows one. Without bubblewrap it falls back to `unshare --net` (network isolation only).
"""

from __future__ import annotations

import ensurepip
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from trajfactory.settings import SandboxConfig

from .base import EnvironmentBuildError, EnvironmentHandle, InfrastructureError, SandboxError, env_key
from .images import clone_at_commit, default_cache_root, resolve_commit
from .collection import collection_options, ignore_options, sandbox_addopts
from .local_sandbox import LocalSandbox
from .local_limits import sweep_stale
from .build_requirements import installable, src_layout
from .requirements import find_requirements
from .wheelhouse import INSTALL_PROJECT, INSTALLED, build_wheelhouse, install_failure, pip_output

log = logging.getLogger(__name__)

BUILDER_VERSION = "4"
"""Bumped whenever what goes into an environment changes, so older ones are rebuilt."""
# the repository is importable without installing it (its build backend may be unavailable offline)
PTH_LINE = ('import os, sys; [sys.path.append(p) for p in os.environ.get("TRAJFACTORY_REPO", "").split(os.pathsep) '
            'if p and p not in sys.path]\n')
"""The sandbox's import folders (its checkout, or its `src/`, then any the install found: `lib/`) on sys.path."""


def _probe(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def detect_isolation() -> str:
    """`bwrap` when bubblewrap works here, else `unshare-net`; raises when neither does."""
    if shutil.which("bwrap") and _probe(["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"]):
        return "bwrap"
    if shutil.which("unshare") and _probe(["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "true"]):
        log.warning("bubblewrap is missing or fails here; falling back to `unshare --net`: "
                    "network and pid isolation only, the host filesystem stays WRITABLE")
        return "unshare-net"
    raise InfrastructureError("no sandbox isolation works here: install bubblewrap (apt-get install bubblewrap)")


ISOLATION_TEXT = {
    "bwrap": "bubblewrap: host filesystem read-only, own /tmp and /run, no network, own pid/ipc/uts namespaces",
    "unshare-net": "unshare --net: no network, own pid namespace; host filesystem WRITABLE",
}


def host_python() -> str:
    """This machine's Python as `sandbox.python` names versions (`3.11`): every local environment's venv is made
    from it."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


class LocalBackend:
    """Builds one environment directory per repository commit and opens namespace sandboxes on it."""

    name = "local"

    def __init__(self, cache_root: str | Path | None = None, isolation: str | None = None):
        self.cache_root = Path(cache_root or default_cache_root())
        self.isolation = isolation or detect_isolation()
        """`bwrap` or `unshare-net`; ISOLATION_TEXT says what each one isolates."""
        self._swept = False
        """Whether the sandboxes killed runs left have been released (once, at the first start)."""
        log.info("local sandbox isolation: %s", ISOLATION_TEXT[self.isolation])

    def python_version(self) -> str:
        """The host Python's version: every environment's venv is made from it."""
        return platform.python_version()

    def build(self, source_path: str, repo: str, commit: str, test_requirements: list[str] | None = None,
              ignore_tests: list[str] | None = None, test_env: dict[str, str] | None = None) -> EnvironmentHandle:
        extra, ignore, variables = list(test_requirements or []), list(ignore_tests or []), dict(test_env or {})
        sha = resolve_commit(source_path, commit)
        envs = self.cache_root / "local-envs"
        envs.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="build-", dir=envs) as tmp:
            checkout = Path(tmp, "repo")
            clone_at_commit(source_path, sha, checkout)
            requirements = find_requirements(checkout, extra)
            py = f"{sys.version_info.major}.{sys.version_info.minor}"
            key = hashlib.sha256("\n".join([sha, BUILDER_VERSION, py, *requirements, *collection_options(checkout),
                                           *ignore_options(ignore), *env_key(variables)])
                                 .encode()).hexdigest()[:16]
            slug = re.sub(r"[^a-z0-9]+", "-", repo.lower()).strip("-") or "repo"
            env_dir = envs / f"{slug}-{key}"
            handle = EnvironmentHandle(backend=self.name, name=str(env_dir), repo=repo, commit=sha,
                                       python=self.python_version())
            with open(envs / f"{env_dir.name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per environment; others wait and reuse it
                if (env_dir / ".complete").exists():
                    log.info("environment %s exists; reusing it", env_dir)
                    return handle
                shutil.rmtree(env_dir, ignore_errors=True)  # a half-built leftover of a killed run
                env_dir.mkdir()
                log.info("building local environment %s (%s at %s)", env_dir, repo, sha[:12])
                self._install(env_dir, checkout, sha, extra, ignore, variables)
        return handle

    def _install(self, env_dir: Path, checkout: Path, sha: str, extra: list[str], ignore: list[str],
                 variables: dict[str, str]) -> None:
        house, requirements = build_wheelhouse(checkout, self.cache_root, extra=extra)
        venv = env_dir / "venv"
        # a venv is not relocatable: it is created at its final path, and `.complete` marks it usable
        # the host's pip installs into a pip-less venv, pip itself from ensurepip's wheel: ensurepip takes ~8 s
        out = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True)
        if out.returncode != 0:
            raise InfrastructureError(f"`{sys.executable} -m venv {venv}` failed: {out.stderr[-2000:]}")
        pip_env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
        cmd = [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "-q",
               "--disable-pip-version-check", "--no-index", "--find-links", str(house), "--find-links",
               str(Path(ensurepip.__file__).parent / "_bundled"), "-r", str(house / "requirements.txt"), "pip"]
        out = subprocess.run(cmd, capture_output=True, text=True, env=pip_env)
        if out.returncode != 0:
            tail = pip_output(out.stderr or out.stdout, 20)
            raise EnvironmentBuildError(
                "install_failed",
                f"installing {requirements} from wheelhouse {house} failed:\n{tail}\n"
                "the repository's requirements must install offline from its wheelhouse",
            )
        purelib = subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        Path(purelib, "trajfactory_repo.pth").write_text(PTH_LINE)
        import_dir = checkout / "src" if src_layout(checkout) else checkout
        extra_dirs: list[str] = []
        if installable(checkout):
            # the project itself, with its build backend from the wheelhouse; its code stays the sandbox's copy
            out = subprocess.run([str(venv / "bin/python"), "-c", INSTALL_PROJECT, str(checkout), str(house),
                                  str(import_dir)], capture_output=True, text=True, env=pip_env | variables)
            if out.returncode != 0:
                detail = install_failure(out.stdout + out.stderr, "the repository")
                raise EnvironmentBuildError("install_failed", detail)
            installed = next((ln for ln in out.stdout.splitlines() if ln.startswith(INSTALLED)), "").strip()
            log.info("%s", installed)
            # the folders of the checkout the install found packages in (`lib/`): each sandbox's own copy of them
            extra_dirs = json.loads(installed[len(INSTALLED):]).get("extra_import_dirs", []) if installed else []
            Path(purelib, "trajfactory_repo_dirs.pth").unlink(missing_ok=True)
        addopts, dropped = sandbox_addopts(checkout, house, ignore)
        if dropped:
            log.info("pytest options of the project that the harness drops: %s", " ".join(dropped))
        if runner := collection_options(checkout):
            log.info("pytest collects what the maintainers' runner does: %s", " ".join(runner))
        shutil.move(str(checkout), env_dir / "repo")
        meta = {"commit": sha, "src_layout": src_layout(env_dir / "repo"), "import_dirs": extra_dirs,
                "requirements": requirements,
                "addopts": addopts, "env": variables}
        (env_dir / "env.json").write_text(json.dumps(meta, indent=1))
        (env_dir / ".complete").touch()

    def start(self, env: EnvironmentHandle, limits: SandboxConfig | None = None) -> "LocalSandbox":
        env_dir = Path(env.name)
        if not (env_dir / ".complete").exists():
            raise SandboxError(f"environment {env_dir} is not built; call LocalBackend.build() first")
        if not self._swept:
            sweep_stale(self.cache_root / "sandboxes")
            self._swept = True
        return LocalSandbox(env_dir, env.commit, limits or SandboxConfig(), self.isolation,
                            self.cache_root / "sandboxes")
