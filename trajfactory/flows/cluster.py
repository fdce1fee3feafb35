"""The heavy fan-out on a Ray cluster: steps marked `remote` in `flows/tasks.py` run on the cluster's nodes.

    with cluster_session(recipe.cluster, recipe.work_dir):  # connects (or nothing without a `cluster:` section)
        ...                                   # each remote step's Prefect task waits on a Ray task

The Prefect task stays on the flow's machine (its cache key, journal line, retries and state are the flow's), and
only the work goes to a node: `run_step` sends the step function and its arguments to Ray and waits for the result.
Tasks are spread over the nodes, and each node runs its sandboxes on its own Docker engine (its `DOCKER_HOST`),
pulling images from the shared registry (`executors/registry.py`) instead of building them again. A step that takes
a `ModelEndpoint` (model rollouts, the web judge) talks to the model from the node: the node first checks that the
endpoint answers there (`require_reachable`; a served model is reached at `model.host`, `models/service.py`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from trajfactory.executors.base import InfrastructureError
from trajfactory.executors.docker import (cleanup_leftover_containers, cleanup_run_containers, current_run_id,
                                         engine_available, set_run_id)
from trajfactory.executors.registry import current_registry, use_registry
from trajfactory.executors.runs import recorded_runs
from trajfactory.models.service import ModelEndpoint
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


_cleaned: set[str] = set()
"""Runs whose leftovers on the nodes' engines this process has removed."""


@contextlib.contextmanager
def cluster_session(config: ClusterConfig | None, work_dir: str | Path | None = None) -> Iterator[None]:
    """Connect to the recipe's Ray cluster for the `with` block (nested sessions share the outer one's connection).
    With the `work_dir` this process holds for its run (`executors/runs.py`), the sandbox containers that the work
    dir's earlier runs (all ended: a killed one leaves its sandboxes running) left on the nodes' engines go first."""
    if config is None or _state:
        yield
        return
    ray = _ray()
    with _lock:
        if not ray.is_initialized():
            _check_reachable(config.address)  # ray.init waits minutes on an address nothing answers
            _connect(ray, config.address)
        _state.update(config=config, registry=current_registry())
    use_registry(config.registry)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    log.info("Ray cluster %s: %d nodes, %s CPUs; image registry %s", config.address, len(nodes),
             ray.cluster_resources().get("CPU", 0), config.registry or "none (each node builds its images)")
    if work_dir is not None and current_run_id():
        earlier = {r["run_id"] for r in recorded_runs(work_dir) if r.get("run_id")} - {current_run_id()} - _cleaned
        if earlier:
            removed = remove_on_nodes(earlier)
            _cleaned.update(earlier)
            if sum(removed.values()):
                log.info("removed the sandbox containers earlier runs of this work dir left on the nodes: %s", removed)
    try:
        yield
    finally:
        with _lock:
            use_registry(_state.get("registry"))
            _state.clear()
            ray.shutdown()


def _connect(ray, address: str) -> None:
    # Ray Client starts a server per connection on the head, and that start now and then fails: try it again
    attempts = 3 if address.startswith("ray://") else 1
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            return
        except ConnectionError as exc:
            if attempt == attempts:
                raise InfrastructureError(
                    f"no Ray cluster answers at cluster.address {address!r} ({exc}); start its head with "
                    "`trajfactory cluster start-node head --head`, or drop `cluster:` to run here") from exc
            log.warning("Ray Client at %s did not connect (%s); trying again", address, exc)


def _check_reachable(address: str) -> None:
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise InfrastructureError(
            f"no Ray cluster answers at cluster.address {address!r} ({exc}); start its head with "
            "`trajfactory cluster start-node head --head`, or drop `cluster:` to run here") from exc


def active() -> bool:
    return bool(_state)


def nodes_alive() -> int:
    """How many nodes of the session's cluster are alive (1 without a cluster: this machine)."""
    if not _state:
        return 1
    return max(1, sum(1 for node in _ray().nodes() if node.get("Alive")))


