"""Local namespace sandboxes for machines where no Docker engine answers.

An environment is a directory: a venv with the repository's wheelhouse installed (`--no-index`), the
project itself installed in it (its metadata, entry points and scripts; its code is imported from the
sandbox's copy of the checkout, see `wheelhouse.INSTALL_PROJECT`) and a checkout of the repository at its
commit; `env.json` records the options of the project's pytest configuration the harness keeps
(`TRAJFACTORY_ADDOPTS` in every sandbox). A sandbox copies the checkout into a scratch directory
and runs each command under bubblewrap: the host filesystem read-only, only the scratch directory
writable, its own /tmp, no network, its own pid namespace, and a pids/memory cgroup where the
host allows one. Without bubblewrap it falls back to `unshare --net` (network isolation only).
"""

from __future__ import annotations

import contextlib
import ensurepip
import fcntl
import hashlib
import json
import logging
import os
import posixpath
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trajfactory.settings import SandboxConfig

from .base import (
    EnvironmentBuildError,
    EnvironmentHandle,
    READ_LIMIT,
    ExecResult,
    FileTooLargeError,
    InfrastructureError,
    OutputCollector,
    PYTEST_ADDOPTS,
    SandboxError,
    env_key,
    sandbox_path,
)
from .images import clone_at_commit, default_cache_root, resolve_commit
from .collection import collection_options, ignore_options, sandbox_addopts
from .local_limits import Cgroup, cap_disk, git_meta, own, release, remove_tree, size_bytes, sweep_stale
from .requirements import find_requirements, installable, src_layout
from .wheelhouse import INSTALL_PROJECT, INSTALLED, build_wheelhouse, install_failure, pip_output

log = logging.getLogger(__name__)

