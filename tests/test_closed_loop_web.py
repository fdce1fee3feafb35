"""The closed loop on the web half (`train.data: web`): `trajfactory run` on a recipe with only a `web:` section makes
the web version, fine-tunes the tiny model on its verified browser trajectories and evaluates the result beside the
untrained model on the held-out site's web tasks, in the browser."""

from __future__ import annotations

import json

import pytest
import yaml

from cli_runs import cli
from conftest import write_tutorials
from trajfactory.agents.model import clip_middle
from trajfactory.datasets.store import DatasetStore
from trajfactory.training.context import clip_tool_outputs

STEPS = 3


def test_a_web_trajectorys_pages_are_clipped_as_observations_and_its_task_is_not():
    task, page, other = "Steps: " + "t" * 500, "URL: /\nAccessibility tree:\n" + "p" * 900, "URL: /login " + "q" * 900
    messages = [{"role": "system", "content": "s" * 900}, {"role": "user", "content": task},
                {"role": "user", "content": page}, {"role": "assistant", "content": "click('17')"},
                {"role": "user", "content": other}, {"role": "assistant", "content": "fill('3', 'x')"},
                {"role": "tool", "content": "o" * 900}]
    clipped, n = clip_tool_outputs(messages, 300)
    assert n == 3 and [m["content"] for m in clipped[:2]] == [messages[0]["content"], task]  # system and task whole
    assert [m["content"] for m in clipped[2:]] == [clip_middle(page, 300), "click('17')", clip_middle(other, 300),
                                                   "fill('3', 'x')", clip_middle("o" * 900, 300)]
    assert clip_tool_outputs(messages, None) == (messages, 0)


@pytest.mark.browser
@pytest.mark.vllm
@pytest.mark.slow
def test_the_run_trains_on_its_web_tasks_and_evaluates_on_the_held_out_site(tmp_path, tiny_model, shared_prefect_api):
    recipe = {
        "name": "web-loop",
        "work_dir": str(tmp_path / "work"),
        "dataset": {"root": str(tmp_path / "datasets")},
        "web": {"tutorials": [str(write_tutorials(tmp_path / "tutorials"))], "infeasible_share": 1.0,
                "browsers": 2, "dataset_name": "web"},
        "train": {"data": "web", "base_model": str(tiny_model), "out_root": str(tmp_path / "train"),
                  "sft": {"max_steps": STEPS, "max_length": 2048, "learning_rate": 1e-3, "log_every": 1,
                          "clip_tool_output_chars": 300},
                  "eval": {"max_steps": 2, "max_tokens": 16, "concurrency": 1}},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = cli(tmp_path, "run", str(tmp_path / "recipe.yaml"), api=shared_prefect_api)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]

    store = DatasetStore(tmp_path / "datasets" / "web")
    assert store.versions() == ["v1"] and not (tmp_path / "datasets" / "swe").exists()
    [sft] = [p for p in (tmp_path / "train").iterdir() if p.name.startswith("sft-")]
    metrics = json.loads((sft / "metrics.json").read_text())
    assert metrics["training"]["steps"] == STEPS and metrics["context"]["rows_used"] > 0
    # the rows are the web agent's view of each step, its pages clipped as the evaluated agent clips them
    assert metrics["data"]["rows_view"] == "agent" and metrics["data"]["web_agent"]["max_observation_chars"] == 300
    assert metrics["data"]["path"] == str(store.root.resolve())
    assert metrics["data"]["content_digest"] == store.content_digest("v1")
    assert f"(trained: {STEPS} steps" in out.stdout

    [evaluation] = [p for p in (tmp_path / "train").iterdir() if p.name.startswith("eval-")]
    report = json.loads((evaluation / "report.json").read_text())
    held_out = sorted(r["task_id"] for r in store.read_rows("v1", "web_tasks") if r["split"] == "test")
    assert report["kind"] == "web" and report["data"]["split"] == "test" and report["tasks"] == held_out
    assert report["models"]["model"]["spec"] == str(sft) and set(report["models"]) == {"model", "baseline"}
    episodes = report["models"]["model"]["episodes"]
    assert {e["task_id"] for e in episodes} == set(held_out) and all(e["verifier"] == "state" for e in episodes)
    assert "valid-action rate" in out.stdout and f"model: {sft}" in out.stdout, out.stdout[-3000:]
