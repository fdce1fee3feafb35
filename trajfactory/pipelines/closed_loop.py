"""The closed loop at the end of `trajfactory run` (the recipe's `train:` section): fine-tune a model on the run's own
verified trajectories (its SWE or its web dataset, `train.data`), then evaluate it against the untrained model on
held-out tasks.

    result = closed_loop(recipe, "trajfactory-out/datasets/trajfactory-swe-demo@v3", runner)
    result["report"]          # the eval report (report.json): the trained model beside its base, score by score

    sft_step ─► (dpo_step) ─► (grpo_step) ─► eval_step

Each step's output directory is named by the key of what it depends on, so the directory is the cache:
  - `OUT_ROOT/sft-KEY`: KEY = the dataset version's content digest + the base model + the SFT settings
    (`training.common.run_key`); a DPO or GRPO step's model is the previous output, known by its key;
  - `OUT_ROOT/eval-KEY`: KEY = the content digest + the split + the trained model's key + the baseline + the eval
    settings.
A step whose directory is complete is reused, whatever run wrote it; one that was killed resumes from its last
checkpoint (`sft.checkpoint_every`), because the killed run's `.sft-KEY.partial` holds the same key. The steps run as
Prefect tasks of the `train-and-eval` flow (`flows/train.py`) or as plain calls (`LocalRunner`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from trajfactory.datasets.store import DatasetStore
from trajfactory.pipelines.evaluate import evaluate
from trajfactory.pipelines.evaluate_web import evaluate_web
from trajfactory.pipelines.runner import Runner
from trajfactory.schema import content_hash
from trajfactory.settings import Recipe
from trajfactory.settings.training import EvalSettings, TrainConfig
from trajfactory.training import dpo, grpo, sft
from trajfactory.training.common import model_identity, parse_data_ref, run_key
from trajfactory.training.eval_web import is_web_version

log = logging.getLogger(__name__)

EVAL_VERSION = "1"  # in the eval key: bump when the report's scores change meaning


def _done(out: Path, marker: str, key: str) -> dict[str, Any] | None:
    """The record `marker` (metrics.json / report.json) of a complete output made under `key`, else None."""
    path = out / marker
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("run_key") == key else None


def _training_summary(kind: str, out: Path, metrics: dict[str, Any], reused: bool) -> dict[str, Any]:
    tr, ctx = metrics["training"], metrics["context"]
    used = ctx.get("rows_used", ctx.get("pairs_used"))
    return {"kind": kind, "out": str(out), "key": metrics["run_key"], "reused": reused, "steps": tr["steps"],
            "final_loss": tr["final_loss"], "rows_used": used, "train_seconds": tr["train_seconds"],
            "tokens_per_s": tr["tokens_per_s"], "resumed_from_step": metrics.get("resumed_from_step")}


def sft_step(recipe: Recipe, data: str, digest: str) -> dict[str, Any]:
    """SFT of the base model on the version's verified trajectories into `OUT_ROOT/sft-KEY` (reused when complete,
    resumed when killed)."""
    cfg = recipe.train
    key = run_key(sft.KIND, digest, cfg.base_model, cfg.sft)
    out = Path(cfg.out_root) / f"sft-{key[:16]}"
    if (metrics := _done(out, "metrics.json", key)) is not None:
        log.info("SFT output %s is complete for this data, model and settings: reused", out)
        return _training_summary("sft", out, metrics, reused=True)
    metrics = sft.train_sft(data, cfg.base_model, out, cfg.sft, overwrite=True, resume=True)
    return _training_summary("sft", out, metrics, reused=False)


def dpo_step(recipe: Recipe, data: str, digest: str, model: str) -> dict[str, Any]:
    """DPO from the SFT output `model` on the version's (verified, failed) pairs into `OUT_ROOT/dpo-KEY`."""
    cfg = recipe.train
    key = run_key(dpo.KIND, digest, model, cfg.dpo)
    out = Path(cfg.out_root) / f"dpo-{key[:16]}"
    if (metrics := _done(out, "metrics.json", key)) is not None:
        log.info("DPO output %s is complete for this data, model and settings: reused", out)
        return _training_summary("dpo", out, metrics, reused=True)
    metrics = dpo.train_dpo(data, model, out, cfg.dpo, overwrite=True, resume=True)
    return _training_summary("dpo", out, metrics, reused=False)


