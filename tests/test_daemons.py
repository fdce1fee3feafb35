"""`runtime.start_daemon`: what the node engine, the registry, a Ray node and the Prefect server start through. A
daemon that answers is left running; one that exits or never answers is killed with its children and named with
the tail of its log."""

from __future__ import annotations

import sys

import pytest

from trajfactory.runtime import DaemonFailed, pid_alive, pid_in, start_daemon, stop_daemon, wait_gone


def test_a_daemon_that_answers_runs_on_until_stopped(tmp_path):
    ready = tmp_path / "ready"
    code = f"import pathlib, time; pathlib.Path({str(ready)!r}).write_text('up'); print('serving', flush=True); " \
           "time.sleep(600)"
    proc = start_daemon([sys.executable, "-c", code], tmp_path / "d.log", ready.exists, timeout=30, interval=0.05)
    try:
        assert pid_alive(proc.pid) and "serving" in (tmp_path / "d.log").read_text()
        (tmp_path / "d.pid").write_text(str(proc.pid))
        assert pid_in(tmp_path / "d.pid") == proc.pid
    finally:
        stop_daemon(proc.pid, 10)
    assert not pid_alive(proc.pid) and pid_in(tmp_path / "d.pid") is None and pid_in(tmp_path / "none.pid") is None


def test_a_daemon_that_exits_is_named_with_its_log(tmp_path):
    code = "import sys; print('bad config: port 5000 is taken', file=sys.stderr); sys.exit(3)"
    with pytest.raises(DaemonFailed) as err:
        start_daemon([sys.executable, "-c", code], tmp_path / "d.log", lambda: False, timeout=30, interval=0.05)
    assert err.value.why == "exited with 3" and "port 5000 is taken" in err.value.tail


def test_a_daemon_that_never_answers_is_killed_with_its_children(tmp_path):
    child = tmp_path / "child.pid"
    code = ("import os, subprocess, sys, time; "
            f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            f"open({str(child)!r}, 'w').write(str(c.pid)); print('starting', flush=True); time.sleep(600)")
    with pytest.raises(DaemonFailed) as err:
        start_daemon([sys.executable, "-c", code], tmp_path / "d.log", lambda: False, timeout=2, interval=0.05)
    assert err.value.why == "did not answer in 2 s" and "starting" in err.value.tail
    pid = int(child.read_text())
    assert wait_gone(pid, 10), "the daemon's child outlived it"
