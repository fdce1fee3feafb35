"""Sandboxes: `get_backend()` picks Docker when an engine answers, else the local namespace sandbox."""

from __future__ import annotations

import logging
import threading

from .base import Backend

log = logging.getLogger(__name__)

_backends: dict[str, Backend] = {}
_lock = threading.Lock()


def get_backend(name: str = "auto") -> Backend:
    """`docker`, `local`, or `auto` (docker when `engine_available()`); one shared instance per name."""
    if name not in ("auto", "docker", "local"):
        raise ValueError(f"unknown sandbox backend {name!r}; use 'auto', 'docker' or 'local'")
    with _lock:
        if name in _backends:
            return _backends[name]
        from .docker import DockerBackend, engine_available

        if name == "docker" or (name == "auto" and engine_available()):
            backend: Backend = DockerBackend()
        else:
            from .local import ISOLATION_TEXT, LocalBackend

            backend = LocalBackend()
            if name == "auto":
                log.warning("no Docker engine; using local namespace sandbox (isolation: %s)",
                            ISOLATION_TEXT[backend.isolation])
        _backends[name] = backend
        return backend