def grpo_step(recipe: Recipe, data: str, digest: str, model: str) -> dict[str, Any]:
    """GRPO from `model` (the last training output) on the version's tasks into `OUT_ROOT/grpo-KEY` (reused when
    complete, resumed from its last checkpoint when killed with `checkpoint_every` set)."""
    cfg = recipe.train
    key = run_key(grpo.KIND, digest, model, cfg.grpo)
    out = Path(cfg.out_root) / f"grpo-{key[:16]}"
    reused = (metrics := _done(out, "metrics.json", key)) is not None
    if reused:
        log.info("GRPO output %s is complete for this data, model and settings: reused", out)
    else:
        metrics = grpo.train_grpo(data, model, out, cfg.grpo, overwrite=True, resume=True)
    tr = metrics["training"]
    rewards = [s["reward_mean"] for s in tr["per_step"]]
    return {"kind": "grpo", "out": str(out), "key": key, "reused": reused, "steps": tr["steps"],
            "final_loss": tr["final_loss"], "rows_used": len(metrics["data"]["tasks"]), "episodes": tr["episodes"],
            "reward_per_step": rewards, "train_seconds": tr["seconds"],
            "resumed_from_step": metrics.get("resumed_from_step")}


def eval_settings(cfg: TrainConfig) -> EvalSettings:
    """The eval settings, with observations clipped as the SFT rows were unless the recipe says otherwise."""
    if cfg.eval.max_observation_chars is None and cfg.sft.clip_tool_output_chars:
        return cfg.eval.model_copy(update={"max_observation_chars": cfg.sft.clip_tool_output_chars})
    return cfg.eval


def eval_step(recipe: Recipe, data: str, digest: str, model: str) -> dict[str, Any]:
    """The trained `model` beside the untrained base on the held-out split (SWE or web tasks, as the version holds),
    into `OUT_ROOT/eval-KEY`."""
    cfg = recipe.train
    settings = eval_settings(cfg)
    baseline = cfg.base_model if cfg.baseline else None
    key = content_hash("eval", EVAL_VERSION, digest, cfg.eval_split, model_identity(model),
                       model_identity(baseline) if baseline else None, settings.model_dump(mode="json"), length=32)
    out = Path(cfg.out_root) / f"eval-{key[:16]}"
    if (report := _done(out, "report.json", key)) is not None:
        log.info("evaluation %s is complete for these models, data and settings: reused", out)
        return {**report, "reused": True}
    run = evaluate_web if is_web_version(data) else evaluate  # web tasks in the browser, or SWE tasks in sandboxes
    report = run(data, model, baseline, cfg.eval_split, settings, out)
    report["run_key"] = key  # marks the report complete
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(out / "report.json")
    return {**report, "reused": False}


def closed_loop(recipe: Recipe, data: str, runner: Runner) -> dict[str, Any]:
    """Train on `data` (`DIR@vN`, the run's SWE or web dataset version) and evaluate, as the recipe's `train:` says."""
    if recipe.train is None:
        raise ValueError("the recipe has no `train:` section")
    root, version = parse_data_ref(data)
    store = DatasetStore(root)
    version = version or store.latest()
    data = f"{root}@{version}"
    digest = store.content_digest(version)
    stages = [runner.call(sft_step, recipe, data, digest)]
    if recipe.train.dpo is not None:
        stages.append(runner.call(dpo_step, recipe, data, digest, stages[-1]["out"]))
    if recipe.train.grpo is not None:
        stages.append(runner.call(grpo_step, recipe, data, digest, stages[-1]["out"]))
    report = runner.call(eval_step, recipe, data, digest, stages[-1]["out"])
    return {"data": data, "training": stages, "report": report}
