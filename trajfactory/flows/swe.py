"""The SWE factory as Prefect flows: one per stage, and `factory` wiring them end to end.

Flows only orchestrate: they submit the stage tasks of `flows/tasks.py`, bound the sandboxes in
use, publish a yields artifact, and hand records from one stage to the next through record files
in the work dir (`trajfactory/records.py`), so flow parameters stay small.

The model (agent, LM synthesis, judge) is opened once by `factory_flow` and handed to each stage
flow as a small `ModelEndpoint`; a stage flow run alone opens it itself when it needs it. A model
the factory serves stops when the flow that opened it ends, fails or is cancelled.
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
from trajfactory.models.service import ModelEndpoint
from trajfactory.progress import Progress
from trajfactory import records as rec
from trajfactory.schema import (Candidate, ModelUsage, Quarantine, Source, Task, Trajectory, Validation,
                                Verdict)
from trajfactory.verifiers.judge import agreement


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
def synthesize_flow(recipe: Recipe, endpoint: ModelEndpoint | None = None) -> dict:
    """Environments, candidates (procedural and LM rewrite), reference runs, validation, gold proofs, tasks
    and their problem statements for every source."""
    syn = recipe.synthesis
    out: dict = {"candidates": [], "validations": [], "tasks": [], "quarantine": [], "gold-verdicts": []}
    usage: list[ModelUsage] = []
    environments = {}
    needs_model = syn.lm_rewrite.enabled or syn.statements == "model"
    with common.model_session(recipe.model, recipe.work_dir, endpoint, needs_model) as endpoint:
        for source in rec.load(recipe.work_dir, "sources", Source):
            env = t.build_task(recipe, source)
            if isinstance(env, Quarantine):
                out["quarantine"].append(env)
                continue
            candidates, bad_files = _opts(t.synthesize_task, recipe)(recipe, source)
            out["quarantine"] += bad_files
            if syn.lm_rewrite.enabled:  # LM candidates go through the same validation as procedural ones
                lm_candidates, rejects, used = _opts(t.lm_rewrite_task, recipe)(recipe, endpoint, source)
                candidates, usage = candidates + lm_candidates, usage + [used]
                out["quarantine"] += rejects
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
            if syn.statements == "model" and accepted:
                written = _gather([_opts(t.statement_task, recipe).submit(recipe, endpoint, env, task)
                                   for task in accepted], f"statements {source.name}")
                accepted, usage = [task for task, _ in written], usage + [used for _, used in written]
            out["tasks"] += accepted
            out["quarantine"] += rejected
            out["gold-verdicts"] += [v for v in gold if v.passed]
            out["candidates"] += candidates
            out["validations"] += validations
            environments[source.name] = env
    for name, records in out.items():
        rec.save(recipe.work_dir, "quarantine-synthesize" if name == "quarantine" else name, records)
    rec.save(recipe.work_dir, "model-usage-synthesize", usage)
    rec.save_environments(recipe.work_dir, environments)
    return {name: len(records) for name, records in out.items()}


def _chunks(tasks: list[Task], environments: dict, size: int) -> list[list[Task]]:
    """Tasks in id order, cut into chunks of one sandbox backend each (a chunk is one cached unit)."""
    by_backend: dict[str, list[Task]] = {}
    for task in sorted(tasks, key=lambda x: x.task_id):
        by_backend.setdefault(environments[task.environment.repo].backend, []).append(task)
    return [group[i:i + size] for group in by_backend.values() for i in range(0, len(group), size)]


@flow(name="rollout")
def rollout_flow(recipe: Recipe, endpoint: ModelEndpoint | None = None) -> dict:
    """Tasks -> trajectories of the recipe's policies (oracle and/or the model), each in a fresh sandbox."""
    tasks, environments = rec.load(recipe.work_dir, "tasks", Task), rec.load_environments(recipe.work_dir)
    trajectories: list[Trajectory] = []
    usage: list[ModelUsage] = []
    if "oracle" in recipe.rollout.policies:
        run = _opts(t.rollout_task, recipe)
        futures = [run.submit(recipe, environments[task.environment.repo], task, sample)
                   for task in tasks for sample in range(recipe.rollout.samples)]
        trajectories += _gather(futures, "rollout oracle")
    cfg = recipe.rollout.model
    chosen = sorted(tasks, key=lambda x: x.task_id)[:cfg.max_tasks]
    if "model" in recipe.rollout.policies and chosen:
        # A chunk fills the episodes in flight once; chunks run one after the other, each cached on its own.
        chunks = _chunks(chosen, environments, max(1, -(-cfg.concurrency // cfg.samples)))
        with common.model_session(recipe.model, recipe.work_dir, endpoint, True) as endpoint, \
                Progress("rollout model", len(chosen)) as bar:
            for chunk in chunks:
                done, used = _opts(t.model_rollout_task, recipe)(recipe, endpoint, environments, chunk)
                trajectories, usage = trajectories + done, usage + [used]
                bar.advance(len(chunk))
    rec.save(recipe.work_dir, "trajectories", trajectories)
    rec.save(recipe.work_dir, "model-usage-rollout", usage)
    return {"trajectories": len(trajectories)}


@flow(name="verify")
def verify_flow(recipe: Recipe, endpoint: ModelEndpoint | None = None) -> dict:
    """Trajectories -> test verdicts on their final state, each in a fresh sandbox; then, with `judge:`,
    the model judge's verdict on each, measured against the tests."""
    by_id = {task.task_id: task for task in rec.load(recipe.work_dir, "tasks", Task)}
    environments = rec.load_environments(recipe.work_dir)
    trajectories = rec.load(recipe.work_dir, "trajectories", Trajectory)
    check = _opts(t.verify_task, recipe)
    futures = [check.submit(recipe, environments[by_id[tr.task_id].environment.repo], by_id[tr.task_id], tr)
               for tr in trajectories]
    verdicts = _gather(futures, "verify")
    rec.save(recipe.work_dir, "verdicts", verdicts)
    judged: list[Verdict] = []
    usage: list[ModelUsage] = []
    if recipe.judge.enabled and trajectories:
        per_task: dict[str, list[Trajectory]] = {}
        for tr in trajectories:
            per_task.setdefault(tr.task_id, []).append(tr)
        with common.model_session(recipe.model, recipe.work_dir, endpoint, True) as endpoint:
            futures = [_opts(t.judge_task, recipe).submit(recipe, endpoint, by_id[task_id], group)
                       for task_id, group in per_task.items()]
            for found, used in _gather(futures, "judge"):
                judged, usage = judged + found, usage + [used]
    rec.save(recipe.work_dir, "judge-verdicts", judged)
    rec.save(recipe.work_dir, "model-usage-verify", usage)
    report = agreement(judged, verdicts) if judged else None
    return {"verdicts": len(verdicts), "passed": sum(v.passed for v in verdicts), "judged": len(judged),
            "judge_agreement": report}


def model_usage(work_dir: str) -> list[ModelUsage]:
    """The model usage every stage recorded in the work dir."""
    return [u for stage in ("synthesize", "rollout", "verify")
            for u in rec.load_optional(work_dir, f"model-usage-{stage}", ModelUsage)]


@flow(name="build-dataset")
def build_flow(recipe: Recipe) -> dict:
    """Stage records -> one new immutable dataset version, with the yields as table artifacts."""
    work = recipe.work_dir
    tasks, trajectories = rec.load(work, "tasks", Task), rec.load(work, "trajectories", Trajectory)
    verdicts = rec.load(work, "verdicts", Verdict)
    judged = rec.load_optional(work, "judge-verdicts", Verdict)
    usage = model_usage(work)
    summary = yields(rec.load(work, "candidates", Candidate), rec.load(work, "validations", Validation),
                     tasks, trajectories, verdicts, usage=usage,
                     judge_agreement=agreement(judged, verdicts) if judged else None)
    for name, table in summary.items():
        create_table_artifact(table=table, key=f"yields-{name.replace('_', '-')}",
                              description=f"Yields {name.replace('_', ' ')}")
    records = {
        "tasks": tasks,
        "trajectories": trajectories,
        "verdicts": rec.load(work, "gold-verdicts", Verdict) + verdicts + judged,
        "quarantine": rec.load(work, "quarantine-harvest", Quarantine)
        + rec.load(work, "quarantine-synthesize", Quarantine),
    }
    lineage = {
        "recipe": recipe.name,
        "recipe_hash": recipe.digest(),
        "factory_version": trajfactory.__version__,
        "flow_run_id": str(flow_run.get_id() or ""),
    }
    if recipe.model is not None and usage:
        lineage["model"] = recipe.model.digest_fields()
    version = write_dataset(recipe.dataset.root, recipe.dataset.name, records, lineage, summary)
    return {"version": version, "root": str(Path(recipe.dataset.root) / recipe.dataset.name), "summary": summary,
            "counts": {k: len(v) for k, v in records.items()}}


@flow(name="trajfactory")
def factory_flow(recipe: Recipe) -> dict:
    """The whole factory: repositories (and tutorials) in, verified, versioned datasets out."""
    logger = get_run_logger()
    runner = ThreadPoolTaskRunner(max_workers=recipe.sandbox.concurrency)
    web_needs_model = recipe.web is not None and recipe.web.uses_model()
    # One endpoint for the whole run: a served model starts once and stops however the run ends.
    with common.model_session(recipe.model, recipe.work_dir, None,
                              recipe.uses_model() or web_needs_model) as endpoint:
        web = None
        if recipe.web is not None:
            from trajfactory.flows.web import web_flow

            web_run = web_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=recipe.web.browsers))
            web = web_run(recipe.web, endpoint=endpoint if web_needs_model else None)
        if not recipe.repos:
            return {"web": web}
        harvest_flow(recipe)
        synthesize_flow.with_options(task_runner=runner)(recipe, endpoint=endpoint)
        rollout_flow.with_options(task_runner=runner)(recipe, endpoint=endpoint)
        verified = verify_flow.with_options(task_runner=runner)(recipe, endpoint=endpoint)
        result = build_flow(recipe)
    logger.info("dataset %s version %s: %s; %d/%d trajectories verified", recipe.dataset.name, result["version"],
                result["counts"], verified["passed"], verified["verdicts"])
    return {**result, "web": web, "judge_agreement": verified["judge_agreement"]}
