"""`trajfactory train dpo` on the model flow's dataset (the oracle's verified trajectories beside the tiny model's
failed samples of the same tasks): pairs of a verified and a failed trajectory of one task, real optimizer steps with
TRL's DPOTrainer on the tiny model, the context policy per pair, an output directory that transformers loads as it is,
and errors that name the bad input."""

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
from trajfactory.training.common import TrainError, load_model
from trajfactory.training.context import count_tokens
from trajfactory.training.dpo import DPO_LOGGED, build_trainer, fit_pairs, load_pairs, train_dpo
from trajfactory.settings.training import DPOSettings

pytestmark = [pytest.mark.docker, pytest.mark.vllm, pytest.mark.slow]

STEPS, MAX_LENGTH = 2, 1024  # the oracle's trajectories are ~3k tokens: every chosen side is cut at a turn boundary


@pytest.fixture(scope="module")
def dataset(model_flow_run) -> Path:
    return model_flow_run.store.root


@pytest.fixture(scope="module")
def trained(dataset, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo") / "model"
    settings = DPOSettings(splits=["all"], max_steps=STEPS, max_length=MAX_LENGTH, learning_rate=1e-3, log_every=1)
    return out, train_dpo(f"{dataset}@v1", tiny_model, out, settings)


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _task_turns(messages: list[dict]) -> list[dict]:
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [m for m in messages[:first] if m["role"] != "system"]


def test_pairs_are_a_verified_and_a_failed_trajectory_of_the_same_task(dataset):
    store = DatasetStore(dataset)
    trajectories = {t["trajectory_id"]: t for t in store.read_rows("v1", "trajectories")}
    verified = verified_ids(store.read_rows("v1", "verdicts"))
    every, source = load_pairs(f"{dataset}@v1", ["train", "validation", "test"])
    assert every and source["pairs"] == len(every) == source["pairs_in_splits"]
    for p in every:
        chosen, rejected = trajectories[p["chosen_id"]], trajectories[p["rejected_id"]]
        assert verified[chosen["trajectory_id"]] is True and verified[rejected["trajectory_id"]] is False
        assert chosen["task_id"] == rejected["task_id"] == p["task_id"] and p["split"] == chosen["split"]
        assert chosen["policy"]["name"] == "oracle" and rejected["policy"]["name"] == "model"
        c = [{k: v for k, v in m.items() if v is not None} for m in chosen["messages"]]
        r = [{k: v for k, v in m.items() if v is not None} for m in rejected["messages"]]
        assert p["prompt"] + p["chosen"] == c and p["rejected"] == r[len(r) - len(p["rejected"]):]
        assert _task_turns(c) == _task_turns(r)  # the same task, word for word
        assert p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant"
        assert p["tools"] == chosen["tools"]  # the tool schemas, byte for byte

    # Which tasks the tiny model's rollouts reached (and so which splits hold pairs) varies from run to run.
    split = every[0]["split"]
    some, source = load_pairs(f"{dataset}@v1", [split])
    assert some == [p for p in every if p["split"] == split] and source["pairs_in_splits"] == len(some)
    assert load_pairs(f"{dataset}@v1", ["all"])[0] == every
    assert source["version"] == "v1" and source["content_digest"] == store.content_digest("v1")


def test_real_optimizer_steps_change_the_weights_and_metrics_name_the_data(trained, dataset, tiny_model):
    out, metrics = trained
    steps = metrics["training"]["loss"]
    assert metrics["training"]["steps"] == STEPS and [s["step"] for s in steps] == list(range(1, STEPS + 1))
    assert all(math.isfinite(s["loss"]) and s["loss"] > 0 for s in steps)
    assert all(set(DPO_LOGGED) <= set(s) for s in steps)
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # the policy starts as the reference
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["rewards/margins"] > 0  # it learned to prefer
    assert metrics["training"]["final_rewards_margins"] == steps[-1]["rewards/margins"]
    assert metrics["training"]["tokens_trained"] > 0 and metrics["model"]["reference"] == "frozen base"

    base, tuned = _weights(tiny_model), _weights(out)
    assert sorted(base) == sorted(tuned)
    assert any(not base[k].equal(tuned[k]) for k in base), "the optimizer steps changed no weight"

    store = DatasetStore(dataset)
    assert metrics["data"]["version"] == "v1" and metrics["data"]["content_digest"] == store.content_digest("v1")
    ctx = metrics["context"]
    assert ctx["pairs_in"] == metrics["data"]["pairs_in_splits"] == ctx["pairs_used"] + ctx["pairs_dropped"] > 0
    assert ctx["pairs_truncated"] == ctx["pairs_used"]  # every chosen side is longer than MAX_LENGTH
    assert all(t["reason"].startswith("chosen: ") and max(t["tokens"].values()) <= MAX_LENGTH
               for t in ctx["truncated"])
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_the_output_directory_loads_back_with_its_serving_template_and_a_loss_curve(trained):
    import torch
    from PIL import Image
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=SWE_TOOLS,
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]
    with Image.open(out / "loss.png") as img:
        img.verify()
        assert img.format == "PNG" and img.size[0] > 100
    assert not list(out.parent.glob(f".{out.name}.*")), "no partial or old directory left beside OUT"


