"""Prefect task wrappers around the stages' library calls: caching, retries, the run journal.

Every cache key is a content hash of what the work depends on, so a run that was killed and
started again finds finished validations, rollouts and verdicts in the result store. The journal
(`journal.jsonl` in the work dir) gets one line each time a task body really runs.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from trajfactory.agents.oracle import OraclePolicy
from trajfactory.config import Recipe
from trajfactory.flows import common
from trajfactory.executors import get_backend
from trajfactory.executors.base import EnvironmentHandle, InfrastructureError, SandboxLimits
from trajfactory.executors.environments import build_environment
from trajfactory.executors.pool import SandboxPool
from trajfactory.executors.rollout import rollout
from trajfactory.schema import Candidate, ReferenceRun, Source, Task, Trajectory, content_hash
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage as swe
from trajfactory.verifiers import tests as test_verifier

def journal(recipe: Recipe, stage: str, key: str) -> None:
    common.journal(recipe.work_dir, stage, key)


def storage(recipe: Recipe) -> Path:
    return common.result_storage(recipe.work_dir)


def limits(recipe: Recipe) -> SandboxLimits:
    s = recipe.sandbox
    return SandboxLimits(memory=s.memory, cpus=s.cpus, pids=s.pids, command_timeout_s=s.command_timeout_s)


def infrastructure_only(task, task_run, state) -> bool:
    """Retry a task only when the engine under it failed, never for a bad item."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, InfrastructureError)


def _key(parts):
    """A Prefect cache_key_fn from a function of the task's parameters; also used by the journal."""
    def key_fn(context, params):
        return content_hash(*parts(params), length=32)

    key_fn.of = lambda params: content_hash(*parts(params), length=32)
    return key_fn


def _validate_parts(p):
    v = p["recipe"].validation
    return ("validate", p["candidate"].candidate_id, p["ref"].image, v.selection, v.test_timeout_s,
            sorted(p["ref"].passing))


def _rollout_parts(p):
    return ("rollout", p["task_"].task_id, p["recipe"].rollout.model_dump(), p["sample"])


VALIDATE_KEY, ROLLOUT_KEY = _key(_validate_parts), _key(_rollout_parts)


@task(name="harvest")
def harvest_task(recipe: Recipe, uri: str):
    return harvest_repo(uri, Path(recipe.work_dir) / "mirrors")


@task(name="build-environment", retries=2, retry_delay_seconds=5, retry_condition_fn=infrastructure_only)
def build_task(recipe: Recipe, source: Source):
    return build_environment(get_backend(recipe.sandbox.backend), source)


@task(name="synthesize", persist_result=True,
      cache_key_fn=_key(lambda p: ("synthesize", p["source"].name, p["source"].commit,
                                   p["recipe"].synthesis.model_dump())))
def synthesize_task(recipe: Recipe, source: Source):
    journal(recipe, "synthesize", source.name)
    return swe.synthesize(source, recipe.synthesis, Path(recipe.work_dir) / "checkouts")


@task(name="reference-run", persist_result=True, retries=2, retry_delay_seconds=5,
      retry_condition_fn=infrastructure_only,
      cache_key_fn=_key(lambda p: ("reference", p["env"].name, p["recipe"].validation.reference_runs,
                                   p["recipe"].validation.suite_timeout_s)))
def reference_task(recipe: Recipe, env: EnvironmentHandle, source: Source):
    journal(recipe, "reference", env.name)
    return swe.reference(get_backend(env.backend), env, source, recipe.validation, limits(recipe))


@task(name="validate", persist_result=True, retries=2, retry_delay_seconds=2,
      retry_condition_fn=infrastructure_only,
      cache_key_fn=VALIDATE_KEY)
def validate_task(recipe: Recipe, pool: SandboxPool, candidate: Candidate, ref: ReferenceRun):
    journal(recipe, "validate", VALIDATE_KEY.of(dict(recipe=recipe, candidate=candidate, ref=ref)))
    return swe.validate(pool, candidate, ref, recipe.validation)


@task(name="verify-gold", persist_result=True, retries=2, retry_delay_seconds=2,
      retry_condition_fn=infrastructure_only,
      cache_key_fn=_key(lambda p: ("gold", p["task_"].task_id, test_verifier.VERSION)))
def gold_task(recipe: Recipe, env: EnvironmentHandle, task_: Task):
    journal(recipe, "verify-gold", task_.task_id)
    with get_backend(env.backend).start(env, limits(recipe)) as sandbox:
        return test_verifier.verify_gold(sandbox, task_, timeout=recipe.validation.suite_timeout_s)


@task(name="rollout", persist_result=True, retries=2, retry_delay_seconds=2,
      retry_condition_fn=infrastructure_only,
      cache_key_fn=ROLLOUT_KEY)
def rollout_task(recipe: Recipe, env: EnvironmentHandle, task_: Task, sample: int):
    journal(recipe, "rollout", ROLLOUT_KEY.of(dict(recipe=recipe, task_=task_, sample=sample)))
    with get_backend(env.backend).start(env, limits(recipe)) as sandbox:
        return rollout(task_, OraclePolicy(), sandbox, max_steps=recipe.rollout.max_steps,
                       command_timeout=recipe.sandbox.command_timeout_s, sample=sample)


@task(name="verify", persist_result=True, retries=2, retry_delay_seconds=2,
      retry_condition_fn=infrastructure_only,
      cache_key_fn=_key(lambda p: ("verify", p["trajectory"].trajectory_id, p["task_"].task_id,
                                   test_verifier.VERSION)))
def verify_task(recipe: Recipe, env: EnvironmentHandle, task_: Task, trajectory: Trajectory):
    journal(recipe, "verify", trajectory.trajectory_id)
    with get_backend(env.backend).start(env, limits(recipe)) as sandbox:
        return test_verifier.verify_trajectory(sandbox, task_, trajectory, timeout=recipe.validation.suite_timeout_s)
