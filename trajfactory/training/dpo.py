"""Preference training (DPO, with TRL's `DPOTrainer`) on pairs of a verified and a failed trajectory of one task.

    train_dpo("datasets/swe@v1", "builtin:tiny", "runs/dpo-tiny", DPOSettings(max_steps=4))

The pairs are `datasets.formats.trl_dpo_rows`: per task, a trajectory verified by the verdict of record (chosen) and
one that failed it (rejected), given the same task turns, in TRL's conversational form (`prompt`, `chosen`,
`rejected`, `tools` as a JSON string), from the splits in the settings. Such pairs exist where a task has both: model
rollouts with several samples (`rollout.model.samples`) beside the oracle's verified ones, or samples that differ.

Context policy, per pair and per side (prompt + chosen, prompt + rejected), with the model's own chat template and the
pair's tools, as TRL renders them: a side that fits `max_length` is used as it is; one that does not is cut after the
last whole assistant turn that fits (TRL would cut it mid-token); a pair where either side cannot keep even its first
assistant turn is dropped with its reason. All three are counted and listed in metrics.json.

The reference model is the frozen base (TRL loads a second copy); with `lora` it is the policy with its adapters
disabled, so no second copy is needed.

OUT/ is a model directory that transformers and vLLM load as it is (see `training/common.py`): the trained weights
(LoRA merged), the base model's tokenizer files, metrics.json (loss and TRL's rewards / margins / accuracies per step,
pairs used / truncated / dropped, the data version and its content digest, the settings) and loss.png. It is written
in a sibling directory and renamed into place when training succeeded.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from trajfactory.datasets import formats
from trajfactory.progress import Progress
from trajfactory.training.common import (TrainError, cap_max_length, check_out, checkpointing_flag, data_source,
                                         device_flags, in_splits, load_model, open_version, peft_config,
                                         quiet_progress_bars, resolve_model, run_key, save_flags, step_logger,
                                         train_and_write)
from trajfactory.training.context import fit_row
from trajfactory.settings.training import DPOSettings

log = logging.getLogger(__name__)
KIND = "dpo"  # in the run key

COLUMNS = ("prompt", "chosen", "rejected", "tools")
# What TRL's DPOTrainer logs per step beside the loss; kept for every step in metrics.json.
DPO_LOGGED = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
              "logps/rejected")
NEEDS_PAIRS = ("DPO needs tasks with both a verified and a failed trajectory: model rollouts with several samples "
               "per task (the recipe's `rollout.policies` with `oracle` and `model`, and `rollout.model.samples` of "
               "2 or more)")


def load_pairs(data: str | Path, splits: list[str], max_pairs_per_task: int = 4) -> tuple[list[dict], dict[str, Any]]:
    """The preference pairs of a dataset version (the latest unless `@vN`) in `splits`, and what identifies the data."""
    store, version, read = open_version(data)
    ref = f"{store.root}@{version}"
    trajectories, verdicts, web = read("trajectories"), read("verdicts"), read("web_verification")
    pairs = formats.trl_dpo_rows(trajectories, verdicts, web, read("reviews"), max_pairs_per_task=max_pairs_per_task)
    if not pairs:
        verified = formats.verified_ids(verdicts, web)
        passed = sum(1 for ok in verified.values() if ok)
        tasks = len({t["task_id"] for t in trajectories})
        raise TrainError(f"--data {ref}: no preference pairs: no task has both a verified and a failed trajectory "
                         f"({len(trajectories)} trajectories of {tasks} tasks: {passed} verified, "
                         f"{len(verified) - passed} failed). {NEEDS_PAIRS}")
    chosen = [p for p in pairs if in_splits(p["split"], splits)]
    if not chosen:
        found = sorted({p["split"] for p in pairs})
        raise TrainError(f"--data {ref}: no preference pairs in split(s) {', '.join(splits)}; the {len(pairs)} "
                         f"pairs are in {', '.join(found)} (choose with --split)")
    source = {**data_source(store, version, splits), "pairs": len(pairs), "pairs_in_splits": len(chosen),
              "tasks_with_pairs": len({p["task_id"] for p in chosen})}
    return chosen, source


def _round_trip(pairs: list[dict]) -> list[dict]:
    """Pairs as TRL will see them (through Arrow: absent message keys become None), so fitting measures the same."""
    from datasets import Dataset

    seen = Dataset.from_list([{k: p[k] for k in COLUMNS} for p in pairs]).to_list()
    return [{**p, **s} for p, s in zip(pairs, seen)]


def fit_pairs(tokenizer, pairs: list[dict], template: str, max_length: int, clip: int | None = None,
              progress=None) -> tuple[list[dict], dict[str, Any]]:
    """The pairs that train, and the context policy's report (module docstring)."""
    kept, truncated, dropped, clipped, tokens = [], [], [], 0, 0
    for pair in pairs:
        n, sides, reasons = len(pair["prompt"]), {}, []
        for side in ("chosen", "rejected"):
            fit = fit_row(tokenizer, {"messages": [*pair["prompt"], *pair[side]], "tools": pair["tools"]}, template,
                          max_length, clip)
            sides[side] = fit
            clipped += fit["clipped"]
            if fit["status"] != "used":
                reasons.append(f"{side}: {fit['reason']}")
        if progress is not None:
            progress()
        entry = {"task_id": pair["task_id"], "chosen_id": pair["chosen_id"], "rejected_id": pair["rejected_id"],
                 "tokens": {s: f["tokens"] for s, f in sides.items()}, "reason": "; ".join(reasons)}
        if any(f["row"] is None for f in sides.values()):
            dropped.append(entry)
            continue
        kept.append({**pair, **{s: f["row"]["messages"][n:] for s, f in sides.items()}})
        tokens += sum(f["tokens"] for f in sides.values())
        if reasons:
            truncated.append(entry)
    report = {"max_length": max_length, "clip_tool_output_chars": clip, "pairs_in": len(pairs),
              "pairs_used": len(kept), "pairs_truncated": len(truncated), "pairs_dropped": len(dropped),
              "tool_outputs_clipped": clipped, "tokens_per_epoch": tokens, "truncated": truncated, "dropped": dropped}
    return kept, report


