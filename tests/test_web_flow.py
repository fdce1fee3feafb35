"""The web flow end to end: bundled docs served on loopback, real Chromium, the bundled apps, a Prefect
ephemeral server, a dataset version with six tables (web_verification: the verdict of record of each
trajectory), and a second run that redoes no finished rollout."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from test_web_tasks import FORUM, SHOP, TRACKER
from trajfactory.datasets.store import DatasetStore

pytestmark = pytest.mark.browser

TABLES = {"web_tasks", "trajectories", "verdicts", "quarantine", "screenshots", "web_verification"}
# The bundled docs are written loosely ("Click Log in (or Sign in) in the header"); the rule parser + replay
# grounds none of their feasible tasks yet, so three plainly worded tutorials join them as a second source.
EXTRA = {"shop": SHOP, "forum": "How to start a discussion\n" + FORUM, "tracker": TRACKER}
RUN = ("import json, sys; from trajfactory.flows.web import run_web; from trajfactory.settings import Recipe; "
       "out = run_web(Recipe.model_validate(json.loads(sys.argv[1]))); print('RESULT ' + json.dumps(out, default=str))")


def web_recipe(root: Path, web: dict, **extra) -> dict:
    """A web-only recipe writing under `root`: its web work files land in the `web` folder of its work_dir."""
    return {"name": "web-test", "work_dir": str(root / "work"), "dataset": {"root": str(root / "datasets")},
            "web": web, **extra}


def _tutorials(root: Path) -> Path:
    for app, text in EXTRA.items():
        title, body = text.split("\n", 1)
        (root / app).mkdir(parents=True)
        (root / app / "howto.md").write_text(f"# {title}\n\n{body.strip()}\n")
    return root


def _run(config: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", RUN, json.dumps(config)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])


def _journal(work: Path, stage: str) -> list[str]:
    path = work / "journal.jsonl"
    lines = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
    return [ln["key"] for ln in lines if ln["stage"] == stage]


def test_web_flow_writes_a_verified_dataset_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # the subprocess inherits these
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    work = tmp_path / "work" / "web"
    config = web_recipe(tmp_path, {"tutorials": ["builtin:docs", str(_tutorials(tmp_path / "tutorials"))],
                                   "max_tasks_per_site": 2, "infeasible_share": 1.0, "browsers": 2, "dataset_name": "web"})
    out = _run(config)
    store = DatasetStore(tmp_path / "datasets" / "web")
    assert out["version"] == "v1" and store.verify("v1") == []
    assert set(store.data_files("v1")) == TABLES
    tasks = store.read_rows("v1", "web_tasks")
    trajectories = store.read_rows("v1", "trajectories")
    verdicts = {v["trajectory_id"]: v for v in store.read_rows("v1", "verdicts")}
    assert tasks and all(len(t["checks"]) >= 1 for t in tasks)
    site = {t["task_id"]: t["target_site"] for t in tasks}
    feasible = {t["task_id"]: t["feasible"] for t in tasks}
    verified = [tr for tr in trajectories if verdicts[tr["trajectory_id"]]["passed"]]
    assert {site[tr["task_id"]] for tr in verified if feasible[tr["task_id"]]} == {"shop", "forum", "tracker"}
    infeasible = [tr for tr in trajectories if not feasible[tr["task_id"]]]
    assert {site[tr["task_id"]] for tr in infeasible} == {"shop", "forum", "tracker"}
    for tr in infeasible:
        assert tr["exit_status"] == "infeasible" and tr["steps"][-1]["tool"] == "report_infeasible"
        assert verdicts[tr["trajectory_id"]]["passed"]
    # every loosely worded docs tutorial that did not replay is in quarantine with its reason, not dropped
    quarantine = store.read_rows("v1", "quarantine")
    assert {q["reason"] for q in quarantine} >= {"replay_failed"} and all(q["detail"] for q in quarantine)
    funnel = {row["site"]: row for row in out["summary"]["by_site"]}
    assert all(funnel[s]["pages"] >= funnel[s]["tutorials"] >= funnel[s]["tasks"] >= funnel[s]["verified"] >= 1 for s in EXTRA)

    shots = store.read_rows("v1", "screenshots")
    shas = [s["sha256"] for s in shots]
    assert len(shas) == len(set(shas))
    for s in shots:
        png = s["png"]["bytes"]
        assert hashlib.sha256(png).hexdigest() == s["sha256"] and s["bytes"] == len(png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    referenced = {json.loads(step["arguments"]).get("screenshot") for tr in trajectories for step in tr["steps"]} - {None}
    assert referenced and referenced <= set(shas)

    from datasets import load_dataset

    files = store.data_files("v1")
    hf_tasks = load_dataset("parquet", data_files=files["web_tasks"], split="train")
    hf_trajs = load_dataset("parquet", data_files=files["trajectories"], split="train")
    assert hf_tasks.num_rows == len(tasks) and hf_trajs.num_rows == len(trajectories)
    assert hf_trajs[0]["messages"][0]["role"] == "system"
    check_release(store, tasks, trajectories, tmp_path)

    # second run: every gold replay and rollout comes from the cache
    established, rolled = _journal(work, "establish"), _journal(work, "rollout")
    assert len(rolled) == len(trajectories)
    again = _run(config)
    assert again["version"] == "v2"
    assert _journal(work, "establish") == established and _journal(work, "rollout") == rolled
    assert store.content_digest("v1") == store.content_digest("v2")


def check_release(store: DatasetStore, tasks: list[dict], trajectories: list[dict], tmp_path: Path) -> None:
    """Splits (twins with their originals), a clean scan, screenshots as images, and SFT rows of the verified
    browser trajectories."""
    from datasets import load_dataset
    from trajfactory.datasets.export import export_version

    split_of = {t["task_id"]: t["split"] for t in tasks}
    tutorial = lambda t: json.loads(t["provenance"])["tutorial_id"]  # noqa: E731
    for t in tasks:  # an infeasible twin sits in its original's split
        assert all(split_of[o["task_id"]] == t["split"] for o in tasks if tutorial(o) == tutorial(t))
    assert all(tr["split"] == split_of[tr["task_id"]] for tr in trajectories)
    assert store.manifest("v1")["lineage"]["splits"]["leaks"] == 0
    # observations showed the sites' loopback URLs with throwaway ports; the version keeps no port
    observed = [m["content"] for tr in trajectories for m in tr["messages"] if m["content"]]
    assert any("127.0.0.1:<PORT>/" in text for text in observed)
    assert not any(re.search(r"127\.0\.0\.1:\d", text) for text in observed)
    assert "web_tasks" in (store.root / "v1" / "README.md").read_text().split("## Tables")[1]

    shots = load_dataset(str(store.root / "v1"), "screenshots", split="train")
    assert type(shots.features["png"]).__name__ == "Image" and shots[0]["png"].size[0] > 100

    report = export_version(store.root, tmp_path / "exports", version="v1", formats_=("sft", "rl"))
    assert sum(report["exports"]["sft"].values()) >= 3  # a verified replay per site
    sft = load_dataset("parquet", data_files=[str(p) for p in (tmp_path / "exports" / "sft").glob("*.parquet")],
                       split="train")
    assert all(row["messages"][-1]["role"] in ("assistant", "user") for row in sft)
    assert sum(report["exports"]["rl"].values()) == len(tasks)
