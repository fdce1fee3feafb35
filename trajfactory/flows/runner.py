"""The flows' `Runner` (each step call of a pipeline is its Prefect task, `flows/tasks.py`, cached in the work dir),
and the yields as Prefect table artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from trajfactory.flows import cluster
from trajfactory.flows.tasks import STEPS, work_dir
from trajfactory.progress import Progress


def result_storage(path: str | Path) -> Path:
    """Where cached task results live: a path Prefect turns into local file storage."""
    return (Path(path) / "results").resolve()


class PrefectRunner:
    """Runs a pipeline's steps as Prefect tasks of the current flow; `map` submits them to the flow's task runner."""

    def __init__(self) -> None:
        self.run_id = str(flow_run.get_id() or "")

    def _task(self, step: Callable, args: tuple):
        made = STEPS.get(step)
        if made is None:
            raise KeyError(f"{step.__module__}.{step.__name__} is not a registered step (flows/tasks.py STEPS)")
        half = getattr(made, "half", None)
        if half is None:
            return made
        return made.with_options(result_storage=result_storage(work_dir(args[0], half)))

    def call(self, step: Callable, *args: Any) -> Any:
        return self._task(step, args)(*args)

    def map(self, step: Callable, calls: Sequence[tuple], description: str, *, workers: int = 1) -> list:
        """Each call a task submitted to the flow's task runner, at most `workers` at once (in order)."""
        results: list = []
        futures: list = []
        with Progress(description, len(calls)) as bar:
            for args in calls:
                if len(futures) - len(results) >= max(1, workers):
                    results.append(futures[len(results)].result())
                    bar.advance()
                futures.append(self._task(step, args).submit(*args))
            for future in futures[len(results):]:
                results.append(future.result())
                bar.advance()
        return results

    def machines(self) -> int:
        """The nodes of the flow's Ray cluster its remote steps spread over (1 without a cluster)."""
        return cluster.nodes_alive()


def publish_yields(summary: dict, prefix: str = "yields") -> None:
    """Each yields table as a Prefect table artifact."""
    for name, table in summary.items():
        create_table_artifact(table=table, key=f"{prefix}-{name.replace('_', '-')}",
                              description=f"{prefix.capitalize()} {name.replace('_', ' ')}")
