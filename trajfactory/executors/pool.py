"""A pool of warm sandboxes on one environment: candidates reuse containers, reset between uses."""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from typing import Iterator

from trajfactory.executors import get_backend
from trajfactory.executors.base import Backend, EnvironmentHandle, Sandbox
from trajfactory.settings import SandboxConfig


class SandboxPool:
    """At most `size` sandboxes, started lazily, handed out one user at a time, closed together."""

    def __init__(self, backend: Backend, env: EnvironmentHandle, size: int, limits: SandboxConfig | None = None):
        self.backend, self.env, self.size, self.limits = backend, env, size, limits
        self._idle: queue.Queue[Sandbox] = queue.Queue()
        self._all: list[Sandbox] = []
        self._lock = threading.Lock()
        self.started = 0

    @contextmanager
    def acquire(self) -> Iterator[Sandbox]:
        sandbox = self._take()
        try:
            yield sandbox
        finally:
            self._idle.put(sandbox)

    def _take(self) -> Sandbox:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if len(self._all) < self.size:
                sandbox = self.backend.start(self.env, self.limits)
                self._all.append(sandbox)
                self.started += 1
                return sandbox
        return self._idle.get()

    def __reduce__(self):
        # Sent to another process (a Ray node): warm containers cannot travel, so there each use gets a fresh sandbox
        # of that node's own backend, closed after it.
        return (FreshSandboxes, (self.backend.name, self.env, self.limits))

    def close(self) -> None:
        with self._lock:
            for sandbox in self._all:
                try:
                    sandbox.close()
                except Exception:  # noqa: BLE001 - closing must reach every sandbox
                    pass
            self._all.clear()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FreshSandboxes:
    """A pool's stand-in on another node: `acquire` starts a sandbox of the node's backend and closes it after use."""

    def __init__(self, backend: str, env: EnvironmentHandle, limits: SandboxConfig | None = None):
        self.backend, self.env, self.limits = backend, env, limits

    @contextmanager
    def acquire(self) -> Iterator[Sandbox]:
        with get_backend(self.backend).start(self.env, self.limits) as sandbox:
            yield sandbox
