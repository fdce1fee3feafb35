"""The work disk fills up in the middle of a run (a size-capped tmpfs holds the work dir and the datasets): the run
stops with a message that names the full device and how to go on, writes no half version, and the same command,
once space is freed, resumes without redoing finished work and writes a version that verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import cli_runs
from trajfactory.datasets.store import DatasetStore

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _journal(work: Path) -> list[str]:  # one JSON line per step that started
    path = work / "journal.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def _complete(result: Path) -> bool:
    """A whole result file (the disk may have filled in the middle of one: that one is rightly redone)."""
    try:
        return "result" in json.loads(result.read_text())
    except ValueError:
        return False


def test_a_full_work_disk_stops_the_run_and_the_resume_finishes_it(small_disk, tmp_path, docker_backend,
                                                                   shared_prefect_api, undisturbed_textkit):
    work = small_disk / "work"
    path = cli_runs.undisturbed_recipe(tmp_path, work_dir=work, datasets=small_disk / "datasets")
    argv, env = [*cli_runs.CLI, "run", str(path)], cli_runs.env(tmp_path, shared_prefect_api)
    proc = cli_runs.start(tmp_path, "run", str(path), api=shared_prefect_api)
    deadline = time.monotonic() + 600
    while sum('"validate"' in line for line in _journal(work)) < 3:
        assert proc.poll() is None, "the run ended before the disk filled: " + proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no validation finished in 10 minutes"
        time.sleep(0.2)
    filler = small_disk / "filler"
    with filler.open("wb") as fh:  # every free byte of the work disk
        try:
            while True:
                fh.write(b"\0" * 2**20)
                fh.flush()
        except OSError:
            pass
    try:
        out, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 1, out[-3000:]
    assert "no space left on the device" in out and "run the same command again" in out, out[-3000:]
    store = DatasetStore(small_disk / "datasets" / "swe")
    assert not store.root.exists() or store.versions() == []
    finished = {p.name for p in (work / "results").iterdir() if _complete(p)}
    before = len(_journal(work))

    filler.unlink()
    resumed = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert store.versions() == ["v1"] and store.verify("v1") == []
    assert store.read_rows("v1", "tasks")
    assert store.content_digest("v1") == undisturbed_textkit.content_digest("v1")  # the data an undisturbed run makes
    # the work whose results were written before the disk filled was not redone
    again = [json.loads(line) for line in _journal(work)[before:]]
    assert finished and not {e["key"] for e in again if e["stage"] in ("validate", "rollout")} & finished
