"""The heavy fan-out on a Ray cluster: steps marked `remote` in `flows/tasks.py` run on the cluster's nodes.

    with cluster_session(recipe.cluster):     # connects (or does nothing without a `cluster:` section)
        ...                                   # each remote step's Prefect task waits on a Ray task

The Prefect task stays on the flow's machine (its cache key, journal line, retries and state are the flow's), and
only the work goes to a node: `run_step` sends the step function and its arguments to Ray and waits for the result.
Tasks are spread over the nodes, and each node runs its sandboxes on its own Docker engine (its `DOCKER_HOST`),
pulling images from the shared registry (`executors/registry.py`) instead of building them again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from typing import Any, Callable, Iterator

from trajfactory.executors.base import InfrastructureError
from trajfactory.executors.docker import current_run_id, set_run_id
from trajfactory.executors.registry import current_registry, use_registry
from trajfactory.settings import ClusterConfig

log = logging.getLogger(__name__)

_state: dict[str, Any] = {}
_lock = threading.Lock()


def _ray():
    try:
        import ray
    except ImportError as exc:  # an optional extra: the quickstart never needs it
        raise RuntimeError("the recipe's `cluster:` section needs Ray: pip install 'trajfactory[cluster]'") from exc
    return ray


@contextlib.contextmanager
def cluster_session(config: ClusterConfig | None) -> Iterator[None]:
    """Connect to the recipe's Ray cluster for the `with` block (nested sessions share the outer one's connection)."""
    if config is None or _state:
        yield
        return
    ray = _ray()
    with _lock:
        if not ray.is_initialized():
            _check_reachable(config.address)  # ray.init waits minutes on an address nothing answers
            try:
                ray.init(address=config.address, logging_level=logging.WARNING, log_to_driver=False)
            except ConnectionError as exc:
                raise InfrastructureError(
                    f"no Ray cluster answers at cluster.address {config.address!r} ({exc}); start its head with "
                    "`trajfactory cluster start-node head --head`, or drop `cluster:` to run here") from exc
        _state.update(config=config, registry=current_registry())
    use_registry(config.registry)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    log.info("Ray cluster %s: %d nodes, %s CPUs; image registry %s", config.address, len(nodes),
             ray.cluster_resources().get("CPU", 0), config.registry or "none (each node builds its images)")
    try:
        yield
    finally:
        with _lock:
            use_registry(_state.get("registry"))
            _state.clear()
            ray.shutdown()


def _check_reachable(address: str) -> None:
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise InfrastructureError(
            f"no Ray cluster answers at cluster.address {address!r} ({exc}); start its head with "
            "`trajfactory cluster start-node head --head`, or drop `cluster:` to run here") from exc


def active() -> bool:
    return bool(_state)


def run_step(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """`fn(*args, **kwargs)` on a node of the session's cluster (spread over the nodes), or here without one."""
    if not _state:
        return fn(*args, **kwargs)
    ray = _ray()
    ref = _remote(ray).options(scheduling_strategy="SPREAD").remote(fn, args, kwargs, _state["config"].registry,
                                                                    current_run_id())
    try:
        return ray.get(ref)  # the step's own exception comes back as itself (Ray's error is an instance of its class)
    except ray.exceptions.RayTaskError:
        raise
    except ray.exceptions.RayError as exc:  # a node or worker lost under the work: the task's retry runs it again
        raise InfrastructureError(f"{fn.__name__} lost its Ray node or worker: {exc}") from exc


def _remote(ray):
    if "remote" not in _state:
        _state["remote"] = ray.remote(num_cpus=1, max_retries=0)(on_node)
    return _state["remote"]


def on_node(fn: Callable, args: tuple, kwargs: dict, registry: str | None, run_id: str) -> Any:
    """What a node runs: the step, with images shared through `registry` and its sandboxes labelled with the flow's
    run (`trajfactory sandbox cleanup --run ID` on the node's engine finds them). It logs the node
    (`TRAJFACTORY_NODE`, else the host name) and its engine to the node's Ray worker log."""
    use_registry(registry)
    set_run_id(run_id)
    node = os.environ.get("TRAJFACTORY_NODE") or socket.gethostname()
    log.info("%s on node %s (engine %s)", fn.__name__, node, os.environ.get("DOCKER_HOST", "default"))
    return fn(*args, **kwargs)
