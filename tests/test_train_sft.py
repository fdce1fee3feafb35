"""`trajfactory train sft` on the model flow's dataset (oracle trajectories verified by their tests): real optimizer
steps with TRL's SFTTrainer on the tiny model, loss on assistant turns only, the context policy, an output directory
that transformers loads as it is (vLLM serving it: test_closed_loop, where the run's closed loop evaluates it), and
errors that name the bad input."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from trajfactory.datasets.formats import verified_ids
from trajfactory.datasets.store import DatasetStore
from trajfactory.models.tiny import CHAT_TEMPLATE
from trajfactory.schema import SWE_TOOLS
from trajfactory.training.context import (TINY_TRAINING_TEMPLATE, TemplateError, count_tokens, fit_rows,
                                          training_template)
from trajfactory.settings.training import SFTSettings
from trajfactory.training.sft import TrainError, build_trainer, load_model, load_rows, train_sft

pytestmark = [pytest.mark.docker, pytest.mark.vllm, pytest.mark.slow]

STEPS, MAX_LENGTH = 3, 1024  # the tiny model's rows are ~2.7k-3.6k tokens: every one is cut at a turn boundary


@pytest.fixture(scope="module")
def dataset(model_flow_run) -> Path:
    return model_flow_run.store.root


@pytest.fixture(scope="module")
def trained(dataset, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "model"
    settings = SFTSettings(max_steps=STEPS, max_length=MAX_LENGTH, learning_rate=1e-3, log_every=1)
    return out, train_sft(f"{dataset}@v1", tiny_model, out, settings)


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_real_optimizer_steps_change_the_weights_and_metrics_name_the_data(trained, dataset, tiny_model):
    out, metrics = trained
    steps = metrics["training"]["loss"]
    assert metrics["training"]["steps"] == STEPS and [s["step"] for s in steps] == list(range(1, STEPS + 1))
    assert all(math.isfinite(s["loss"]) and s["loss"] > 0 for s in steps)
    assert metrics["training"]["tokens_trained"] > 0 and metrics["training"]["tokens_per_s"] > 0
    assert 0 < metrics["training"]["loss_tokens_per_epoch"] < metrics["context"]["tokens_per_epoch"]

    base, tuned = _weights(tiny_model), _weights(out)
    assert sorted(base) == sorted(tuned)
    assert any(not base[k].equal(tuned[k]) for k in base), "the optimizer steps changed no weight"

    store = DatasetStore(dataset)
    assert metrics["data"]["version"] == "v1" and metrics["data"]["content_digest"] == store.content_digest("v1")
    verified = verified_ids(store.read_rows("v1", "verdicts"))
    train_ids = {t["trajectory_id"] for t in store.read_rows("v1", "trajectories")
                 if verified.get(t["trajectory_id"]) and t["split"] == "train"}
    ctx = metrics["context"]
    assert train_ids and ctx["rows_in"] == len(train_ids) == ctx["rows_used"] + ctx["rows_dropped"]
    assert ctx["rows_truncated"] == ctx["rows_used"] and {t["trajectory_id"] for t in ctx["truncated"]} <= train_ids
    assert metrics["model"]["chat_template_for_training"] == "tiny"
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_the_output_directory_loads_back_with_its_serving_template_and_a_loss_curve(trained):
    import torch
    from PIL import Image
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.chat_template_utils import has_generation_markers

    out, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tokenizer.chat_template == CHAT_TEMPLATE and not has_generation_markers(tokenizer.chat_template)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=SWE_TOOLS,
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]
    with Image.open(out / "loss.png") as img:
        img.verify()
        assert img.format == "PNG" and img.size[0] > 100
    assert not list(out.parent.glob(f".{out.name}.*")), "no partial or old directory left beside OUT"


def test_labels_keep_only_the_assistant_turns(dataset, tiny_model, tmp_path):
    rows, _ = load_rows(f"{dataset}@v1", ["train"])
    tokenizer, model = load_model(tiny_model, tiny_model)
    template, source = training_template(tokenizer, str(tiny_model))
    assert source == "tiny" and template == TINY_TRAINING_TEMPLATE
    row = rows[0]  # whole: no context policy here, every turn is tokenized
    trainer = build_trainer([row], tokenizer, model, SFTSettings(max_steps=1, max_length=8192), tmp_path, template)
    example = trainer.train_dataset[0]
    kept = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    assert 0 < len(kept) < len(example["input_ids"])

    # What the assistant wrote, cut out of the text the model's own (serving) template renders.
    text = tokenizer.apply_chat_template(row["messages"], tools=json.loads(row["tools"]), tokenize=False,
                                         chat_template=CHAT_TEMPLATE)
    turns = [seg[len("assistant"):] for seg in text.split("<|im_start|>") if seg.startswith("assistant")]
    assert len(turns) == sum(m["role"] == "assistant" for m in row["messages"]) > 1
    assert tokenizer.decode(kept) == "".join(turns)  # every assistant turn with its <|im_end|>, and nothing else
    assert row["messages"][0]["content"][:40] not in tokenizer.decode(kept)  # not the system prompt


def test_the_training_template_is_the_tiny_copy_a_trl_patch_or_a_clear_error(tiny_model, tmp_path):
    from trl.chat_template_utils import qwen2_5_chat_template, qwen2_5_training_chat_template

    tokenizer, _ = load_model(tiny_model, tiny_model)
    tokenizer.chat_template = qwen2_5_chat_template  # a real model's template that TRL knows how to mark
    assert training_template(tokenizer, "qwen") == (qwen2_5_training_chat_template, "trl")
    tokenizer.chat_template = CHAT_TEMPLATE.replace("<|im_start|>", "<|im_start|> ")  # one nobody knows
    with pytest.raises(TemplateError, match=r"model my-model: .*no `\{% generation %\}` markers.*--chat-template"):
        training_template(tokenizer, "my-model")
    with pytest.raises(TemplateError, match="no `{% generation %}` markers"):
        training_template(tokenizer, "my-model", "{{ messages }}")
    assert training_template(tokenizer, "my-model", TINY_TRAINING_TEMPLATE) == (TINY_TRAINING_TEMPLATE, "file")


def test_the_context_policy_truncates_at_a_turn_boundary_and_drops_what_cannot_fit(dataset, tiny_model):
    rows, _ = load_rows(f"{dataset}@v1", ["train"])
    tokenizer, _ = load_model(tiny_model, tiny_model)
    row, tools = rows[0], json.loads(rows[0]["tools"])
    msgs = row["messages"]
    firsts = [i + 1 for i, m in enumerate(msgs) if m["role"] == "assistant"]
    second = count_tokens(tokenizer, msgs[:firsts[1]], tools, TINY_TRAINING_TEMPLATE)
    max_length = second + 5  # room for the first two assistant turns, not the whole row
    assert count_tokens(tokenizer, msgs, tools, TINY_TRAINING_TEMPLATE) > max_length

    short = {**row, "trajectory_id": "short", "messages": msgs[:firsts[0]]}
    long_first = {**row, "trajectory_id": "long-first",
                  "messages": [*msgs[:2], {**msgs[2], "content": "word " * 4 * max_length}, *msgs[3:]]}
    no_assistant = {**row, "trajectory_id": "no-assistant", "messages": msgs[:2]}
    kept, report = fit_rows(tokenizer, [row, short, long_first, no_assistant], TINY_TRAINING_TEMPLATE, max_length)

    assert (report["rows_in"], report["rows_used"], report["rows_truncated"], report["rows_dropped"]) == (4, 2, 1, 2)
    assert [r["trajectory_id"] for r in kept] == [row["trajectory_id"], "short"]
    cut = kept[0]["messages"]
    assert cut == msgs[:firsts[1]] and cut[-1]["role"] == "assistant"  # ends after an assistant turn, whole turns
    assert count_tokens(tokenizer, cut, tools, TINY_TRAINING_TEMPLATE) <= max_length
    assert report["truncated"][0]["trajectory_id"] == row["trajectory_id"]
    reasons = {d["trajectory_id"]: d["reason"] for d in report["dropped"]}
    assert "first assistant turn" in reasons["long-first"] and reasons["no-assistant"] == "no assistant turn"

    clipped, report = fit_rows(tokenizer, [row], TINY_TRAINING_TEMPLATE, 8192, clip=200)
    assert report["tool_outputs_clipped"] > 0
    assert all(len(m["content"]) <= 200 for m in clipped[0]["messages"] if m["role"] == "tool")


def test_bad_inputs_are_refused_with_a_message_naming_them(dataset, tiny_model, trained, tmp_path):
    # A version whose trajectories all failed their tests.
    store = DatasetStore(dataset)
    failed = DatasetStore(tmp_path / "failed")
    failed.write_version({"trajectories": store.read_rows("v1", "trajectories"),
                          "verdicts": [{**v, "passed": False} for v in store.read_rows("v1", "verdicts")]},
                         lineage={})
    with pytest.raises(TrainError, match=re.escape(f"{tmp_path / 'failed'}@v1: no verified trajectories")):
        train_sft(tmp_path / "failed", tiny_model, tmp_path / "o1")
    with pytest.raises(TrainError, match=r"@v9: no version v9.*its versions: v1"):
        train_sft(f"{dataset}@v9", tiny_model, tmp_path / "o2")

    # Model directories that do not load.
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(TrainError, match=re.escape(f"--model {tmp_path / 'empty-model'}: not a model directory")):
        train_sft(f"{dataset}@v1", tmp_path / "empty-model", tmp_path / "o3")
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "qwen2"}))  # no weights, no tokenizer
    with pytest.raises(TrainError, match=re.escape(f"--model {broken}: does not load with transformers")):
        train_sft(f"{dataset}@v1", broken, tmp_path / "o4")

    # An output directory that already holds a trained model, or something else.
    out, _ = trained
    with pytest.raises(TrainError, match=re.escape(f"--out {out}: already holds a trained model")):
        train_sft(f"{dataset}@v1", tiny_model, out)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(TrainError, match=re.escape(f"--out {other}: not empty and not a training output")):
        train_sft(f"{dataset}@v1", tiny_model, other, overwrite=True)
    assert (other / "todo.txt").read_text() == "mine"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "trajfactory.cli", "train", "sft", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_trains_the_builtin_tiny_model_and_replaces_an_output_only_with_overwrite(dataset, tmp_path):
    helped = _cli("--help")
    assert helped.returncode == 0
    for phrase in ("--data", "@vN", "builtin:tiny", "--overwrite", "assistant", "metrics.json", "--max-length"):
        assert phrase in helped.stdout, phrase

    out = tmp_path / "sft"
    args = ("--data", f"{dataset}@v1", "--model", "builtin:tiny", "--out", str(out), "--max-steps", "1",
            "--max-length", str(MAX_LENGTH))
    first = _cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "trained 1 steps" in first.stdout and "step 1/1: loss" in first.stderr  # progress is logged
    stamp = (out / "metrics.json").stat().st_mtime_ns

    again = _cli(*args)
    assert again.returncode == 2 and str(out) in again.stderr and "--overwrite" in again.stderr
    assert (out / "metrics.json").stat().st_mtime_ns == stamp

    replaced = _cli(*args, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert (out / "metrics.json").stat().st_mtime_ns != stamp


def test_lora_adapters_are_merged_into_plain_weights(dataset, tiny_model, tmp_path):
    out = tmp_path / "lora"
    metrics = train_sft(f"{dataset}@v1", tiny_model, out, SFTSettings(max_steps=1, max_length=MAX_LENGTH, lora=True,
                                                                         learning_rate=1e-2))
    assert metrics["model"]["lora"] and metrics["training"]["steps"] == 1
    assert not (out / "adapter_config.json").exists()
    base, tuned = _weights(tiny_model), _weights(out)
    assert sorted(base) == sorted(tuned)  # no lora_A / lora_B: served without peft
    assert any(not base[k].equal(tuned[k]) for k in base)
