"""A killed `trajfactory train dpo|grpo` run resumes from its last checkpoint, as `train sft` does (its test is in
test_closed_loop.py): the CLI is killed (SIGKILL) once a checkpoint is written; the same command without --resume
refuses to discard that checkpoint, and with --resume goes on from the checkpoint's step, not from step 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.vllm, pytest.mark.slow]

# Per kind: the options of a run long enough to be killed after its first checkpoint, and how many steps it takes.
RUNS = {
    "dpo": (["--split", "all", "--max-steps", "30", "--max-length", "1024", "--lr", "1e-3", "--checkpoint-every", "5"],
            30),
    "grpo": (["--split", "all", "--max-tasks", "1", "--group-size", "2", "--max-steps", "3", "--max-agent-steps", "1",
              "--max-new-tokens", "8", "--lr", "1e-3", "--checkpoint-every", "1"], 3),
}


def _train(kind: str, data: str, model: Path, out: Path, *extra: str) -> subprocess.Popen:
    options, _ = RUNS[kind]
    return subprocess.Popen(
        [sys.executable, "-m", "trajfactory.cli", "train", kind, "--data", data, "--model", str(model), "--out",
         str(out), "--log-every", "1", *options, *extra],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _remove_killed_sandboxes(data: str) -> None:
    """The sandboxes the killed GRPO run had open (its process could not remove them): this session runs one test
    at a time, so the containers of this dataset's repository still there are that run's."""
    from trajfactory.executors.docker import cleanup_leftover_containers
    from trajfactory.training.evaluate import held_out_tasks

    for repo in {t.environment.repo for t in held_out_tasks(data, "all")[0]}:
        cleanup_leftover_containers({"trajfactory.repo": repo})


@pytest.mark.parametrize("kind", sorted(RUNS))
def test_a_killed_run_refuses_to_start_over_and_resumes_from_its_checkpoint(kind, model_flow_run, tiny_model,
                                                                           tmp_path):
    data, out = f"{model_flow_run.store.root}@v1", tmp_path / kind
    partial = tmp_path / f".{kind}.partial" / "trainer"
    first = _train(kind, data, tiny_model, out)
    deadline = time.monotonic() + 600
    while not any((p / "trainer_state.json").is_file() for p in partial.glob("checkpoint-*")) \
            and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    if kind == "grpo":
        _remove_killed_sandboxes(data)
    saved = sorted(int(p.name.split("-")[1]) for p in partial.glob("checkpoint-*")
                   if (p / "trainer_state.json").is_file())
    assert saved and not out.exists(), first.stdout.read()[-3000:]

    # Without --resume the killed run's checkpoint is not thrown away.
    refused = _train(kind, data, tiny_model, out)
    text = " ".join(refused.communicate(timeout=300)[0].split())  # the error is wrapped to the terminal's width
    assert refused.returncode == 2, text[-3000:]
    assert "a killed run left its checkpoint" in text and "--resume" in text and "--overwrite" in text
    assert sorted(int(p.name.split("-")[1]) for p in partial.glob("checkpoint-*")
                  if (p / "trainer_state.json").is_file())[-1] == saved[-1]

    resumed = _train(kind, data, tiny_model, out, "--resume")
    text = resumed.communicate(timeout=900)[0]
    assert resumed.returncode == 0, text[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert not (tmp_path / f".{kind}.partial").exists()  # the finished run took its place
    _, steps = RUNS[kind]
    assert metrics["resumed_from_step"] >= saved[-1] >= 1 and f"resuming at step {metrics['resumed_from_step']}" in text
    assert metrics["training"]["steps"] == steps
    if kind == "dpo":
        assert [s["step"] for s in metrics["training"]["loss"]] == list(range(1, steps + 1))
        assert f"step {metrics['resumed_from_step'] + 1}/{steps}: loss" in text  # it went on from there
        assert "step 1/" not in text
    else:
        per_step = metrics["training"]["per_step"]
        assert [s["step"] for s in per_step] == list(range(1, steps + 1))
        # every step's group once: the killed run's episodes of the checkpoint's steps are kept, later ones redone
        assert [e["step"] for e in metrics["episodes"]] == [s for s in range(1, steps + 1) for _ in range(2)]
        assert [e["sample"] for e in metrics["episodes"]] == list(range(2 * steps))
        assert all(s["episodes"] == 2 for s in per_step) and metrics["training"]["episodes"] == 2 * steps
        resumed_episodes = [line for line in text.splitlines() if " episode " in line and "reward" in line]
        assert resumed_episodes and all(f"step {metrics['resumed_from_step']} " not in line
                                        for line in resumed_episodes)
