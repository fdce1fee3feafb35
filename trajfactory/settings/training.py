"""Settings of `trajfactory train sft|dpo|grpo` and `trajfactory eval` (and the recipe's `train:` section): what to
train on, how long, with which options, and how to evaluate.

Defaults fit a short CPU run of the built-in tiny model; on a GPU raise `max_length`, `batch_size` and `max_steps`
(or set `epochs`), and turn on `bf16` / `lora` as the model needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from trajfactory.settings.agents import Section
from trajfactory.settings.sandbox import SandboxConfig


class TrainSettings(Section):
    """What every training run has: the data's splits, the context, the optimizer's steps and the device options."""

    splits: list[str] = Field(default_factory=lambda: ["train"])
    """Dataset splits whose verified trajectories are trained on (validation / test stay held out); `all`: every
    split."""
    max_length: int = Field(2048, ge=16)
    """Longest training sequence in tokens; longer rows follow the context policy (see `training/context.py`)."""
    clip_tool_output_chars: int | None = Field(None, ge=64)
    """Clip each observation (a tool output, a web page) to this many characters (head and tail kept) before fitting
    the context; None: off."""
    max_steps: int = Field(-1, ge=-1)
    """Optimizer steps to take; -1: run `epochs` epochs."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the rows (when `max_steps` is -1)."""
    batch_size: int = Field(1, ge=1)
    """Rows per device per micro-batch."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step."""
    learning_rate: float = Field(2e-5, gt=0)
    warmup_steps: float = Field(0.0, ge=0)
    """Learning-rate warm-up: a number of steps, or a fraction of all steps when below 1."""
    seed: int = 0
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights; they are merged into the saved model."""
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: str = "all-linear"
    """peft's `target_modules`: `all-linear`, or comma-separated module names (e.g. `q_proj,v_proj`)."""
    bf16: bool | None = None
    """bf16 mixed precision; None: on when a CUDA GPU supports it. True without such a GPU is an error."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~50% more time (measured on the tiny model)."""
    log_every: int = Field(10, ge=1)
    """Log loss and throughput every this many optimizer steps (every step's loss goes into metrics.json)."""
    checkpoint_every: int | None = Field(None, ge=1)
    """Save a checkpoint every this many optimizer steps (the newest kept, beside OUT until the run completes), so a
    killed run resumes from it (`resume`); None: no checkpoints."""


class SFTSettings(TrainSettings):
    """One supervised fine-tuning run (TRL's SFTTrainer) on a dataset version's verified trajectories."""

    loss: Literal["assistant", "all"] = "assistant"
    """`assistant`: loss on assistant turns only (needs a chat template with generation markers, see
    `chat_template`); `all`: loss on every token (system prompt, tool outputs and all)."""
    chat_template: Path | None = None
    """A Jinja chat template with `{% generation %}` markers to train with, for a model whose own template has none
    and that TRL cannot patch. Training only: the output keeps the model's own template."""
    web_rows: Literal["agent", "whole"] = "agent"
    """A web version's rows. `agent`: one row per step, holding what the web agent is sent at that step (the goal
    with the site's accounts, the last 8 turns with their pages shortened to URL, the page clipped to
    `clip_tool_output_chars`, else 6,000 characters), the loss on that step's action only (`datasets/web_steps.py`);
    `whole`: one row per trajectory, every page whole in its turn (clipped like a tool output)."""


class DPOSettings(TrainSettings):
    """One preference run (TRL's DPOTrainer) on pairs of a verified and a failed trajectory of the same task.

    The reference model is the frozen base (with `lora`, the base with the adapters disabled)."""

    learning_rate: float = Field(1e-6, gt=0)
    """Peak learning rate; DPO wants a small one (TRL's default)."""
    beta: float = Field(0.1, gt=0)
    """How far the policy may move from the reference: higher keeps it closer (TRL's `beta`)."""
    max_pairs_per_task: int = Field(4, ge=1)
    """At most this many (verified, failed) pairs per task, so a task with many samples does not dominate."""



class GRPOSettings(TrainSettings):
    """One online RL run (TRL's GRPOTrainer): groups of the factory's own SWE or web episodes per task, rewarded by
    the verifier's verdict (see `training/grpo.py` for the reward and the loss).

    Defaults fit a short CPU run of the tiny model; on a GPU raise `group_size`, `max_new_tokens` and `max_steps`."""

    max_steps: int = Field(2, ge=1)
    """Optimizer steps; each one rolls out `tasks_per_step` tasks × `group_size` episodes first."""
    learning_rate: float = Field(1e-6, gt=0)
    group_size: int = Field(2, ge=2)
    """Episodes per task in one group (TRL's `num_generations`); the advantage is normalized within the group."""
    tasks_per_step: int = Field(1, ge=1)
    """Tasks (groups) rolled out per optimizer step."""
    max_tasks: int | None = Field(None, ge=1)
    """Train on at most this many tasks of the splits (in task-id order); None: all."""
    max_agent_steps: int = Field(10, ge=1)
    """Step limit of one episode (actions and malformed replies)."""
    max_new_tokens: int = Field(64, ge=1)
    """Tokens the model may generate per turn."""
    max_observation_chars: int | None = Field(None, ge=100)
    """Observations shown to the model are clipped to this many characters: SWE tool outputs (None: whole) and the
    web page's accessibility tree (None: 1,000, see `training/grpo_web.py`)."""
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.0, ge=0)
    """Weight of the KL penalty to the frozen starting model (TRL's `beta`); 0: no reference model is kept."""
    epsilon: float = Field(0.2, gt=0)
    """Clip range of the policy ratio (TRL's `epsilon`)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW's decoupled weight decay (TRL's default: 0)."""
    partial_credit: bool = True
    """Reward of a failed episode: the share of its FAIL_TO_PASS tests that pass (False: 0). A pass is 1."""
    test_timeout_s: float = Field(120, gt=0)
    """Limit of one verification test run."""
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    generation: Literal["transformers", "vllm"] = "transformers"
    """How the rollouts generate: `transformers` in the trainer's process (`training/local_policy.py`), or `vllm` on a
    vLLM server the run starts from the model under training, whose weights follow the trainer's after every
    optimizer step (`training/vllm_policy.py`; with `lora`, the adapters merged into the served weights). vLLM: the CPU
    build here, a CUDA vLLM on a GPU."""
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, lt=1)
    """With `generation: vllm` on a GPU: the share of GPU memory vLLM takes (the trainer shares the GPU)."""
    vllm_startup_timeout_s: float = Field(600, gt=0)
    """With `generation: vllm`: how long the server may take to answer after its start."""


