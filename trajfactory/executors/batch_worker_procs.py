"""The batch worker's process and git plumbing: CPU accounting, the children's wait, the sweep of what they left
running, and what a pair of patches left behind.

Part of the warm test worker (`batch_worker.py`): `batchrun.py` copies it into the sandbox as
`trajfactory_batch_worker_procs.py` beside the worker, which imports it by that name. Standard library only.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import resource
import select
import signal
import subprocess
import time

GIT = ["git", "-c", "core.fsmonitor=", "-c", "core.hooksPath=/dev/null"]
KILL_ROUNDS = 8
OWN_FDS = 10
"""The worker's own file descriptors sit at this number and above, as a shell's own do: a shell leaves 3-9 to the
commands it runs (`9>&2`), and a test may use them the same way. argcomplete 3.7.2's library writes to descriptors 8
and 9 where they are open and closes them; in a collected session whose worker held them, 28 of its 36
`TestArgcomplete` tests failed, and every gold proof with them."""


def lifted(fd: int) -> int:
    """`fd` moved to `OWN_FDS` or above (close-on-exec, its old number closed); the same descriptor where it is
    there already."""
    if fd >= OWN_FDS:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, OWN_FDS)
    finally:
        os.close(fd)


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


def patch_paths(*patches: str) -> list[str]:
    """Every path the headers of unified diffs name (`diff --git`, `---`/`+++`, renames and copies); a removed or
    added line that looks like a header only adds a path that is then looked up for nothing."""
    found = set()
    for patch in patches:
        for line in patch.splitlines():
            if line.startswith("diff --git a/") and " b/" in line:
                found.update(line[len("diff --git a/"):].split(" b/", 1))
                continue
            for head in ("--- ", "+++ ", "rename from ", "rename to ", "copy from ", "copy to "):
                if line.startswith(head):
                    name = line[len(head):].split("\t")[0].strip('"')
                    if name != "/dev/null":
                        found.add(name[2:] if head in ("--- ", "+++ ") and name[:2] in ("a/", "b/") else name)
    return sorted(p for p in found if p)


def left_ignored(*patches: str) -> tuple[int, str]:
    """`git status` of the files the patches name that the checkout's ignore rules hide (`*.pyc`, `__pycache__/`, a
    project's own `.gitignore`): a plain `git status` does not show them, so a bug and a gold patch could leave one
    behind and still look like the clean commit. (exit code, one `!! path` line per file left)."""
    paths = patch_paths(*patches)
    if not paths:
        return 0, ""
    code, out = git("status", "--porcelain", "--untracked-files=all", "--ignored=traditional", "--",
                    *(f":(literal){p}" for p in paths))
    return code, out if code else "\n".join(line for line in out.splitlines() if line.startswith("!! "))


def run_delay(pid: int) -> float:
    """Seconds the process's threads have spent runnable but waiting for a CPU (the scheduler's run delay, the second
    field of `/proc/PID/task/*/schedstat`, counted from the fork); 0.0 where the kernel does not say."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                total += int(fh.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def wait_child(pid: int, timeout: float, ceiling: float = 0.0) -> tuple[int | None, float, float]:
    """(wait status or None on timeout, the child's CPU seconds, the seconds of waiting for a CPU not counted).

    The wall clock's `timeout` is for tests that wait without working (a deadlock, a sleep); a busy machine that kept
    the child from running is not such a wait. So at the timeout, the time the child's threads waited for a CPU is
    added to its deadline, again at each new deadline, up to `ceiling` seconds in all (none past `timeout` where the
    ceiling is lower)."""
    start = time.monotonic()
    deadline = start + timeout
    last = start + max(timeout, ceiling)
    waited = 0.0
    pidfd = None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pass
    try:
        while True:
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got == pid:
                return status, cpu(usage), waited
            left = deadline - time.monotonic()
            if left <= 0:
                waited = run_delay(pid)
                extended = min(last, start + timeout + waited)
                if extended - time.monotonic() < 0.05:
                    return None, 0.0, waited
                deadline = extended
                continue
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.005))
    finally:
        if pidfd is not None:
            os.close(pidfd)
