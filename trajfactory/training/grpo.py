"""`trajfactory train grpo`: online RL (GRPO) with the factory itself as the environment.

    metrics = train_grpo("datasets/swe@v1", "builtin:tiny", "runs/grpo-tiny", GRPOSettings(max_steps=2))

Each optimizer step rolls out `tasks_per_step` tasks (rebuilt from the version's `tasks` rows) `group_size` times.
Every episode is the factory's own: a fresh Docker (or bubblewrap) sandbox of the task's image, the one episode loop
(`executors/episode.py`), the SWE tools, and the model agent of `agents/model.py` (text actions) whose model is the
trainer's current model, generating in-process with transformers (`training/local_policy.py`). The final patch is
then verified by the task's tests in another fresh sandbox (`SweEnvironment.evaluate`), exactly as a dataset build
does.

Reward (`reward_of`): 1.0 when the verifier passes the episode; otherwise, with `partial_credit`, the share of the
task's FAIL_TO_PASS tests that pass under the submitted patch (0 when the patch was refused, did not apply, or the
episode did not submit: the verifier ran no test of it then); without it, 0.

Why TRL's GRPOTrainer with `rollout_func` (TRL 1.16): the hook hands the prompts of a batch to our function and takes
back, per episode, `prompt_ids`, `completion_ids`, `logprobs` and an `env_mask` (1 on sampled tokens, 0 on the
tokens the environment added), plus extra fields that reach the reward functions. That is exactly a multi-turn
episode as one token sequence, so TRL computes the group-normalized advantages (`scale_rewards="group"`:
(r - mean) / (std + 1e-4) per group, `group_advantages` below), the clipped policy-gradient loss on the sampled
tokens only (`loss_type="dapo"`, clip `epsilon`) and, with `beta` > 0, the KL to the frozen starting model. TRL's
other hook, `environment_factory`, runs its OWN tool loop (tool calls parsed by the chat template's response schema,
no episode limits, no malformed-reply recovery, no `submit`, no verifier), so it would bypass the factory's episode
protocol; `rollout_func` keeps it.

OUT, like `train sft`: a model directory vLLM serves as it is, metrics.json (per step: mean reward, reward std,
loss, KL when `beta` > 0, episodes, tokens; every episode with its verdict) and reward.png.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from trajfactory.agents.model import ModelPolicy
from trajfactory.executors import get_backend
from trajfactory.executors.base import EnvironmentHandle
from trajfactory.executors.episode import run_episode_sync
from trajfactory.executors.swe_env import SweEnvironments
from trajfactory.schema import Task, Verdict
from trajfactory.settings import EpisodeLimits, ModelPolicyConfig
from trajfactory.training.common import (TrainError, check_out, checkpointing_flag, config_dtype, data_source,
                                         device_flags, load_model, open_version, partial_dir, peft_config,
                                         quiet_progress_bars, replace_dir, resolve_model, run_key, save_model,
                                         step_logger)
from trajfactory.training.evaluate import EvalError, held_out_tasks
from trajfactory.training.local_policy import LocalChatClient, Rollout
from trajfactory.training.plot import loss_curve_png
from trajfactory.settings.training import GRPOSettings

log = logging.getLogger(__name__)
KIND = "grpo"  # in the run key

REWARD_DEFINITION = ("1.0 when the task's tests pass the episode's submitted patch (the verifier's verdict); "
                     "otherwise the share of FAIL_TO_PASS tests that pass under it (partial_credit), or 0")


# ---------------------------------------------------------------- pure functions: reward and advantage


def reward_of(verdict: Verdict | None, partial_credit: bool = True) -> float:
    """The reward of one episode from its verdict (module docstring)."""
    if verdict is None:
        return 0.0
    if verdict.passed:
        return 1.0
    if not partial_credit or verdict.evidence.refused:
        return 0.0
    f2p = verdict.evidence.FAIL_TO_PASS
    return sum(o.outcome.lower() == "passed" for o in f2p) / len(f2p) if f2p else 0.0


def group_advantages(rewards: list[float], group_size: int) -> list[float]:
    """GRPO's advantage as TRL computes it (`scale_rewards="group"`): each reward minus its group's mean, over the
    group's (unbiased) standard deviation + 1e-4. A group whose rewards are all equal has advantage 0: no signal."""
    if len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size}")
    out: list[float] = []
    for i in range(0, len(rewards), group_size):
        group = rewards[i:i + group_size]
        mean = sum(group) / group_size
        std = (sum((r - mean) ** 2 for r in group) / (group_size - 1)) ** 0.5
        out += [(r - mean) / (std + 1e-4) for r in group]
    return out


# ---------------------------------------------------------------- the rollout hook


def environments_of(tasks: list[Task], backend: str) -> dict[str, EnvironmentHandle]:
    """Each repository's sandbox environment, from the image its task rows name."""
    name = get_backend(backend).name
    return {t.environment.repo: EnvironmentHandle(backend=name, name=t.environment.image_name, repo=t.environment.repo,
                                                  commit=t.environment.base_commit) for t in tasks}


