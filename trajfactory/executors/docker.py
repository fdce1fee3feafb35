"""Docker sandboxes: one image per repository commit, one warm container per sandbox.

The image is the local base image + the repository's wheelhouse installed with `--no-index` + the
repository at its commit in /repo + the project itself installed from it (its metadata, entry points and
scripts; its code is imported from /repo, see `wheelhouse.INSTALL_PROJECT`) + the options of its own pytest
configuration that the harness keeps (`TRAJFACTORY_ADDOPTS`). A sandbox is a `sleep infinity` container with no network,
CPU/memory/pids limits and no capabilities; commands run through `docker exec`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import posixpath
import re
import select
import struct
import tarfile
import tempfile
import time
from pathlib import Path

import docker
import docker.errors
import requests

from trajfactory.settings import SandboxConfig

from . import sandbox_fs
from .base import (
    EnvironmentBuildError,
    EnvironmentHandle,
    READ_LIMIT,
    ExecResult,
    FileTooLargeError,
    InfrastructureError,
    OutputCollector,
    SandboxError,
    sandbox_path,
)
from .images import BASE_IMAGE, clone_at_commit, default_cache_root, ensure_base_image
from .pytest_options import pytest_addopts
from .requirements import find_requirements, installable, src_layout
from .wheelhouse import INSTALL_FAILED, INSTALL_PROJECT, INSTALLED, build_wheelhouse, install_failure, pip_output

log = logging.getLogger(__name__)

BUILDER_VERSION = "2"
"""Bumped whenever what goes into an image changes, so images of an older recipe are rebuilt."""
LABEL = "trajfactory"
RUN_LABEL = "trajfactory.run"
"""The label naming the factory run that started a container (`runs.py` sets it for the whole process)."""
_run_labels: dict[str, str] = {}
WORKDIR = "/repo"
# A fixed hash seed keeps parametrized test ids (and so FAIL_TO_PASS / PASS_TO_PASS) stable across runs.
SANDBOX_ENV = {"PYTHONHASHSEED": "0",
               # no .pyc: one written in the same second as an edit of a same-size file would hide the edit
               "PYTHONDONTWRITEBYTECODE": "1"}
GUARD_S = 15.0
"""Seconds past a command's timeout after which the host stops waiting for `docker exec`."""

DOCKERFILE = """\
FROM {base}
COPY wheels /tmp/wheels
RUN python3 -m pip install --no-index --no-cache-dir --root-user-action=ignore --find-links /tmp/wheels \\
    -r /tmp/wheels/requirements.txt
RUN git config --system user.name trajfactory && git config --system user.email trajfactory@localhost \\
    && git config --system --add safe.directory '*' \\
    && echo {pth} > "$(python3 -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/trajfactory_repo.pth"
COPY repo /repo
{install}
ENV TRAJFACTORY_ADDOPTS={addopts}
WORKDIR /repo
"""
# the project itself, from /repo, with its build backend from the wheelhouse (no network in a build)
INSTALL_STEP = """\
COPY install_project.py /tmp/install_project.py
RUN python3 /tmp/install_project.py /repo /tmp/wheels {pth} && rm -rf /tmp/wheels /tmp/install_project.py"""


