"""The SWE factory as Prefect flows: one per stage of `pipelines/swe.py`, and `factory` wiring them end to end.

    harvest_flow ─► synthesize_flow ─► rollout_flow ─► verify_flow ─► build_flow [─► train_flow]

Each stage flow is one call into the pipeline with the Prefect runner (every unit of work a cached, retried
task, `sandbox.concurrency` at once; with a `cluster:` section, the sandbox work of each runs on a Ray node,
`flows/cluster.py`), and hands its records to the next stage through the work dir
(`flows/records.py`), so flow parameters stay small and each stage can run alone from the CLI. The model is
opened once by `factory_flow` and handed to each stage as a small `ModelEndpoint`; a stage flow run alone
opens it itself when it needs it, and a model the factory serves stops when the flow that opened it ends.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from trajfactory.flows import records as rec
from trajfactory.flows.cluster import cluster_session
from trajfactory.flows.runner import PrefectRunner, publish_yields
from trajfactory.flows.train import train_flow
from trajfactory.flows.web import web_flow
from trajfactory.models.service import ModelEndpoint, model_session
from trajfactory.pipelines import swe
from trajfactory.settings import Recipe
from trajfactory.training.common import TrainError
from trajfactory.training.evaluate import EvalError


@flow(name="harvest")
def harvest_flow(recipe: Recipe) -> dict:
    """Repositories -> pinned mirrors."""
    harvested = swe.harvest(recipe, PrefectRunner())
    rec.save(recipe.work_dir, harvested)
    return {"sources": len(harvested.sources), "quarantined": len(harvested.quarantine)}


@flow(name="synthesize")
def synthesize_flow(recipe: Recipe, endpoint: ModelEndpoint | None = None) -> dict:
    """Sources -> environments, candidates, validations, tasks with proven gold patches and their statements."""
    with cluster_session(recipe.cluster, recipe.work_dir):
        synthesis = swe.synthesize(recipe, rec.load(recipe.work_dir, swe.Harvest).sources, PrefectRunner(), endpoint)
    rec.save(recipe.work_dir, synthesis)
    return {"candidates": len(synthesis.candidates), "validations": len(synthesis.validations),
            "tasks": len(synthesis.tasks), "quarantine": len(synthesis.quarantine),
            "gold-verdicts": len(synthesis.gold_verdicts)}


@flow(name="rollout")
def rollout_flow(recipe: Recipe, endpoint: ModelEndpoint | None = None) -> dict:
    """Tasks -> trajectories of the recipe's policies, each in a fresh sandbox."""
    synthesis = rec.load(recipe.work_dir, swe.Synthesis)
    with cluster_session(recipe.cluster, recipe.work_dir):
        rollouts = swe.rollout(recipe, synthesis.tasks, synthesis.environments, PrefectRunner(), endpoint)
    rec.save(recipe.work_dir, rollouts)
    return {"trajectories": len(rollouts.trajectories)}


@flow(name="verify")
def verify_flow(recipe: Recipe, endpoint: ModelEndpoint | None = None) -> dict:
    """Trajectories -> test verdicts in fresh sandboxes; with `judge:`, the judge's verdicts and agreement."""
    synthesis = rec.load(recipe.work_dir, swe.Synthesis)
    trajectories = rec.load(recipe.work_dir, swe.Rollouts).trajectories
    with cluster_session(recipe.cluster, recipe.work_dir):
        verification = swe.verify_all(recipe, synthesis.tasks, synthesis.environments, trajectories, PrefectRunner(),
                                      endpoint)
    rec.save(recipe.work_dir, verification)
    return {"verdicts": len(verification.verdicts), "passed": sum(v.passed for v in verification.verdicts),
            "judged": len(verification.judged), "judge_agreement": verification.agreement()}


@flow(name="build-dataset")
def build_flow(recipe: Recipe, only_if_new: bool = False) -> dict:
    """Stage records -> one new immutable dataset version, with the yields as table artifacts."""
    work = recipe.work_dir
    result = swe.build(recipe, rec.load(work, swe.Harvest), rec.load(work, swe.Synthesis), rec.load(work, swe.Rollouts),
                       rec.load(work, swe.Verification), PrefectRunner().run_id, only_if_new=only_if_new)
    publish_yields(result["summary"])
    return result


@flow(name="trajfactory")
def factory_flow(recipe: Recipe, only_if_new: bool = False) -> dict:
    """The whole factory: repositories (and tutorials) in, verified, versioned datasets out. `only_if_new`: no new
    SWE version when the latest was made from the same recipe and sources (scheduled runs, `flows/scheduled.py`)."""
    runner = ThreadPoolTaskRunner(max_workers=recipe.sandbox.concurrency)
    # One endpoint for the whole run: a served model starts once and stops however the run ends.
    with model_session(recipe.model, recipe.work_dir, None, recipe.uses_model(), recipe.cluster) as endpoint:
        web = None
        if recipe.web is not None:
            web = web_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=recipe.web.browsers))(
                recipe, endpoint=endpoint if recipe.web_uses_model() else None)
        if recipe.repos:
            harvest_flow(recipe)
            synthesize_flow.with_options(task_runner=runner)(recipe, endpoint=endpoint)
            rollout_flow.with_options(task_runner=runner)(recipe, endpoint=endpoint)
            verified = verify_flow.with_options(task_runner=runner)(recipe, endpoint=endpoint)
            result = build_flow(recipe, only_if_new=only_if_new)
    if not recipe.repos:
        return _close_loop(recipe, {"web": web})
    if result.get("unchanged"):
        get_run_logger().info("dataset %s: no new version, %s was made from the same recipe and sources",
                              recipe.dataset.name, result["version"])
    else:
        get_run_logger().info("dataset %s version %s: %s; %d/%d trajectories verified", recipe.dataset.name,
                              result["version"], result["counts"], verified["passed"], verified["verdicts"])
    return _close_loop(recipe, {**result, "web": web, "judge_agreement": verified["judge_agreement"]})


def _close_loop(recipe: Recipe, result: dict) -> dict:
    """With a `train:` section, the closed loop on the new version of the dataset `train.data` names, after the run's
    model server stopped (training and eval serve their own)."""
    if recipe.train is None:
        return result
    made = result["web"] if recipe.train.data == "web" else result
    try:
        result["closed_loop"] = train_flow(recipe, f"{made['root']}@{made['version']}")
    except (TrainError, EvalError) as exc:  # the datasets are written; say why the loop could not run
        get_run_logger().error("closed loop: %s", exc)
        result["closed_loop_error"] = str(exc)
    return result
