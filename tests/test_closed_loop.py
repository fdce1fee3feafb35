"""The closed loop of `trajfactory run` (the recipe's `train:` section): SFT of the tiny model on the run's own
verified trajectories and its evaluation beside the untrained model, cached by what each step depends on; a killed
training run resumes from its checkpoint; the agent clips observations as training clipped them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from model_flow import TRAIN_STEPS
from trajfactory.agents.model import clip_middle, to_wire
from trajfactory.pipelines.closed_loop import eval_settings
from trajfactory.schema import Message, ToolCall, ToolCallFunction
from trajfactory.settings import RecipeError, load_recipe
from trajfactory.settings.training import SFTSettings, TrainConfig
from trajfactory.training.common import TrainError, check_out, last_complete_checkpoint, model_identity, run_key

# ---------------------------------------------------------------- the recipe section and the keys (no engine)


def _recipe(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_default_recipe_closes_the_loop_and_its_data_digest_ignores_it():
    recipe = load_recipe()
    assert recipe.train is not None and recipe.train.base_model == "builtin:tiny"
    assert recipe.train.sft.checkpoint_every and recipe.train.eval_split == "test"
    other = recipe.model_copy(update={"train": TrainConfig(sft=SFTSettings(max_steps=7))})
    assert other.digest() == recipe.digest()  # training on the data does not change the data's cache keys


def test_a_bad_train_section_is_named(tmp_path):
    with pytest.raises(RecipeError, match=r"field `train.sft.max_steps`"):
        load_recipe(_recipe(tmp_path, {"repos": [{"uri": "builtin:textkit"}], "train": {"sft": {"max_steps": -5}}}))
    with pytest.raises(RecipeError, match=r"field `train.eval_split`"):
        load_recipe(_recipe(tmp_path, {"repos": [{"uri": "builtin:textkit"}], "train": {"eval_split": "holdout"}}))
    with pytest.raises(RecipeError, match=r"on the run's SWE tasks \(`train.data: swe`\): add `repos:`, set `train.data"):
        load_recipe(_recipe(tmp_path, {"web": {"tutorials": ["builtin:docs"]}, "train": {}}))
    with pytest.raises(RecipeError, match=r"`train.data: web` trains and evaluates on the run's web tasks: add a `web:`"):
        load_recipe(_recipe(tmp_path, {"repos": [{"uri": "builtin:textkit"}], "train": {"data": "web"}}))
    with pytest.raises(RecipeError, match=r"field `train.data`"):
        load_recipe(_recipe(tmp_path, {"repos": [{"uri": "builtin:textkit"}], "train": {"data": "both"}}))
    web = load_recipe(_recipe(tmp_path, {"web": {"tutorials": ["builtin:docs"]}, "train": {"data": "web"}}))
    assert web.train.data == "web" and not web.repos


def test_run_keys_change_with_the_data_the_model_and_the_settings(tmp_path, tiny_model):
    base = run_key("sft", "digest-a", tiny_model, SFTSettings(max_steps=3))
    assert base == run_key("sft", "digest-a", tiny_model, SFTSettings(max_steps=3, log_every=1))  # logging only
    assert base != run_key("sft", "digest-b", tiny_model, SFTSettings(max_steps=3))
    assert base != run_key("sft", "digest-a", tiny_model, SFTSettings(max_steps=4))
    assert base != run_key("sft", "digest-a", "builtin:tiny", SFTSettings(max_steps=3))
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "config.json").write_text("{}")
    (trained / "metrics.json").write_text(json.dumps({"run_key": "k1"}))
    assert model_identity(trained) == "trained:k1"  # a training output is known by the run that made it


def test_the_eval_clips_observations_as_the_sft_rows_were_clipped():
    cfg = TrainConfig(sft=SFTSettings(clip_tool_output_chars=300))
    assert eval_settings(cfg).max_observation_chars == 300
    assert eval_settings(cfg.model_copy(update={"eval": cfg.eval.model_copy(
        update={"max_observation_chars": 900})})).max_observation_chars == 900
    assert eval_settings(TrainConfig()).max_observation_chars is None


def test_the_agent_sends_clipped_observations_and_keeps_the_trajectory_whole():
    long = "head " + "x" * 2000 + " tail"
    call = ToolCall(id="call_1", function=ToolCallFunction(name="bash", arguments='{"command": "ls"}'))
    messages = [Message(role="user", content="fix it"), Message(role="assistant", content="", tool_calls=[call]),
                Message(role="tool", tool_call_id="call_1", content=long)]
    wire = to_wire(messages, 300)
    assert len(wire[2]["content"]) <= 300 and wire[2]["content"].startswith("head ")
    assert wire[2]["content"].endswith(" tail") and "characters clipped" in wire[2]["content"]
    assert wire[2]["content"] == clip_middle(long, 300)
    assert messages[2].content == long and to_wire(messages)[2]["content"] == long


# ---------------------------------------------------------------- the loop in the model flow's `trajfactory run`


def _closed_loop_dirs(run) -> tuple[Path, Path]:
    train = run.tmp / "train"
    sft = [p for p in train.iterdir() if p.name.startswith("sft-")]
    evals = [p for p in train.iterdir() if p.name.startswith("eval-")]
    assert len(sft) == 1 and len(evals) == 1, sorted(p.name for p in train.iterdir())
    return sft[0], evals[0]


def test_the_run_trains_on_its_own_data_and_prints_the_before_after_table(model_flow_run):
    run = model_flow_run
    sft, evaluation = _closed_loop_dirs(run)
    metrics = json.loads((sft / "metrics.json").read_text())
    assert sft.name == f"sft-{metrics['run_key'][:16]}"
    assert metrics["training"]["steps"] == TRAIN_STEPS and metrics["data"]["path"] == str(run.store.root.resolve())
    assert metrics["data"]["content_digest"] == run.store.content_digest("v1")
    assert f"(trained: {TRAIN_STEPS} steps" in run.first.stdout
    report = json.loads((evaluation / "report.json").read_text())
    assert report["models"]["model"]["spec"] == str(sft) and report["models"]["baseline"]["spec"] != str(sft)
    assert report["data"]["tasks_evaluated"] == 1 and report["settings"]["max_observation_chars"] == 300
    # the trained checkpoint, as training wrote it, loaded in the real CPU vLLM server and answered every request
    usage = report["models"]["model"]["scores"]["usage"]["client"]
    assert usage["model"] == sft.name and usage["requests"] > 0 and usage["failed_requests"] == 0, usage
    assert usage["completion_tokens"] > 0, usage
    for stdout in (run.first.stdout, run.second.stdout):
        assert "valid-call rate" in stdout and "pass@1" in stdout and f"model: {sft}" in stdout, stdout[-3000:]


def test_a_second_run_reuses_the_trained_model_and_the_evaluation(model_flow_run):
    run = model_flow_run
    sft, evaluation = _closed_loop_dirs(run)
    assert "(reused:" in run.second.stdout and "(trained:" not in run.second.stdout
    assert f"eval: {evaluation} (reused" in run.second.stdout and f"eval: {evaluation} (evaluated" in run.first.stdout
    assert not list(sft.parent.glob(".*.partial"))  # no training started again
    assert evaluation.name == f"eval-{json.loads((evaluation / 'report.json').read_text())['run_key'][:16]}"


# ---------------------------------------------------------------- a killed training run resumes


def test_a_checkpoint_cut_off_by_the_kill_is_not_resumed_from(tmp_path):
    for step, whole in ((5, True), (10, False), (3, True)):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"x")
        if whole:
            (path / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-5")
    assert not (tmp_path / "checkpoint-10").exists()  # the cut-off one is gone, the older whole one stays
    assert (tmp_path / "checkpoint-3").is_dir() and last_complete_checkpoint(tmp_path / "none") is None


def test_a_killed_runs_checkpoint_is_discarded_only_when_asked(tmp_path, tiny_model):
    out = tmp_path / "model"
    checkpoint = tmp_path / ".model.partial" / "trainer" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    check_out(out, False, tiny_model)  # cut off while being written: nothing to keep
    (checkpoint / "trainer_state.json").write_text("{}")
    with pytest.raises(TrainError, match=r"--out .*model: a killed run left its checkpoint in .*\.model\.partial "
                                         r"\(checkpoint-4\); pass --resume .* or --overwrite"):
        check_out(out, False, tiny_model)
    check_out(out, False, tiny_model, resume=True)
    check_out(out, True, tiny_model)
    assert (checkpoint / "trainer_state.json").is_file()  # checking removes nothing


def _whole_checkpoints(trainer_dir: Path) -> list[int]:
    """The steps of the checkpoints the trainer finished writing (a kill before that leaves one cut off)."""
    return sorted(int(p.name.split("-")[1]) for p in trainer_dir.glob("checkpoint-*")
                  if (p / "trainer_state.json").is_file())


def _train(data: str, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "trajfactory.cli", "train", "sft", "--data", data, "--out", str(out),
         "--max-steps", "30", "--max-length", "1024", "--lr", "1e-3", "--log-every", "1", *extra],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_training_run_resumes_from_its_last_checkpoint(model_flow_run, tiny_model, tmp_path):
    data, out = f"{model_flow_run.store.root}@v1", tmp_path / "sft"
    partial = tmp_path / ".sft.partial" / "trainer"
    first = _train(data, out, "--model", str(tiny_model), "--checkpoint-every", "5")
    deadline = time.monotonic() + 300
    while not _whole_checkpoints(partial) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    saved = _whole_checkpoints(partial)
    assert saved and not out.exists(), first.stdout.read()[-3000:]

    # other settings do not resume someone else's run
    assert '"run_key"' in (tmp_path / ".sft.partial" / "run.json").read_text()
    second = _train(data, out, "--model", str(tiny_model), "--checkpoint-every", "5", "--resume")
    text = second.communicate(timeout=600)[0]
    assert second.returncode == 0, text[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= saved[-1] and "resuming at step" in text
    assert metrics["training"]["steps"] == 30 and [s["step"] for s in metrics["training"]["loss"]] == list(range(1, 31))
    assert not (tmp_path / ".sft.partial").exists()  # the finished run took its place


def test_resume_starts_afresh_when_the_settings_differ(model_flow_run, tiny_model, tmp_path):
    data, out = f"{model_flow_run.store.root}@v1", tmp_path / "sft"
    first = _train(data, out, "--model", str(tiny_model), "--checkpoint-every", "3")
    partial = tmp_path / ".sft.partial" / "trainer"
    deadline = time.monotonic() + 300
    while not _whole_checkpoints(partial) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert _whole_checkpoints(partial)
    second = _train(data, out, "--model", str(tiny_model), "--checkpoint-every", "3", "--resume", "--seed", "1")
    text = second.communicate(timeout=600)[0]
    assert second.returncode == 0, text[-3000:]
    assert json.loads((out / "metrics.json").read_text())["resumed_from_step"] is None
    assert "another run" in text


# ---------------------------------------------------------------- GRPO as a step of the loop


def test_a_grpo_step_is_keyed_by_its_start_model_and_reused(model_flow_run, tiny_model, tmp_path):
    from trajfactory.pipelines.closed_loop import grpo_step
    from trajfactory.settings import Recipe
    from trajfactory.settings.training import GRPOSettings

    settings = GRPOSettings(splits=["all"], max_tasks=1, group_size=2, max_steps=1, max_agent_steps=2,
                            max_new_tokens=16, learning_rate=1e-3, test_timeout_s=60, sandbox={"memory": "1g"})
    recipe = Recipe(repos=[{"uri": "builtin:textkit"}],
                    train=TrainConfig(base_model=str(tiny_model), out_root=str(tmp_path), grpo=settings))
    store = model_flow_run.store
    data, digest = f"{store.root}@v1", store.content_digest("v1")
    first = grpo_step(recipe, data, digest, str(tiny_model))
    out = Path(first["out"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert not first["reused"] and out.name == f"grpo-{metrics['run_key'][:16]}" == f"grpo-{first['key'][:16]}"
    assert first["steps"] == 1 and first["episodes"] == 2 and len(first["reward_per_step"]) == 1
    again = grpo_step(recipe, data, digest, str(tiny_model))
    assert again["reused"] and again["out"] == first["out"]
    assert (out / "metrics.json").read_text() == json.dumps(metrics, indent=2) + "\n"  # not trained again