class EvalSettings(Section):
    """One evaluation: how many tasks and samples, the agent's sampling and budgets, the sandboxes."""

    samples: int = Field(1, ge=1)
    """Episodes per task and model (pass@k needs k of them)."""
    k: int | None = Field(None, ge=1)
    """The k of pass@k; None: `samples`."""
    max_tasks: int | None = Field(None, ge=1)
    """Evaluate at most this many tasks of the split (in task-id order); None: all."""
    max_steps: int = Field(20, ge=1)
    """Step limit of an episode."""
    concurrency: int = Field(2, ge=1)
    """Episodes in flight at once (each in its own sandbox)."""
    temperature: float = Field(0.8, ge=0)
    max_tokens: int = Field(512, ge=1)
    """Completion tokens of one model turn."""
    max_observation_chars: int | None = Field(None, ge=64)
    """Tool outputs sent to the model are clipped to this many characters, as training clipped them
    (`clip_tool_output_chars`); None: whole."""
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    """Repetition guard of the agent's sampling (OpenAI's `frequency_penalty`); 0: off."""
    actions: Literal["tool_calls", "text", "both"] = "both"
    """How the agent reads actions (`agents/model.py`): native tool calls, text, or both."""
    seed: int = 0
    """Sample s of a task uses seed `seed + s`, for both models."""
    max_model_len: int = Field(2048, ge=256)
    """Context of a served model, in tokens."""
    gpu_hour_price: float = Field(0.0, ge=0)
    """For the cost estimate of a served model (the client's usage record)."""
    test_timeout_s: float = Field(300, gt=0)
    """Limit of one verification test run."""
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    perturbations: list[Literal["tool_timeout", "missing_file", "contradictory_instruction", "no_op", "refuse"]] = \
        Field(default_factory=list)
    """The "meaner" eval set: perturbed variants of every task evaluated beside the plain ones, one per kind
    (`training/perturb.py` says what each changes and what counts as right); empty: the plain tasks only."""
    perturb_timeout_s: float = Field(3.0, ge=1)
    """Command limit of a `tool_timeout` variant's episodes, in seconds (the plain tasks keep `sandbox`'s); at least
    1, since a sandbox tells a timeout from a fast failure only when the command ran close to its limit."""


class TrainConfig(Section):
    """The recipe's `train:` section: the closed loop at the end of `trajfactory run`. The run's new dataset version
    (`data`: its SWE or its web dataset) trains `base_model` (SFT, then DPO and GRPO when set) on its `sft.splits`,
    and the result is evaluated against the untrained base on the held-out `eval_split` (SWE tasks in sandboxes, or
    web tasks in the browser), with the report's before/after table printed.

    Each step is cached by what it depends on: a training output is `OUT_ROOT/sft-KEY` (KEY: the dataset version's
    content digest, the base model, the settings), an evaluation `OUT_ROOT/eval-KEY`; a run that finds a complete
    one reuses it, and a killed training run resumes from its last checkpoint (`sft.checkpoint_every`)."""

    data: Literal["swe", "web"] = "swe"
    """Which of the run's datasets the loop trains and evaluates on: `swe` (needs `repos:`) or `web` (needs `web:`)."""
    base_model: str = "builtin:tiny"
    """The model to fine-tune and the baseline: `builtin:tiny` or a local model directory."""
    out_root: str = "trajfactory-out/train"
    """Where training outputs and evaluation reports go (relative paths are relative to the working directory)."""
    sft: SFTSettings = Field(default_factory=lambda: SFTSettings(checkpoint_every=100))
    dpo: DPOSettings | None = None
    """Preference training from the SFT output on (verified, failed) pairs of the same task; None: skip."""
    grpo: GRPOSettings | None = None
    """Online RL from the last output (SFT, or DPO) on the version's tasks, rewarded by the verifier (tests, or the web
    task's state checks); None: skip."""
    eval: EvalSettings = Field(default_factory=EvalSettings)
    eval_split: Literal["train", "validation", "test", "all"] = "test"
    """Which tasks the trained model and the baseline are evaluated on (held out: `test` or `validation`)."""
    baseline: bool = True
    """Evaluate the untrained `base_model` beside the trained one (the "before" column)."""
