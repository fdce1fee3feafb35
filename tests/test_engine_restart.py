"""The Docker engine restarts in the middle of a run (every container dies with it): the run rides it out on new
containers or stops with a clear message, and the same command then finishes it with the data an undisturbed run
makes. Restarting the engine disturbs every container on it, so this module is `exclusive`: scripts/test.sh runs it
alone, after the parallel run of the others."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import docker
import pytest

import cli_runs
from trajfactory.datasets.store import DatasetStore

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.exclusive]


def _argv(tmp: Path, api: str) -> tuple[list[str], dict]:
    return [*cli_runs.CLI, "run", str(cli_runs.undisturbed_recipe(tmp))], cli_runs.env(tmp, api)


def _engine_answers() -> bool:
    try:
        return bool(docker.from_env(timeout=5).ping())
    except Exception:
        return False


def restart_engine(log: Path) -> None:
    """Restart the Docker engine the way it runs here: systemd's unit, or the `dockerd` process started again with
    its own command line (as scripts/setup.sh starts it)."""
    if shutil.which("systemctl") and subprocess.run(["systemctl", "is-active", "--quiet", "docker"]).returncode == 0:
        subprocess.run(["systemctl", "restart", "docker"], check=True, timeout=120)
    else:
        pid = int(subprocess.check_output(["pgrep", "-o", "-x", "dockerd"]).split()[0])
        argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 90
        while Path(f"/proc/{pid}").exists():
            assert time.monotonic() < deadline, "dockerd did not stop in 90 s"
            time.sleep(0.2)
        with log.open("ab") as out:
            subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while not _engine_answers():
        assert time.monotonic() < deadline, f"the engine did not answer again in 90 s; see {log}"
        time.sleep(0.5)


def _journal(work: Path) -> list[dict]:
    path = work / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_engine_restart_mid_run_loses_nothing(docker_backend, shared_prefect_api, undisturbed_textkit, tmp_path):
    disturbed = tmp_path / "disturbed"
    disturbed.mkdir()
    argv, env = _argv(disturbed, shared_prefect_api)
    proc = subprocess.Popen(argv, env=env, cwd=disturbed, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while sum(e["stage"] == "validate" for e in _journal(disturbed / "work")) < 3:
        assert proc.poll() is None, "the run ended before the engine restarted: " + proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no validation started in 10 minutes"
        time.sleep(0.2)
    restart_engine(Path("/var/log/dockerd.log"))  # where scripts/setup.sh has it log
    try:
        out, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    if proc.returncode != 0:  # it stopped: with a clear message, and the same command finishes it
        assert "run stopped:" in out and "run the same command again" in out, out[-3000:]
        again = subprocess.run(argv, env=env, cwd=disturbed, capture_output=True, text=True, timeout=1200)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    # the containers the restart killed (their removal failed while the engine was down) are gone too
    runs = [json.loads(line)["run_id"] for line in (disturbed / "work" / "runs.jsonl").read_text().splitlines()]
    left = docker.from_env().containers.list(all=True, ignore_removed=True, filters={"label": "trajfactory=1"})
    assert [c.name for c in left if c.labels.get("trajfactory.run") in runs] == []
    a, b = undisturbed_textkit, DatasetStore(disturbed / "datasets" / "swe")  # the session's undisturbed run
    assert b.versions() == ["v1"] and b.verify("v1") == []
    assert b.content_digest("v1") == a.content_digest("v1")
