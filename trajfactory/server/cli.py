"""`trajfactory server start|stop|status`, `trajfactory deploy` and `trajfactory worker`: scheduled factory runs on a
lasting Prefect server backed by PostgreSQL (opt-in; `trajfactory run` needs none of it).

The main CLI mounts these: `app.add_typer(server_app, name="server")`, `deploy` and `worker`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

server_app = typer.Typer(
    help="A lasting Prefect server on a private PostgreSQL database, for scheduled runs (`trajfactory deploy`) and "
    "the Prefect UI. `trajfactory run` does not need it: it starts a throwaway server of its own.",
    no_args_is_help=True)

STATE_OPT = typer.Option(None, "--state-dir", metavar="DIR", show_default=False,
                         help="Where the server keeps its state file, log and Prefect home (default: "
                         "$TRAJFACTORY_SERVER_DIR, else ~/.cache/trajfactory/server).")


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(1) from None


@server_app.command("start")
def server_start(state_dir: Optional[Path] = STATE_OPT,
                 port: int = typer.Option(0, help="The server's port on 127.0.0.1 (0: a free one).")) -> None:
    """Start PostgreSQL (a private cluster) and a Prefect server on it, detached; a running one is reused. Prints the
    UI's URL and the PREFECT_API_URL to export for Prefect's own commands."""
    from trajfactory.server import prefect_server
    from trajfactory.server.postgres import PostgresError

    typer.echo("starting PostgreSQL and the Prefect server (the first start migrates the database: ~1 min)")
    try:
        state = prefect_server.start(state_dir, port=port)
    except (prefect_server.ServerError, PostgresError) as exc:
        _fail(exc)
    typer.echo(f"Prefect server up (database {state['database_url']}, log {state['log']})")
    typer.echo(f"UI: {state['ui_url']}")
    typer.echo(f"export PREFECT_API_URL={state['api_url']}")
    typer.echo("next: `trajfactory deploy RECIPE.yaml --cron '0 * * * *'`, then `trajfactory worker`")


@server_app.command("stop")
def server_stop(state_dir: Optional[Path] = STATE_OPT) -> None:
    """Stop the Prefect server and its PostgreSQL cluster (their data is kept for the next start)."""
    from trajfactory.server import prefect_server
    from trajfactory.server.postgres import PostgresError

    try:
        stopped = prefect_server.stop(state_dir)
    except PostgresError as exc:
        _fail(exc)
    typer.echo("stopped" if stopped else "no server was started from this state dir")


@server_app.command("status")
def server_status(state_dir: Optional[Path] = STATE_OPT) -> None:
    """Say whether the server answers, and where."""
    from trajfactory.server import prefect_server

    state = prefect_server.status(state_dir)
    if not state:
        typer.echo("no server started (`trajfactory server start`)")
        raise typer.Exit(1)
    typer.echo(f"{'healthy' if state['healthy'] else 'NOT answering'}: UI {state['ui_url']}, "
               f"PREFECT_API_URL={state['api_url']}, server pid {state['server_pid']}, "
               f"PostgreSQL on 127.0.0.1:{state['postgres_port']}")
    if not state["healthy"]:
        raise typer.Exit(1)


POOL_OPT = typer.Option("trajfactory", "--pool", help="The process work pool (made when missing).")


def deploy(recipe: Path = typer.Argument(..., help="Recipe YAML file; its path is the deployment's parameter and "
                                         "the file is read at each run, so edits change the next run."),
           cron: Optional[str] = typer.Option(None, help="Cron schedule, e.g. '*/5 * * * *' (every 5 minutes) or "
                                              "'0 3 * * *' (03:00 every day, UTC)."),
           interval: Optional[float] = typer.Option(None, metavar="SECONDS", help="Interval schedule instead of cron."),
           name: str = typer.Option("", "--name", help="Deployment name (default: the recipe file's name)."),
           pool: str = POOL_OPT, state_dir: Optional[Path] = STATE_OPT) -> None:
    """Deploy the factory on RECIPE with a schedule to the Prefect server (`trajfactory server start`, or
    PREFECT_API_URL); `trajfactory worker` runs it. Each scheduled run reads the recipe file, reuses finished work,
    and writes the dataset's next version (the last as its parent, its card saying what is new) when the recipe or
    its sources changed since the last version; a run due while another still runs waits for it."""
    from trajfactory.server import prefect_server
    from trajfactory.server.deploy import DeployError, deploy as make_deployment

    try:
        api = prefect_server.api_url(state_dir)
        ident = make_deployment(api, recipe, name=name or recipe.stem, pool=pool, cron=cron, interval_s=interval)
    except (prefect_server.ServerError, DeployError) as exc:
        _fail(exc)
    typer.echo(f"deployment trajfactory-scheduled/{name or recipe.stem} ({ident}) on work pool {pool!r}, "
               f"schedule {cron or f'every {interval:g} s'}")
    typer.echo(f"runs: {api.removesuffix('/api')}/deployments/deployment/{ident}; start a worker: "
               f"`trajfactory worker --pool {pool}`")


def worker(pool: str = POOL_OPT, limit: Optional[int] = typer.Option(None, help="At most this many flow runs at once."),
           state_dir: Optional[Path] = STATE_OPT) -> None:
    """Run a Prefect worker (in the foreground) that starts the deployments' scheduled runs of POOL as subprocesses."""
    from trajfactory.server import prefect_server
    from trajfactory.server.deploy import run_worker

    try:
        api = prefect_server.api_url(state_dir)
    except prefect_server.ServerError as exc:
        _fail(exc)
    run_worker(api, pool, limit)
