"""The SWE factory as Prefect flows: one per stage, and `factory` wiring them end to end.

Flows only orchestrate: they submit the stage tasks of `flows/tasks.py`, bound the sandboxes in
use, publish a yields artifact, and hand records from one stage to the next through record files
in the work dir (`trajfactory/records.py`), so flow parameters stay small.
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
from trajfactory.executors.pool import SandboxPool
from trajfactory.flows import common
from trajfactory.flows import tasks as t
from trajfactory import records as rec
from trajfactory.schema import Candidate, Quarantine, Source, Task, Trajectory, Validation, Verdict


def _opts(task, recipe: Recipe):
    return task.with_options(result_storage=t.storage(recipe))


_gather = common.gather


@flow(name="harvest")
def harvest_flow(recipe: Recipe) -> dict:
    """Repositories -> pinned mirrors: `sources` and `quarantine-harvest` records."""
    results = _gather([t.harvest_task.submit(recipe, r.uri) for r in recipe.repos], "harvest")
    sources = [r for r in results if isinstance(r, Source)]
    rec.save(recipe.work_dir, "sources", sources)
    rec.save(recipe.work_dir, "quarantine-harvest", [r for r in results if isinstance(r, Quarantine)])
    return {"sources": len(sources), "quarantined": len(results) - len(sources)}


@flow(name="synthesize")
def synthesize_flow(recipe: Recipe) -> dict:
    """Environments, candidates, reference runs, validation, gold proofs and tasks for every source."""
    out: dict = {"candidates": [], "validations": [], "tasks": [], "quarantine": [], "gold-verdicts": []}
    environments = {}
    for source in rec.load(recipe.work_dir, "sources", Source):
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
        out["gold-verdicts"] += [v for v in gold if v.passed]
        out["candidates"] += candidates
        out["validations"] += validations
        environments[source.name] = env
    for name, records in out.items():
        rec.save(recipe.work_dir, "quarantine-synthesize" if name == "quarantine" else name, records)
    rec.save_environments(recipe.work_dir, environments)
    return {name: len(records) for name, records in out.items()}


@flow(name="rollout")
def rollout_flow(recipe: Recipe) -> dict:
    """Tasks -> trajectories of the recipe's policy, each in a fresh sandbox."""
    tasks, environments = rec.load(recipe.work_dir, "tasks", Task), rec.load_environments(recipe.work_dir)
    run = _opts(t.rollout_task, recipe)
    futures = [run.submit(recipe, environments[task.environment.repo], task, sample)
               for task in tasks for sample in range(recipe.rollout.samples)]
    trajectories = _gather(futures, "rollout")
    rec.save(recipe.work_dir, "trajectories", trajectories)
    return {"trajectories": len(trajectories)}


@flow(name="verify")
def verify_flow(recipe: Recipe) -> dict:
    """Trajectories -> test verdicts on their final state, each in a fresh sandbox."""
    by_id = {task.task_id: task for task in rec.load(recipe.work_dir, "tasks", Task)}
    environments = rec.load_environments(recipe.work_dir)
    check = _opts(t.verify_task, recipe)
    futures = [check.submit(recipe, environments[by_id[tr.task_id].environment.repo], by_id[tr.task_id], tr)
               for tr in rec.load(recipe.work_dir, "trajectories", Trajectory)]
    verdicts = _gather(futures, "verify")
    rec.save(recipe.work_dir, "verdicts", verdicts)
    return {"verdicts": len(verdicts), "passed": sum(v.passed for v in verdicts)}


@flow(name="build-dataset")
def build_flow(recipe: Recipe) -> dict:
    """Stage records -> one new immutable dataset version, with the yields as a table artifact."""
    work = recipe.work_dir
    tasks, trajectories = rec.load(work, "tasks", Task), rec.load(work, "trajectories", Trajectory)
    verdicts = rec.load(work, "verdicts", Verdict)
    summary = yields(rec.load(work, "candidates", Candidate), rec.load(work, "validations", Validation),
                     tasks, trajectories, verdicts)
    for name, table in summary.items():
        create_table_artifact(table=table, key=f"yields-{name.replace('_', '-')}",
                              description=f"Yields {name.replace('_', ' ')}")
    records = {
        "tasks": tasks,
        "trajectories": trajectories,
        "verdicts": rec.load(work, "gold-verdicts", Verdict) + verdicts,
        "quarantine": rec.load(work, "quarantine-harvest", Quarantine)
        + rec.load(work, "quarantine-synthesize", Quarantine),
    }
    lineage = {
        "recipe": recipe.name,
        "recipe_hash": recipe.digest(),
        "factory_version": trajfactory.__version__,
        "flow_run_id": str(flow_run.get_id() or ""),
    }
    version = write_dataset(recipe.dataset.root, recipe.dataset.name, records, lineage, summary)
    return {"version": version, "root": str(Path(recipe.dataset.root) / recipe.dataset.name), "summary": summary,
            "counts": {k: len(v) for k, v in records.items()}}


@flow(name="trajfactory")
def factory_flow(recipe: Recipe) -> dict:
    """The whole factory: repositories (and tutorials) in, verified, versioned datasets out."""
    logger = get_run_logger()
    runner = ThreadPoolTaskRunner(max_workers=recipe.sandbox.concurrency)
    web = None
    if recipe.web is not None:
        from trajfactory.flows.web import web_flow

        web = web_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=recipe.web.browsers))(recipe.web)
    if not recipe.repos:
        return {"web": web}
    harvest_flow(recipe)
    synthesize_flow.with_options(task_runner=runner)(recipe)
    rollout_flow.with_options(task_runner=runner)(recipe)
    verified = verify_flow.with_options(task_runner=runner)(recipe)
    result = build_flow(recipe)
    logger.info("dataset %s version %s: %s; %d/%d trajectories verified", recipe.dataset.name, result["version"],
                result["counts"], verified["passed"], verified["verdicts"])
    return {**result, "web": web}
