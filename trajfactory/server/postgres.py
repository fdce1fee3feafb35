"""A private PostgreSQL cluster for the Prefect server: `initdb` into a data dir, start it on a loopback port, create
the database, stop it. It uses the binaries of Debian's `postgresql` package (`/usr/lib/postgresql/*/bin`).

PostgreSQL refuses to run as root: as root, the cluster's commands run as the `postgres` system user (made by the
Debian package), and the data dir lives under that user's home, since root's own directories are closed to it.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from trajfactory.models.server import free_port

DATABASE = "prefect"
DB_USER = "prefect"
INSTALL_HINT = "install Debian's PostgreSQL with `apt-get install -y postgresql` (scripts/test.sh does it)"


class PostgresError(RuntimeError):
    """The cluster could not be made, started or stopped; the message says what to do."""


def pg_bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries (`initdb`, `pg_ctl`, ...)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresError(f"no PostgreSQL server binaries (initdb) under /usr/lib/postgresql/*/bin or on PATH: "
                        f"{INSTALL_HINT}")


def _run_as() -> str | None:
    """The system user the cluster runs as when we are root (PostgreSQL refuses root), else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresError(f"running as root, and there is no `postgres` system user to run PostgreSQL as: "
                            f"{INSTALL_HINT}") from None
    return "postgres"


def default_data_dir(state_dir: Path) -> Path:
    """Where the cluster of a server state dir keeps its data: in the state dir, or as root under the `postgres`
    user's home (one dir per state dir), which that user can reach."""
    user = _run_as()
    if user is None:
        return Path(state_dir) / "postgres"
    tag = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]
    return Path(pwd.getpwnam(user).pw_dir) / "trajfactory" / f"cluster-{tag}"


@dataclass
class PostgresCluster:
    """One private cluster: `data_dir`, served on 127.0.0.1:`port` with one database for Prefect (trust auth on
    loopback only, so nothing outside the machine can connect)."""

    data_dir: Path
    port: int = 0

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.user = _run_as()
        self.bin = pg_bin_dir()

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Prefect takes in `PREFECT_API_DATABASE_CONNECTION_URL`."""
        return f"postgresql+asyncpg://{DB_USER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bin / tool), *args]
        return ["runuser", "-u", self.user, "--", *cmd] if self.user else cmd

    def _call(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(self._cmd(tool, *args), capture_output=True, text=True, timeout=timeout,
                              cwd="/")  # the postgres user may not be able to enter our cwd
        if proc.returncode != 0:
            raise PostgresError(f"`{tool} {' '.join(args)}` failed ({proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        return proc

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> None:
        """`initdb` the data dir once (a second call keeps the existing cluster)."""
        if self.initialized():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user:
            entry = pwd.getpwnam(self.user)
            for path in (self.data_dir.parent, self.data_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        self._call("initdb", "-D", str(self.data_dir), "-U", DB_USER, "--auth=trust", "-E", "UTF8",
                   "--no-instructions")

    def running(self) -> bool:
        if not self.port:
            return False
        return subprocess.run(self._cmd("pg_isready", "-h", "127.0.0.1", "-p", str(self.port)),
                              capture_output=True, cwd="/").returncode == 0

    def start(self) -> None:
        """Start the cluster on 127.0.0.1 (a free port unless one was given) and create the database."""
        self.init()
        if self.running():
            return
        self.port = self.port or free_port()
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir}"
        self._call("pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", str(self.log_path), "-w", "-t", "60",
                   "start", timeout=90)
        exists = self._call("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, "-d", "postgres",
                            "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
        if exists.stdout.strip() != "1":
            self._call("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, DATABASE)

    def stop(self) -> None:
        """Stop the cluster (fast shutdown); a stopped cluster stays stopped."""
        if not (self.data_dir / "postmaster.pid").is_file():
            return
        self._call("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop", timeout=90)

    def remove(self) -> None:
        """Stop the cluster and delete its data."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
