"""A factory run's hold on its work dir: one run at a time, an ID on every container it starts, no leftovers.

`hold_work_dir(work_dir)` is the one call a run's entry point makes. It takes an exclusive `flock` on
`WORK_DIR/run.lock` for the run's lifetime (the kernel drops it however the process ends, `kill -9` included),
gives the run an ID, appends the run's record (ID, pid, host, start time) to `WORK_DIR/runs.jsonl`, and labels
every sandbox container the process starts from then on with `trajfactory.run=<ID>`. Holding the lock proves
that every earlier run of the work dir has ended, so the containers those runs left behind (a killed run leaves
its `sleep infinity` sandboxes running) are removed; containers of other runs and other work dirs are never
touched. By hand, `trajfactory sandbox cleanup --run ID` removes one run's containers and `--work-dir DIR` those
of every run recorded in a work dir no run holds (`cleanup_work_dir`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from trajfactory.runtime import pid_alive

from .base import InfrastructureError
from .docker import RUN_LABEL, cleanup_run_containers, engine_available, set_run_id

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
"""In the work dir: locked by the live run, and holding its record."""
RUNS_FILE = "runs.jsonl"
"""In the work dir: one record per run that ever held it, oldest first."""
LIVE_DIR = "live-run"
"""In the work dir: what a run keeps only while it lives. The run removes it when it ends; a killed run leaves it
for the next run of the work dir to find (the version it published before the kill, say)."""

__all__ = ["LIVE_DIR", "LOCK_FILE", "RUNS_FILE", "RUN_LABEL", "FactoryRun", "WorkDirBusy", "cleanup_work_dir", "hold_work_dir",
           "recorded_runs"]


@dataclass(frozen=True)
class FactoryRun:
    run_id: str
    pid: int
    host: str
    started: str
    """UTC, ISO 8601."""
    work_dir: str


class WorkDirBusy(RuntimeError):
    """Another live run holds the work dir."""

    def __init__(self, work_dir: Path, holder: dict):
        who = (f"run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
               f"started {holder.get('started', '?')})" if holder else "another run (it has not recorded itself yet)")
        if holder.get("host") == socket.gethostname() and not pid_alive(holder.get("pid")):
            who += ", whose process is gone but a process it started still holds the lock"
        super().__init__(f"work dir {work_dir} is in use by {who}; only one run may use a work dir at a time: "
                         "wait for that run to end, stop it, or give this recipe another `work_dir`")
        self.work_dir, self.holder = work_dir, holder


def recorded_runs(work_dir: str | Path) -> list[dict]:
    """The records of every run that held `work_dir`, oldest first ([] when none did)."""
    path = Path(work_dir) / RUNS_FILE
    if not path.exists():
        return []
    runs = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill mid-write
            runs.append(json.loads(line))
    return runs


def new_run_id() -> str:
    """Sortable by start time and unique: `20261130T095400Z-3f9a1c`."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


@contextlib.contextmanager
def _locked(work: Path) -> Iterator:
    """The work dir's lock file, exclusively locked until the block ends; WorkDirBusy names the run holding it."""
    with open(work / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            try:
                holder = json.loads(lock.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            raise WorkDirBusy(work, holder) from None
        yield lock


@contextlib.contextmanager
def hold_work_dir(work_dir: str | Path) -> Iterator[FactoryRun]:
    """Hold `work_dir` for one run (see the module docstring); raises WorkDirBusy when a live run holds it."""
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    with _locked(work) as lock:
        earlier = {r["run_id"] for r in recorded_runs(work) if r.get("run_id")}
        run = FactoryRun(run_id=new_run_id(), pid=os.getpid(), host=socket.gethostname(),
                         started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), work_dir=str(work))
        record = json.dumps(asdict(run))
        lock.seek(0)
        lock.truncate()
        lock.write(record + "\n")
        lock.flush()
        with open(work / RUNS_FILE, "a") as runs:
            runs.write(record + "\n")
        _remove_leftovers(earlier)
        set_run_id(run.run_id)
        try:
            yield run
        finally:
            set_run_id("")
            shutil.rmtree(work / LIVE_DIR, ignore_errors=True)
            # its own too: a container whose removal failed mid-run (the engine was restarting) is not left behind
            _remove_leftovers({run.run_id}, own=True)


def _remove_leftovers(earlier: set[str], own: bool = False) -> None:
    """The containers of the work dir's earlier runs: all ended (we hold the lock), so nothing uses them. With
    `own`, those of the ending run itself, whose sandboxes are all closed by now."""
    if not earlier or not engine_available():  # no engine: the local backend has no containers to leave
        return
    try:
        removed = cleanup_run_containers(earlier)
    except InfrastructureError as exc:  # leftovers cost memory, not correctness: the run goes on
        log.warning("could not remove the sandbox containers of earlier runs of this work dir: %s", exc)
        return
    if removed:
        log.info("removed %d sandbox containers left behind by %s", removed,
                 "this run (their removal had failed)" if own else "earlier runs of this work dir")


def cleanup_work_dir(work_dir: str | Path) -> int:
    """Remove the containers of every run recorded in `work_dir`; WorkDirBusy while a live run holds it."""
    work = Path(work_dir).resolve()
    if not (work / RUNS_FILE).exists():
        raise FileNotFoundError(f"{work} has no {RUNS_FILE}: no factory run used it; give the `work_dir` of the "
                                "recipe whose runs left the containers")
    with _locked(work):
        return cleanup_run_containers({r["run_id"] for r in recorded_runs(work) if r.get("run_id")})
