"""The batch worker's process plumbing: CPU accounting, the children's wait and the sweep of what they left running.

Part of the warm test worker (`batch_worker.py`): `batchrun.py` copies it into the sandbox as
`trajfactory_batch_worker_procs.py` beside the worker, which imports it by that name. Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import resource
import select
import signal
import subprocess
import time

GIT = ["git", "-c", "core.fsmonitor=", "-c", "core.hooksPath=/dev/null"]
KILL_ROUNDS = 8


def cpu(usage) -> float:
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    return cpu(resource.getrusage(resource.RUSAGE_CHILDREN))


def become_subreaper() -> bool:
    """Orphans of the children are re-parented to this process (PR_SET_CHILD_SUBREAPER), so none escapes the sweep."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if fields[0] != b"Z":
            parents[int(entry)] = int(fields[1])
    found, frontier = [], {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier}
        found += frontier
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def sweep() -> bool:
    """Kill every process this worker's children left behind; False when they keep coming back (a fork bomb)."""
    me = os.getpid()
    for _ in range(KILL_ROUNDS):
        left = _descendants(me)
        if not left:
            _reap()
            return True
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
        _reap()
    return not _descendants(me)


def git(*args: str) -> tuple[int, str]:
    proc = subprocess.run([*GIT, *args], capture_output=True, text=True)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def wait_child(pid: int, timeout: float) -> tuple[int | None, float]:
    """(wait status or None on timeout, the child's CPU seconds)."""
    deadline = time.monotonic() + timeout
    pidfd = None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pass
    try:
        while True:
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got == pid:
                return status, cpu(usage)
            left = deadline - time.monotonic()
            if left <= 0:
                return None, 0.0
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.005))
    finally:
        if pidfd is not None:
            os.close(pidfd)
