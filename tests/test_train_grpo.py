"""`trajfactory train grpo`: the reward and advantage math on synthetic groups, TRL's GRPOTrainer driven by a
multi-turn rollout whose group has differing rewards (real optimizer steps on the tiny model), and a real run on the
model flow's dataset: episodes of the factory's episode loop in Docker sandboxes, rewarded by the task's tests,
generated in-process and, in a second run, on the run's own vLLM server whose weights follow the trainer's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trajfactory.runtime import run_sync
from trajfactory import schema
from trajfactory.training.grpo import build_trainer, group_advantages, reward_of, train_grpo
from trajfactory.training.local_policy import LocalChatClient
from trajfactory.settings.training import GRPOSettings


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _verdict(passed: bool, f2p: list[str], refused: list[str] | None = None) -> schema.Verdict:
    outcomes = [schema.TestOutcome(test=f"t{i}", outcome=o) for i, o in enumerate(f2p)]
    return schema.Verdict(verdict_id="v", task_id="t", verifier="tests", verifier_version="1", passed=passed, score=0.0,
                   evidence=schema.Evidence(FAIL_TO_PASS=outcomes, refused=refused or []))


def test_reward_is_the_verdict_with_partial_credit_for_fail_to_pass():
    assert reward_of(_verdict(True, ["passed", "passed"])) == 1.0
    assert reward_of(_verdict(False, ["passed", "failed", "failed", "error"])) == 0.25
    assert reward_of(_verdict(False, ["passed", "failed"]), partial_credit=False) == 0.0
    assert reward_of(_verdict(False, ["passed"], refused=["canary test x"])) == 0.0
    assert reward_of(_verdict(False, [])) == 0.0 and reward_of(None) == 0.0


def test_group_advantages_normalize_within_each_group():
    adv = group_advantages([1.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0], 4)
    # group 1: mean 0.5, unbiased std sqrt(1/6); group 2: mean 0.25, std 0.5
    s1 = math.sqrt(((0.5 ** 2) * 2) / 3)
    assert adv[:4] == pytest.approx([0.5 / (s1 + 1e-4), -0.5 / (s1 + 1e-4), 0.0, 0.0])
    assert adv[4:] == pytest.approx([-0.25 / 0.5001] * 3 + [0.75 / 0.5001])
    assert group_advantages([0.0, 0.0], 2) == [0.0, 0.0]  # an all-failed group carries no signal
    with pytest.raises(ValueError):
        group_advantages([1.0, 0.0, 1.0], 2)


def test_trl_grpo_step_on_a_multi_turn_group_with_differing_rewards(tiny_model, tmp_path):
    """The same trainer wiring as `train_grpo`, with a rollout of two turns per episode (the second turn's input
    adds a tool observation: env_mask 0) and rewards 1 and 0: TRL's advantages equal `group_advantages`, the loss
    is on sampled tokens, and one optimizer step changes the weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    seen: dict = {}

    def rollout(prompts, trainer):
        client = LocalChatClient(trainer.accelerator.unwrap_model(trainer.model), tokenizer, max_context=1024)
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": [], "verifier_reward": []}
        for i, prompt in enumerate(prompts):
            client.start_episode()
            conversation = [{"role": "system", "content": "You fix bugs."}, {"role": "user", "content": prompt}]
            reply = run_sync(client.chat(conversation, max_tokens=6, temperature=1.0, seed=i))
            conversation += [{"role": "assistant", "content": reply.message.content},
                             {"role": "user", "content": "$ pytest -q\n1 failed"}]
            run_sync(client.chat(conversation, max_tokens=6, temperature=1.0, seed=i))
            r = client.rollout()
            assert r.turns == 2 and 0 in r.env_mask and r.env_mask[0] == 1 and len(r.logprobs) == len(r.env_mask)
            for key in ("prompt_ids", "completion_ids", "logprobs", "env_mask"):
                out[key].append(getattr(r, key))
            out["verifier_reward"].append(1.0 if i % 2 == 0 else 0.0)
        seen["env_mask"] = out["env_mask"]
        return out

    settings = GRPOSettings(max_steps=1, group_size=2, learning_rate=1e-3, max_length=1024)
    trainer = build_trainer(lm, tokenizer, ["fix the off-by-one in textkit.wrap"], rollout, settings, tmp_path)
    score = trainer._generate_and_score_completions

    def spy(inputs):
        output = score(inputs)
        seen["advantages"] = output["advantages"].tolist()
        return output

    trainer._generate_and_score_completions = spy
    result = trainer.train()
    assert result.global_step == 1
    assert seen["advantages"] == pytest.approx(group_advantages([1.0, 0.0], 2), abs=1e-5)
    after = trainer.model.state_dict()
    assert any(not before[k].equal(after[k]) for k in before), "the GRPO step changed no weight"


