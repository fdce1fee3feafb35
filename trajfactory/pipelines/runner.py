"""How a pipeline's units of work run: a `Runner` maps a step function over its arguments.

`LocalRunner` runs steps in a thread pool, with progress; the Prefect flows' runner (`flows/runner.py`)
runs each call as a cached, retried Prefect task. Pipelines call only `call` and `map`, so the same story
runs with or without Prefect.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Protocol, Sequence, TypeVar

from trajfactory.progress import Progress

R = TypeVar("R")


class Runner(Protocol):
    run_id: str
    """Identifies this run in the lineage of what it writes."""

    def call(self, step: Callable[..., R], *args: Any) -> R:
        """Run one step now and return its result."""
        ...

    def map(self, step: Callable[..., R], calls: Sequence[tuple], description: str, *, workers: int = 1) -> list[R]:
        """Run `step(*args)` for every tuple in `calls` (at most `workers` at once); results in order."""
        ...

    def machines(self) -> int:
        """How many machines the runner's remote steps spread over (1: this one)."""
        ...


class LocalRunner:
    """Steps as plain calls; `map` runs them in threads with a progress bar (or log lines off a terminal)."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id or f"local-{uuid.uuid4().hex[:12]}"

    def call(self, step: Callable[..., R], *args: Any) -> R:
        return step(*args)

    def machines(self) -> int:
        return 1

    def map(self, step: Callable[..., R], calls: Sequence[tuple], description: str, *, workers: int = 1) -> list[R]:
        if not calls:
            return []
        with Progress(description, len(calls)) as bar, ThreadPoolExecutor(max(1, workers)) as pool:
            futures = [pool.submit(step, *args) for args in calls]
            results = []
            for future in futures:
                results.append(future.result())
                bar.advance()
        return results
