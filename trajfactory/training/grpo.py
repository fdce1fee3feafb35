"""`trajfactory train grpo`: online RL (GRPO) with the factory itself as the environment.

    metrics = train_grpo("datasets/swe@v1", "builtin:tiny", "runs/grpo-tiny", GRPOSettings(max_steps=2))

Each optimizer step rolls out `tasks_per_step` tasks (rebuilt from the version's `tasks` rows) `group_size` times.
Every episode is the factory's own: a fresh Docker (or bubblewrap) sandbox of the task's image, the one episode loop
(`executors/episode.py`), the SWE tools, and the model agent of `agents/model.py` (text actions) whose model is the
trainer's current model. It generates in-process with transformers (`training/local_policy.py`), or with
`generation: vllm` on a vLLM server the run starts, whose weights follow the trainer's before every step's rollouts
(`training/vllm_policy.py`: the CPU build here, a CUDA vLLM on a GPU; same token records). The final patch is
then verified by the task's tests in another fresh sandbox (`SweEnvironment.evaluate`), exactly as a dataset build
does. On a version of web tasks (`web_tasks` rows, no SWE tasks) the episodes are web episodes instead: the model web
agent in a fresh seeded site and Chromium context, verified by the task's state checks, as `trajfactory eval` runs
them (`training/grpo_web.py`, with its reward).

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
loss, KL when `beta` > 0, episodes, tokens; every episode with its verdict) and reward.png. With `checkpoint_every`
a killed run resumes like `train sft` (`resume`, the same run key): the trainer's checkpoint holds the weights,
optimizer and RNG; the episode records of the steps it holds come from `.OUT.partial/trainer/episodes.jsonl`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trajfactory.agents.model import ModelPolicy
from trajfactory.executors import get_backend, task_environments
from trajfactory.executors.episode import run_episode_sync
from trajfactory.executors.swe_env import SweEnvironments
from trajfactory.schema import Task, Verdict, WebTask
from trajfactory.settings import EpisodeLimits, ModelPolicyConfig
from trajfactory.training.common import (TrainError, check_out, checkpointing_flag, data_source, device_flags,
                                         config_dtype, load_model, open_version, peft_config, quiet_progress_bars,
                                         resolve_model, run_key, save_flags, step_logger, train_and_write)
from trajfactory.training.eval_web import held_out_web_tasks, is_web_version
from trajfactory.training.evaluate import EvalError, held_out_tasks
from trajfactory.training.grpo_web import WEB_REWARD_DEFINITION, WebEpisodes
from trajfactory.training.local_policy import LocalChatClient, TokenChatClient
from trajfactory.training.vllm_policy import VLLMGeneration
from trajfactory.settings.training import GRPOSettings

log = logging.getLogger(__name__)
KIND = "grpo"  # in the run key

GENERATION = {"transformers": "transformers (in-process)",
              "vllm": "vLLM server (weights reloaded from the trainer before every step's rollouts)"}
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



class SweEpisodes:
    """SWE episodes of the model under training: sandboxes of the tasks' images (`open` starts the environments),
    the SWE model agent with text actions, the task's tests as the verifier."""

    def __init__(self, tasks: list[Task], settings: GRPOSettings):
        self.settings = settings
        self.handles = task_environments(tasks, settings.sandbox.backend)
        self.agent = ModelPolicyConfig(actions="text", temperature=settings.temperature,
                                       max_tokens=settings.max_new_tokens, seed=settings.seed,
                                       max_observation_chars=settings.max_observation_chars,
                                       limits=EpisodeLimits(max_steps=settings.max_agent_steps))
        self.envs: SweEnvironments | None = None

    @contextmanager
    def open(self) -> Iterator[SweEpisodes]:
        with SweEnvironments(get_backend(self.settings.sandbox.backend), self.handles, self.settings.sandbox) as envs:
            self.envs = envs
            try:
                yield self
            finally:
                self.envs = None

    def run(self, client: TokenChatClient, task: Task, sample: int) -> tuple[Verdict, dict[str, Any]]:
        """One episode of `task` (sample `sample`: its own seed), verified by the task's tests, and its record."""
        envs = self.envs
        policy = ModelPolicy(client, self.agent.for_sample(sample))
        ep = run_episode_sync(envs(task), policy, task, sample=sample,
                              limits=EpisodeLimits(max_steps=self.settings.max_agent_steps))
        verdict = envs(task).evaluate_sync(task, ep.trajectory, timeout=self.settings.test_timeout_s)
        tr = ep.trajectory
        return verdict, {"task_id": task.task_id, "kind": "swe", "sample": sample, "trajectory_id": tr.trajectory_id,
                         "exit_status": tr.exit_status, "agent_steps": len(tr.steps), "passed": verdict.passed,
                         "verifier": verdict.verifier,
                         "FAIL_TO_PASS": [o.model_dump() for o in verdict.evidence.FAIL_TO_PASS],
                         "patch_chars": len(tr.final.patch)}

    def reward(self, verdict: Verdict | None) -> float:
        return reward_of(verdict, self.settings.partial_credit)


