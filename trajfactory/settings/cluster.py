"""The recipe's `cluster:` section: run the sandbox fan-out on a Ray cluster, with images shared through a registry.

Without it (the default) every unit of work runs in the flow's own thread pool on this machine's Docker engine.
"""

from __future__ import annotations

import re

from pydantic import field_validator

from trajfactory.settings.agents import Section

_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9.\-]+:[0-9]+)$")
_REGISTRY = re.compile(r"^[A-Za-z0-9.\-]+:[0-9]+$")


class ClusterConfig(Section):
    address: str = "auto"
    """The Ray cluster: `auto` (the cluster this machine's `ray start` joined), `HOST:PORT` of its head (GCS port; the
    flow's machine joins it as a driver), or `ray://HOST:PORT` of the head's Ray Client server (default port 10001;
    for a flow on a machine outside the cluster's network, needs `ray[client]`). `trajfactory cluster start-node`
    starts nodes."""
    registry: str | None = None
    """`HOST:PORT` of the Docker registry the nodes share (`trajfactory cluster registry`): a sandbox image built on one
    node is pushed there and pulled by the others, so no node rebuilds it. Without it, each node builds its own."""

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _ADDRESS.match(value):
            raise ValueError(f"cluster address {value!r} is not `auto`, the head's `HOST:PORT` (e.g. "
                             "`127.0.0.1:6379`) or its Ray Client `ray://HOST:PORT` (e.g. `ray://10.0.0.1:10001`)")
        return value

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str | None) -> str | None:
        if value is not None and not _REGISTRY.match(value):
            raise ValueError(f"registry {value!r} is not `HOST:PORT` (for example `localhost:5000`)")
        return value
