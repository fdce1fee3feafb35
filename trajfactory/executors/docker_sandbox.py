"""A Docker sandbox: one warm `sleep infinity` container of a repository's image (`docker.py` builds the images);
commands run through `docker exec` under a timeout and a host-side guard; `reset()` restores the whole sandbox in
place (`sandbox_fs.py`: a read-only root, capped tmpfs volumes for what may be written)."""

from __future__ import annotations

import contextlib
import io
import logging
import posixpath
import select
import struct
import tarfile
import time
from pathlib import Path

import docker
import docker.errors
import requests

from trajfactory.settings import SandboxConfig

from . import sandbox_fs
from .base import (PYTEST_ADDOPTS, READ_LIMIT, ExecResult, FileTooLargeError, InfrastructureError, OutputCollector,
                   SandboxError, sandbox_path)

log = logging.getLogger(__name__)

LABEL = "trajfactory"
WORKDIR = "/repo"
# A fixed hash seed keeps parametrized test ids (and so FAIL_TO_PASS / PASS_TO_PASS) stable across runs.
SANDBOX_ENV = {"PYTHONHASHSEED": "0",
               # no .pyc: one written in the same second as an edit of a same-size file would hide the edit
               "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_ADDOPTS": PYTEST_ADDOPTS}
GUARD_S = 15.0
"""Seconds past a command's timeout after which the host stops waiting for `docker exec`."""


@contextlib.contextmanager
def _engine_errors(what: str):
    """Engine faults (daemon gone, container vanished) become InfrastructureError: worth a retry."""
    try:
        yield
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise InfrastructureError(f"{what}: {exc}") from exc


def exec_stream(api: docker.APIClient, exec_id: str):
    """Start an exec attached; returns its raw stream, the bytes of that stream already read, and the HTTP response
    (kept alive while the stream is read).

    docker-py's `exec_start(socket=True)` hands back the socket beneath the response's buffered reader. The reader
    that parsed the `101 UPGRADED` headers reads past them when more has arrived, and those bytes (the start of the
    output, or all of a short command's) are lost to whoever reads the socket (docker/docker-py#3332). It happens
    when the caller is late to read the headers: another thread holding the GIL, a loaded host. A tampering scan
    that printed its verdict came back as empty output that way. So the exec is started here, and what the reader
    holds is taken before the socket is read."""
    res = api._post_json(api._url("/exec/{0}/start", exec_id), headers={"Connection": "Upgrade", "Upgrade": "tcp"},
                         data={"Tty": False, "Detach": False}, stream=True)
    api._raise_for_status(res)
    reader = getattr(getattr(res.raw, "_fp", None), "fp", None)
    raw = getattr(reader, "raw", None)
    conn = getattr(raw, "_sock", None)
    if not isinstance(reader, io.BufferedReader) or conn is None:  # no buffered reader in between: nothing to lose
        return api._get_raw_response_socket(res), b"", res
    timeout = conn.gettimeout()
    conn.settimeout(0.0)  # take what the reader holds; if it holds nothing, one read that does not wait
    try:
        held = reader.peek(65536)
        first = reader.read(len(held)) if held else b""
    finally:
        conn.settimeout(timeout)
    return raw, first, res


CPUACCT = ("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage",  # cgroup v1, cgroupfs driver (nanoseconds)
           "/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat")  # cgroup v2, systemd driver (usage_usec)


def container_cpu_seconds(container_id: str) -> float:
    """CPU seconds a running container's processes have used so far, from its cgroup (0.0 where none is readable)."""
    for pattern in CPUACCT:
        try:
            text = Path(pattern.format(id=container_id)).read_text()
        except OSError:
            continue
        if pattern.endswith("cpuacct.usage"):
            return int(text) / 1e9
        for line in text.splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
    return 0.0


_RESET_FAILURES = {96: "files in its scratch directories could not be removed",
                   97: "git's own settings in /repo were changed", 99: "processes survived the kill loop"}


