"""Supervised fine-tuning on a dataset version's verified trajectories, with TRL's `SFTTrainer`.

    train_sft("datasets/swe@v1", "builtin:tiny", "runs/sft-tiny", SFTSettings(max_steps=4))

The rows are `datasets.formats.trl_sft_rows` (conversational, with the tool schemas as a JSON string), verified by
the verdict of record (tests for SWE, state checks for web; a judge's abstention never vetoes), from the splits in
the settings (`train` by default). The loss is on assistant turns only (see `training/context.py` for the chat
template with generation markers and for the context policy that makes each row fit `max_length`).

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

import logging
import sys
from pathlib import Path
from typing import Any

from trajfactory.datasets import formats
from trajfactory.progress import Progress
from trajfactory.training.common import (TrainError, cap_max_length, check_out, checkpointing_flag, data_source,
                                         device_flags, load_model, open_version, peft_config, quiet_progress_bars,
                                         resolve_model, run_key, save_flags, step_logger, train_and_write)
from trajfactory.training.context import TemplateError, check_renders_alike, fit_rows, training_template
from trajfactory.settings.training import SFTSettings

log = logging.getLogger(__name__)
KIND = "sft"  # in the run key


# ---- inputs ---------------------------------------------------------------------------------------------------------

def load_rows(data: str | Path, splits: list[str]) -> tuple[list[dict], dict[str, Any]]:
    """The verified SFT rows of a dataset version (the latest unless `@vN`), and what identifies that data."""
    store, version, read = open_version(data)
    trajectories = read("trajectories")
    rows = formats.trl_sft_rows(trajectories, read("verdicts"), read("web_verification"), read("reviews"))
    ref = f"{store.root}@{version}"
    if not rows:
        raise TrainError(f"--data {ref}: no verified trajectories to train on ({len(trajectories)} trajectories, "
                         "none verified by tests or state checks, or all rejected in review)")
    chosen = [r for r in rows if r["split"] in splits]
    if not chosen:
        found = sorted({r["split"] for r in rows})
        raise TrainError(f"--data {ref}: no verified trajectories in split(s) {', '.join(splits)}; the "
                         f"{len(rows)} verified ones are in {', '.join(found)} (choose with --split)")
    source = {**data_source(store, version, splits), "verified_rows": len(rows), "rows_in_splits": len(chosen)}
    return chosen, source


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
    train = Dataset.from_list([{"messages": r["messages"], "tools": r["tools"]} for r in rows])
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=train, args=args,
                         peft_config=peft_config(settings) if settings.lora else None)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; StepLog logs instead
    return trainer


def _round_trip(rows: list[dict]) -> list[dict]:
    """Rows as TRL will see them (through Arrow: absent message keys become None), so fitting measures the same."""
    from datasets import Dataset

    seen = Dataset.from_list([{"messages": r["messages"], "tools": r["tools"]} for r in rows]).to_list()
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
    rows, source = load_rows(data, settings.splits)
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
