"""A lasting Prefect server on the private PostgreSQL cluster: start it detached, wait for its health endpoint,
record what runs where in a state dir, stop it.

State dir layout (default `$TRAJFACTORY_CACHE/server`, i.e. `~/.cache/trajfactory/server`)::

    state.json            pids and ports of the running server and its database, the API and UI URLs
    prefect-home/         the server's PREFECT_HOME
    prefect-server.log    the server's output
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx

from trajfactory.runtime import DaemonFailed, pid_alive, start_daemon, stop_daemon
from trajfactory.models.server import free_port
from trajfactory.server.postgres import PostgresCluster, default_data_dir

STATE_FILE = "state.json"


class ServerError(RuntimeError):
    """The server could not be started or found; the message says what to do."""


def default_state_dir() -> Path:
    cache = Path(os.environ.get("TRAJFACTORY_CACHE") or Path.home() / ".cache" / "trajfactory")
    return Path(os.environ.get("TRAJFACTORY_SERVER_DIR") or cache / "server")


def read_state(state_dir: Path) -> dict | None:
    path = Path(state_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def healthy(api_url: str, timeout: float = 3) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def server_env(api_url: str | None = None, database_url: str | None = None, home: Path | None = None) -> dict:
    """The environment of a Prefect process talking to (or being) the lasting server."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    if home:
        env["PREFECT_HOME"] = str(home)
    return env


def _check_sqlalchemy() -> None:
    import sqlalchemy

    major, minor = (int(p) for p in sqlalchemy.__version__.split(".")[:2])
    if (major, minor) >= (2, 1):
        raise ServerError(f"SQLAlchemy {sqlalchemy.__version__} is installed, and with it the Prefect 3.8 server's "
                          "scheduler cannot insert runs: install the pinned `sqlalchemy>=2.0,<2.1` (pyproject.toml; "
                          "`bash scripts/setup.sh` makes the factory's environment with it)")


def start(state_dir: Path | None = None, port: int = 0, timeout: float = 180) -> dict:
    """Start PostgreSQL and the Prefect server (a running one is reused); returns the recorded state."""
    _check_sqlalchemy()
    state_dir = Path(state_dir or default_state_dir())
    state = read_state(state_dir)
    if state and healthy(state["api_url"]):
        return state
    state_dir.mkdir(parents=True, exist_ok=True)
    cluster = PostgresCluster(Path(state["postgres_data"]) if state else default_data_dir(state_dir))
    cluster.start()
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log_path = state_dir / "prefect-server.log"
    env = server_env(database_url=cluster.url, home=state_dir / "prefect-home")
    env.pop("PREFECT_API_URL", None)  # the server must not think it is a client of another one
    state = {"api_url": api_url, "ui_url": f"http://127.0.0.1:{port}", "port": port, "server_pid": None,
             "postgres_data": str(cluster.data_dir), "postgres_port": cluster.port, "database_url": cluster.url,
             "log": str(log_path)}
    (state_dir / STATE_FILE).write_text(json.dumps(state, indent=2))  # a failed start stops the database by it
    try:
        proc = start_daemon([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], log_path, lambda: healthy(api_url), timeout=timeout, interval=1, env=env,
                            tail_chars=1500)
    except DaemonFailed as exc:
        stop(state_dir)
        raise ServerError(f"the Prefect server {exc.why}; its log {log_path} ends:\n{exc.tail}") from None
    state["server_pid"] = proc.pid
    (state_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    return state


def stop(state_dir: Path | None = None) -> bool:
    """Stop the server and its database; False when nothing was recorded as running."""
    state_dir = Path(state_dir or default_state_dir())
    state = read_state(state_dir)
    if not state:
        return False
    pid = state.get("server_pid")
    if pid and pid_alive(pid):
        stop_daemon(pid, 30, group=True)
    PostgresCluster(Path(state["postgres_data"]), state.get("postgres_port", 0)).stop()
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return True


def status(state_dir: Path | None = None) -> dict | None:
    """The recorded state with `healthy` added, or None when no server was started from this state dir."""
    state = read_state(Path(state_dir or default_state_dir()))
    return {**state, "healthy": healthy(state["api_url"])} if state else None


def api_url(state_dir: Path | None = None) -> str:
    """The API the deploy and worker commands talk to: PREFECT_API_URL when set, else the running lasting server."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    state = status(state_dir)
    if not state or not state["healthy"]:
        raise ServerError("no Prefect server: start one with `trajfactory server start`, or set PREFECT_API_URL to "
                          "a running server's API (http://HOST:PORT/api)")
    return state["api_url"]
