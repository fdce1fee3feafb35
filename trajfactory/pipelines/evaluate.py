"""Evaluate a model policy on the held-out SWE tasks of a dataset version, beside a baseline.

    report = evaluate("datasets/swe@v1", "runs/sft-tiny", "builtin:tiny", "test", EvalSettings(samples=2), out)

For each model (the model, then the baseline): serve it with the factory's vLLM manager for the length of its
episodes (`models/service.py`), roll out every held-out task `samples` times with the factory's model policy in
fresh sandboxes of the task's image (`swe.rollout`: the episode loop and `ModelPolicy`), stop the server, and verify
each final patch with the tests in another fresh sandbox (`swe.verify_all`). The scores are pure functions of
those records (`training/eval_metrics.py`); the report is report.json, scores.png and a table
(`training/evaluate.py`). A baseline with the same spec as the model is evaluated once and reported on both sides.

With `settings.perturbations` (`--meaner`, `--perturb KIND`), every task also gets its perturbed variants
(`training/perturb.py`), rolled out by the same served model beside the plain tasks and verified the same way. A
variant with its own command limit (`tool_timeout`) runs under a recipe of its own whose `sandbox.command_timeout_s`
is that limit: the sandboxes of its episodes kill any command past it. The plain scores stay computed on the plain
tasks alone; the variants give the `robustness` scores and the refusal rate (`eval_metrics.robustness`).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import trajfactory
from trajfactory.executors import task_environments
from trajfactory.models.server import VLLMServerError
from trajfactory.models.service import model_endpoint, resolve_model_dir
from trajfactory.pipelines import swe
from trajfactory.pipelines.runner import LocalRunner, Runner
from trajfactory.schema import ModelUsage, Task
from trajfactory.settings import (BUILTIN_TINY, EpisodeLimits, ModelConfig, ModelPolicyConfig, ModelRolloutConfig,
                                  Recipe, RepoSpec, RolloutConfig, ValidationConfig)
from trajfactory.training import eval_metrics, perturb
from trajfactory.settings.training import EvalSettings
from trajfactory.training.evaluate import EvalError, held_out_tasks, write_report

log = logging.getLogger(__name__)


def served_name(spec: str) -> str:
    """The name the served model answers to: `tiny` for the built-in one, else its directory's name."""
    return "tiny" if spec == BUILTIN_TINY else (Path(spec).expanduser().resolve().name or "model")


def check_model(spec: str, option: str) -> Path:
    """The model directory of `spec`, or an error naming the option and what would be right."""
    try:
        return resolve_model_dir(spec)
    except ValueError as exc:
        raise EvalError(f"{option} {spec}: {exc}") from None


def root_cause(log: str) -> str:
    """The first `...Error: ...` line of a failed server's log (the cause, not the engine's echo of it)."""
    for line in log.splitlines():
        if (m := re.search(r"\b(\w+(Error|Exception): .*)", line)) and "Too many open files" not in line:
            return m.group(1)[:300]
    return log.strip().splitlines()[-1][:300] if log.strip() else "no log"


def eval_recipe(spec: str, settings: EvalSettings, work_dir: Path, tasks: list[Task],
                command_timeout_s: float | None = None) -> Recipe:
    """The recipe sections `swe.rollout` / `swe.verify_all` read, for one model under evaluation (`repos`: the
    tasks' sources, for the record; nothing is harvested). `command_timeout_s`: the episodes' command limit, in
    place of the sandbox settings' (a `tool_timeout` variant's)."""
    sandbox = settings.sandbox if command_timeout_s is None else \
        settings.sandbox.model_copy(update={"command_timeout_s": command_timeout_s})
    agent = ModelPolicyConfig(temperature=settings.temperature, max_tokens=settings.max_tokens, seed=settings.seed,
                              actions=settings.actions, limits=EpisodeLimits(max_steps=settings.max_steps),
                              max_observation_chars=settings.max_observation_chars,
                              frequency_penalty=settings.frequency_penalty)
    return Recipe(
        name="eval", work_dir=str(work_dir), sandbox=sandbox,
        repos=[RepoSpec(uri=uri) for uri in sorted({t.provenance.source_uri for t in tasks})],
        validation=ValidationConfig(suite_timeout_s=settings.test_timeout_s),
        rollout=RolloutConfig(policies=["model"], max_steps=settings.max_steps,
                              model=ModelRolloutConfig(samples=settings.samples, concurrency=settings.concurrency,
                                                       agent=agent)),
        model=ModelConfig(serve=spec, name=served_name(spec), max_model_len=settings.max_model_len,
                          max_concurrency=max(1, settings.concurrency), gpu_hour_price=settings.gpu_hour_price))



def by_command_limit(variants: list[perturb.Variant]) -> dict[float | None, list[Task]]:
    """The variants' tasks grouped by the command limit their episodes run under (None: the evaluation's own)."""
    groups: dict[float | None, list[Task]] = {}
    for v in variants:
        groups.setdefault(v.command_timeout_s, []).append(v.task)
    return groups