class FactoryRollouts:
    """TRL's `rollout_func`: one factory episode per prompt (a prompt is a task id; TRL repeats each `group_size`
    times), verified by the task's verifier (`episodes`: `SweEpisodes` or `grpo_web.WebEpisodes`). `episodes` keeps
    a record of each for metrics.json; with a `journal` file each record is also appended there as it ends, so a
    resumed run keeps the records of the steps its checkpoint holds."""

    def __init__(self, tasks: list[Task | WebTask], tokenizer, settings: GRPOSettings, max_context: int, env=None,
                 generation: VLLMGeneration | None = None):
        self.tasks = {t.task_id: t for t in tasks}
        self.tokenizer, self.settings, self.max_context = tokenizer, settings, max_context
        self.env = env or SweEpisodes(tasks, settings)
        self.generation = generation
        """None: generate in-process (`LocalChatClient`); else on that vLLM server, synced before each step."""
        self._synced_step: int | None = None
        self.episodes: list[dict[str, Any]] = []
        self.journal: Path | None = None

    def keep_journal(self, path: Path) -> None:
        """Append every episode's record to `path`; the records already there (a killed run's) are taken up."""
        self.journal = path
        if path.is_file():
            self.episodes = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _record(self, record: dict[str, Any]) -> None:
        self.episodes.append(record)
        if self.journal is not None:
            with self.journal.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def _forget_after(self, step: int) -> None:
        """Drop the records of steps after `step` (the killed run went past its checkpoint: they are redone)."""
        kept = [e for e in self.episodes if e["step"] <= step]
        if len(kept) != len(self.episodes):
            self.episodes = kept
            if self.journal is not None:
                self.journal.write_text("".join(json.dumps(e) + "\n" for e in kept))

    def __call__(self, prompts: list[str], trainer) -> dict[str, list]:
        lm = trainer.accelerator.unwrap_model(trainer.model)
        was_training = lm.training
        step = trainer.state.global_step + 1
        if self.generation is None:
            client = LocalChatClient(lm, self.tokenizer, max_context=self.max_context, name=lm.name_or_path or "local")
        else:
            if self._synced_step != step:  # the weights of the last optimizer step reach the server
                self.generation.sync(lm, step)
                self._synced_step = step
            client = self.generation.client()
        self._forget_after(step - 1)
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": [],
                                "verifier_reward": []}
        try:
            with self.env.open():
                for task_id in prompts:
                    task = self.tasks[task_id]
                    sample = len(self.episodes)  # its own seed: the episodes of a group differ
                    started = time.monotonic()
                    client.start_episode()
                    verdict, record = self.env.run(client, task, sample)
                    rollout = client.rollout()
                    if not rollout.completion_ids:  # no turn ran (e.g. the first prompt overflowed the context)
                        eos = self.tokenizer.eos_token_id
                        rollout.prompt_ids = rollout.prompt_ids or [eos]
                        rollout.completion_ids, rollout.env_mask, rollout.logprobs = [eos], [0], [0.0]
                    reward = self.env.reward(verdict)
                    sampled = [lp for lp, m in zip(rollout.logprobs, rollout.env_mask, strict=True) if m]
                    self._record({"step": step, **record, "turns": rollout.turns,
                                  "sampled_tokens": len(sampled), "reward": reward,
                                  "sampled_logprob_mean": round(sum(sampled) / len(sampled), 4) if sampled else None,
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
        weight_decay=settings.weight_decay,
        temperature=settings.temperature, use_vllm=False, logging_steps=1, report_to=[], **save_flags(settings),
        seed=settings.seed, disable_tqdm=True, **device_flags(settings),
        **checkpointing_flag(GRPOConfig, settings))
    rows = Dataset.from_list([{"prompt": t} for t in task_ids])
    return GRPOTrainer(model=lm, reward_funcs=[verifier_reward], args=config, train_dataset=rows,
                       processing_class=tokenizer, rollout_func=rollout_func,
                       peft_config=peft_config(settings) if settings.lora else None)


def load_tasks(data: str | Path, splits: list[str], max_tasks: int | None
               ) -> tuple[list[Task] | list[WebTask], dict[str, Any]]:
    """The tasks of `splits` of a dataset version, in task-id order, and what identifies that data: its web tasks
    with state checks when it is a version of web tasks (`eval_web.is_web_version`), else its SWE tasks."""
    web = is_web_version(data)
    tasks: dict[str, Task | WebTask] = {}
    try:
        for split in splits:
            found = held_out_web_tasks(data, split)[0] if web else held_out_tasks(data, split)[0]
            tasks.update({t.task_id: t for t in found})
    except EvalError as exc:
        raise TrainError(str(exc)) from None
    store, version, _ = open_version(data)
    chosen = sorted(tasks.values(), key=lambda t: t.task_id)[:max_tasks]
    return chosen, {**data_source(store, version, splits), "kind": "web" if web else "swe",
                    "tasks": [t.task_id for t in chosen]}


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


def train_grpo(data: str | Path, model: str | Path, out: str | Path, settings: GRPOSettings | None = None, *,
               overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train `model` with GRPO on the SWE or web tasks of `data` (`DIR[@vN]`) and write OUT (module docstring).

    Returns what metrics.json holds. Raises TrainError for bad inputs, before any episode. With `resume`, a run of
    the same data, model and settings killed after a checkpoint (`checkpoint_every`) goes on from it, with the
    episode records of the steps the checkpoint holds."""
    import torch
    from transformers import set_seed

    settings = settings or GRPOSettings()
    quiet_progress_bars()
    out = Path(out)
    model_dir = resolve_model(model)
    check_out(out, overwrite, model_dir, resume)
    tasks, source = load_tasks(data, settings.splits, settings.max_tasks)
    set_seed(settings.seed)
    # Full fine-tuning keeps fp32 master weights (OUT is saved in the base's dtype); LoRA leaves the base as it is.
    tokenizer, lm = load_model(model_dir, model, dtype=None if settings.lora else torch.float32)
    if not tokenizer.chat_template:
        raise TrainError(f"--model {model}: the tokenizer has no chat template; the agent's turns need one")
    max_context = min(settings.max_length, getattr(lm.config, "max_position_embeddings", settings.max_length))
    web = source["kind"] == "web"
    generation = VLLMGeneration(
        model_dir, tokenizer, max_context=max_context, served_dtype=config_dtype(model_dir), seed=settings.seed,
        gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        startup_timeout_s=settings.vllm_startup_timeout_s) if settings.generation == "vllm" else None
    rollouts = FactoryRollouts(tasks, tokenizer, settings, max_context, WebEpisodes(settings) if web else None,
                               generation=generation)
    step_log = step_logger(settings.log_every, keep=("reward", "reward_std", "kl", "num_tokens"))
    started = time.monotonic()

    def build(work: Path):
        work.mkdir(parents=True, exist_ok=True)
        rollouts.keep_journal(work / "episodes.jsonl")
        return build_trainer(lm, tokenizer, [t.task_id for t in tasks], rollouts, settings, work)

    def describe(trainer, result) -> dict[str, Any]:
        steps = _step_metrics(step_log.steps, rollouts.episodes)
        return {"data": source, "model": {"base": str(model), "base_dir": str(model_dir.resolve())},
                "settings": settings.model_dump(mode="json"),
                "reward": WEB_REWARD_DEFINITION if web else REWARD_DEFINITION,
                "algorithm": {"trainer": "trl.GRPOTrainer + rollout_func", "loss_type": trainer.args.loss_type,
                              "scale_rewards": trainer.args.scale_rewards, "beta": settings.beta,
                              "epsilon": settings.epsilon, "generation": GENERATION[settings.generation]},
                **({"generation": generation.summary()} if generation is not None else {}),
                "training": {"steps": result.global_step, "seconds": round(time.monotonic() - started, 1),
                             "episodes": len(rollouts.episodes),
                             "sampled_tokens": sum(e["sampled_tokens"] for e in rollouts.episodes),
                             "final_loss": steps[-1]["loss"] if steps else None, "per_step": steps},
                "episodes": rollouts.episodes}

    try:
        metrics = train_and_write(
            out, build, step_log, describe, key=run_key(KIND, source["content_digest"], model, settings),
            resume=resume, checkpoints=settings.checkpoint_every is not None, tokenizer=tokenizer, model_dir=model_dir,
            template=tokenizer.chat_template, lora=settings.lora, title="mean verifier reward per step",
            curve=("reward.png", "reward"))
    finally:
        if generation is not None:
            generation.close()  # the server stops, however the run ends
    log.info("GRPO: %d episodes", metrics["training"]["episodes"])
    return metrics