def dockerfile_quote(value: str) -> str:
    """A Dockerfile ENV value that stays literal: double quotes, with backslash, quote and `$` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _client(timeout: int = 600) -> docker.DockerClient:
    try:
        return docker.from_env(timeout=timeout)
    except docker.errors.DockerException as exc:
        raise InfrastructureError(f"no Docker engine answers: {exc}") from exc


@contextlib.contextmanager
def _engine_errors(what: str):
    """Engine faults (daemon gone, container vanished) become InfrastructureError: worth a retry."""
    try:
        yield
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise InfrastructureError(f"{what}: {exc}") from exc


def engine_available() -> bool:
    try:
        return bool(docker.from_env(timeout=5).ping())
    except Exception:
        return False


def cleanup_leftover_containers(labels: dict[str, str] | None = None, client=None) -> int:
    """Remove sandbox containers left behind (label trajfactory=1, plus `labels` to narrow it)."""
    client = client or _client()
    wanted = [f"{LABEL}=1", *(f"{k}={v}" for k, v in (labels or {}).items())]
    with _engine_errors("listing leftover sandbox containers"):
        leftovers = client.containers.list(all=True, filters={"label": wanted})
        for container in leftovers:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)  # v: the tmpfs volumes go too
    if leftovers:
        log.info("removed %d leftover sandbox containers", len(leftovers))
    return len(leftovers)


def set_run_id(run_id: str) -> None:
    """Every sandbox container this process starts from now on carries `trajfactory.run=<run_id>` ('' for none)."""
    _run_labels.clear()
    if run_id:
        _run_labels[RUN_LABEL] = run_id


def cleanup_run_containers(run_ids: set[str], client=None) -> int:
    """Remove the sandbox containers of the factory runs `run_ids` (label trajfactory.run), and none of other runs."""
    if not run_ids:
        return 0
    client = client or _client()
    with _engine_errors("listing the sandbox containers of earlier runs"):
        labelled = client.containers.list(all=True, filters={"label": [f"{LABEL}=1", RUN_LABEL]})
        theirs = [c for c in labelled if c.labels.get(RUN_LABEL) in run_ids]
        for container in theirs:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)  # v: the tmpfs volumes go too
    return len(theirs)


def _image_exists(client, tag: str) -> bool:
    with _engine_errors(f"inspecting image {tag}"):
        try:
            client.images.get(tag)
            return True
        except docker.errors.ImageNotFound:
            return False


class DockerBackend:
    """Builds one image per repository commit (cached by content) and opens container sandboxes."""

    name = "docker"

    def __init__(self, cache_root: str | Path | None = None, base_image: str = BASE_IMAGE,
                 labels: dict[str, str] | None = None, client=None):
        self.cache_root = Path(cache_root or default_cache_root())
        self.base_image = base_image
        self.labels = dict(labels or {})
        self.client = client or _client()

    def image_tag(self, repo: str, base_id: str, commit: str, requirements: list[str]) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", repo.lower()).strip("-") or "repo"
        key = "\n".join([base_id, commit, BUILDER_VERSION, *sorted(requirements)])
        return f"trajfactory/repo-{slug}:{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def build(self, source_path: str, repo: str, commit: str) -> EnvironmentHandle:
        base_id = ensure_base_image(self.base_image, progress=log.info)
        with tempfile.TemporaryDirectory(prefix="trajfactory-build-") as tmp:
            repo_dir = Path(tmp, "repo")
            sha = clone_at_commit(source_path, commit, repo_dir)
            tag = self.image_tag(repo, base_id, sha, find_requirements(repo_dir))
            handle = EnvironmentHandle(backend=self.name, name=tag, repo=repo, commit=sha)
            if _image_exists(self.client, tag):
                log.info("image %s exists; reusing it", tag)
                return handle
            house, requirements = build_wheelhouse(repo_dir, self.cache_root)
            pth = "/repo/src" if src_layout(repo_dir) else "/repo"
            addopts, dropped = pytest_addopts(repo_dir, house)
            if dropped:
                log.info("%s: pytest options of the project that the harness drops: %s", repo, " ".join(dropped))
            install = INSTALL_STEP.format(pth=pth) if installable(repo_dir) else "RUN rm -rf /tmp/wheels"
            dockerfile = DOCKERFILE.format(base=self.base_image, pth=pth, install=install,
                                           addopts=dockerfile_quote(addopts))
            with tempfile.TemporaryFile() as context:
                with tarfile.open(fileobj=context, mode="w") as tar:
                    for name, data in (("Dockerfile", dockerfile), ("install_project.py", INSTALL_PROJECT)):
                        info = tarfile.TarInfo(name)
                        info.size, info.mtime = len(data.encode()), int(time.time())
                        tar.addfile(info, io.BytesIO(data.encode()))
                    tar.add(house, arcname="wheels")
                    tar.add(repo_dir, arcname="repo")
                context.seek(0)
                log.info("building image %s (%s at %s, %d requirements)", tag, repo, sha[:12], len(requirements))
                self._build_image(context, tag, repo)
        return handle

    def _build_image(self, context, tag: str, repo: str) -> None:
        lines: list[str] = []
        error = None
        with _engine_errors(f"building image {tag}"):
            stream = self.client.api.build(fileobj=context, custom_context=True, tag=tag, network_mode="none",
                                           rm=True, forcerm=True, pull=False, decode=True)
            for chunk in stream:
                text = chunk.get("stream", "")
                lines += text.splitlines()
                if text.startswith("Step ") or text.startswith(INSTALLED):
                    log.info("%s: %s", tag, text.strip())
                if "error" in chunk:
                    error = chunk["error"]
                    lines.append(error)
        if error is None and _image_exists(self.client, tag):
            return
        steps = [line for line in lines if line.startswith("Step ")]
        if steps and "install_project" in steps[-1]:
            step_output = "\n".join(lines[len(lines) - lines[::-1].index(steps[-1]):])
            if INSTALL_FAILED in step_output:
                raise EnvironmentBuildError("install_failed", install_failure(step_output, repo))
        reason = "install_failed" if steps and "pip install" in steps[-1] else "build_failed"
        tail = pip_output("\n".join(lines), 25)
        raise EnvironmentBuildError(
            reason,
            f"building the image of {repo} failed at {steps[-1] if steps else 'the start'}:\n{tail}\n"
            "the repository's requirements must install offline from its wheelhouse "
            "(check the failing requirement in the log above)",
        )

    def start(self, env: EnvironmentHandle, limits: SandboxConfig | None = None) -> "DockerSandbox":
        labels = {**_run_labels, **self.labels, "trajfactory.repo": env.repo, "trajfactory.commit": env.commit}
        return DockerSandbox(self.client, env.name, env.commit, limits or SandboxConfig(), labels)


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
            sock = api.exec_start(exec_id, socket=True)
        buf = bytearray()
        guard_fired = False
        try:
            while True:
                left = t0 + deadline_s - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    guard_fired = True
                    break
                data = sock.read(65536)
                if not data:
                    break
                buf += data
                # docker multiplexes stdout/stderr in frames: 8-byte header (stream, size) then payload
                while len(buf) >= 8 and len(buf) >= 8 + struct.unpack(">xxxxL", buf[:8])[0]:
                    size = struct.unpack(">xxxxL", buf[:8])[0]
                    out.add(bytes(buf[8:8 + size]))
                    del buf[:8 + size]
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