def test_the_context_policy_cuts_each_side_at_a_turn_boundary_and_drops_what_cannot_fit(dataset, tiny_model):
    pairs, _ = load_pairs(f"{dataset}@v1", ["train", "validation", "test"])
    tokenizer, _ = load_model(tiny_model, tiny_model)
    pair, tools = pairs[0], json.loads(pairs[0]["tools"])
    ends = [i + 1 for i, m in enumerate(pair["chosen"]) if m["role"] == "assistant"]
    two = count_tokens(tokenizer, pair["prompt"] + pair["chosen"][:ends[1]], tools, CHAT_TEMPLATE)
    rejected = count_tokens(tokenizer, pair["prompt"] + pair["rejected"], tools, CHAT_TEMPLATE)
    max_length = max(two, rejected) + 5  # the whole rejected side and two of the chosen side's assistant turns
    assert count_tokens(tokenizer, pair["prompt"] + pair["chosen"], tools, CHAT_TEMPLATE) > max_length

    huge = {**pair, "rejected_id": "huge-first-turn",
            "rejected": [{**pair["rejected"][0], "content": "word " * 4 * max_length}, *pair["rejected"][1:]]}
    kept, report = fit_pairs(tokenizer, [pair, huge], CHAT_TEMPLATE, max_length)
    counts = ("pairs_in", "pairs_used", "pairs_truncated", "pairs_dropped")
    assert [report[k] for k in counts] == [2, 1, 1, 1]
    fitted = kept[0]
    assert fitted["prompt"] == pair["prompt"] and fitted["rejected"] == pair["rejected"]
    cut = len(fitted["chosen"])  # the longest prefix of whole turns that ends after an assistant turn and fits
    assert cut in ends and cut >= ends[1] and fitted["chosen"] == pair["chosen"][:cut]
    assert count_tokens(tokenizer, fitted["prompt"] + fitted["chosen"], tools, CHAT_TEMPLATE) <= max_length
    following = [e for e in ends if e > cut]
    assert count_tokens(tokenizer, pair["prompt"] + pair["chosen"][:following[0]], tools, CHAT_TEMPLATE) > max_length
    assert report["truncated"][0]["reason"].startswith("chosen: ")
    drop = report["dropped"][0]
    assert drop["rejected_id"] == "huge-first-turn" and "rejected: the first assistant turn" in drop["reason"]


