"""`trajfactory cluster ...`: the opt-in Ray cluster (nodes with their own Docker engines) and the image registry.
The main CLI mounts it: `app.add_typer(cluster_app, name="cluster")`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from trajfactory.server.cli import _fail

cluster_app = typer.Typer(
    help="Scale-out on Ray (opt-in): start the image registry and Ray nodes, each with its own Docker engine; a "
    "recipe's `cluster: {address: HOST:PORT, registry: localhost:5000}` then runs the sandbox fan-out on them.",
    no_args_is_help=True)

DIR_OPT = typer.Option(None, "--dir", metavar="DIR", show_default=False,
                       help="Where nodes and the registry keep their state, logs and images (default: "
                       "$TRAJFACTORY_CLUSTER_DIR, else ~/.cache/trajfactory/cluster).")


def _root(path: Optional[Path]) -> Path:
    from trajfactory.server.cluster import default_root

    return path or default_root()




@cluster_app.command("registry")
def registry(port: int = typer.Option(5000, help="Port of the registry (Docker trusts localhost:PORT without TLS)."),
             host: str = typer.Option("127.0.0.1", help="Address it listens on (0.0.0.0 for other machines' nodes, "
                                      "whose engines then need --insecure-registry HOST:PORT)."),
             stop: bool = typer.Option(False, "--stop", help="Stop the registry instead (its images are kept)."),
             root: Optional[Path] = DIR_OPT) -> None:
    """Start Debian's docker-registry (detached; a running one is reused) that the nodes share sandbox images
    through, so an image one node built is pulled, never rebuilt, by the others."""
    from trajfactory.executors.base import InfrastructureError
    from trajfactory.executors.registry import start_registry, stop_registry

    where = _root(root) / "registry"
    if stop:
        typer.echo("stopped" if stop_registry(where) else "no registry was started from this dir")
        return
    try:
        address = start_registry(where, port=port, host=host)
    except InfrastructureError as exc:
        _fail(exc)
    typer.echo(f"registry {address} (images under {where / 'storage'}); in the recipe: "
               f"`cluster: {{registry: {address}}}`")


@cluster_app.command("start-node")
def start_node(name: str = typer.Argument(..., help="The node's name (its engine and logs are kept under it)."),
               head: bool = typer.Option(False, "--head", help="Start the cluster's head node."),
               address: Optional[str] = typer.Option(None, help="HOST:PORT of the head to join (worker nodes)."),
               port: int = typer.Option(6379, help="The head's port (with --head)."),
               client_port: Optional[int] = typer.Option(None, help="With --head: the port of its Ray Client server, "
                                                         "for `cluster: {address: ray://HOST:PORT}` (needs "
                                                         "`ray[client]`); default: Ray's own choice."),
               num_cpus: int = typer.Option(1, help="Sandbox tasks this node runs at once."),
               own_engine: bool = typer.Option(True, "--own-engine/--machine-engine",
                                               help="A Docker engine of the node's own (a second dockerd: for "
                                               "several nodes on one machine), or the machine's engine."),
               insecure_registry: List[str] = typer.Option([], help="A registry not on localhost that the node's "
                                                           "engine may use without TLS (repeatable)."),
               root: Optional[Path] = DIR_OPT) -> None:
    """Start a Ray node (detached) whose sandboxes run on its own Docker engine."""
    from trajfactory.executors.base import InfrastructureError
    from trajfactory.server import cluster

    try:
        state = cluster.start_node(_root(root), name, head=head, address=address, port=port, num_cpus=num_cpus,
                                   own_engine=own_engine, insecure_registries=insecure_registry,
                                   client_port=client_port)
    except (InfrastructureError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"node {name} up (Ray pid {state['pid']}, engine {state['docker_host']}, log {state['log']})")
    if head:
        typer.echo(f"join it: `trajfactory cluster start-node NAME --address {state['address']}`; in the recipe: "
                   f"`cluster: {{address: {state['address']}}}`"
                   + (f" (or {state['client_address']} through Ray Client)" if state["client_address"] else ""))


@cluster_app.command("stop-node")
def stop_node(name: str = typer.Argument(..., help="The node to stop."),
              remove_engine: bool = typer.Option(False, help="Also delete the node engine's images and state."),
              root: Optional[Path] = DIR_OPT) -> None:
    """Stop a node's Ray processes and its Docker engine."""
    from trajfactory.server import cluster

    try:
        stopped = cluster.stop_node(_root(root), name, remove_engine=remove_engine)
    except ValueError as exc:
        _fail(exc)
    typer.echo("stopped" if stopped else f"node {name} was not running")


@cluster_app.command("status")
def status(root: Optional[Path] = DIR_OPT) -> None:
    """The running nodes and the registry."""
    from trajfactory.executors.registry import registry_pid
    from trajfactory.server import cluster

    running = cluster.nodes(_root(root))
    for state in running:
        typer.echo(f"{state['name']}: {'head ' if state['head'] else ''}pid {state['pid']}, "
                   f"cluster {state['address']}, engine {state['docker_host']}")
    pid = registry_pid(_root(root) / "registry")
    typer.echo(f"registry: pid {pid}" if pid else "registry: not started")
    if not running:
        typer.echo("no nodes (`trajfactory cluster start-node head --head`)")