class FactoryRollouts:
    """TRL's `rollout_func`: one factory episode per prompt (a prompt is a task id; TRL repeats each `group_size`
    times), verified by the task's tests. `episodes` keeps a record of each for metrics.json."""

    def __init__(self, tasks: list[Task], tokenizer, settings: GRPOSettings, max_context: int):
        self.tasks = {t.task_id: t for t in tasks}
        self.tokenizer, self.settings, self.max_context = tokenizer, settings, max_context
        self.handles = environments_of(tasks, settings.sandbox.backend)
        self.agent = ModelPolicyConfig(actions="text", temperature=settings.temperature,
                                       max_tokens=settings.max_new_tokens, seed=settings.seed,
                                       limits=EpisodeLimits(max_steps=settings.max_agent_steps))
        self.episodes: list[dict[str, Any]] = []

    def episode(self, envs: SweEnvironments, client: LocalChatClient, task: Task, sample: int
                ) -> tuple[Rollout, Verdict, dict[str, Any]]:
        client.start_episode()
        policy = ModelPolicy(client, self.agent.for_sample(sample))
        ep = run_episode_sync(envs(task), policy, task, sample=sample,
                              limits=EpisodeLimits(max_steps=self.settings.max_agent_steps))
        verdict = envs(task).evaluate_sync(task, ep.trajectory, timeout=self.settings.test_timeout_s)
        rollout = client.rollout()
        tr = ep.trajectory
        return rollout, verdict, {"task_id": task.task_id, "sample": sample, "trajectory_id": tr.trajectory_id,
                                  "exit_status": tr.exit_status, "agent_steps": len(tr.steps), "turns": rollout.turns,
                                  "passed": verdict.passed, "verifier": verdict.verifier,
                                  "FAIL_TO_PASS": [o.model_dump() for o in verdict.evidence.FAIL_TO_PASS],
                                  "sampled_tokens": sum(rollout.env_mask), "patch_chars": len(tr.final.patch)}

    def __call__(self, prompts: list[str], trainer) -> dict[str, list]:
        lm = trainer.accelerator.unwrap_model(trainer.model)
        was_training = lm.training
        client = LocalChatClient(lm, self.tokenizer, max_context=self.max_context, name=lm.name_or_path or "local")
        step = trainer.state.global_step + 1
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": [],
                                "verifier_reward": []}
        backend = get_backend(self.settings.sandbox.backend)
        try:
            with SweEnvironments(backend, self.handles, self.settings.sandbox) as envs:
                for task_id in prompts:
                    task = self.tasks[task_id]
                    sample = len(self.episodes)  # its own seed: the episodes of a group differ
                    started = time.monotonic()
                    rollout, verdict, record = self.episode(envs, client, task, sample)
                    if not rollout.completion_ids:  # no turn ran (e.g. the first prompt overflowed the context)
                        eos = self.tokenizer.eos_token_id
                        rollout.prompt_ids = rollout.prompt_ids or [eos]
                        rollout.completion_ids, rollout.env_mask, rollout.logprobs = [eos], [0], [0.0]
                    reward = reward_of(verdict, self.settings.partial_credit)
                    self.episodes.append({"step": step, **record, "reward": reward,
                                          "seconds": round(time.monotonic() - started, 2)})
                    log.info("step %d episode %d (task %s): %s after %d agent step(s), reward %.3f", step, sample,
                             task_id[:12], record["exit_status"], record["agent_steps"], reward)
                    out["prompt_ids"].append(rollout.prompt_ids)
                    out["completion_ids"].append(rollout.completion_ids)
                    out["logprobs"].append(rollout.logprobs)
                    out["env_mask"].append(rollout.env_mask)
                    out["verifier_reward"].append(reward)
        finally:
            lm.train(was_training)
        return out


def verifier_reward(prompts, completions, verifier_reward: list[float], **_: Any) -> list[float]:
    """TRL reward function: the verifier's reward, computed in the rollout (`FactoryRollouts`)."""
    return list(verifier_reward)


# ---------------------------------------------------------------- the trainer


def build_trainer(lm, tokenizer, task_ids: list[str], rollout_func, settings: GRPOSettings, output_dir: Path):
    """TRL's GRPOTrainer on `task_ids` (the prompts), with the factory's rollouts and the verifier's reward."""
    import os

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental; we chose it
    batch = settings.group_size * settings.tasks_per_step
    config = GRPOConfig(
        output_dir=str(output_dir), max_steps=settings.max_steps, learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=settings.grad_accum, num_generations=settings.group_size,
        max_completion_length=settings.max_length, beta=settings.beta, epsilon=settings.epsilon,
        temperature=settings.temperature, use_vllm=False, logging_steps=1, save_strategy="no", report_to=[],
        seed=settings.seed, disable_tqdm=True, **device_flags(settings),
        **checkpointing_flag(GRPOConfig, settings))
    rows = Dataset.from_list([{"prompt": t} for t in task_ids])
    return GRPOTrainer(model=lm, reward_funcs=[verifier_reward], args=config, train_dataset=rows,
                       processing_class=tokenizer, rollout_func=rollout_func,
                       peft_config=peft_config(settings) if settings.lora else None)


