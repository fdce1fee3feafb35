"""Deployments of the factory on the lasting Prefect server: a process work pool (made when missing), a deployment of
`flows/scheduled.py` with a cron or interval schedule and the recipe's path as its parameter, and the worker that
runs its flow runs as subprocesses."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import trajfactory
from trajfactory.runtime import run_sync

DEFAULT_POOL = "trajfactory"
ENTRYPOINT = "trajfactory/flows/scheduled.py:scheduled_factory_flow"


class DeployError(RuntimeError):
    """The deployment could not be made; the message names the input and what would be right."""


def source_root() -> Path:
    """The directory the worker loads the flow from: the one holding the `trajfactory` package."""
    return Path(trajfactory.__file__).resolve().parent.parent


async def ensure_pool(api_url: str, pool: str) -> bool:
    """Create the process work pool `pool` when missing; True when it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            try:
                found = await client.read_work_pool(pool)
            except ObjectNotFound:
                await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
                return True
    if found.type != "process":
        raise DeployError(f"work pool {pool!r} exists with type {found.type!r}; trajfactory deploys to a `process` "
                          "pool: give another --pool name")
    return False


def deploy(api_url: str, recipe: Path, *, name: str, pool: str = DEFAULT_POOL, cron: str | None = None,
           interval_s: float | None = None, run_dir: Path | None = None) -> str:
    """Deploy the factory on `recipe` (its path, read at each run) with a cron or interval schedule; returns the
    deployment's id. One run at a time: a run due while the last one still runs waits for it."""
    from prefect import Flow
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.settings import PREFECT_API_URL, temporary_settings

    recipe = Path(recipe).resolve()
    if not recipe.is_file():
        raise DeployError(f"{recipe}: no such recipe file; pass the path of a recipe YAML file")
    if (cron is None) == (interval_s is None):
        raise DeployError("give exactly one schedule: --cron 'MIN HOUR DOM MON DOW' (e.g. '0 3 * * *') or "
                          "--interval SECONDS")
    if cron is not None and len(cron.split()) != 5:
        raise DeployError(f"--cron {cron!r}: expected five fields 'MIN HOUR DOM MON DOW', e.g. '*/5 * * * *'")
    run_sync(ensure_pool(api_url, pool))
    with temporary_settings({PREFECT_API_URL: api_url}):
        flow = Flow.from_source(source=str(source_root()), entrypoint=ENTRYPOINT)
        # `to_deployment` + `apply`, not `flow.deploy`: that one first lists the pool's workers, which this Prefect
        # server refuses (422) under the pinned fastapi
        deployment = flow.to_deployment(
            name=name, work_pool_name=pool, cron=cron,
            interval=timedelta(seconds=interval_s) if interval_s is not None else None,
            parameters={"recipe_path": str(recipe), "run_dir": str((run_dir or Path.cwd()).resolve())},
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
            description=f"trajfactory on {recipe}", tags=["trajfactory"])
        deployment_id = deployment.apply(work_pool_name=pool)
    return str(deployment_id)


def worker_command(pool: str = DEFAULT_POOL, limit: int | None = None) -> list[str]:
    """The `prefect worker start` command line of a process worker on `pool`."""
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    return cmd + ["--limit", str(limit)] if limit else cmd


def worker_env(api_url: str) -> dict:
    """The worker's environment: the server's API, and this checkout importable by the flow runs it starts."""
    path = os.environ.get("PYTHONPATH")
    root = str(source_root())
    return {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}


def run_worker(api_url: str, pool: str = DEFAULT_POOL, limit: int | None = None) -> None:
    """Become a worker (exec): it runs in the foreground until stopped, and a signal to this pid reaches it."""
    cmd = worker_command(pool, limit)
    os.execve(cmd[0], cmd, worker_env(api_url))
