"""A local sandbox (`local.py` builds its environments): a scratch copy of the checkout, each command run under
bubblewrap (or `unshare --net` where bubblewrap cannot run) with a pids/memory cgroup where the host allows one;
`reset()` restores the checkout, /tmp and HOME in place."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import select
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from trajfactory.settings import SandboxConfig

from .base import PYTEST_ADDOPTS, READ_LIMIT, ExecResult, FileTooLargeError, InfrastructureError, OutputCollector, \
    SandboxError, sandbox_path
from .local_limits import Cgroup, cap_disk, git_meta, own, release, remove_tree, size_bytes

log = logging.getLogger(__name__)

GUARD_S = 15.0
"""Seconds past a command's timeout after which the host kills the whole sandboxed process group."""
SETUP_TRIES = 3
"""Starts of one command whose sandbox bubblewrap could not set up (the command never ran), before its error stands."""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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
            "TRAJFACTORY_REPO": os.pathsep.join([self.workdir + ("/src" if meta.get("src_layout") else ""),
                                                 *(f"{self.workdir}/{d}" for d in meta.get("import_dirs", []))]),
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
