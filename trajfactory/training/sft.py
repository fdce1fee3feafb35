"""Supervised fine-tuning on a dataset version's verified trajectories, with TRL's `SFTTrainer`.

    train_sft("datasets/swe@v1", "builtin:tiny", "runs/sft-tiny", SFTSettings(max_steps=4))

The rows are `datasets.formats.trl_sft_rows` (conversational, with the tool schemas as a JSON string), verified by
the verdict of record (tests for SWE, state checks for web; a judge's abstention never vetoes), from the splits in
the settings (`train` by default). On a web version they are, by default (`web_rows: agent`), one prompt-completion
row per step, exactly as the web agent is sent it (`datasets/web_steps.py`), and TRL puts the loss on the completion
(that step's action) only. The loss is on assistant turns only (see `training/context.py` for the chat template with
generation markers and for the context policy that makes each row fit `max_length`). metrics.json's
`data.rows_view` says which rows were used: `agent` (web steps) or `whole` (one conversation per trajectory).

OUT/ is a model directory that transformers and vLLM load as it is:
    config.json, model.safetensors, generation_config.json   the trained weights (LoRA adapters merged in)
    tokenizer files and chat template                        copied from the base model (its own template)
    metrics.json                                             loss per step, tokens, rows used / truncated / dropped,
                                                             the data version and its content digest, the settings
    loss.png                                                 the loss curve
It is written in a sibling directory and renamed into place when training succeeded, so a failed or killed run
never leaves a half-written OUT.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from trajfactory.datasets import formats, web_steps
from trajfactory.settings import WebAgentConfig
from trajfactory.progress import Progress
from trajfactory.training.common import (TrainError, cap_max_length, check_out, checkpointing_flag, data_source,
                                         device_flags, in_splits, load_model, open_version, peft_config,
                                         quiet_progress_bars, resolve_model, run_key, save_flags, step_logger,
                                         train_and_write)
from trajfactory.training.context import TemplateError, check_renders_alike, fit_rows, training_template
from trajfactory.settings.training import SFTSettings

log = logging.getLogger(__name__)
KIND = "sft"  # in the run key
MIN_PAGE_CHARS = WebAgentConfig.model_fields["max_observation_chars"].metadata[0].ge


# ---- inputs ---------------------------------------------------------------------------------------------------------

def load_rows(data: str | Path, splits: list[str], web_rows: str = "agent", clip: int | None = None
              ) -> tuple[list[dict], dict[str, Any]]:
    """The verified SFT rows of a dataset version (the latest unless `@vN`), and what identifies that data.

    On a web version with `web_rows="agent"`, one prompt-completion row per step as the web agent sees it (pages
    clipped to `clip`, else the agent's default); otherwise one conversation per trajectory."""
    store, version, read = open_version(data)
    trajectories = read("trajectories")
    web_tasks = read("web_tasks")
    view = web_steps.VIEW if web_rows == web_steps.VIEW and web_tasks and not read("tasks") else "whole"
    agent = None
    if view == web_steps.VIEW:
        agent = _agent_config(clip)
        rows = web_steps.trl_web_step_rows(trajectories, site_accounts(web_tasks), agent, read("verdicts"),
                                           read("web_verification"), read("reviews"))
    else:
        rows = formats.trl_sft_rows(trajectories, read("verdicts"), read("web_verification"), read("reviews"))
    ref = f"{store.root}@{version}"
    if not rows:
        raise TrainError(f"--data {ref}: no verified trajectories to train on ({len(trajectories)} trajectories, "
                         "none verified by tests or state checks, or all rejected in review)")
    chosen = [r for r in rows if in_splits(r["split"], splits)]
    if not chosen:
        found = sorted({r["split"] for r in rows})
        raise TrainError(f"--data {ref}: no verified trajectories in split(s) {', '.join(splits)}; the "
                         f"{len(rows)} verified ones are in {', '.join(found)} (choose with --split)")
    source = {**data_source(store, version, splits), "verified_rows": len(rows), "rows_in_splits": len(chosen),
              "rows_view": view, "trajectories_in_splits": len({r["trajectory_id"] for r in chosen})}
    if agent is not None:
        source["web_agent"] = {"actions": agent.actions, "max_observation_chars": agent.max_observation_chars,
                               "history_turns": agent.history_turns}
    return chosen, source


def _agent_config(clip: int | None) -> WebAgentConfig:
    """The web agent the step rows render for: text actions, pages clipped to `clip` (else its default)."""
    if clip is not None and clip < MIN_PAGE_CHARS:
        raise TrainError(f"--clip-tool-output {clip}: a web step row clips the page as the web agent does, to at "
                         f"least {MIN_PAGE_CHARS} characters; raise it, or pass --web-rows whole")
    return WebAgentConfig(actions="text", **({"max_observation_chars": clip} if clip else {}))


def site_accounts(web_tasks: list[dict]) -> dict[str, dict[str, str]]:
    """task id -> the test accounts of its site as seeded for it (the site adapter's `accounts(seed)`)."""
    from trajfactory.executors.webapps import get_adapter

    by_site: dict[tuple[str, int], dict[str, str]] = {}
    out = {}
    for row in web_tasks:
        env = json.loads(row["environment"]) if isinstance(row["environment"], str) else row["environment"]
        key = (env["app"], int(env.get("seed") or 0))
        if key not in by_site:
            try:
                by_site[key] = get_adapter(key[0]).accounts(key[1])
            except ValueError as exc:
                raise TrainError(f"web task {row['task_id']}: {exc}; or pass --web-rows whole") from None
        out[row["task_id"]] = by_site[key]
    return out


# ---- training -------------------------------------------------------------------------------------------------------

def build_trainer(rows: list[dict], tokenizer, model, settings: SFTSettings, work_dir: Path, template: str | None):
    """The SFTTrainer for the fitted rows: assistant-only loss with `template` (None: loss on every token)."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    if template is not None:
        tokenizer.chat_template = template  # training only: OUT gets the base model's own template files
    args = SFTConfig(
        output_dir=str(work_dir), max_steps=settings.max_steps, num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size, gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate, warmup_steps=settings.warmup_steps, seed=settings.seed,
        max_length=settings.max_length, assistant_only_loss=template is not None,
        **checkpointing_flag(SFTConfig, settings), logging_steps=1, report_to=[],
        include_num_input_tokens_seen="non_padding", disable_tqdm=not sys.stderr.isatty(),
        **save_flags(settings), **device_flags(settings))
    train = Dataset.from_list([_columns(r) for r in rows])
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=train, args=args,
                         peft_config=peft_config(settings) if settings.lora else None)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; StepLog logs instead
    return trainer


def _columns(row: dict) -> dict:
    """What TRL reads of a row: a conversation (`messages`) or a web step (`prompt`, `completion`), and `tools`."""
    keys = ("prompt", "completion", "tools") if "prompt" in row else ("messages", "tools")
    return {k: row[k] for k in keys}


def _round_trip(rows: list[dict]) -> list[dict]:
    """Rows as TRL will see them (through Arrow: absent message keys become None), so fitting measures the same."""
    from datasets import Dataset

    seen = Dataset.from_list([_columns(r) for r in rows]).to_list()
    return [{**r, **t} for r, t in zip(rows, seen)]


def train_sft(data: str | Path, model: str | Path, out: str | Path, settings: SFTSettings | None = None, *,
              overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train `model` on the verified trajectories of `data` (`DIR[@vN]`) and write OUT (module docstring).

    Returns what metrics.json holds. Raises TrainError for bad inputs, before any training. With `resume`, a run
    of the same data, model and settings killed after a checkpoint (`checkpoint_every`) goes on from it."""
    import torch
    from transformers import set_seed

    settings = settings or SFTSettings()
    quiet_progress_bars()
    out = Path(out)
    model_dir = resolve_model(model)
    check_out(out, overwrite, model_dir, resume)
    rows, source = load_rows(data, settings.splits, settings.web_rows, settings.clip_tool_output_chars)
    set_seed(settings.seed)
    # Full fine-tuning keeps fp32 master weights (OUT is saved in the base's dtype); LoRA leaves the base as it is.
    tokenizer, lm = load_model(model_dir, model, dtype=None if settings.lora else torch.float32)
    original = tokenizer.chat_template
    template, template_source = _template(tokenizer, model, settings)
    max_length = cap_max_length(settings.max_length, lm)
    rows = _round_trip(rows)
    try:
        if template_source in ("tiny", "file") and original:
            check_renders_alike(tokenizer, rows, template, original)
    except TemplateError as exc:
        raise TrainError(f"--model {model}: {exc}") from None
    with Progress("fitting rows to the context", len(rows)) as progress:
        fitted, context = fit_rows(tokenizer, rows, template or original, max_length, settings.clip_tool_output_chars,
                                   progress=progress.advance)
    log.info("rows: %d used, %d truncated, %d dropped (max_length %d)", context["rows_used"],
             context["rows_truncated"], context["rows_dropped"], max_length)
    if not fitted:
        raise TrainError(f"--data {source['path']}@{source['version']}: every row was dropped by the context policy "
                         f"(max_length {max_length}); raise --max-length (up to the model's context)")

    step_log = step_logger(settings.log_every)
    model_info = {"base": str(model), "dir": str(model_dir.resolve()), "chat_template_for_training": template_source,
                  "lora": settings.lora}
    return train_and_write(
        out, lambda work: build_trainer(fitted, tokenizer, lm, settings.model_copy(update={"max_length": max_length}),
                                        work, template),
        step_log, lambda trainer, result: {"data": source, "model": model_info, "context": context,
                                           "training": _training_metrics(trainer, result, step_log.steps),
                                           "settings": settings.model_dump(mode="json")},
        key=run_key(KIND, source["content_digest"], model, settings), resume=resume,
        checkpoints=settings.checkpoint_every is not None,
        tokenizer=tokenizer, model_dir=model_dir, template=original, lora=settings.lora,
        title=f"SFT loss: {source['dataset']}@{source['version']} on {Path(str(model)).name}")


def _template(tokenizer, model: str | Path, settings: SFTSettings) -> tuple[str | None, str]:
    """The chat template to train with and where it came from; None for loss on every token."""
    if settings.loss == "all":
        if not tokenizer.chat_template:
            raise TrainError(f"--model {model}: its tokenizer has no chat template to render the conversations with")
        return None, "none (loss on every token)"
    if settings.chat_template is not None and not settings.chat_template.is_file():
        raise TrainError(f"--chat-template {settings.chat_template}: no such file")
    text = settings.chat_template.read_text() if settings.chat_template else None
    try:
        return training_template(tokenizer, str(model), text)
    except TemplateError as exc:
        raise TrainError(str(exc)) from None


def _training_metrics(trainer, result, steps: list[dict]) -> dict[str, Any]:
    """Loss per step, tokens (non-padding, as the steps consumed them) and throughput, and the device used."""
    seconds = float(result.metrics.get("train_runtime", 0.0))
    tokens = int(trainer.state.num_input_tokens_seen)
    return {"steps": trainer.state.global_step, "loss": steps, "final_loss": steps[-1]["loss"] if steps else None,
            "mean_loss": float(result.training_loss), "tokens_trained": tokens, "train_seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
            "loss_tokens_per_epoch": sum(sum(1 for t in ls if t != -100) for ls in trainer.train_dataset["labels"]),
            "device": "cpu" if trainer.args.use_cpu else "cuda", "bf16": bool(trainer.args.bf16)}
