"""A candidate's wall-clock limit on a busy machine: the time its tests were kept waiting for a CPU is not counted
against it (`batch_worker_procs.wait_child`), up to the ceiling; a test that waits without working is stopped at it.

Real processes on the host, sharing one core with a process that spins."""

from __future__ import annotations

import os
import signal
import time

import pytest

from trajfactory.executors.batch_worker_procs import run_delay, wait_child


def _spin(cpu_s: float) -> None:
    t0 = time.process_time()
    while time.process_time() - t0 < cpu_s:
        pass


def _fork(core: int, work) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            os.sched_setaffinity(0, {core})
            work()
        finally:
            os._exit(0)
    return pid


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


@pytest.fixture
def shared_core():
    """A core a spinning process keeps busy: what runs there gets about half of it."""
    core = sorted(os.sched_getaffinity(0))[0]
    hog = _fork(core, lambda: _spin(120))
    try:
        yield core
    finally:
        _stop(hog)


def test_time_spent_waiting_for_a_cpu_is_not_counted_against_the_wall_limit(shared_core):
    # 1.2 CPU seconds of work on the shared core: about 2.4 s of wall clock, half of it waiting for the core
    child = _fork(shared_core, lambda: _spin(1.2))
    try:
        status, used, waited = wait_child(child, 1.5, ceiling=30)
    finally:
        _stop(child)
    assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert used >= 1.1 and waited >= 0.3, (used, waited)

    # without a ceiling above the limit, the same work is stopped at 1.5 s
    child = _fork(shared_core, lambda: _spin(1.2))
    try:
        status, _, waited = wait_child(child, 1.5)
        assert status is None
        assert run_delay(child) > 0.2  # it was kept waiting all the same
    finally:
        _stop(child)


def test_a_child_that_sleeps_is_stopped_at_its_limit_whatever_the_ceiling(shared_core):
    child = _fork(shared_core, lambda: time.sleep(60))
    started = time.monotonic()
    try:
        status, _, waited = wait_child(child, 1.0, ceiling=60)
    finally:
        _stop(child)
    assert status is None and waited < 0.5 and time.monotonic() - started < 10
