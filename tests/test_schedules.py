"""Scheduled runs on a lasting Prefect server: PostgreSQL, the server, a deployment with a cron schedule and a worker,
all started by the project's own commands (`trajfactory server start`, `deploy`, `worker`). A scheduled run makes v1;
after one more repository is added to the recipe file, a later scheduled run makes v2 on top of it, whose card says
what is new, without redoing the first repository's work. The schedule is a cron every minute (the finest cron)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import ROOT
from trajfactory.datasets.scan import Scanner
from trajfactory.datasets.store import DatasetStore

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SECOND_SOURCE = ROOT / "tests" / "fixtures" / "good_small"
DEPLOYMENT = "schedule-test"


def _env(tmp_path: Path) -> dict:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-client"),
            "TRAJFACTORY_SERVER_DIR": str(tmp_path / "server"),
            "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
            # the server plans runs every 5 s (not 60) and the worker asks for them every 5 s (not 10)
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5", "PREFECT_WORKER_QUERY_SECONDS": "5"}


def _cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "trajfactory.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"trajfactory {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc


def _write_recipe(tmp_path: Path, repos: list[str]) -> Path:
    recipe = {
        "name": "scheduled",
        "work_dir": str(tmp_path / "work"),
        "repos": [{"uri": u} for u in repos],
        "synthesis": {"max_candidates_per_repo": 3, "seed": 3},
        "validation": {"reference_runs": 2, "suite_timeout_s": 60, "batch_size": 16},
        "sandbox": {"concurrency": 1, "memory": "1g"},
        "dataset": {"name": "swe", "root": str(tmp_path / "datasets")},
    }
    path, tmp = tmp_path / "recipe.yaml", tmp_path / "recipe.yaml.tmp"
    tmp.write_text(yaml.safe_dump(recipe))
    tmp.replace(path)  # a run starting now reads the old file or the new one, never half of one
    return path


def _journal(work: Path) -> list[dict]:
    path = work / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _runs(api: str, deployment_id: str) -> list[dict]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "limit": 200}
    return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=30).json()


def _wait(what: str, check, timeout: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = logs.read_text(errors="replace")[-3000:] if logs.exists() else "(no worker log)"
            pytest.fail(f"{what}: not within {timeout:.0f} s; the worker's log ends:\n{tail}")
        time.sleep(3)


def _stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:  # the Prefect worker may take its time over a graceful stop
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _stop_server(env: dict, state_dir: Path) -> None:
    from trajfactory.server.postgres import PostgresCluster

    state = json.loads((state_dir / "state.json").read_text()) if (state_dir / "state.json").exists() else None
    subprocess.run([sys.executable, "-m", "trajfactory.cli", "server", "stop"], env=env, capture_output=True,
                   timeout=120, cwd=ROOT)
    if state:  # as root the cluster lives outside tmp_path (under the postgres user's home): remove it
        PostgresCluster(Path(state["postgres_data"])).remove()


def _cleanup_containers(work: Path) -> None:
    from trajfactory.executors.runs import WorkDirBusy, cleanup_work_dir

    try:
        cleanup_work_dir(work)
    except (WorkDirBusy, FileNotFoundError):
        pass


def test_scheduled_runs_make_v1_then_v2_with_a_new_source(docker_backend, tmp_path):
    env = _env(tmp_path)
    work, store = tmp_path / "work", DatasetStore(tmp_path / "datasets" / "swe")
    recipe = _write_recipe(tmp_path, ["builtin:textkit"])
    worker_log = tmp_path / "worker.log"
    with ExitStack() as stack:
        stack.callback(_cleanup_containers, work)
        stack.callback(_stop_server, env, tmp_path / "server")
        started = _cli(env, "server", "start")
        state = json.loads((tmp_path / "server" / "state.json").read_text())
        api = state["api_url"]
        assert state["database_url"].startswith("postgresql+asyncpg://") and f"UI: {state['ui_url']}" in started.stdout
        assert f"export PREFECT_API_URL={api}" in started.stdout
        assert "healthy" in _cli(env, "server", "status").stdout

        _cli(env, "deploy", str(recipe), "--cron", "* * * * *", "--name", DEPLOYMENT)
        deployment = httpx.get(f"{api}/deployments/name/trajfactory-scheduled/{DEPLOYMENT}", timeout=30).json()
        assert deployment["parameters"]["recipe_path"] == str(recipe)
        assert deployment["schedules"][0]["schedule"]["cron"] == "* * * * *"
        assert deployment["work_pool_name"] == "trajfactory"

        with open(worker_log, "wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "trajfactory.cli", "worker"], env=env, cwd=ROOT,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(_stop_worker, worker)

        t0 = time.monotonic()
        _wait("a scheduled run writes v1", lambda: store.versions() == ["v1"], 300, worker_log)
        t_v1 = time.monotonic() - t0
        first = _journal(work)
        assert any(e["stage"] == "validate" for e in first)

        recipe = _write_recipe(tmp_path, ["builtin:textkit", str(SECOND_SOURCE)])
        t1 = time.monotonic()
        _wait("a scheduled run writes v2 with the new source", lambda: "v2" in store.versions(), 360, worker_log)
        t_v2 = time.monotonic() - t1

        # one run at a time: pause the schedule and let a run in flight finish before teardown
        httpx.patch(f"{api}/deployments/{deployment['id']}", json={"paused": True}, timeout=30)
        _wait("the last scheduled run ends",
              lambda: all(r["state_type"] not in ("RUNNING", "PENDING") for r in _runs(api, deployment["id"])),
              300, worker_log)

        assert store.versions() == ["v1", "v2"], "a run with nothing new must write no version"
        manifest = store.manifest("v2")
        assert manifest["parent"] == "v1" and store.verify("v2") == []
        # the lineage and the card name a local source as the scan writes host paths (`<WORK>/...`), never the path
        second = Scanner().text(str(SECOND_SOURCE), "lineage")
        assert second != str(SECOND_SOURCE) and set(manifest["lineage"]["sources"]) == {"builtin:textkit", second}
        assert {row["repo"] for row in store.read_rows("v2", "tasks")} == {"textkit", "good_small"}
        v1_tasks = {row["task_id"] for row in store.read_rows("v1", "tasks")}
        assert v1_tasks < {row["task_id"] for row in store.read_rows("v2", "tasks")}

        card = (store.root / "v2" / "README.md").read_text()
        assert "## What is new since v1" in card and f"- new sources: `{second}`" in card
        new_tasks = len(store.read_rows("v2", "tasks")) - len(v1_tasks)
        assert f"| `tasks` | {len(v1_tasks) + new_tasks} | {new_tasks} | {len(v1_tasks)} | 0 |" in card

        # finished work reused: no unit of work ran twice, and the new source's validations ran after the edit
        journal = _journal(work)
        keys = [e["key"] for e in journal]
        assert len(keys) == len(set(keys)), "a step of the first source ran again"
        assert any(e["stage"] == "validate" for e in journal[len(first):])

        runs = _runs(api, deployment["id"])
        done = [r for r in runs if r["state_type"] == "COMPLETED"]
        assert len(done) >= 2 and not [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")], \
            [(r["name"], r["state_name"]) for r in runs]
        # the yields as table artifacts, on the server the UI reads
        artifacts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"like_": "yields-"}},
                                                                 "limit": 200}, timeout=30).json()
        assert {"yields-by-repository", "yields-by-family"} <= {a["key"] for a in artifacts}
        assert all(a["type"] == "table" for a in artifacts)
        print(f"\nv1 {t_v1:.0f} s after the worker started, v2 {t_v2:.0f} s after the recipe edit; "
              f"{len(runs)} scheduled runs, {len(done)} completed")
