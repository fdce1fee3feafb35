"""Run IDs on sandbox containers: a killed run's containers carry its ID, the next run of its work dir removes them
(and no other run's), `sandbox cleanup --run ID` removes one run's, and a work dir serves one run at a time."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cli_runs
from trajfactory.executors.docker import LABEL, RUN_LABEL
from trajfactory.executors.images import BASE_IMAGE
from trajfactory.executors.runs import hold_work_dir, recorded_runs

pytestmark = [pytest.mark.docker]


def _recipe(tmp_path: Path) -> Path:
    return cli_runs.recipe(tmp_path, name="run-labels", candidates=4)


_env = cli_runs.env


def _cli(tmp_path: Path, *args: str, api: str | None = None) -> subprocess.CompletedProcess:
    return cli_runs.cli(tmp_path, *args, timeout=900, api=api)


def _containers(client, run_id: str) -> list:
    return client.containers.list(all=True, ignore_removed=True, filters={"label": [f"{LABEL}=1", f"{RUN_LABEL}={run_id}"]})


def _start_foreign(client, run_id: str):
    """A sandbox-like container of another run, started by this test (nothing of a factory run)."""
    return client.containers.run(BASE_IMAGE, ["sleep", "infinity"], detach=True, network_mode="none",
                                 labels={LABEL: "1", RUN_LABEL: run_id})


def _remove(client, *run_ids: str) -> None:
    for run_id in run_ids:
        for container in _containers(client, run_id):
            container.remove(force=True)


def test_cleanup_by_run_removes_exactly_that_runs_containers(docker_backend, tmp_path):
    client = docker_backend.client
    mine, theirs = f"test-mine-{secrets.token_hex(4)}", f"test-theirs-{secrets.token_hex(4)}"
    try:
        for run_id in (mine, mine, theirs):
            _start_foreign(client, run_id)
        out = _cli(tmp_path, "sandbox", "cleanup", "--run", mine)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"removed 2 containers of run {mine}" in out.stdout
        assert _containers(client, mine) == []
        assert len(_containers(client, theirs)) == 1
    finally:
        _remove(client, mine, theirs)


def test_cleanup_by_work_dir_removes_its_runs_containers_and_waits_for_a_live_run(docker_backend, tmp_path):
    client = docker_backend.client
    work, theirs = tmp_path / "work", f"test-theirs-{secrets.token_hex(4)}"
    with hold_work_dir(work) as run:  # this test process is the work dir's live run
        mine = run.run_id
        _start_foreign(client, mine)
        _start_foreign(client, theirs)
        try:
            busy = _cli(tmp_path, "sandbox", "cleanup", "--work-dir", str(work))
            assert busy.returncode == 1 and f"is in use by run {mine} (pid {os.getpid()}" in busy.stderr, busy.stderr
            assert len(_containers(client, mine)) == 1
        except BaseException:
            _remove(client, mine, theirs)
            raise
    try:
        # a run that ends removes what it left itself; a killed one cannot, so leave one as a kill would
        assert _containers(client, mine) == []
        _start_foreign(client, mine)
        out = _cli(tmp_path, "sandbox", "cleanup", "--work-dir", str(work))
        assert out.returncode == 0 and "removed 1 containers of the runs of" in out.stdout, out.stdout + out.stderr
        assert _containers(client, mine) == [] and len(_containers(client, theirs)) == 1
        missing = _cli(tmp_path, "sandbox", "cleanup", "--work-dir", str(tmp_path / "nowhere"))
        assert missing.returncode == 1 and "no factory run used it" in missing.stderr, missing.stderr
    finally:
        _remove(client, mine, theirs)


def test_killed_run_is_cleaned_up_by_its_resume_and_a_held_work_dir_refuses_a_second_run(docker_backend,
                                                                                         shared_prefect_api, tmp_path):
    client = docker_backend.client
    other = f"test-other-{secrets.token_hex(4)}"
    recipe, work = _recipe(tmp_path), tmp_path / "work"
    killed = ""
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "trajfactory.cli", "run", str(recipe)],
                            env=_env(tmp_path, shared_prefect_api),
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _start_foreign(client, other)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # until the run has a sandbox up
            killed = next((r["run_id"] for r in recorded_runs(work)), "")
            if killed and _containers(client, killed):
                break
            assert proc.poll() is None, f"the run ended before it was killed:\n{(tmp_path / 'first.log').read_text()}"
            time.sleep(0.2)
        else:
            pytest.fail("no sandbox of the run came up in 600 s")
        assert f"run ID: {killed}" in (tmp_path / "first.log").read_text()

        # a second run of the same work dir, while the first holds it, stops at once and says why
        second = _cli(tmp_path, "run", str(recipe), api=shared_prefect_api)
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"work dir {work.resolve()} is in use by run {killed} (pid {proc.pid}" in second.stderr
        assert "Traceback" not in second.stderr and "run ID:" not in second.stdout
        assert [r["run_id"] for r in recorded_runs(work)] == [killed]

        # kill it while it has a sandbox up: its sandboxes come and go (a faster stage may have closed the one seen
        # above), so freeze it, let any removal already sent to the engine finish, and look again
        while True:
            assert proc.poll() is None, f"the run ended before it was killed:\n{(tmp_path / 'first.log').read_text()}"
            os.killpg(proc.pid, signal.SIGSTOP)
            time.sleep(0.5)
            if _containers(client, killed):
                break
            os.killpg(proc.pid, signal.SIGCONT)
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(1)
        left = _containers(client, killed)
        assert left and all(c.labels[LABEL] == "1" and c.labels["trajfactory.repo"] for c in left)

        resumed = _cli(tmp_path, "run", str(recipe), api=shared_prefect_api)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert f"removed {len(left)} sandbox containers left behind by earlier runs" in resumed.stderr
        runs = [r["run_id"] for r in recorded_runs(work)]
        assert runs[0] == killed and len(runs) == 2 and f"run ID: {runs[1]}" in resumed.stdout
        assert _containers(client, killed) == []
        assert _containers(client, runs[1]) == []  # the finished run closed its own sandboxes
        assert len(_containers(client, other)) == 1  # another run's container is none of its business
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        _remove(client, other, *([killed] if killed else []))