class DockerSandbox:
    """One warm container holding /repo; `reset()` restores the commit without a new container."""

    workdir = WORKDIR

    def __init__(self, client, image: str, commit: str, limits: SandboxConfig, labels: dict[str, str]):
        self.client = client
        self.image = image
        self.commit = commit
        self.limits = limits
        self.labels = {**labels, LABEL: "1"}
        self.container = None
        self.cpu_s = 0.0
        """CPU seconds of this sandbox's removed containers (read from their cgroups as they go): what it cost."""
        self.dirty = False
        """A command ran away (timed out): the next reset() replaces the container."""
        self._start()

    @property
    def container_id(self) -> str:
        return self.container.id if self.container else ""

    def _start(self) -> None:
        lim = self.limits
        t0 = time.monotonic()
        with _engine_errors(f"starting a container of {self.image}"):
            self.container = self.client.containers.run(
                self.image, ["sleep", "infinity"], detach=True,
                init=True,  # an init reaps orphaned processes, so zombies never fill the pids limit
                network_mode="none", mem_limit=lim.memory, memswap_limit=lim.memory,
                nano_cpus=int(lim.cpus * 1e9), pids_limit=lim.pids, cap_drop=["ALL"],
                security_opt=["no-new-privileges"], labels=self.labels, working_dir=WORKDIR,
                environment=SANDBOX_ENV, read_only=True, mounts=sandbox_fs.mounts(lim.disk),
            )
        sandbox_fs.seed_repo(self.client, self.container, self.image, lim.disk)
        self.dirty = False
        # the init's child `sleep` keeps the container alive: reset() must not kill it
        code, out, _, _ = self._exec(["cat", "/proc/1/task/1/children"], 30.0, workdir="/")
        self._keeper_pids = out.split() if code == 0 else []
        code, out, _, _ = self._exec(["bash", "-c", sandbox_fs.meta_digest_command()], 30.0, workdir="/")
        self._git_meta = out.strip() if code == 0 else ""
        log.debug("container %s of %s started in %.2fs", self.container.id[:12], self.image, time.monotonic() - t0)

    def _exec(self, argv: list[str], deadline_s: float, workdir: str = WORKDIR) -> tuple[int, str, float, bool]:
        """Run argv via docker exec; returns (exit code, output, seconds, whether the host guard fired)."""
        if self.container is None:
            raise SandboxError("the sandbox is closed")
        api = self.client.api
        out = OutputCollector(self.limits.output_limit)
        t0 = time.monotonic()
        with _engine_errors(f"exec in container {self.container_id[:12]}"):
            exec_id = api.exec_create(self.container.id, argv, workdir=workdir)["Id"]
            sock, first, _response = exec_stream(api, exec_id)
        buf = bytearray(first)
        guard_fired = False
        try:
            while True:
                # docker multiplexes stdout/stderr in frames: 8-byte header (stream, size) then payload
                while len(buf) >= 8 and len(buf) >= 8 + struct.unpack(">xxxxL", buf[:8])[0]:
                    size = struct.unpack(">xxxxL", buf[:8])[0]
                    out.add(bytes(buf[8:8 + size]))
                    del buf[:8 + size]
                left = t0 + deadline_s - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    guard_fired = True
                    break
                data = sock.read(65536)
                if not data:
                    break
                buf += data
        except OSError as exc:
            raise InfrastructureError(f"exec stream of container {self.container_id[:12]} broke: {exc}") from exc
        finally:
            sock.close()
        duration = time.monotonic() - t0
        if guard_fired:
            return -1, out.text(), duration, True
        exit_code = None
        with _engine_errors(f"inspecting exec in container {self.container_id[:12]}"):
            for _ in range(50):  # the exit code lands a moment after the stream closes
                exit_code = api.exec_inspect(exec_id).get("ExitCode")
                if exit_code is not None:
                    break
                time.sleep(0.02)
        return (-1 if exit_code is None else exit_code), out.text(), duration, False

    def execute(self, command: str, timeout: float | None = None) -> ExecResult:
        t = float(timeout if timeout is not None else self.limits.command_timeout_s)
        argv = ["timeout", "-s", "KILL", f"{t:g}", "bash", "-lc", command]
        try:
            code, output, duration, guard = self._exec(argv, t + GUARD_S)
        except InfrastructureError as exc:
            if not self._alive():
                raise
            # the container lives but cannot start a process (e.g. its pids limit is exhausted)
            self.dirty = True
            return ExecResult(exit_code=126, output=f"[command could not start: {exc}]", duration_s=0.0)
        # `timeout` exits 124, or 137 when its KILL takes its own process group (itself) down too
        timed_out = guard or (code in (124, 137) and duration >= t * 0.95)
        if timed_out:
            self.dirty = True
            note = "host-side guard fired: docker exec did not return" if guard else f"killed after {t:g}s"
            output = f"{output}\n[command timed out: {note}]"
        return ExecResult(exit_code=code, output=output, duration_s=duration, timed_out=timed_out)

    def _alive(self) -> bool:
        try:
            self.container.reload()
            return self.container.status == "running"
        except Exception:
            return False

    def reset(self) -> None:
        if self.dirty or self.container is None:
            self._replace()
            return
        # kill leftovers of earlier commands (but the init and its `sleep`), then restore the checkout;
        # rounds, because a fork bomb refills the process table while the loop runs
        keep = " ".join(["1", *self._keeper_pids])
        kill_loop = (
            "for round in 1 2 3 4 5 6 7 8; do left=0; for d in /proc/[0-9]*; do p=${d#/proc/}; "
            f'case " {keep} $$ " in *" $p "*) continue;; esac; '
            '{ read -r st < "$d/stat"; } 2>/dev/null || continue; st=${st##*) }; '
            '[ "${st%% *}" = Z ] && continue; kill -9 "$p" 2>/dev/null && left=1; done; '
            '[ "$left" = 0 ] && break; sleep 0.05; done; [ "$left" = 0 ] || exit 99; '
        )
        # then the rest of the sandbox: git's own settings as they were (else exit 97: a new container), the scratch
        # directories emptied (sandbox_fs: nothing else is writable)
        meta = f'[ "$({sandbox_fs.meta_digest_command()})" = "{self._git_meta}" ] || exit 97; '
        script = (
            (kill_loop if self._keeper_pids else "") + meta + sandbox_fs.wipe_command() +
            f"cd {WORKDIR} && g='git --no-replace-objects -c core.fsmonitor= -c core.hooksPath=/dev/null' && "
            f"$g checkout -q -f --detach {self.commit} && $g reset -q --hard {self.commit} && $g clean -fdqx"
        )
        try:
            code, output, _, guard = self._exec(["bash", "-c", script], 60.0, workdir="/")
        except InfrastructureError as exc:
            code, output, guard = -1, str(exc), False
        if code != 0 or guard:
            why = _RESET_FAILURES.get(code, f"exit {code}: {output[-500:]}")
            log.warning("reset of container %s failed (%s); replacing it", self.container_id[:12], why)
            self._replace()

    def _replace(self) -> None:
        old = self.container_id[:12]
        self._remove()
        self._start()
        log.info("replaced container %s with %s", old or "-", self.container_id[:12])

    def write_file(self, path: str, content: str | bytes) -> None:
        path = sandbox_path(self.workdir, path)
        data = content.encode() if isinstance(content, str) else content
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(posixpath.basename(path))
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
        parent = posixpath.dirname(path)
        with _engine_errors(f"writing {path} in container {self.container_id[:12]}"):
            try:
                self.container.put_archive(parent, buf.getvalue())
            except docker.errors.NotFound:
                code, output, _, _ = self._exec(["mkdir", "-p", parent], 30.0, workdir="/")
                if code != 0:
                    raise SandboxError(f"cannot create directory {parent} in the sandbox: {output}")
                self.container.put_archive(parent, buf.getvalue())

    def read_file(self, path: str, max_bytes: int = READ_LIMIT, _hops: int = 0) -> bytes:
        path = sandbox_path(self.workdir, path)
        with _engine_errors(f"reading {path} in container {self.container_id[:12]}"):
            try:
                stream, stat = self.container.get_archive(path)
            except docker.errors.NotFound:
                self.container.reload()  # raises NotFound again if the container itself vanished
                raise FileNotFoundError(f"{path} does not exist in the sandbox") from None
            if stat.get("size", 0) > max_bytes:  # the engine's stat of the path: refused before any byte comes
                stream.close()
                raise FileTooLargeError(path, stat["size"], max_bytes)
            chunks, got = [], 0
            for chunk in stream:  # the file may still be growing: the cap holds on what arrives too
                got += len(chunk)
                if got > max_bytes + 2**20:  # tar headers and padding come on top of the file's bytes
                    stream.close()
                    raise FileTooLargeError(path, got, max_bytes)
                chunks.append(chunk)
            data = b"".join(chunks)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.next()
            if member is not None and member.issym() and _hops < 8:
                return self.read_file(posixpath.join(posixpath.dirname(path), member.linkname), max_bytes, _hops + 1)
            if member is None or not member.isfile():
                raise IsADirectoryError(f"{path} is not a regular file in the sandbox")
            if member.size > max_bytes:
                raise FileTooLargeError(path, member.size, max_bytes)
            return tar.extractfile(member).read()

    def _remove(self) -> None:
        if self.container is None:
            return
        # what the container used, read before it goes (close() and replacements both come here)
        self.cpu_s += container_cpu_seconds(self.container.id)
        try:
            self.container.remove(force=True, v=True)  # v: its tmpfs volumes go with it
        except docker.errors.NotFound:
            pass
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise InfrastructureError(f"removing container {self.container_id[:12]}: {exc}") from exc
        finally:
            self.container = None

    def close(self) -> None:
        self._remove()

    def __enter__(self) -> "DockerSandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
