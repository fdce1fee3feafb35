"""Sandboxes: `get_backend()` picks Docker when an engine answers, else the local namespace sandbox."""

from __future__ import annotations

import logging
import threading

from .base import Backend, EnvironmentHandle

log = logging.getLogger(__name__)

_backends: dict[tuple[str, str | None], Backend] = {}
_lock = threading.Lock()


def get_backend(name: str = "auto", python: str | None = None) -> Backend:
    """`docker`, `local`, or `auto` (docker when `engine_available()`); one shared instance per name and Python.

    `python`: the sandbox's Python (the recipe's `sandbox.python`, `images.BASE_SUITES`); None is the backend's
    own (docker: 3.11; local: the host's). The local backend runs the host's Python and refuses another."""
    if name not in ("auto", "docker", "local"):
        raise ValueError(f"unknown sandbox backend {name!r}; use 'auto', 'docker' or 'local'")
    with _lock:
        if (name, python) in _backends:
            return _backends[(name, python)]
        from .docker import DockerBackend, engine_available
        from .images import base_image_tag

        if name == "docker" or (name == "auto" and engine_available()):
            backend: Backend = DockerBackend(base_image=base_image_tag(python))
        else:
            from .local import ISOLATION_TEXT, LocalBackend, host_python

            if python and python != host_python():
                raise ValueError(f"sandbox.python {python!r}: the local sandbox backend runs this machine's Python "
                                 f"{host_python()}; another Python needs the docker backend"
                                 + (" (no Docker engine answers here)" if name == "auto" else ""))
            backend = LocalBackend()
            if name == "auto":
                log.warning("no Docker engine; using local namespace sandbox (isolation: %s)",
                            ISOLATION_TEXT[backend.isolation])
        _backends[(name, python)] = backend
        return backend


def task_environments(tasks, backend: str) -> dict[str, EnvironmentHandle]:
    """Each repository's sandbox environment, from the image, commit and Python its task rows name (`tasks`:
    `schema.Task`s; a row written before the Python was recorded names none), on the backend `backend`."""
    name = get_backend(backend).name
    return {t.environment.repo: EnvironmentHandle(backend=name, name=t.environment.image_name, repo=t.environment.repo,
                                                  commit=t.environment.base_commit,
                                                  python=t.environment.python or "") for t in tasks}
