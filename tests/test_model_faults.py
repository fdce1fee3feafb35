"""A model server that fails under a run, through a fault-injecting proxy in front of the session's real vLLM server:
5xx answers and a hung request are ridden out; a server that dies mid-run stops the run with a clear message, and
the same command, once the server is back, resumes it to the dataset an undisturbed run makes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import DEMO_REPO, ROOT
from fault_proxy import FaultProxy
from trajfactory.datasets.store import DatasetStore

pytestmark = [pytest.mark.docker, pytest.mark.vllm, pytest.mark.slow]

REPO = "textkit_faults"  # one name in every run: the task ids, so the datasets, depend on it


def _run(tmp: Path, base_url: str, api: str) -> subprocess.CompletedProcess:
    repo = tmp.parent / REPO  # one source for every run of the test: its path is part of the tasks' provenance
    if not repo.exists():
        shutil.copytree(DEMO_REPO, repo, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    tmp.mkdir(exist_ok=True)
    recipe = {
        "name": "model-faults",
        "work_dir": str(tmp / "work"),
        "repos": [{"uri": str(repo)}],
        "synthesis": {"max_candidates_per_repo": 6, "seed": 3},
        "validation": {"reference_runs": 1, "suite_timeout_s": 60},
        "sandbox": {"concurrency": 1, "memory": "1g"},
        "rollout": {"policies": ["oracle", "model"],
                    "model": {"samples": 1, "max_tasks": 2, "concurrency": 1,
                              "agent": {"max_tokens": 16, "temperature": 0.0, "actions": "both",
                                        "limits": {"max_steps": 2}}}},
        "judge": {"enabled": False},
        "model": {"serve": None, "base_url": base_url, "name": "tiny", "timeout_s": 3},
        "dataset": {"name": "swe", "root": str(tmp / "datasets")},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PYTHONPATH": str(ROOT), "PREFECT_API_URL": api}
    return subprocess.run([sys.executable, "-m", "trajfactory.cli", "run", str(path)], env=env, cwd=tmp,
                          capture_output=True, text=True, timeout=1200)


def _model_rows(store: DatasetStore) -> list[dict]:
    return [t for t in store.read_rows("v1", "trajectories") if t["policy"]["name"] != "oracle"]


def test_model_server_faults_are_ridden_out_or_stop_the_run_which_resumes_to_the_same_data(vllm_server, shared_prefect_api,
                                                                                          tmp_path):
    # 1. three 503s and a request that hangs past the client's 3 s timeout: the client's retries ride them out
    flaky = tmp_path / "flaky"
    with FaultProxy(vllm_server.base_url) as proxy:
        proxy.plan.extend(["503", "503", "503", "hang"])
        done = _run(flaky, proxy.base_url, shared_prefect_api)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert proxy.seen["503"] == 3 and proxy.seen["hang"] == 1 and proxy.seen["ok"] >= 2
    store = DatasetStore(flaky / "datasets" / "swe")
    rows = _model_rows(store)
    assert len(rows) == 2 and all(t["exit_status"] != "infra_failed" for t in rows)
    assert "infra_failed" not in {q["reason"] for q in store.read_rows("v1", "quarantine")}

    # 2. the server dies after one answer: the run stops with a message that says what and how to go on, and
    # writes no version
    killed = tmp_path / "killed"
    proxy = FaultProxy(vllm_server.base_url).up()
    proxy.down_after = 1
    stopped = _run(killed, proxy.base_url, shared_prefect_api)
    said = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0
    assert "the model server failed" in said and "run the same command again" in said, said[-3000:]
    assert not (killed / "datasets" / "swe").exists() or DatasetStore(killed / "datasets" / "swe").versions() == []

    # 3. the server is back: the same command resumes and makes the data the flaky run made
    proxy.down_after = None
    with proxy:  # listening again, on the same port
        resumed = _run(killed, proxy.base_url, shared_prefect_api)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-4000:]
    again = DatasetStore(killed / "datasets" / "swe")
    assert again.versions() == ["v1"]
    pick = lambda rs: sorted((t["task_id"], t["exit_status"], t["final_patch"]) for t in rs)  # noqa: E731
    assert pick(_model_rows(again)) == pick(rows)
    assert again.content_digest("v1") == store.content_digest("v1")
