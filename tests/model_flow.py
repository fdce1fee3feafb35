"""The model flow run that several modules read: one recipe with every model-backed step on, run twice through
the CLI against the session's real CPU vLLM server (the tiny random-weight model: its text is noise) and real
Docker sandboxes (the second run is fully cached). `conftest.py` makes `model_flow_run` a session fixture."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import docker
import pytest
import yaml

from conftest import DEMO_REPO, ROOT
from trajfactory.datasets.store import DatasetStore

SAMPLES, MAX_TASKS = 2, 2
TRAIN_STEPS = 4


def _env(tmp: Path, api: str | None) -> dict:
    return {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PYTHONPATH": str(ROOT),
            **({"PREFECT_API_URL": api} if api else {})}


def _cli(tmp: Path, *args: str, api: str | None = None) -> subprocess.CompletedProcess:
    """The CLI as a subprocess; with `api` its flows run on that Prefect server (the session's shared one)."""
    return subprocess.run([sys.executable, "-m", "trajfactory.cli", *args], env=_env(tmp, api), cwd=tmp,
                          capture_output=True, text=True, timeout=1200)


def _journal(work: Path) -> list[dict]:
    path = work / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class ContainerWatch:
    """Polls the engine during a run: the most containers of one repository alive at once."""

    def __init__(self, client, repo: str):
        self.client, self.filters = client, {"label": ["trajfactory=1", f"trajfactory.repo={repo}"]}
        self.max, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def alive(self) -> list:
        return self.client.api.containers(all=True, filters=self.filters)

    def _poll(self) -> None:
        while not self._stop.wait(0.3):
            self.max = max(self.max, len(self.alive()))

    def __enter__(self) -> "ContainerWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _quarantine(tmp: Path) -> str:
    """The latest version's quarantine rows with their details, for a failure's message."""
    store = DatasetStore(tmp / "datasets" / "swe")
    rows = store.read_rows(store.latest(), "quarantine") if store.latest() else []
    return "".join(f"\nquarantined {r['stage']}/{r['reason']}: {r['detail'][:3000]}" for r in rows)


@pytest.fixture(scope="session")
def model_flow_run(_vllm_session_server, tiny_model, docker_backend, shared_prefect_api, tmp_path_factory):
    """One recipe with every model-backed step on, and the closed loop (a few SFT steps of the tiny model on the run's
    verified trajectories, evaluated beside it), run twice through the CLI (the second run is fully cached), both on
    the session's shared Prefect server."""
    server = _vllm_session_server.start()  # started again if a test stopped it
    tmp = tmp_path_factory.mktemp("flow-model")
    # A copy under its own name: its sandboxes carry their own `trajfactory.repo` label, so this module's
    # containers are told apart from those of other runs on the same engine.
    repo_name = f"textkit_model_{uuid.uuid4().hex[:8]}"
    shutil.copytree(DEMO_REPO, tmp / repo_name, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    recipe = {
        "name": "model-test",
        "work_dir": str(tmp / "work"),
        "repos": [{"uri": str(tmp / repo_name)}],
        "synthesis": {"max_candidates_per_repo": 10, "seed": 3, "statements": "model", "statement_max_tokens": 24,
                      "statement_max_context_chars": 1200,
                      "lm_rewrite": {"enabled": True, "max_entities": 2, "max_tokens": 24, "max_context_chars": 800}},
        "validation": {"reference_runs": 1, "suite_timeout_s": 60},
        "sandbox": {"concurrency": 2, "memory": "1g"},
        "rollout": {"policies": ["oracle", "model"],
                    "model": {"samples": SAMPLES, "max_tasks": MAX_TASKS, "concurrency": 2,
                              "agent": {"max_tokens": 24, "temperature": 0.8, "actions": "both",
                                        "limits": {"max_steps": 2}}}},
        "judge": {"enabled": True, "max_tokens": 32},
        "model": {"serve": None, "base_url": server.base_url, "name": "tiny", "gpu_hour_price": 2.5},
        "dataset": {"name": "swe", "root": str(tmp / "datasets"), "export_root": str(tmp / "exports")},
        # One repository's few tasks: train on every split and evaluate on one task (this is the plumbing, the
        # default recipe's loop is the measurement).
        "train": {"base_model": str(tiny_model), "out_root": str(tmp / "train"),
                  "sft": {"max_steps": TRAIN_STEPS, "max_length": 1024, "learning_rate": 1e-3,
                          "clip_tool_output_chars": 300, "checkpoint_every": 2, "log_every": 1,
                          "splits": ["train", "validation", "test"]},
                  "eval_split": "all",
                  "eval": {"max_tasks": 1, "max_steps": 2, "max_tokens": 24, "temperature": 0.0,
                           "actions": "tool_calls", "concurrency": 1}},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with ContainerWatch(docker_backend.client, repo_name) as watch:
        first = _cli(tmp, "run", str(path), api=shared_prefect_api)
    assert first.returncode == 0, first.stdout + first.stderr[-5000:] + _quarantine(tmp)
    journal_first = _journal(tmp / "work")
    second = _cli(tmp, "run", str(path), api=shared_prefect_api)
    assert second.returncode == 0, second.stdout + second.stderr[-5000:]
    yield SimpleNamespace(tmp=tmp, first=first, second=second, watch=watch, journal_first=journal_first,
                          journal_second=_journal(tmp / "work")[len(journal_first):],
                          store=DatasetStore(tmp / "datasets" / "swe"), exports=tmp / "exports" / "swe" / "v1")
    client = docker.from_env()
    for image in client.images.list(name=f"trajfactory/repo-{repo_name}"):
        client.images.remove(image.id, force=True)


