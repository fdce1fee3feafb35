"""A Ray cluster on this machine or on several, opt-in: nodes with their own Docker engines, and the image registry.

    start_registry(root)                                   # Debian's docker-registry on localhost:5000
    start_node(root, "head", head=True, port=6379)         # engine + `ray start --head`
    start_node(root, "w1", address="HOST:6379")            # engine + `ray start --address`
    stop_node(root, "w1"); stop_node(root, "head")

Each node is one `ray start --block` process (detached; stopping it stops the node's raylet and workers) whose
environment names its own Docker engine (`DOCKER_HOST`, `executors/node_engine.py`), so the sandboxes a node runs
use that engine. A recipe's `cluster:` section then points the flows at the head (`flows/cluster.py`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path

from trajfactory.executors.base import InfrastructureError
from trajfactory.executors.node_engine import start_node_engine, stop_node_engine
from trajfactory.runtime import DaemonFailed, start_daemon, stop_daemon

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")
_STARTED = "Ray runtime started"


def default_root() -> Path:
    return Path(os.environ.get("TRAJFACTORY_CLUSTER_DIR",
                               Path(os.environ.get("TRAJFACTORY_CACHE", Path.home() / ".cache" / "trajfactory"))
                               / "cluster"))


def ray_binary() -> str:
    here = Path(sys.executable).parent / "ray"
    found = str(here) if here.exists() else shutil.which("ray")
    if not found:
        raise InfrastructureError("Ray is not installed: pip install 'trajfactory[cluster]' (scripts/setup.sh does it)")
    return found


def _node_dir(root: Path, name: str) -> Path:
    if not _NAME.match(name):
        raise ValueError(f"node name {name!r}: use letters, digits, '.', '_' or '-' (at most 41)")
    return Path(root).resolve() / "nodes" / name


def start_node(root: str | Path, name: str, *, head: bool = False, address: str | None = None, port: int = 6379,
               num_cpus: int = 1, object_store_mb: int = 200, own_engine: bool = True,
               insecure_registries: list[str] = (), env: dict[str, str] | None = None, timeout: float = 120,
               client_port: int | None = None) -> dict:
    """Start node `name`: its Docker engine (unless `own_engine` is off: then the machine's), then Ray as the head
    (`head`, on `port`; with `client_port`, its Ray Client server there, needs `ray[client]`) or as a worker joining
    `address`. Returns the node's state (also in NODE_DIR/node.json)."""
    if head == bool(address):
        raise ValueError("give either head=True or the head's address (HOST:PORT) to join, not both or neither")
    where = _node_dir(Path(root), name)
    if node_state(root, name):
        raise InfrastructureError(f"node {name} already runs (stop it first: `trajfactory cluster stop-node {name}`)")
    where.mkdir(parents=True, exist_ok=True)
    docker_host = start_node_engine(where / "engine", insecure_registries) if own_engine else os.environ.get(
        "DOCKER_HOST", "unix:///var/run/docker.sock")
    cmd = [ray_binary(), "start", "--block", "--num-cpus", str(num_cpus), "--disable-usage-stats",
           "--object-store-memory", str(object_store_mb * 1_000_000)]
    cmd += ["--head", "--port", str(port), "--include-dashboard=false"] if head else ["--address", address]
    if head and client_port:
        cmd += ["--ray-client-server-port", str(client_port)]
    node_env = {**os.environ, **(env or {}), "DOCKER_HOST": docker_host, "TRAJFACTORY_NODE": name}
    log = where / "ray.log"
    log.write_text("")
    try:
        # up once Ray says so and, with a Ray Client server, once that listens (it starts a moment after)
        proc = start_daemon(cmd, log, lambda: _STARTED in log.read_text(errors="replace") and not (
            head and client_port and not _listens(client_port)), timeout=timeout, env=node_env, tail_chars=3000)
    except DaemonFailed as exc:
        stop_node(root, name)  # its engine
        raise InfrastructureError(f"Ray node {name} did not start (`{' '.join(cmd)}`: {exc.why}); its log ({log}):\n"
                                  f"{exc.tail}") from None
    state = {"name": name, "pid": proc.pid, "head": head, "address": f"127.0.0.1:{port}" if head else address,
             "docker_host": docker_host, "own_engine": own_engine, "log": str(log),
             "client_address": f"ray://127.0.0.1:{client_port}" if head and client_port else None}
    (where / "node.json").write_text(json.dumps(state))
    return state


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def node_state(root: str | Path, name: str) -> dict | None:
    """The state of node `name` when its Ray process still runs."""
    try:
        state = json.loads((_node_dir(Path(root), name) / "node.json").read_text())
        os.kill(state["pid"], 0)
        return state
    except (OSError, ValueError, KeyError):
        return None


def nodes(root: str | Path) -> list[dict]:
    base = Path(root).resolve() / "nodes"
    names = sorted(p.name for p in base.iterdir()) if base.is_dir() else []
    return [s for s in (node_state(root, n) for n in names) if s]


def stop_node(root: str | Path, name: str, remove_engine: bool = False) -> bool:
    """Stop node `name`'s Ray processes and its engine; with `remove_engine`, delete the engine's images and state.
    False when it was not running."""
    where = _node_dir(Path(root), name)
    state = node_state(root, name)
    if state:  # the blocking `ray start` stops its node's processes on SIGTERM; the group catches any stray worker
        stop_daemon(state["pid"], 30)
    if (where / "engine").exists():
        stop_node_engine(where / "engine", remove=remove_engine)
    (where / "node.json").unlink(missing_ok=True)
    return state is not None
