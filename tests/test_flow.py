"""The end-to-end Prefect flow through the CLI, and a kill-and-resume run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import cli_runs
from conftest import BAD_REPOS
from trajfactory.datasets.store import DatasetStore
from trajfactory.executors.runs import RUN_LABEL, recorded_runs
from trajfactory.verifiers.claims import contradictions

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _recipe(tmp_path: Path, repos: list[str], *, candidates: int, concurrency: int = 2, batch_size: int = 16) -> Path:
    return cli_runs.recipe(tmp_path, repos, candidates=candidates, concurrency=concurrency, batch_size=batch_size)


_env, _cli = cli_runs.env, cli_runs.cli


def _journal(work: Path) -> list[dict]:
    path = work / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_end_to_end_flow_writes_a_verified_dataset(docker_backend, tmp_path):
    recipe = _recipe(tmp_path, ["builtin:textkit", str(BAD_REPOS / "no_tests"), str(tmp_path / "missing")],
                     candidates=10)
    proc = _cli(tmp_path, "run", str(recipe))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store = DatasetStore(tmp_path / "datasets" / "swe")
    assert store.versions() == ["v1"]
    assert store.verify("v1") == []
    manifest = store.manifest("v1")
    assert manifest["lineage"]["recipe_hash"] and manifest["lineage"]["flow_run_id"]

    tasks = store.read_rows("v1", "tasks")
    trajs = store.read_rows("v1", "trajectories")
    verdicts = store.read_rows("v1", "verdicts")
    quarantine = store.read_rows("v1", "quarantine")
    assert tasks and len(trajs) == len(tasks)
    for row in tasks:
        assert row["FAIL_TO_PASS"] and row["PASS_TO_PASS"] and row["instance_id"] and row["image_name"]
    gold = [v for v in verdicts if v["subject"] == "gold"]
    assert {v["task_id"] for v in gold} == {t["task_id"] for t in tasks} and all(v["passed"] for v in gold)
    traj_verdicts = [v for v in verdicts if v["subject"] == "trajectory"]
    assert len(traj_verdicts) == len(trajs) and all(v["passed"] for v in traj_verdicts)
    reasons = {q["reason"] for q in quarantine}
    assert {"no_tests", "not_found"} <= reasons
    # the check over every trajectory of the version: no claim of success right after a failing observation
    said = [contradictions(SimpleNamespace(messages=[SimpleNamespace(**m) for m in t["messages"]])) for t in trajs]
    assert said == [[]] * len(trajs) and "claim_contradicts_observation" not in reasons
    assert "yields by repository" in proc.stdout and "textkit" in proc.stdout

    from datasets import load_dataset

    for table, files in store.data_files("v1").items():
        ds = load_dataset("parquet", data_files=files, split="train")
        assert len(ds) == manifest["tables"][table]["rows"]
    ds = load_dataset("parquet", data_files=store.data_files("v1")["trajectories"], split="train")
    assert ds[0]["messages"][2]["tool_calls"][0]["function"]["name"] == "bash"


def test_stage_commands_chain_through_records(docker_backend, shared_prefect_api, tmp_path):
    recipe = _recipe(tmp_path, ["builtin:textkit"], candidates=6)
    for command in ("harvest", "synthesize", "rollout", "verify", "build"):
        proc = _cli(tmp_path, command, str(recipe), api=shared_prefect_api)
        assert proc.returncode == 0, f"{command}: {proc.stdout}{proc.stderr}"
    store = DatasetStore(tmp_path / "datasets" / "swe")
    assert store.versions() == ["v1"]
    assert store.manifest("v1")["tables"]["trajectories"]["rows"] >= 1


def test_kill_and_resume_redoes_no_finished_work(docker_backend, shared_prefect_api, undisturbed_textkit, tmp_path):
    # a journal entry of stage `validate` is one batch of candidates: batches of 2 make 7 units of work, so the kill
    # lands after some finished and before the rest
    recipe = cli_runs.undisturbed_recipe(tmp_path)  # 14 candidates, one sandbox, batches of 2
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-m", "trajfactory.cli", "run", str(recipe)],
                            env=_env(tmp_path, shared_prefect_api),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if sum(e["stage"] == "validate" for e in _journal(work)) >= 3:
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name for p in (work / "results").iterdir()} if (work / "results").exists() else set()
    first = _journal(work)
    assert finished, "nothing finished before the kill"
    assert not (tmp_path / "datasets" / "swe").exists() or DatasetStore(tmp_path / "datasets" / "swe").versions() == []

    resumed = _cli(tmp_path, "run", str(recipe), api=shared_prefect_api)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    killed = recorded_runs(work)[0]["run_id"]  # the resumed run removed the sandboxes the killed one left running
    assert docker_backend.client.containers.list(all=True, ignore_removed=True, filters={"label": f"{RUN_LABEL}={killed}"}) == []
    second = _journal(work)[len(first):]
    redone = {e["key"] for e in second if e["stage"] in ("validate", "rollout")} & finished
    assert redone == set()
    assert any(e["stage"] == "validate" for e in second)  # the unfinished rest did run

    # An uninterrupted run of the same recipe (the session's) gives the same data.
    a, b = DatasetStore(tmp_path / "datasets" / "swe"), undisturbed_textkit
    rows = lambda s, t, cols: sorted(tuple(str(r[c]) for c in cols) for r in s.read_rows("v1", t))  # noqa: E731
    assert rows(a, "tasks", ["task_id", "patch", "FAIL_TO_PASS", "PASS_TO_PASS"]) == \
        rows(b, "tasks", ["task_id", "patch", "FAIL_TO_PASS", "PASS_TO_PASS"])
    assert rows(a, "trajectories", ["trajectory_id", "final_patch", "exit_status"]) == \
        rows(b, "trajectories", ["trajectory_id", "final_patch", "exit_status"])
    assert rows(a, "verdicts", ["verdict_id", "passed"]) == rows(b, "verdicts", ["verdict_id", "passed"])

    # Run again: everything is cached, nothing is redone, and the content is identical.
    again = _cli(tmp_path, "run", str(recipe), api=shared_prefect_api)
    assert again.returncode == 0
    third = _journal(work)[len(first) + len(second):]
    assert [e for e in third if e["stage"] in ("validate", "rollout", "verify", "reference")] == []
    store = DatasetStore(tmp_path / "datasets" / "swe")
    assert store.versions() == ["v1", "v2"]
    assert store.content_digest("v1") != "" and store.content_digest("v2") == store.content_digest("v1")
    # and the killed-and-resumed run's digest is the uninterrupted run's (observations' timings, addresses, temp dirs
    # and ports do not count: datasets/normalize.py)
    assert a.content_digest("v1") == b.content_digest("v1")
