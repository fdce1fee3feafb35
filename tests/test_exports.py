"""The model flow's dataset as its consumers read it: splits and a clean scan in the version and its card, TRL's
SFTTrainer and DPOTrainer training on the exports, verl's own dataset class loading the RL rows, and the SWE-bench
instances through `trajfactory eval-instances` (gold patches all resolve, empty ones all fail)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from trajfactory.datasets.formats import verified_ids
from trajfactory.datasets.splits import SPLITS
from trajfactory.schema import SWE_TOOLS

pytestmark = [pytest.mark.docker, pytest.mark.vllm, pytest.mark.slow]

PORT = re.compile(r"(127\.0\.0\.1|localhost):\d{2,5}")
VERL_PYTHON = Path(os.environ.get("TRAJFACTORY_CACHE") or Path.home() / ".cache" / "trajfactory") / "verl-venv" / \
    "bin" / "python"


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from strings(v)


@pytest.fixture(scope="module")
def run(model_flow_run):
    return model_flow_run


def test_the_version_has_leak_free_splits_a_clean_scan_and_a_card_that_says_so(run):
    store, m = run.store, run.store.manifest("v1")
    tasks, trajs = store.read_rows("v1", "tasks"), store.read_rows("v1", "trajectories")
    split_of = {t["task_id"]: t["split"] for t in tasks}
    assert set(split_of.values()) <= set(SPLITS) and len(set(split_of.values())) >= 2
    assert all(t["split"] == split_of[t["task_id"]] for t in trajs)
    assert m["lineage"]["splits"]["leaks"] == 0 and "clusters" in m["lineage"]["dedup"]
    assert m["tables"]["tasks"]["splits"] == {s: n for s, n in sorted(
        {s: list(split_of.values()).count(s) for s in set(split_of.values())}.items())}

    card = (store.root / "v1" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "mit"  # the one source's license file
    configs = {c["config_name"]: c for c in front["configs"]}
    assert configs["trajectories"].get("default") is True
    assert {f["split"] for f in configs["tasks"]["data_files"]} == set(split_of.values())
    assert "### splits" in card and "### scan" in card

    # nothing of this machine in any row, the lineage or the card: the vLLM server's port, the run's paths
    tmp, home = str(run.tmp), str(Path.home())
    for table in m["tables"]:
        for row in store.read_rows("v1", table):
            for text in strings(row):
                assert tmp not in text and home not in text and not PORT.search(text), (table, text[:200])
    for text in [*strings(m["lineage"]), card]:
        assert tmp not in text and home not in text and not PORT.search(text), text[:300]

    from datasets import load_dataset

    loaded = load_dataset(str(store.root / "v1"), "tasks")  # the card's configs, one split per name
    assert {name: len(ds) for name, ds in loaded.items()} == m["tables"]["tasks"]["splits"]


def test_sft_rows_keep_tool_schemas_byte_for_byte_and_train_with_sft_trainer(run, tiny_model, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    files = {p.stem: str(p) for p in (run.exports / "sft").glob("*.parquet")}
    ds = load_dataset("parquet", data_files=files)
    verified = verified_ids(run.store.read_rows("v1", "verdicts"))
    rows = [r for split in ds.values() for r in split]
    assert rows and {r["trajectory_id"] for r in rows} == {t for t, ok in verified.items() if ok}
    stored = {t["trajectory_id"]: t["tools"] for t in run.store.read_rows("v1", "trajectories")}
    for r in rows:
        assert r["tools"] == stored[r["trajectory_id"]] == json.dumps(SWE_TOOLS)  # byte for byte
        assert r["split"] in files
    submit = json.loads(rows[0]["tools"])[-1]
    assert submit["function"]["parameters"] == {"type": "object", "properties": {}}  # no merged `null` properties

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = tokenizer.apply_chat_template(rows[0]["messages"], tools=json.loads(rows[0]["tools"]), tokenize=False)
    assert json.dumps(submit) in text and '"required": null' not in text

    train = ds["train"].select_columns(["messages", "tools"])
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), processing_class=tokenizer,
                         train_dataset=train, args=SFTConfig(
                             output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=2,
                             max_length=1024, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1))
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss > 0


def test_dpo_pairs_are_verified_against_failed_and_train_with_dpo_trainer(run, tiny_model, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    files = {p.stem: str(p) for p in (run.exports / "dpo").glob("*.parquet")}
    assert files, "the model's failed rollouts beside the oracle's verified ones make pairs"
    ds = load_dataset("parquet", data_files=files)
    verified = verified_ids(run.store.read_rows("v1", "verdicts"))
    pairs = [r for split in ds.values() for r in split]
    for p in pairs:
        assert verified[p["chosen_id"]] is True and verified[p["rejected_id"]] is False
        assert p["prompt"][-1]["role"] == "user" and p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant"
    split = next(iter(ds))
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model),
                         processing_class=AutoTokenizer.from_pretrained(tiny_model),
                         train_dataset=ds[split].select_columns(["prompt", "chosen", "rejected", "tools"]),
                         args=DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=1,
                                        max_length=1024, report_to=[], use_cpu=True, save_strategy="no"))
    assert trainer.train().global_step == 1


def test_rl_rows_load_with_verls_own_dataset_class(run, tiny_model, tmp_path):
    assert VERL_PYTHON.exists(), "scripts/setup.sh installs verl's environment (scripts/setup-verl.sh)"
    proc = subprocess.run([str(VERL_PYTHON), str(ROOT / "tests" / "verl_load.py"), str(tiny_model),
                           str(run.exports / "rl"), str(tmp_path / "verl-cache")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    tasks = {t["task_id"]: t for t in run.store.read_rows("v1", "tasks")}
    for split in ("train", "validation"):
        got = seen[split]
        assert got["rows"] == got["batch_size"] == sum(t["split"] == split for t in tasks.values())
        assert got["splits"] == [split] and got["ability"] == ["swe"] and got["styles"] == ["rule"]
        assert got["roles"] == [["system", "user"]]
        assert {"data_source", "reward_model", "extra_info", "raw_prompt"} <= set(got["batch_keys"])
        for task_id, truth in zip(got["task_ids"], got["ground_truth"]):
            assert truth["FAIL_TO_PASS"] == tasks[task_id]["FAIL_TO_PASS"]


def test_swebench_instances_run_through_eval_instances(run, tmp_path):
    instances = run.exports / "swebench" / "instances.jsonl"
    rows = [json.loads(line) for line in instances.read_text().splitlines()]
    assert len(rows) == run.store.manifest("v1")["tables"]["tasks"]["rows"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("".join(json.dumps({"instance_id": r["instance_id"], "model_patch": "",
                                         "model_name_or_path": "nothing"}) + "\n" for r in rows))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reports = {}
    for name, pred in (("gold", "gold"), ("empty", str(empty))):
        out = tmp_path / f"{name}.json"
        proc = subprocess.run([sys.executable, "-m", "trajfactory.cli", "eval-instances", str(instances),
                               "--predictions", pred, "--report", str(out), "--workers", "2"],
                              capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        reports[name] = json.loads(out.read_text())
    assert reports["gold"]["resolved"] == reports["gold"]["total"] == len(rows)
    assert reports["empty"]["resolved"] == 0 and reports["empty"]["total"] == len(rows)
    assert all(r["patch_applied"] and r["tests_status"]["FAIL_TO_PASS"]["failure"]
               for r in reports["empty"]["instances"])