def run_step(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """`fn(*args, **kwargs)` on a node of the session's cluster (spread over the nodes), or here without one."""
    if not _state:
        return fn(*args, **kwargs)
    ray = _ray()
    # the names (never the values) of the model keys this machine holds: the node must hold them too
    # (a served model's own key travels with its endpoint: the node has no variable for it)
    keyed = sorted({a.settings.api_key_env for a in (*args, *kwargs.values())
                    if isinstance(a, ModelEndpoint) and not a.api_key and os.environ.get(a.settings.api_key_env)})
    ref = _remote(ray).options(scheduling_strategy="SPREAD").remote(fn, args, kwargs, _state["config"].registry,
                                                                    current_run_id(), keyed)
    try:
        # the step's own exception comes back as itself (Ray's error is an instance of its class)
        result, back, where = ray.get(ref)
    except ray.exceptions.RayTaskError:
        raise
    except ray.exceptions.RayError as exc:  # a node or worker lost under the work: the task's retry runs it again
        raise InfrastructureError(f"{fn.__name__} lost its Ray node or worker: {exc}") from exc
    log.info("%s ran on node %s", fn.__name__, where)
    for i, what in back.items():  # the files the step made there (a web episode's screenshots), into our stores
        args[i].take_back(what)
    return result


def _remote(ray):
    if "remote" not in _state:
        _state["remote"] = ray.remote(num_cpus=1, max_retries=0)(on_node)
    return _state["remote"]


def on_node(fn: Callable, args: tuple, kwargs: dict, registry: str | None, run_id: str,
            keyed: list[str] = ()) -> tuple[Any, dict, str]:
    """What a node runs: the step, with images shared through `registry` and its sandboxes labelled with the flow's
    run (`trajfactory sandbox cleanup --run ID` on the node's engine finds them), once the node reaches the step's
    model endpoint and holds the key variables `keyed` the flow's machine holds. Returns the step's result; per
    positional argument that kept files for the flow's machine (`handed_back`: a web episode's screenshots), what it
    kept; and the node (`TRAJFACTORY_NODE`, else the host name) with its engine, which the flow logs."""
    use_registry(registry)
    set_run_id(run_id)
    node = os.environ.get("TRAJFACTORY_NODE") or socket.gethostname()
    for endpoint in (a for a in (*args, *kwargs.values()) if isinstance(a, ModelEndpoint)):
        require_reachable(endpoint, node)
    if missing := [name for name in keyed if not os.environ.get(name)]:
        raise InfrastructureError(f"the model's API key is read from {missing[0]} on the flow's machine, but Ray node "
                                  f"{node} has no {missing[0]} in its environment: set it where the node starts "
                                  "(before `trajfactory cluster start-node`); the key never travels with the work")
    result = fn(*args, **kwargs)
    back = {i: a.handed_back() for i, a in enumerate(args) if hasattr(a, "handed_back")}
    return result, back, f"{node} (engine {os.environ.get('DOCKER_HOST', 'default')})"


def require_reachable(endpoint: ModelEndpoint, node: str, timeout: float = 5.0) -> None:
    """Fail at once, naming the URL and the setting to fix, when no URL of `endpoint` answers a connection from this
    node (a loopback URL of the flow's machine, a firewall): the model steps would otherwise wait out every retry."""
    urls = [endpoint.base_url] if isinstance(endpoint.base_url, str) else list(endpoint.base_url)
    errors = []
    for url in urls:
        parts = urlsplit(url)
        try:
            socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                     timeout=timeout).close()
            return
        except OSError as exc:
            errors.append(f"{url}: {exc}")
    fix = ("set `model.host` to an address of the flow's machine that the nodes reach (the served model listens there)"
           if endpoint.served else "set `model.base_url` to a URL the nodes reach")
    raise InfrastructureError(f"the model endpoint cannot be reached from Ray node {node} ({'; '.join(errors)}); "
                              f"{fix}, or drop `cluster:` to run here")


def remove_on_nodes(run_ids: set[str] | None) -> dict[str, int]:
    """In a session: on every live node's engine, the sandbox containers of the runs `run_ids` (None: of every run)
    removed; per node, how many."""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.remote(num_cpus=0, max_retries=0)(_remove_here)  # no CPU: it runs however busy the node is
    refs = [here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(sorted(run_ids) if run_ids is not None else None) for n in ray.nodes() if n.get("Alive")]
    try:
        return dict(ray.get(refs))
    except ray.exceptions.RayError as exc:  # leftovers cost memory, not correctness: the run goes on
        log.warning("could not remove the sandbox containers of earlier runs on the nodes: %s", exc)
        return {}


def _remove_here(run_ids: list[str] | None) -> tuple[str, int]:
    node = os.environ.get("TRAJFACTORY_NODE") or socket.gethostname()
    if not engine_available():
        return node, 0
    return node, cleanup_run_containers(set(run_ids)) if run_ids is not None else cleanup_leftover_containers()