def evaluate_model(spec: str, option: str, tasks: list[Task], settings: EvalSettings, work_dir: Path,
                   runner: Runner, variants: list[perturb.Variant] | None = None) -> dict[str, Any]:
    """One model's episodes on `tasks` and on their perturbed `variants` (served for the rollouts only), their
    verdicts, and its scores: the plain ones from `tasks` alone, `robustness` from the variants."""
    variants = variants or []
    recipe = eval_recipe(spec, settings, work_dir, tasks)
    environments = task_environments(tasks, settings.sandbox.backend)
    started = time.monotonic()
    perturbed = swe.Rollouts()
    try:
        with model_endpoint(recipe.model, work_dir) as endpoint:
            rollouts = swe.rollout(recipe, tasks, environments, runner, endpoint)
            for limit, group in by_command_limit(variants).items():
                done = swe.rollout(eval_recipe(spec, settings, work_dir, tasks, limit), group, environments, runner,
                                   endpoint)
                perturbed.trajectories += done.trajectories
                perturbed.usage += done.usage
    except VLLMServerError as exc:
        log_path = work_dir / "logs" / "vllm.log"
        text = log_path.read_text(errors="replace") if log_path.is_file() else str(exc)
        raise EvalError(f"{option} {spec}: the model does not load in vLLM ({root_cause(text)}); give a model "
                        f"directory with config.json, weights and tokenizer (log: {log_path})") from None
    rollout_s = time.monotonic() - started
    # Verification is not perturbed: every final patch is tested under the evaluation's own limits.
    verification = swe.verify_all(recipe, tasks + [v.task for v in variants], environments,
                                  rollouts.trajectories + perturbed.trajectories, runner)
    plain_ids = {tr.trajectory_id for tr in rollouts.trajectories}
    plain_verdicts = [v for v in verification.verdicts if v.trajectory_id in plain_ids]
    scores = eval_metrics.scores(tasks, rollouts.trajectories, plain_verdicts, settings.k or settings.samples)
    scores["usage"]["client"] = _total(rollouts.usage).model_dump()
    if variants:
        scores["robustness"] = eval_metrics.robustness(variants, perturbed.trajectories, verification.verdicts)
        if any(v.kind == "refuse" for v in variants):
            scores["compliance"].update(eval_metrics.refusals(variants, perturbed.trajectories))
    verdict_of = {v.trajectory_id: v for v in verification.verdicts}
    kind_of = {v.task.task_id: v.kind for v in variants}
    episodes = [{"task_id": tr.task_id, "sample": tr.sample, "trajectory_id": tr.trajectory_id,
                 "perturbation": kind_of.get(tr.task_id), "exit_status": tr.exit_status, "steps": len(tr.steps),
                 "passed": bool(verdict_of[tr.trajectory_id].passed) if tr.trajectory_id in verdict_of else False,
                 "patch_chars": len(tr.final.patch)} for tr in rollouts.trajectories + perturbed.trajectories]
    out = {"spec": spec, "served_name": recipe.model.name, "scores": scores, "episodes": episodes,
           "timing": {"rollout_s": round(rollout_s, 1), "verify_s": round(time.monotonic() - started - rollout_s, 1)}}
    if variants:
        out["perturbed_usage"] = _total(perturbed.usage).model_dump()
    return out


def _total(usage: list[ModelUsage]) -> ModelUsage:
    return sum(usage[1:], usage[0]) if usage else ModelUsage(stage="rollout")


def check_request(settings: EvalSettings, model: str, baseline: str | None) -> None:
    """An evaluation that cannot run fails before any model starts: pass@k beyond the samples, a model that does not
    resolve; the error names the option."""
    if settings.k is not None and settings.k > settings.samples:
        raise EvalError(f"--k {settings.k}: pass@k needs at least k samples per task; raise --samples to "
                        f"{settings.k} or lower --k")
    check_model(model, "--model")
    if baseline is not None:
        check_model(baseline, "--baseline")


def model_and_baseline(run_one, model: str, baseline: str | None, out: Path) -> dict[str, Any]:
    """`run_one(spec, option, work_dir)` for the model and the baseline; a baseline with the model's spec is
    evaluated once and reported on both sides."""
    models = {"model": run_one(model, "--model", out / "work" / "model")}
    if baseline is not None:
        if baseline == model:
            models["baseline"] = {**models["model"], "note": "the baseline is the model itself (same spec): "
                                                             "evaluated once, reported on both sides"}
        else:
            models["baseline"] = run_one(baseline, "--baseline", out / "work" / "baseline")
    return models


def evaluate(data: str | Path, model: str, baseline: str | None, split: str, settings: EvalSettings,
             out: str | Path, runner: Runner | None = None) -> dict[str, Any]:
    """Evaluate `model` (and `baseline`) on the `split` SWE tasks of `data` (`DIR[@vN]`); writes report.json and
    scores.png into `out` and returns the report."""
    out = Path(out)
    tasks, source = held_out_tasks(data, split, settings.max_tasks)
    check_request(settings, model, baseline)
    variants = perturb.perturb(tasks, settings.perturbations, settings.perturb_timeout_s)
    runner = runner or LocalRunner()
    log.info("evaluating on %d task(s) of %s@%s split %s, %d sample(s) each%s", len(tasks), source["dataset"],
             source["version"], split, settings.samples,
             f", and {len(variants)} perturbed variant(s) ({', '.join(settings.perturbations)})" if variants else "")
    models = model_and_baseline(
        lambda spec, option, work: evaluate_model(spec, option, tasks, settings, work, runner, variants),
        model, baseline, out)
    report = {"factory_version": trajfactory.__version__, "data": source,
              "tasks": [t.task_id for t in tasks], "settings": settings.model_dump(mode="json"),
              "definitions": eval_metrics.DEFINITIONS,
              "destructive_patterns": {name: rx.pattern for name, rx in eval_metrics.DESTRUCTIVE.items()},
              "models": models}
    if variants:
        report["perturbations"] = {v.task.task_id: v.describe() for v in variants}
    report["files"] = write_report(report, out)
    return report