def test_trl_tokenizes_a_fitted_pair_to_the_length_the_policy_measured(dataset, tiny_model, tmp_path):
    pairs, _ = load_pairs(f"{dataset}@v1", ["train", "validation", "test"])
    tokenizer, model = load_model(tiny_model, tiny_model)
    kept, _ = fit_pairs(tokenizer, pairs[:1], CHAT_TEMPLATE, MAX_LENGTH)
    trainer = build_trainer(kept, tokenizer, model, DPOSettings(max_steps=1, max_length=MAX_LENGTH), tmp_path)
    example, pair, tools = trainer.train_dataset[0], kept[0], json.loads(kept[0]["tools"])
    for side in ("chosen", "rejected"):  # so TRL's own truncation (mid-turn, mid-token) never cuts a kept pair
        n = len(example["prompt_ids"]) + len(example[f"{side}_ids"])
        assert n == count_tokens(tokenizer, pair["prompt"] + pair[side], tools, CHAT_TEMPLATE) <= MAX_LENGTH
    assert len(example["prompt_ids"]) == len(tokenizer.apply_chat_template(
        pair["prompt"], tools=tools, add_generation_prompt=True, return_dict=True)["input_ids"])


def test_a_version_without_pairs_is_refused_naming_the_version_and_what_it_needs(dataset, tiny_model, tmp_path):
    store = DatasetStore(dataset)
    only_passed = DatasetStore(tmp_path / "no-pairs")  # every trajectory verified: nothing to prefer it over
    only_passed.write_version({"trajectories": store.read_rows("v1", "trajectories"),
                               "verdicts": [{**v, "passed": True} for v in store.read_rows("v1", "verdicts")]},
                              lineage={})
    with pytest.raises(TrainError, match=re.escape(f"{tmp_path / 'no-pairs'}@v1: no preference pairs")) as err:
        train_dpo(tmp_path / "no-pairs", tiny_model, tmp_path / "o1")
    assert "verified and a failed trajectory" in str(err.value) and "rollout.model.samples" in str(err.value)
    with pytest.raises(TrainError, match=r"@v1: no preference pairs in split\(s\) nosuch.*--split"):
        train_dpo(f"{dataset}@v1", tiny_model, tmp_path / "o2", DPOSettings(splits=["nosuch"]))
    with pytest.raises(TrainError, match=r"@v9: no version v9.*its versions: v1"):
        train_dpo(f"{dataset}@v9", tiny_model, tmp_path / "o3")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_lora_trains_against_the_adapter_free_reference_and_saves_plain_weights(dataset, tiny_model, tmp_path):
    out = tmp_path / "lora"
    metrics = train_dpo(f"{dataset}@v1", tiny_model, out,
                        DPOSettings(splits=["all"], max_steps=1, max_length=MAX_LENGTH, lora=True,
                                    learning_rate=1e-2))
    assert metrics["model"]["lora"] and metrics["training"]["steps"] == 1
    assert metrics["model"]["reference"] == "base with LoRA adapters disabled"
    assert not (out / "adapter_config.json").exists()
    base, tuned = _weights(tiny_model), _weights(out)
    assert sorted(base) == sorted(tuned)  # no lora_A / lora_B: served without peft
    assert any(not base[k].equal(tuned[k]) for k in base)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "trajfactory.cli", "train", "dpo", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_explains_itself_and_trains(dataset, tiny_model, tmp_path):
    helped = _cli("--help")
    assert helped.returncode == 0
    for phrase in ("--data", "@vN", "builtin:tiny", "verified", "failed", "rollout.model.samples", "--beta",
                   "--lora", "--overwrite", "metrics.json", "--max-length", "Reference model"):
        assert phrase in helped.stdout, phrase

    out = tmp_path / "dpo"
    done = _cli("--data", f"{dataset}@v1", "--model", str(tiny_model), "--out", str(out), "--split", "all",
                "--max-steps", "1", "--max-length", str(MAX_LENGTH), "--lr", "1e-3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained 1 steps on" in done.stdout and "pairs of swe@v1" in done.stdout
    assert "step 1/1: loss" in done.stderr  # progress is logged
    assert json.loads((out / "metrics.json").read_text())["training"]["steps"] == 1
