"""A Docker engine of its own for one cluster node on a shared machine: a second `dockerd` with its own socket,
image store and state, so each Ray node (`DOCKER_HOST=unix://ROOT/docker.sock ray start ...`) runs its sandboxes
on its own engine, as it would on its own machine.

The engine has no bridge network and leaves iptables alone: sandboxes run with `network_mode="none"`
(`docker_sandbox.py`), so nothing needs one, and the machine's own engine keeps its rules. It uses a containerd of
its own (under its exec root) in its own namespace, so it never sees the machine engine's containers.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import docker

from trajfactory.runtime import DaemonFailed, pid_in, start_daemon, stop_daemon

from .base import InfrastructureError


def _exec_root(root: Path) -> Path:
    # containerd's socket lives under the exec root, and a unix socket path has at most 107 bytes
    return Path("/run/trajfactory-engines") / hashlib.sha256(str(root).encode()).hexdigest()[:12]


def engine_host(root: str | Path) -> str:
    """The DOCKER_HOST of the node engine kept under `root`."""
    return f"unix://{Path(root).resolve() / 'docker.sock'}"


def engine_pid(root: str | Path) -> int | None:
    return pid_in(Path(root, "dockerd.pid"))


def _answers(host: str) -> bool:
    try:
        return bool(docker.DockerClient(base_url=host, timeout=5).ping())
    except Exception:
        return False


def start_node_engine(root: str | Path, insecure_registries: list[str] = (), timeout: float = 60) -> str:
    """Start a `dockerd` keeping everything under `root` (reused when it already runs); returns its DOCKER_HOST.
    `insecure_registries`: registries not on localhost that the engine may use without TLS."""
    if shutil.which("dockerd") is None:
        raise InfrastructureError("`dockerd` is not installed: `apt-get install docker.io` (scripts/setup.sh does it)")
    root = Path(root).resolve()
    host = engine_host(root)
    if engine_pid(root) and _answers(host):
        return host
    root.mkdir(parents=True, exist_ok=True)
    exec_root = _exec_root(root)
    namespace = f"trajfactory-{exec_root.name}"
    cmd = ["dockerd", "--host", host, "--data-root", str(root / "data"), "--exec-root", str(exec_root),
           "--pidfile", str(root / "dockerd.pid"), "--bridge=none", "--iptables=false", "--ip-masq=false",
           "--containerd-namespace", namespace, "--containerd-plugins-namespace", f"{namespace}-plugins",
           *[f"--insecure-registry={r}" for r in insecure_registries]]
    try:
        start_daemon(cmd, root / "dockerd.log", lambda: _answers(host), timeout=timeout)
    except DaemonFailed as exc:
        raise InfrastructureError(f"the node engine under {root} did not start ({exc.why}); its log "
                                  f"({root}/dockerd.log):\n{exc.tail}") from None
    return host


def stop_node_engine(root: str | Path, remove: bool = False) -> bool:
    """Stop the node engine under `root` (its containers stop with it); with `remove`, delete its images and state
    too. False when none ran."""
    root = Path(root).resolve()
    pid = engine_pid(root)
    if pid is not None:
        stop_daemon(pid, 30)
    if remove:
        for path in (root, _exec_root(root)):
            for point in _mounts_under(path):
                subprocess.run(["umount", "-l", point], capture_output=True)
            shutil.rmtree(path, ignore_errors=True)
    return pid is not None


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)