# ---------------------------------------------------------------- a real run: sandboxes, episode loop, verifier


@pytest.fixture(scope="module")
def trained(model_flow_run, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo") / "model"
    settings = GRPOSettings(splits=["all"], max_tasks=1, group_size=2, max_steps=1, max_agent_steps=2,
                            max_new_tokens=16, learning_rate=1e-3, beta=0.04, test_timeout_s=60, log_every=1,
                            sandbox={"memory": "1g"})
    return out, train_grpo(f"{model_flow_run.store.root}@v1", tiny_model, out, settings), model_flow_run




@pytest.mark.docker
@pytest.mark.vllm
@pytest.mark.slow
def test_grpo_rolls_out_in_sandboxes_rewards_by_the_verifier_and_saves_a_model(trained, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, metrics, flow = trained
    task_ids = {r["task_id"] for r in flow.store.read_rows("v1", "tasks")}
    training = metrics["training"]
    assert training["steps"] == 1 and training["episodes"] == 2 and len(metrics["episodes"]) == 2
    for e in metrics["episodes"]:
        assert e["task_id"] in task_ids and e["verifier"] and e["agent_steps"] >= 1 and e["turns"] >= 1
        assert e["FAIL_TO_PASS"] or e["exit_status"] != "submitted"  # the tests ran, or the verifier says why not
        f2p = e["FAIL_TO_PASS"]
        share = sum(o["outcome"] == "passed" for o in f2p) / len(f2p) if f2p else 0.0
        assert e["reward"] == (1.0 if e["passed"] else share)
    step = training["per_step"][0]
    assert step["step"] == 1 and step["episodes"] == 2 and step["sampled_tokens"] > 0
    assert step["reward_mean"] == pytest.approx(sum(e["reward"] for e in metrics["episodes"]) / 2)
    assert math.isfinite(step["loss"]) and "kl" in step and step["reward_std"] is not None
    assert metrics["data"]["version"] == "v1" and metrics["reward"]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "reward.png").read_bytes()[:4] == b"\x89PNG"
    tokenizer = AutoTokenizer.from_pretrained(out)
    lm = AutoModelForCausalLM.from_pretrained(out)
    assert tokenizer.chat_template and lm.config.vocab_size == len(tokenizer)
    assert sorted(_weights(out)) == sorted(_weights(tiny_model))


# ---------------------------------------------------------------- generation on a vLLM server with weight reload


@pytest.fixture(scope="module")
def trained_on_vllm(model_flow_run, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo-vllm") / "model"
    settings = GRPOSettings(splits=["all"], max_tasks=1, group_size=2, max_steps=2, max_agent_steps=1,
                            max_new_tokens=16, learning_rate=1e-2, test_timeout_s=60, log_every=1,
                            sandbox={"memory": "1g"}, generation="vllm",
                            # the tiny model's episodes all earn 0 (no advantage, no gradient): weight decay makes
                            # the first optimizer step change the weights anyway
                            weight_decay=1.0)
    return out, train_grpo(f"{model_flow_run.store.root}@v1", tiny_model, out, settings)


@pytest.mark.docker
@pytest.mark.vllm
@pytest.mark.slow
def test_grpo_generates_on_a_vllm_server_that_follows_the_trainers_weights(trained_on_vllm, tiny_model):
    """Two real GRPO steps whose episodes generate on the run's own vLLM server: every rollout request reached the
    server, the sampled tokens carry finite sampling logprobs, and before step 2 the server's weights are the trainer's
    AFTER the first optimizer step (not the starting ones: a skipped sync fails the probe comparison)."""
    from trajfactory.models.server import process_group_alive

    out, metrics = trained_on_vllm
    assert metrics["algorithm"]["generation"].startswith("vLLM server")
    assert metrics["training"]["steps"] == 2 and metrics["training"]["episodes"] == 4
    gen = metrics["generation"]
    turns = sum(e["turns"] for e in metrics["episodes"])
    assert turns >= 4 and gen["rollout_requests"] == turns
    # the server's own counters: every rollout turn plus one probe per sync, nothing generated elsewhere
    assert gen["server_requests"] == turns + len(gen["weight_syncs"])
    assert gen["server_generated_tokens"] >= sum(e["sampled_tokens"] for e in metrics["episodes"])
    s1, s2 = gen["weight_syncs"]
    assert (s1["step"], s2["step"]) == (1, 2)
    for s in (s1, s2):  # the served weights are the trainer's at that step
        assert s["probe_max_abs_diff"] < 1e-3
        assert s["probe_logprob_server"] == pytest.approx(s["probe_logprob_trainer"], abs=1e-2)
    # the first optimizer step changed the weights, and the server followed
    assert abs(s2["probe_logprob_server"] - s1["probe_logprob_server"]) > 1e-3
    for e in metrics["episodes"]:  # the sampling logprobs the server returned for the sampled tokens
        assert e["sampled_tokens"] > 0 and math.isfinite(e["sampled_logprob_mean"]) and e["sampled_logprob_mean"] < 0
    assert not process_group_alive(gen["server_pid"])  # the run stopped its server
    assert sorted(_weights(out)) == sorted(_weights(tiny_model))


def _lora_model(tiny_model: Path, seed: int = 0):
    """The tiny model with LoRA adapters whose B matrices are not zero (as after some training)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from trajfactory.training.common import peft_config

    lm = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                        peft_config(GRPOSettings(lora=True, lora_r=4)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return lm.eval()  # no LoRA dropout: the forward pass is the policy's


def test_lora_weights_are_served_merged_under_the_base_models_names(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from trajfactory.training.vllm_policy import served_state

    lm = _lora_model(tiny_model)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    base, state = served_state(lm)
    assert sorted(state) == sorted(k for k in _weights(tiny_model))  # the plain model's names, no adapter tensors
    base.save_pretrained(tmp_path, state_dict=state, safe_serialization=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ids = torch.tensor([list(range(5, 60))])
    with torch.no_grad():
        want, got = lm(ids).logits, merged(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)(ids).logits
    assert torch.allclose(want, got, atol=1e-3) and not torch.allclose(want, plain, atol=1e-2)
    assert all(torch.equal(before[k], v) for k, v in lm.state_dict().items())  # the trainer's model is untouched


@pytest.mark.vllm
@pytest.mark.slow
def test_a_lora_policy_reaches_the_vllm_server_merged_at_every_sync(tiny_model):
    """The real CPU vLLM server started on a LoRA policy, then reloaded after its adapters change: at both syncs the
    server's probe log-probabilities are the adapter forward pass's (the sync checks them and stops otherwise)."""
    import torch
    from transformers import AutoTokenizer

    from trajfactory.training.vllm_policy import VLLMGeneration

    lm = _lora_model(tiny_model)
    with VLLMGeneration(tiny_model, AutoTokenizer.from_pretrained(tiny_model), max_context=512) as gen:
        first = gen.sync(lm, step=1)
        with torch.no_grad():
            for name, p in lm.named_parameters():
                if "lora_B" in name:
                    p.mul_(-1.0)
        second = gen.sync(lm, step=2)
    for s in (first, second):
        # the server runs the merged weights, the trainer the adapters beside them: float32 sums in another order
        # (~3e-5 here, 2.2e-3 seen once on 2 busy cores), far under what the adapters' change moves (0.09)
        assert s["probe_max_abs_diff"] < 1e-2
    assert abs(second["probe_logprob_server"] - first["probe_logprob_server"]) > 1e-2


def test_bad_inputs_name_what_was_wrong(tiny_model, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    from trajfactory.training.common import TrainError

    with pytest.raises(TrainError, match="--data .*no such dataset directory"):
        train_grpo(tmp_path / "nope", tiny_model, tmp_path / "out", GRPOSettings())
    run = subprocess.run([sys.executable, "-m", "trajfactory.cli", "train", "grpo", "--data", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "out"), "--group-size", "1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and "group_size" in run.stderr
    assert not (tmp_path / "out").exists()