def load_tasks(data: str | Path, splits: list[str], max_tasks: int | None) -> tuple[list[Task], dict[str, Any]]:
    """The SWE tasks of `splits` of a dataset version, in task-id order, and what identifies that data."""
    tasks: dict[str, Task] = {}
    try:
        for split in splits:
            tasks.update({t.task_id: t for t in held_out_tasks(data, split)[0]})
    except EvalError as exc:
        raise TrainError(str(exc)) from None
    store, version, _ = open_version(data)
    chosen = sorted(tasks.values(), key=lambda t: t.task_id)[:max_tasks]
    return chosen, {**data_source(store, version, splits), "tasks": [t.task_id for t in chosen]}


def _step_metrics(step_log: list[dict[str, Any]], episodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    steps = []
    for s in step_log:
        mine = [e for e in episodes if e["step"] == s["step"]]
        steps.append({"step": s["step"], "reward_mean": s.get("reward"), "reward_std": s.get("reward_std"),
                      "loss": s["loss"], **({"kl": s["kl"]} if "kl" in s else {}), "episodes": len(mine),
                      "passed": sum(e["passed"] for e in mine),
                      "sampled_tokens": sum(e["sampled_tokens"] for e in mine),
                      "learning_rate": s.get("learning_rate"), "seconds": s["seconds"]})
    return steps


def train_grpo(data: str | Path, model: str | Path, out: str | Path, settings: GRPOSettings | None = None,
               overwrite: bool = False) -> dict[str, Any]:
    """Train `model` with GRPO on the SWE tasks of `data` (`DIR[@vN]`) and write OUT (module docstring).

    Returns what metrics.json holds. Raises TrainError for bad inputs, before any episode."""
    import torch
    from transformers import set_seed

    settings = settings or GRPOSettings()
    quiet_progress_bars()
    out = Path(out)
    model_dir = resolve_model(model)
    check_out(out, overwrite, model_dir)
    tasks, source = load_tasks(data, settings.splits, settings.max_tasks)
    set_seed(settings.seed)
    # Full fine-tuning keeps fp32 master weights (OUT is saved in the base's dtype); LoRA leaves the base as it is.
    tokenizer, lm = load_model(model_dir, model, dtype=None if settings.lora else torch.float32)
    if not tokenizer.chat_template:
        raise TrainError(f"--model {model}: the tokenizer has no chat template; the agent's turns need one")
    max_context = min(settings.max_length, getattr(lm.config, "max_position_embeddings", settings.max_length))
    rollouts = FactoryRollouts(tasks, tokenizer, settings, max_context)
    partial, _ = partial_dir(out)
    try:
        trainer = build_trainer(lm, tokenizer, [t.task_id for t in tasks], rollouts, settings, partial / "trainer")
        step_log = step_logger(settings.log_every, keep=("reward", "reward_std", "kl", "num_tokens"))
        trainer.add_callback(step_log)
        started = time.monotonic()
        result = trainer.train()
        steps = _step_metrics(step_log.steps, rollouts.episodes)
        metrics = {"run_key": run_key(KIND, source["content_digest"], model, settings), "data": source,
                   "model": {"base": str(model), "base_dir": str(model_dir.resolve())},
                   "settings": settings.model_dump(mode="json"), "reward": REWARD_DEFINITION,
                   "algorithm": {"trainer": "trl.GRPOTrainer + rollout_func", "loss_type": trainer.args.loss_type,
                                 "scale_rewards": trainer.args.scale_rewards, "beta": settings.beta,
                                 "epsilon": settings.epsilon, "generation": "transformers (in-process)"},
                   "training": {"steps": result.global_step, "seconds": round(time.monotonic() - started, 1),
                                "episodes": len(rollouts.episodes),
                                "sampled_tokens": sum(e["sampled_tokens"] for e in rollouts.episodes),
                                "final_loss": steps[-1]["loss"] if steps else None, "per_step": steps},
                   "episodes": rollouts.episodes}
        shutil.rmtree(partial / "trainer", ignore_errors=True)
        save_model(trainer, tokenizer, model_dir, tokenizer.chat_template, partial, config_dtype(model_dir))
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        loss_curve_png([(s["step"], s["reward_mean"] or 0.0) for s in steps], partial / "reward.png",
                       title="mean verifier reward per step")
        replace_dir(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("GRPO model written to %s (%d steps, %d episodes)", out, metrics["training"]["steps"],
             metrics["training"]["episodes"])
    return metrics
