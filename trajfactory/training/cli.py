"""`trajfactory train ...`: fine-tune a model on a dataset version's trajectories (SFT on the verified ones, DPO
on verified-versus-failed pairs) or train it online on its tasks (GRPO, SWE or web).

The main CLI mounts this app: `app.add_typer(train_app, name="train")`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from trajfactory.progress import setup_logging

train_app = typer.Typer(help="Train models on the factory's datasets (SFT, DPO and GRPO with TRL).",
                        no_args_is_help=True)
console = Console(stderr=True)

# Options the `train` commands share, with one wording.
DATA = typer.Option(..., "--data", help="A dataset directory (DATASET_ROOT/NAME) or a dataset repo on the Hugging "
                    "Face Hub (hf:OWNER/NAME, as `trajfactory dataset push` publishes it), optionally @vN for a "
                    "version; default: its newest version. A Hub version is downloaded once into the trajfactory "
                    "cache and checked against its manifest; $HF_TOKEN for private repos, $HF_ENDPOINT for another "
                    "Hub.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace a previous training output in --out (only once the new "
                         "one is complete).")
CLIP_TOOL_OUTPUT = typer.Option(None, "--clip-tool-output", help="Clip each tool output to this many characters (head "
                                "and tail kept) before fitting; default off.")
LORA_R = typer.Option(16, "--lora-r", help="LoRA rank.")
BF16 = typer.Option(None, "--bf16/--no-bf16", help="bf16 mixed precision; default: on when a CUDA GPU supports it, "
                    "off on CPU.")
GRADIENT_CHECKPOINTING = typer.Option(False, "--gradient-checkpointing", help="Trade ~50% more time for less "
                                      "activation memory (large models on a GPU).")
SEED = typer.Option(0, "--seed")
CHECKPOINT_EVERY = typer.Option(None, "--checkpoint-every", help="Save a checkpoint every N optimizer steps (the newest "
                                "kept in .OUT.partial until the run completes), so a killed run can --resume.")
RESUME = typer.Option(False, "--resume", help="Go on from the newest checkpoint a killed run of the same data, model "
                      "and settings left (see --checkpoint-every); without one, start afresh.")


def _train(make_settings, train, data: str, model: str, out: Path, overwrite: bool, **options) -> dict:
    """Settings from the options and one training run; bad options or inputs exit 2 with the message."""
    from pydantic import ValidationError

    from trajfactory.training.common import TrainError

    try:
        settings = make_settings()
    except ValidationError as exc:
        console.print(f"[red]bad option[/red]\n{exc}")
        raise typer.Exit(2) from None
    try:
        return train(data, model, out, settings, overwrite=overwrite, **options)
    except TrainError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None

SFT_HELP = (
    "Supervised fine-tuning (TRL's SFTTrainer) on the verified trajectories of one dataset version.\n\n"
    "Example: trajfactory train sft --data datasets/swe@v1 --model builtin:tiny --out runs/sft-tiny --max-steps 20\n\n"
    "Rows: each verified trajectory (tests passed for SWE, state checks for web) of the chosen splits, as a "
    "conversation with its tool schemas. The loss is on the assistant turns only (the model's chat template with "
    "`{% generation %}` markers; the tiny model's and the templates TRL knows are marked for you; otherwise pass "
    "--chat-template or --loss all).\n\n"
    "Web versions (--web-rows agent, the default): one row per step, holding exactly what the web agent is sent at "
    "that step (the goal with the site's accounts, the last 8 turns with their pages shortened to URL, the page "
    "clipped to --clip-tool-output, else 6,000 characters), the loss on that step's action only; --web-rows whole: "
    "one conversation per trajectory, every page whole in its turn.\n\n"
    "Context: a row longer than --max-length tokens is cut after the last assistant turn that fits; a row whose first "
    "assistant turn does not fit is dropped (a web step row is never cut: it fits or is dropped). Both are counted "
    "and listed in metrics.json.\n\n"
    "A long run: --checkpoint-every N keeps the newest checkpoint; if the run is killed, the same command with "
    "--resume goes on from it.\n\n"
    "OUT: a model directory that transformers and vLLM load as it is (`trajfactory model serve OUT`), plus "
    "metrics.json (loss per step, tokens, rows used / truncated / dropped, the data version and its content digest) "
    "and loss.png."
)


@train_app.command("sft", help=SFT_HELP)
def sft(
    data: str = DATA,
    model: str = typer.Option("builtin:tiny", "--model", help="The base model: `builtin:tiny` (the factory's own tiny "
                              "model) or a local model directory (config.json, weights, tokenizer)."),
    out: Path = typer.Option(..., "--out", help="Directory to write the trained model, metrics.json and loss.png "
                             "into (new or empty, or a previous output with --overwrite)."),
    overwrite: bool = OVERWRITE,
    split: list[str] = typer.Option(["train"], "--split", help="Split(s) to train on; repeat for more. "
                                    "validation / test stay held out by default; `all`: every split."),
    max_steps: int = typer.Option(-1, "--max-steps", help="Optimizer steps; -1 runs --epochs epochs."),
    epochs: float = typer.Option(1.0, "--epochs", help="Passes over the rows when --max-steps is -1."),
    batch_size: int = typer.Option(1, "--batch-size", help="Rows per micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    learning_rate: float = typer.Option(2e-5, "--lr", help="Peak learning rate (linear decay)."),
    max_length: int = typer.Option(2048, "--max-length", help="Longest training sequence in tokens (see Context)."),
    clip_tool_output: Optional[int] = CLIP_TOOL_OUTPUT,
    loss: str = typer.Option("assistant", "--loss", help="`assistant`: loss on assistant turns only; `all`: on every "
                             "token."),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help="A Jinja chat template with "
                                                 "{% generation %} markers to train with (training only; OUT keeps the "
                                                 "model's own template)."),
    web_rows: str = typer.Option("agent", "--web-rows", help="A web version's rows: `agent`, one per step as the "
                                 "web agent sees it; `whole`, one conversation per trajectory (see Web versions)."),
    lora: bool = typer.Option(False, "--lora", help="Train LoRA adapters (peft) and merge them into the saved "
                              "weights."),
    lora_r: int = LORA_R,
    bf16: Optional[bool] = BF16,
    gradient_checkpointing: bool = GRADIENT_CHECKPOINTING,
    seed: int = SEED,
    log_every: int = typer.Option(10, "--log-every", help="Log loss and tokens/s every N steps."),
    checkpoint_every: Optional[int] = CHECKPOINT_EVERY,
    resume: bool = RESUME,
) -> None:
    setup_logging()
    from trajfactory.settings.training import SFTSettings
    from trajfactory.training.sft import train_sft

    metrics = _train(
        lambda: SFTSettings(
            splits=split, max_steps=max_steps, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
            learning_rate=learning_rate, max_length=max_length, clip_tool_output_chars=clip_tool_output, loss=loss,
            chat_template=chat_template, web_rows=web_rows, lora=lora, lora_r=lora_r, bf16=bf16,
            gradient_checkpointing=gradient_checkpointing, seed=seed, log_every=log_every,
            checkpoint_every=checkpoint_every),
        train_sft, data, model, out, overwrite, resume=resume)
    ctx, tr = metrics["context"], metrics["training"]
    typer.echo(f"trained {tr['steps']} steps on {ctx['rows_used']} rows of {metrics['data']['dataset']}@"
               f"{metrics['data']['version']} ({ctx['rows_truncated']} truncated, {ctx['rows_dropped']} dropped); "
               f"final loss {tr['final_loss']:.4f}, {tr['tokens_per_s']} tokens/s")
    typer.echo(f"wrote {out} (metrics.json, loss.png)")


DPO_HELP = (
    "Preference training (DPO, TRL's DPOTrainer): teach a model to prefer the trajectory that passed verification "
    "over one that failed, for the same task.\n\n"
    "Example: trajfactory train dpo --data datasets/swe@v1 --model runs/sft-tiny --out runs/dpo-tiny --max-steps 20\n\n"
    "Pairs: for each task of the chosen splits, a verified trajectory (tests passed for SWE, state checks for web) as "
    "`chosen` and a failed one as `rejected`, after the same task prompt, with the tool schemas (TRL's conversational "
    "prompt / chosen / rejected form). A dataset has pairs when some task has both: run model rollouts with several "
    "samples per task (recipe: `oracle` and `model` in `rollout.policies`, `rollout.model.samples: 4`). Without "
    "any, the command says so and trains nothing.\n\n"
    "Reference model: the frozen --model (with --lora, the same model with its adapters turned off). Start from an SFT "
    "output for best results.\n\n"
    "Context: a prompt + completion longer than --max-length tokens is cut after the last whole assistant turn that "
    "fits; a pair whose first assistant turn does not fit is dropped. Both are counted and listed in metrics.json.\n\n"
    "OUT: a model directory that transformers and vLLM load as it is (`trajfactory model serve OUT`), plus "
    "metrics.json (loss and TRL's rewards / margins / accuracies per step, pairs used / truncated / dropped, the data "
    "version and its content digest) and loss.png."
)


@train_app.command("dpo", help=DPO_HELP)
def dpo(
    data: str = DATA,
    model: str = typer.Option("builtin:tiny", "--model", help="The model to train and the reference: `builtin:tiny` "
                              "or a local model directory (config.json, weights, tokenizer), e.g. an SFT output."),
    out: Path = typer.Option(..., "--out", help="Directory to write the trained model, metrics.json and loss.png "
                             "into (new or empty, or a previous output with --overwrite)."),
    overwrite: bool = OVERWRITE,
    split: list[str] = typer.Option(["train"], "--split", help="Split(s) to take pairs from; repeat for more. "
                                    "validation / test stay held out by default; `all`: every split."),
    beta: float = typer.Option(0.1, "--beta", help="How far the model may move from the reference; higher keeps it "
                               "closer."),
    max_pairs_per_task: int = typer.Option(4, "--max-pairs-per-task", help="At most this many (verified, failed) "
                                           "pairs per task."),
    max_steps: int = typer.Option(-1, "--max-steps", help="Optimizer steps; -1 runs --epochs epochs."),
    epochs: float = typer.Option(1.0, "--epochs", help="Passes over the pairs when --max-steps is -1."),
    batch_size: int = typer.Option(1, "--batch-size", help="Pairs per micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    learning_rate: float = typer.Option(1e-6, "--lr", help="Peak learning rate (linear decay); DPO wants a small one."),
    max_length: int = typer.Option(2048, "--max-length", help="Longest prompt + completion in tokens (see Context)."),
    clip_tool_output: Optional[int] = CLIP_TOOL_OUTPUT,
    lora: bool = typer.Option(False, "--lora", help="Train LoRA adapters (peft) and merge them into the saved "
                              "weights; the reference is then the model with the adapters off (no second copy)."),
    lora_r: int = LORA_R,
    bf16: Optional[bool] = BF16,
    gradient_checkpointing: bool = GRADIENT_CHECKPOINTING,
    seed: int = SEED,
    log_every: int = typer.Option(10, "--log-every", help="Log loss and tokens/s every N steps."),
    checkpoint_every: Optional[int] = CHECKPOINT_EVERY,
    resume: bool = RESUME,
) -> None:
    setup_logging()
    from trajfactory.training.dpo import train_dpo
    from trajfactory.settings.training import DPOSettings

    metrics = _train(
        lambda: DPOSettings(
            splits=split, beta=beta, max_pairs_per_task=max_pairs_per_task, max_steps=max_steps, epochs=epochs,
            batch_size=batch_size, grad_accum=grad_accum, learning_rate=learning_rate, max_length=max_length,
            clip_tool_output_chars=clip_tool_output, lora=lora, lora_r=lora_r, bf16=bf16,
            gradient_checkpointing=gradient_checkpointing, seed=seed, log_every=log_every,
            checkpoint_every=checkpoint_every),
        train_dpo, data, model, out, overwrite, resume=resume)
    ctx, tr = metrics["context"], metrics["training"]
    typer.echo(f"trained {tr['steps']} steps on {ctx['pairs_used']} pairs of {metrics['data']['dataset']}@"
               f"{metrics['data']['version']} ({ctx['pairs_truncated']} truncated, {ctx['pairs_dropped']} dropped); "
               f"final loss {tr['final_loss']:.4f}, reward margin {tr['final_rewards_margins']}, "
               f"reward accuracy {tr['final_rewards_accuracies']}")
    typer.echo(f"wrote {out} (metrics.json, loss.png)")


GRPO_HELP = (
    "Online RL (TRL's GRPOTrainer) with the factory as the environment, on the SWE or web tasks of one dataset "
    "version.\n\n"
    "Example: trajfactory train grpo --data datasets/swe@v1 --model runs/sft-tiny --out runs/grpo-tiny --max-steps 20 "
    "--group-size 4\n\n"
    "Each step rolls out --tasks-per-step tasks --group-size times: every episode runs the factory's model agent "
    "(text actions), generating with the model being trained (--generation), in a fresh sandbox of the task's image "
    "through the factory's episode loop; its submitted patch is verified by the task's tests in another fresh "
    "sandbox. Reward: 1 when the tests pass; otherwise the share of FAIL_TO_PASS tests that pass (--no-partial-credit: "
    "0). Advantages are normalized within each task's group; the clipped policy-gradient loss is on the tokens the "
    "model sampled (tool outputs masked), with a KL to the starting model when --beta > 0.\n\n"
    "Web tasks (a version with `web_tasks`, e.g. from `trajfactory web`): each episode runs the model web agent "
    "(text actions) in a fresh seeded site of the task's app and a fresh Chromium context, as `trajfactory eval` "
    "does; reward 1 when the task's state checks pass on the site's final state, else 0.\n\n"
    "Generation: --generation transformers (default) generates in the trainer's process; --generation vllm starts a "
    "vLLM server on the model being trained (the CPU build from scripts/setup-vllm.sh here, a CUDA vLLM on a GPU) and "
    "reloads the trainer's weights into it before every step's rollouts, checking them against the trainer's; the "
    "server stops when the run ends. With --lora the server serves the base with the adapters merged in.\n\n"
    "A long run: --checkpoint-every N keeps the newest checkpoint (and the episodes of its steps); if the run is "
    "killed, the same command with --resume goes on from it.\n\n"
    "OUT: a model directory that transformers and vLLM load as it is, plus metrics.json (per step: mean reward, "
    "reward std, loss, KL, episodes, sampled tokens; every episode with its verdict) and reward.png."
)


@train_app.command("grpo", help=GRPO_HELP)
def grpo(
    data: str = DATA,
    model: str = typer.Option("builtin:tiny", "--model", help="The model to train (and the KL reference): "
                              "`builtin:tiny` or a local model directory, e.g. an SFT output."),
    out: Path = typer.Option(..., "--out", help="Directory to write the trained model, metrics.json and reward.png "
                             "into (new or empty, or a previous output with --overwrite)."),
    overwrite: bool = OVERWRITE,
    split: list[str] = typer.Option(["train"], "--split", help="Split(s) whose tasks are rolled out; repeat for more, "
                                    "or `all`."),
    max_tasks: Optional[int] = typer.Option(None, "--max-tasks", help="At most this many tasks (task-id order)."),
    max_steps: int = typer.Option(2, "--max-steps", help="Optimizer steps."),
    group_size: int = typer.Option(2, "--group-size", help="Episodes per task in a group (at least 2)."),
    tasks_per_step: int = typer.Option(1, "--tasks-per-step", help="Tasks (groups) rolled out per step."),
    max_agent_steps: int = typer.Option(10, "--max-agent-steps", help="Step limit of one episode."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Tokens generated per agent turn."),
    max_observation_chars: Optional[int] = typer.Option(None, "--max-observation-chars", help="Clip what the model "
                                                        "sees of a tool output or web page to this many characters "
                                                        "(default: whole tool outputs; 1000 for web pages)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature of the rollouts."),
    learning_rate: float = typer.Option(1e-6, "--lr", help="Peak learning rate (linear decay)."),
    beta: float = typer.Option(0.0, "--beta", help="KL weight to the starting model; 0 keeps no reference model."),
    epsilon: float = typer.Option(0.2, "--epsilon", help="Clip range of the policy ratio."),
    partial_credit: bool = typer.Option(True, "--partial-credit/--no-partial-credit", help="A failed episode earns "
                                        "the share of FAIL_TO_PASS tests that pass (else 0)."),
    max_length: int = typer.Option(2048, "--max-length", help="Longest episode in tokens (capped at the model's "
                                   "context); an episode that reaches it ends as context_limit."),
    sandbox: str = typer.Option("auto", "--sandbox", help="Sandbox backend: auto, docker or local."),
    lora: bool = typer.Option(False, "--lora", help="Train LoRA adapters (peft), merged into the saved weights."),
    generation: str = typer.Option("transformers", "--generation", help="Where rollouts generate: `transformers` (in "
                                   "the trainer's process) or `vllm` (a vLLM server started on the model being "
                                   "trained, its weights reloaded from the trainer before every step; CPU build here, "
                                   "CUDA vLLM on a GPU; with --lora, the adapters merged in)."),
    vllm_gpu_memory_utilization: float = typer.Option(0.3, "--vllm-gpu-memory-utilization", help="With --generation "
                                                      "vllm on a GPU: the share of GPU memory the server takes."),
    bf16: Optional[bool] = BF16,
    seed: int = SEED,
    log_every: int = typer.Option(1, "--log-every", help="Log loss and tokens/s every N steps."),
    checkpoint_every: Optional[int] = CHECKPOINT_EVERY,
    resume: bool = RESUME,
) -> None:
    setup_logging()
    from trajfactory.training.grpo import train_grpo
    from trajfactory.settings.training import GRPOSettings

    metrics = _train(
        lambda: GRPOSettings(
            splits=split, max_tasks=max_tasks, max_steps=max_steps, group_size=group_size,
            tasks_per_step=tasks_per_step, max_agent_steps=max_agent_steps, max_new_tokens=max_new_tokens,
            max_observation_chars=max_observation_chars, temperature=temperature, learning_rate=learning_rate,
            beta=beta, epsilon=epsilon,
            partial_credit=partial_credit, max_length=max_length, sandbox={"backend": sandbox}, lora=lora, bf16=bf16,
            generation=generation, vllm_gpu_memory_utilization=vllm_gpu_memory_utilization,
            seed=seed, log_every=log_every, checkpoint_every=checkpoint_every),
        train_grpo, data, model, out, overwrite, resume=resume)
    tr = metrics["training"]
    rewards = [s["reward_mean"] for s in tr["per_step"]]
    typer.echo(f"trained {tr['steps']} GRPO steps on {len(metrics['data']['tasks'])} {metrics['data']['kind']} "
               f"task(s) of {metrics['data']['dataset']}@{metrics['data']['version']}: {tr['episodes']} episodes, mean reward "
               f"per step {rewards}, final loss {tr['final_loss']}")
    typer.echo(f"wrote {out} (metrics.json, reward.png)")