BUILDER_VERSION = "3"
"""Bumped whenever what goes into an environment changes, so older ones are rebuilt."""
GUARD_S = 15.0
"""Seconds past a command's timeout after which the host kills the whole sandboxed process group."""
SETUP_TRIES = 3
"""Starts of one command whose sandbox bubblewrap could not set up (the command never ran), before its error stands."""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# the repository is importable without installing it (its build backend may be unavailable offline)
PTH_LINE = 'import os, sys; p = os.environ.get("TRAJFACTORY_REPO"); p and p not in sys.path and sys.path.append(p)\n'


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
            handle = EnvironmentHandle(backend=self.name, name=str(env_dir), repo=repo, commit=sha)
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
        if installable(checkout):
            # the project itself, with its build backend from the wheelhouse; its code stays the sandbox's copy
            out = subprocess.run([str(venv / "bin/python"), "-c", INSTALL_PROJECT, str(checkout), str(house),
                                  str(import_dir)], capture_output=True, text=True, env=pip_env | variables)
            if out.returncode != 0:
                detail = install_failure(out.stdout + out.stderr, "the repository")
                raise EnvironmentBuildError("install_failed", detail)
            log.info("%s", next((ln for ln in out.stdout.splitlines() if ln.startswith(INSTALLED)), "").strip())
        addopts, dropped = sandbox_addopts(checkout, house, ignore)
        if dropped:
            log.info("pytest options of the project that the harness drops: %s", " ".join(dropped))
        if runner := collection_options(checkout):
            log.info("pytest collects what the maintainers' runner does: %s", " ".join(runner))
        shutil.move(str(checkout), env_dir / "repo")
        meta = {"commit": sha, "src_layout": src_layout(env_dir / "repo"), "requirements": requirements,
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


class LocalSandbox:
    """A scratch copy of the checkout; each command runs in fresh namespaces (nothing outlives it)."""

    def __init__(self, env_dir: Path, commit: str, limits: SandboxConfig, isolation: str, scratch_root: Path):
        self.env_dir = env_dir
        self.commit = commit
        self.limits = limits
        self.isolation = isolation
        scratch_root.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="sbx-", dir=scratch_root))
        own(self.scratch)
        self.disk_capped = cap_disk(self.scratch, limits.disk)
        """Whether a tmpfs of sandbox.disk holds everything the sandbox can write (see local_limits.cap_disk)."""
        own(self.scratch)  # again, inside the tmpfs
        self.workdir = str(self.scratch / "repo")
        self.dirty = False
        """A command ran away (timed out): the next reset() copies the checkout afresh."""
        self.closed = False
        meta = json.loads((env_dir / "env.json").read_text())
        self.cgroup = Cgroup(self.scratch.name, limits)
        self.limited = self.cgroup.limited
        """Which of pids/memory/cpu a cgroup enforces; pids and memory fall back to prlimit."""
        if missing := {"pids", "memory", "cpu"} - self.limited:
            log.warning("local sandbox: no cgroup limit for %s here (prlimit covers memory and pids, weaker)",
                        ", ".join(sorted(missing)))
        home = self.scratch / "home"
        venv = env_dir / "venv"
        self.env = {
            "PATH": f"{venv}/bin:{PATH}", "VIRTUAL_ENV": str(venv), "HOME": str(home), "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",  # stable parametrized test ids across runs, as in docker
            "PYTHONDONTWRITEBYTECODE": "1",  # no stale .pyc after a same-second edit, as in docker
            "PYTEST_ADDOPTS": PYTEST_ADDOPTS,  # pytest's own deprecations never fail a run, as in docker
            "TRAJFACTORY_REPO": self.workdir + ("/src" if meta.get("src_layout") else ""),
            # the options of the project's own pytest configuration the harness keeps (testrun.PYTEST reads it)
            "TRAJFACTORY_ADDOPTS": meta.get("addopts", ""),
            # the host's pip configuration may name a local index: the sandbox gets none, as in docker
            "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        } | meta.get("env", {})  # the recipe's `test_env` (never one of the above: `RepoSpec.test_env`)
        self._copy_checkout()
        self._git_meta = git_meta(Path(self.workdir))

    def _fresh_scratch(self) -> None:
        """An empty /tmp and a HOME holding only the git identity, as a new container would have."""
        for name in ("tmp", "home"):
            remove_tree(self.scratch / name)
        (self.scratch / "tmp").mkdir()
        (self.scratch / "tmp").chmod(0o1777)
        (self.scratch / "home").mkdir()
        (self.scratch / "home" / ".gitconfig").write_text(
            "[user]\n\tname = trajfactory\n\temail = trajfactory@localhost\n[safe]\n\tdirectory = *\n")

    def _copy_checkout(self) -> None:
        """A fresh checkout, /tmp and HOME, as a new container would have."""
        remove_tree(Path(self.workdir))
        self._fresh_scratch()
        out = subprocess.run(["cp", "-a", str(self.env_dir / "repo"), self.workdir], capture_output=True, text=True)
        if out.returncode != 0:
            raise InfrastructureError(f"copying the checkout into {self.scratch} failed: {out.stderr}")

    def _isolate(self, argv: list[str]) -> list[str]:
        if self.isolation == "bwrap":
            # /tmp (the sandbox's own, kept between commands) is mounted first, so an environment or
            # scratch directory under the host's /tmp stays visible
            # an empty /run hides daemon sockets (docker.sock): a read-only mount does not stop connect()
            return ["bwrap", "--ro-bind", "/", "/", "--tmpfs", "/run", "--bind", str(self.scratch / "tmp"), "/tmp",
                    "--ro-bind", str(self.env_dir), str(self.env_dir),
                    "--bind", str(self.scratch), str(self.scratch),
                    "--dev", "/dev", "--proc", "/proc", "--unshare-all", "--die-with-parent", "--new-session",
                    "--chdir", self.workdir, *argv]
        return ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", *argv]

    def _run(self, argv: list[str], timeout: float) -> tuple[int, str, float, bool]:
        """`argv` run in the sandbox: (exit status, output, seconds, whether the guard killed it). bubblewrap builds the
        sandbox's mounts from the host's at each command, and a mount the host removes meanwhile (a container's
        overlay going away on a busy engine) fails that setup before the command starts ("bwrap: Can't bind mount
        /oldroot/ ..."); bubblewrap then reports no exit code of a command on its status pipe, and the command is
        started again, up to `SETUP_TRIES` times."""
        for attempt in range(1, SETUP_TRIES + 1):
            started, result = self._run_once(argv, timeout)
            if started or result[0] != 1 or result[3]:
                return result
            log.warning("sandbox %s: bubblewrap could not set up the sandbox (try %d of %d): %s", self.scratch,
                        attempt, SETUP_TRIES, result[1].strip()[:300])
            time.sleep(0.2 * attempt)
        return result

    def _run_once(self, argv: list[str], timeout: float) -> tuple[bool, tuple[int, str, float, bool]]:
        if self.closed:
            raise SandboxError("the sandbox is closed")
        lim = []
        if "memory" not in self.limited:
            lim.append(f"--as={size_bytes(self.limits.memory)}")
        if "pids" not in self.limited:
            lim.append(f"--nproc={self.limits.pids}")  # per-uid, so weak (and root is exempt)
        status_r, status_w = os.pipe() if self.isolation == "bwrap" else (-1, -1)
        isolated = self._isolate(argv)
        if status_w >= 0:  # bubblewrap writes {"exit-code": N} there when a command it started ends
            isolated[1:1] = ["--json-status-fd", str(status_w)]
        cmd = [*self.cgroup.wrapper(), "timeout", "-s", "KILL", f"{timeout:g}",
               *(["prlimit", *lim, "--"] if lim else []), *isolated]
        out = OutputCollector(self.limits.output_limit)
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    cwd=self.workdir if os.path.isdir(self.workdir) else self.scratch,
                                    env=self.env, start_new_session=True, pass_fds=(status_w,) if status_w >= 0 else ())
        except OSError as exc:
            for fd in (status_r, status_w):
                if fd >= 0:
                    os.close(fd)
            raise InfrastructureError(f"could not start {cmd[0]}: {exc}") from exc
        if status_w >= 0:
            os.close(status_w)
        guard_fired = False
        fd = proc.stdout.fileno()
        while True:
            left = t0 + timeout + GUARD_S - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                guard_fired = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            data = os.read(fd, 65536)
            if not data:
                break
            out.add(data)
        proc.stdout.close()
        code = proc.wait()
        code = 128 - code if code < 0 else code  # killed by a signal: report it as a shell does (137)
        started = True
        if status_r >= 0:  # a process the command left behind may hold the pipe open: read only what is there
            os.set_blocking(status_r, False)
            with contextlib.suppress(BlockingIOError):
                started = b'"exit-code"' in os.read(status_r, 65536)
            os.close(status_r)
        return started, (code, out.text(), time.monotonic() - t0, guard_fired)

    def execute(self, command: str, timeout: float | None = None) -> ExecResult:
        t = float(timeout if timeout is not None else self.limits.command_timeout_s)
        code, output, duration, guard = self._run(["bash", "-c", command], t)
        timed_out = guard or (code in (124, 137) and duration >= t * 0.95)
        if timed_out:
            self.dirty = True
            output = f"{output}\n[command timed out: killed after {t:g}s]"
        return ExecResult(exit_code=code, output=output, duration_s=duration, timed_out=timed_out)

    def reset(self) -> None:
        """The whole sandbox as it started: the checkout (by git, or copied afresh when git's own settings were
        changed or a command ran away), and /tmp and HOME emptied."""
        if self.dirty or not os.path.isdir(self.workdir) or git_meta(Path(self.workdir)) != self._git_meta:
            self._copy_checkout()
            self.dirty = False
            return
        self._fresh_scratch()
        # git runs inside the sandbox: the checkout's .git/config is untrusted (core.fsmonitor runs commands)
        g = "git -c core.fsmonitor= -c core.hooksPath=/dev/null"
        script = (f"cd {self.workdir} && {g} checkout -q -f --detach {self.commit} && "
                  f"{g} reset -q --hard {self.commit} && {g} clean -fdqx")
        code, output, _, _ = self._run(["bash", "-c", script], 60.0)
        if code != 0:
            log.warning("reset of %s failed (exit %s: %s); copying the checkout afresh", self.workdir, code, output[-500:])
            self._copy_checkout()

    def _mapped(self, p: Path) -> Path:
        """The host path of sandbox path `p`, links not followed (the sandbox's /tmp is scratch/tmp under bubblewrap)."""
        own = p.is_relative_to(self.scratch) or p.is_relative_to(self.env_dir)
        if self.isolation == "bwrap" and not own and p.is_relative_to("/tmp"):
            return self.scratch / "tmp" / p.relative_to("/tmp")
        return p

    def _host_path(self, path: str, _hops: int = 0) -> Path:
        """Where a sandbox path lives on the host. Links are followed as the sandbox sees them: a link to /tmp/x is
        the sandbox's /tmp/x, never the host's (the host's realpath of it would read the host's own /tmp)."""
        parts = Path(sandbox_path(self.workdir, path)).parts
        here = Path(parts[0])
        for i, part in enumerate(parts[1:], start=2):
            step = here / part
            host = self._mapped(step)
            if host.is_symlink():
                if _hops >= 16:
                    raise SandboxError(f"{path}: too many levels of symbolic links in the sandbox")
                target = os.readlink(host)
                resolved = Path(target) if os.path.isabs(target) else here / target
                rest = parts[i:]
                return self._host_path(posixpath.normpath(str(resolved.joinpath(*rest))), _hops + 1)
            here = step
        return Path(os.path.realpath(self._mapped(here)))

    def write_file(self, path: str, content: str | bytes) -> None:
        target = self._host_path(path)
        if not target.is_relative_to(self.scratch.resolve()):
            raise SandboxError(f"{path} is read-only in the sandbox: only {self.workdir} and /tmp are writable")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)

    def read_file(self, path: str, max_bytes: int = READ_LIMIT) -> bytes:
        target = self._host_path(path)
        with target.open("rb") as fh:
            data = fh.read(max_bytes + 1)  # never more than the limit into memory, whatever the size says
        if len(data) > max_bytes:
            raise FileTooLargeError(path, target.stat().st_size, max_bytes)
        return data

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.cgroup.remove()
        release(self.scratch)

    def __enter__(self) -> "LocalSandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def sandbox_id(self) -> str:
        return self.scratch.name
