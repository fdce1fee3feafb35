"""Evaluate a model policy on the held-out web tasks of a dataset version, beside a baseline.

    report = evaluate_web("datasets/web@v1", "runs/sft-tiny", "builtin:tiny", "test", EvalSettings(samples=2), out)

For each model (the model, then the baseline): serve it with the factory's vLLM manager for the length of its
episodes (`models/service.py`), run the web model agent (`WebModelPolicy`) on every held-out task `samples` times,
each episode in a fresh seeded site and browser context of one `BrowserPool` (`web.model_rollout`), and take each
episode's verdict from the task's state checks on the site's final state: the verdict of record (no judge). The
scores are pure functions of those records (`training/eval_web.py`); the report is report.json (`"kind": "web"`),
scores.png and a table, in the shape of the SWE evaluation's (`pipelines/evaluate.py`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import trajfactory
from trajfactory.executors.browser_pool import BrowserPool
from trajfactory.executors.web_env import ScreenshotStore
from trajfactory.models.server import VLLMServerError
from trajfactory.models.service import ModelEndpoint, model_endpoint
from trajfactory.pipelines import web
from trajfactory.pipelines.evaluate import check_request, model_and_baseline, root_cause, served_name
from trajfactory.pipelines.runner import LocalRunner, Runner
from trajfactory.schema import Trajectory, Verdict, WebTask
from trajfactory.settings import EpisodeLimits, ModelConfig, Recipe, WebAgentConfig, WebConfig
from trajfactory.settings.training import EvalSettings
from trajfactory.training.eval_web import WEB_DEFINITIONS, held_out_web_tasks, reported_infeasible, web_scores
from trajfactory.training.evaluate import EvalError, write_report

log = logging.getLogger(__name__)


def web_actions(settings: EvalSettings) -> str:
    """How the web agent's actions are read: as the settings say when they say it, else as text."""
    return settings.actions if "actions" in settings.model_fields_set else "text"


def web_eval_recipe(spec: str, settings: EvalSettings, work_dir: Path) -> Recipe:
    """The recipe sections `web.model_rollout` reads, for one model under evaluation: the web agent's sampling and
    budgets from the evaluation's settings, `concurrency` browsers, and the model to serve. Unless the settings name
    them, the web agent's own defaults hold: the whole page up to 6000 characters, and actions written as text
    (BrowserGym style; the action tools' schemas alone take some 1,200 tokens of a small model's context)."""
    clip = {"max_observation_chars": settings.max_observation_chars} if settings.max_observation_chars else {}
    agent = WebAgentConfig(temperature=settings.temperature, max_tokens=settings.max_tokens, seed=settings.seed,
                           frequency_penalty=settings.frequency_penalty, actions=web_actions(settings),
                           limits=EpisodeLimits(max_steps=settings.max_steps), **clip)
    return Recipe(
        name="eval-web", work_dir=str(work_dir),
        web=WebConfig(policies=["model"], browsers=settings.concurrency, max_steps=settings.max_steps,
                      model_samples=settings.samples, agent=agent, dataset_name="eval"),
        model=ModelConfig(serve=spec, name=served_name(spec), max_model_len=settings.max_model_len,
                          max_concurrency=max(1, settings.concurrency), gpu_hour_price=settings.gpu_hour_price))


def sample_rollout(recipe: Recipe, endpoint: ModelEndpoint, pool: BrowserPool, store: ScreenshotStore, task: WebTask,
                   sample: int) -> tuple[Trajectory, Verdict | None]:
    """One episode of sample `sample`: the agent samples with seed `seed + sample`, so samples differ and each is
    reproducible."""
    w = recipe.web
    seeded = recipe.model_copy(update={"web": w.model_copy(update={"agent": w.agent.for_sample(sample)})})
    return web.model_rollout(seeded, endpoint, pool, store, task, sample)


def evaluate_web_model(spec: str, option: str, tasks: list[WebTask], settings: EvalSettings, work_dir: Path,
                       runner: Runner) -> dict[str, Any]:
    """One model's episodes on `tasks` (served for the rollouts only), their state verdicts, and its scores."""
    recipe = web_eval_recipe(spec, settings, work_dir)
    store = ScreenshotStore(work_dir)
    started = time.monotonic()
    try:
        with model_endpoint(recipe.model, work_dir) as endpoint, BrowserPool(settings.concurrency) as pool:
            calls = [(recipe, endpoint, pool, store, t, s) for t in tasks for s in range(settings.samples)]
            runs = runner.map(sample_rollout, calls, f"eval {recipe.model.name} on web tasks",
                              workers=settings.concurrency)
    except VLLMServerError as exc:
        log_path = work_dir / "logs" / "vllm.log"
        text = log_path.read_text(errors="replace") if log_path.is_file() else str(exc)
        raise EvalError(f"{option} {spec}: the model does not load in vLLM ({root_cause(text)}); give a model "
                        f"directory with config.json, weights and tokenizer (log: {log_path})") from None
    trajectories = [tr for tr, _ in runs]
    verdicts = [v for _, v in runs if v is not None]
    scores = web_scores(tasks, trajectories, verdicts, settings.k or settings.samples)
    verdict_of = {v.trajectory_id: v for v in verdicts}
    feasible = {t.task_id: t.feasible for t in tasks}
    episodes = [{"task_id": tr.task_id, "sample": tr.sample, "trajectory_id": tr.trajectory_id,
                 "feasible": feasible[tr.task_id], "exit_status": tr.exit_status, "steps": len(tr.steps),
                 "reported_infeasible": reported_infeasible(tr),
                 "verifier": verdict_of[tr.trajectory_id].verifier if tr.trajectory_id in verdict_of else None,
                 "passed": bool(verdict_of[tr.trajectory_id].passed) if tr.trajectory_id in verdict_of else False}
                for tr in trajectories]
    return {"spec": spec, "served_name": recipe.model.name, "agent": recipe.web.agent.model_dump(mode="json"),
            "scores": scores, "episodes": episodes,
            "timing": {"rollout_s": round(time.monotonic() - started, 1), "verify_s": 0.0}}


def evaluate_web(data: str | Path, model: str, baseline: str | None, split: str, settings: EvalSettings,
                 out: str | Path, runner: Runner | None = None) -> dict[str, Any]:
    """Evaluate `model` (and `baseline`) on the `split` web tasks of `data` (`DIR[@vN]`); writes report.json and
    scores.png into `out` and returns the report."""
    out = Path(out)
    tasks, source = held_out_web_tasks(data, split, settings.max_tasks)
    check_request(settings, model, baseline)
    if settings.perturbations:
        raise EvalError(f"--meaner/--perturb {', '.join(settings.perturbations)}: perturbed variants are SWE tasks' "
                        f"only; a web version's infeasible twins are scored under infeasible_handling, drop the option")
    runner = runner or LocalRunner()
    log.info("evaluating on %d web task(s) of %s@%s split %s (%d infeasible), %d sample(s) each", len(tasks),
             source["dataset"], source["version"], split, source["infeasible_evaluated"], settings.samples)
    models = model_and_baseline(
        lambda spec, option, work: evaluate_web_model(spec, option, tasks, settings, work, runner),
        model, baseline, out)
    report = {"factory_version": trajfactory.__version__, "kind": "web", "data": source,
              "tasks": [t.task_id for t in tasks], "infeasible_tasks": [t.task_id for t in tasks if not t.feasible],
              "settings": {**settings.model_dump(mode="json"), "actions": web_actions(settings)},
              "definitions": WEB_DEFINITIONS, "models": models}
    report["files"] = write_report(report, out)
    return report