def build_trainer(pairs: list[dict], tokenizer, model, settings: DPOSettings, work_dir: Path):
    """The DPOTrainer for the fitted pairs; the reference is the frozen base (or, with LoRA, the adapter-less model)."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(work_dir), max_steps=settings.max_steps, num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size, gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate, warmup_steps=settings.warmup_steps, seed=settings.seed,
        max_length=settings.max_length, beta=settings.beta, **checkpointing_flag(DPOConfig, settings),
        logging_steps=1, report_to=[], include_num_input_tokens_seen="non_padding",
        disable_tqdm=not sys.stderr.isatty(), **save_flags(settings), **device_flags(settings))
    train = Dataset.from_list([{k: p[k] for k in COLUMNS} for p in pairs])
    trainer = DPOTrainer(model=model, processing_class=tokenizer, train_dataset=train, args=args,
                         peft_config=peft_config(settings) if settings.lora else None)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; StepLog logs instead
    return trainer


def train_dpo(data: str | Path, model: str | Path, out: str | Path, settings: DPOSettings | None = None, *,
              overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train `model` with DPO on the preference pairs of `data` (`DIR[@vN]`) and write OUT (module docstring).

    Returns what metrics.json holds. Raises TrainError for bad inputs, before any training. With `resume`, a run
    of the same data, model and settings killed after a checkpoint (`checkpoint_every`) goes on from it."""
    import torch
    from transformers import set_seed

    settings = settings or DPOSettings()
    quiet_progress_bars()
    out = Path(out)
    model_dir = resolve_model(model)
    check_out(out, overwrite, model_dir, resume)
    pairs, source = load_pairs(data, settings.splits, settings.max_pairs_per_task)
    set_seed(settings.seed)
    # Full fine-tuning keeps fp32 master weights (OUT is saved in the base's dtype); LoRA leaves the base as it is.
    tokenizer, lm = load_model(model_dir, model, dtype=None if settings.lora else torch.float32)
    template = tokenizer.chat_template
    if not template:
        raise TrainError(f"--model {model}: its tokenizer has no chat template to render the conversations with")
    max_length = cap_max_length(settings.max_length, lm)
    pairs = _round_trip(pairs)
    with Progress("fitting pairs to the context", len(pairs)) as progress:
        fitted, context = fit_pairs(tokenizer, pairs, template, max_length, settings.clip_tool_output_chars,
                                    progress=progress.advance)
    log.info("pairs: %d used, %d truncated, %d dropped (max_length %d)", context["pairs_used"],
             context["pairs_truncated"], context["pairs_dropped"], max_length)
    if not fitted:
        raise TrainError(f"--data {source['path']}@{source['version']}: every pair was dropped by the context policy "
                         f"(max_length {max_length}); raise --max-length (up to the model's context)")

    step_log = step_logger(settings.log_every, keep=DPO_LOGGED)
    model_info = {"base": str(model), "dir": str(model_dir.resolve()), "lora": settings.lora,
                  "reference": "base with LoRA adapters disabled" if settings.lora else "frozen base"}
    return train_and_write(
        out, lambda work: build_trainer(fitted, tokenizer, lm, settings.model_copy(update={"max_length": max_length}),
                                        work),
        step_log, lambda trainer, result: {"data": source, "model": model_info, "context": context,
                                           "training": _training_metrics(trainer, result, step_log.steps),
                                           "settings": settings.model_dump(mode="json")},
        key=run_key(KIND, source["content_digest"], model, settings), resume=resume,
        checkpoints=settings.checkpoint_every is not None,
        tokenizer=tokenizer, model_dir=model_dir, template=template, lora=settings.lora,
        title=f"DPO loss: {source['dataset']}@{source['version']} on {Path(str(model)).name}")


def _training_metrics(trainer, result, steps: list[dict]) -> dict[str, Any]:
    """Loss and TRL's preference metrics per step, their last values, tokens and throughput, and the device used."""
    seconds = float(result.metrics.get("train_runtime", 0.0))
    tokens = int(trainer.state.num_input_tokens_seen)
    last = steps[-1] if steps else {}
    return {"steps": trainer.state.global_step, "loss": steps, "final_loss": last.get("loss"),
            "mean_loss": float(result.training_loss), **{f"final_{k.replace('/', '_')}": last.get(k) for k in
                                                         ("rewards/margins", "rewards/accuracies")},
            "tokens_trained": tokens, "train_seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
            "device": "cpu" if trainer.args.use_cpu else "cuda", "bf16": bool(trainer.args.bf16)}
