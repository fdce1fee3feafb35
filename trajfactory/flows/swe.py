"""The SWE factory as Prefect flows: one per stage, and `factory` wiring them end to end.

Flows only orchestrate: they submit the stage tasks of `flows/tasks.py`, bound the sandboxes in
use, publish a yields artifact, and hand records from one stage to the next.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

import trajfactory
from trajfactory.config import Recipe
from trajfactory.datasets.publish import write_dataset
from trajfactory.datasets.yields import yields
from trajfactory.executors import get_backend
from trajfactory.executors.base import EnvironmentHandle
from trajfactory.executors.pool import SandboxPool
from trajfactory.flows import tasks as t
from trajfactory.progress import Progress
from trajfactory.schema import Quarantine, Source, Task, Trajectory, Verdict


def _opts(task, recipe: Recipe):
    return task.with_options(result_storage=t.storage(recipe))


def _gather(futures, description: str) -> list:
    results = []
    with Progress(description, len(futures)) as bar:
        for future in futures:
            results.append(future.result())
            bar.advance()
    return results


@flow(name="harvest")
def harvest_flow(recipe: Recipe) -> tuple[list[Source], list[Quarantine]]:
    results = _gather([t.harvest_task.submit(recipe, r.uri) for r in recipe.repos], "harvest")
    return [r for r in results if isinstance(r, Source)], [r for r in results if isinstance(r, Quarantine)]


@flow(name="synthesize")
def synthesize_flow(recipe: Recipe, sources: list[Source]) -> dict:
    """Environments, candidates, reference runs, validation and tasks for every source."""
    out: dict = {"environments": {}, "candidates": [], "validations": [], "tasks": [], "quarantine": [],
                 "gold_verdicts": []}
    for source in sources:
        env = t.build_task(recipe, source)
        if isinstance(env, Quarantine):
            out["quarantine"].append(env)
            continue
        candidates, bad_files = _opts(t.synthesize_task, recipe)(recipe, source)
        out["quarantine"] += bad_files
        ref = _opts(t.reference_task, recipe)(recipe, env, source)
        if isinstance(ref, Quarantine):
            out["quarantine"].append(ref)
            continue
        validate = _opts(t.validate_task, recipe)
        with SandboxPool(get_backend(env.backend), env, recipe.sandbox.concurrency, t.limits(recipe)) as pool:
            futures = [validate.submit(recipe, pool, c, ref) for c in candidates]
            validations = _gather(futures, f"validate {source.name}")
        tasks = t.swe.tasks_from(source, env, candidates, validations)
        gold = _gather([_opts(t.gold_task, recipe).submit(recipe, env, task) for task in tasks],
                       f"prove gold {source.name}")
        accepted, rejected = t.swe.accept_proven(tasks, gold, source)
        out["tasks"] += accepted
        out["quarantine"] += rejected
        out["environments"][source.name] = env
        out["candidates"] += candidates
        out["validations"] += validations
        out["gold_verdicts"] += [v for v in gold if v.passed]
    return out


@flow(name="rollout")
def rollout_flow(recipe: Recipe, tasks: list[Task], environments: dict[str, EnvironmentHandle]) -> list[Trajectory]:
    run = _opts(t.rollout_task, recipe)
    futures = [run.submit(recipe, environments[task.environment.repo], task, sample)
               for task in tasks for sample in range(recipe.rollout.samples)]
    return _gather(futures, "rollout")


@flow(name="verify")
def verify_flow(recipe: Recipe, tasks: list[Task], trajectories: list[Trajectory],
                environments: dict[str, EnvironmentHandle]) -> list[Verdict]:
    by_id = {task.task_id: task for task in tasks}
    check = _opts(t.verify_task, recipe)
    futures = [check.submit(recipe, environments[by_id[tr.task_id].environment.repo], by_id[tr.task_id], tr)
               for tr in trajectories]
    return _gather(futures, "verify")


@flow(name="build-dataset")
def build_flow(recipe: Recipe, records: dict, summary: dict) -> str:
    lineage = {
        "recipe": recipe.name,
        "recipe_hash": recipe.digest(),
        "factory_version": trajfactory.__version__,
        "flow_run_id": str(flow_run.get_id() or ""),
    }
    return write_dataset(recipe.dataset.root, recipe.dataset.name, records, lineage, summary)


@flow(name="trajfactory")
def factory_flow(recipe: Recipe) -> dict:
    """The whole factory: repositories in, a verified, versioned dataset out."""
    logger = get_run_logger()
    runner = ThreadPoolTaskRunner(max_workers=recipe.sandbox.concurrency)
    web = None
    if recipe.web is not None:
        from trajfactory.flows.web import web_flow

        web = web_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=recipe.web.browsers))(recipe.web)
    if not recipe.repos:
        return {"web": web}
    sources, quarantine = harvest_flow(recipe)
    synth = synthesize_flow.with_options(task_runner=runner)(recipe, sources)
    tasks, envs = synth["tasks"], synth["environments"]
    trajectories = rollout_flow.with_options(task_runner=runner)(recipe, tasks, envs)
    verdicts = verify_flow.with_options(task_runner=runner)(recipe, tasks, trajectories, envs)
    summary = yields(synth["candidates"], synth["validations"], tasks, trajectories, verdicts)
    for name, table in summary.items():
        create_table_artifact(table=table, key=f"yields-{name.replace('_', '-')}",
                              description=f"Yields {name.replace('_', ' ')}")
    records = {
        "tasks": tasks,
        "trajectories": trajectories,
        "verdicts": synth["gold_verdicts"] + verdicts,
        "quarantine": quarantine + synth["quarantine"],
    }
    version = build_flow(recipe, records, summary)
    logger.info("dataset %s version %s: %d tasks, %d trajectories, %d verified, %d quarantined",
                recipe.dataset.name, version, len(tasks), len(trajectories),
                sum(v.passed for v in verdicts), len(records["quarantine"]))
    return {"version": version, "root": str(Path(recipe.dataset.root) / recipe.dataset.name), "summary": summary,
            "counts": {k: len(v) for k, v in records.items()}, "web": web}
