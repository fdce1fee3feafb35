"""Prefect task wrappers around the stages' library calls: caching, retries, the run journal.

Every cache key is a content hash of what the work depends on, so a run that was killed and
started again finds finished validations, rollouts and verdicts in the result store. The journal
(`journal.jsonl` in the work dir) gets one line each time a task body really runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from prefect import task

from trajfactory.agents.base import EpisodeLimits
from trajfactory.agents.model import POLICY_VERSION, ModelPolicy, ModelPolicyConfig
from trajfactory.agents.oracle import OraclePolicy
from trajfactory.config import Recipe
from trajfactory.flows import common
from trajfactory.executors import get_backend
from trajfactory.executors.base import EnvironmentHandle, InfrastructureError, SandboxLimits
from trajfactory.executors.concurrent import run_episodes
from trajfactory.executors.environments import build_environment
from trajfactory.executors.pool import SandboxPool
from trajfactory.executors.rollout import rollout
from trajfactory.models.service import ModelEndpoint
from trajfactory.schema import Candidate, ModelUsage, ReferenceRun, Source, Task, Trajectory, content_hash
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import lm_stage, rewrite, statements
from trajfactory.synthesizers.swe import stage as swe
from trajfactory.verifiers import judge
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
    r = p["recipe"].rollout
    return ("rollout", p["task_"].task_id, r.samples, r.max_steps, p["sample"])


def _model(recipe: Recipe) -> dict:
    """What identifies the model's outputs (never the port of a served model, prices or timeouts)."""
    return recipe.model.digest_fields() if recipe.model else {}


def _lm_rewrite_parts(p):
    s = p["recipe"].synthesis
    return ("lm-rewrite", rewrite.VERSION, p["source"].name, p["source"].commit, s.lm_rewrite.model_dump(),
            s.min_complexity, s.seed, _model(p["recipe"]))


def _statement_parts(p):
    return ("statement", statements.DEFAULT_SAMPLING, p["task_"].task_id, p["task_"].checks.FAIL_TO_PASS,
            p["recipe"].synthesis.statement_max_tokens, p["recipe"].synthesis.statement_max_context_chars,
            _model(p["recipe"]))


def _model_rollout_parts(p):
    r = p["recipe"].rollout
    return ("model-rollout", POLICY_VERSION, sorted(t.task_id for t in p["tasks"]), r.model.samples,
            r.model.agent.model_dump(), r.max_steps, _model(p["recipe"]))


def _judge_parts(p):
    return ("judge", judge.VERSION, p["task_"].task_id, sorted(tr.trajectory_id for tr in p["trajectories"]),
            p["recipe"].judge.model_dump(), _model(p["recipe"]))


VALIDATE_KEY, ROLLOUT_KEY = _key(_validate_parts), _key(_rollout_parts)
LM_REWRITE_KEY, STATEMENT_KEY = _key(_lm_rewrite_parts), _key(_statement_parts)
MODEL_ROLLOUT_KEY, JUDGE_KEY = _key(_model_rollout_parts), _key(_judge_parts)


@task(name="harvest")
def harvest_task(recipe: Recipe, uri: str):
    return harvest_repo(uri, Path(recipe.work_dir) / "mirrors")


@task(name="build-environment", retries=2, retry_delay_seconds=5, retry_condition_fn=infrastructure_only)
def build_task(recipe: Recipe, source: Source):
    return build_environment(get_backend(recipe.sandbox.backend), source)


@task(name="synthesize", persist_result=True,
      cache_key_fn=_key(lambda p: ("synthesize", p["source"].name, p["source"].commit,
                                   p["recipe"].synthesis.model_dump(exclude={"lm_rewrite", "statements"}))))
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


# ---------------------------------------------------------------- model-backed steps
# Each returns its records with the `ModelUsage` of the requests it made; a cached result keeps the usage
# of the run that made it, so the usage of a dataset counts every request behind it once.


@task(name="lm-rewrite", persist_result=True, cache_key_fn=LM_REWRITE_KEY)
def lm_rewrite_task(recipe: Recipe, endpoint: ModelEndpoint, source: Source):
    journal(recipe, "lm-rewrite", LM_REWRITE_KEY.of(dict(recipe=recipe, source=source)))
    return lm_stage.lm_rewrite(source, recipe.synthesis, Path(recipe.work_dir) / "checkouts", endpoint.client())


@task(name="statement", persist_result=True, retries=2, retry_delay_seconds=2,
      retry_condition_fn=infrastructure_only, cache_key_fn=STATEMENT_KEY)
def statement_task(recipe: Recipe, endpoint: ModelEndpoint, env: EnvironmentHandle, task_: Task):
    """The failing tests' output on the buggy state (a fresh sandbox), then the model's statement from it."""
    journal(recipe, "statement", STATEMENT_KEY.of(dict(recipe=recipe, task_=task_)))
    with get_backend(env.backend).start(env, limits(recipe)) as sandbox:
        output = lm_stage.failing_output(sandbox, task_, timeout=recipe.validation.test_timeout_s)
    return lm_stage.write_statement(endpoint.client(max_concurrency=1), task_, output,
                                    max_tokens=recipe.synthesis.statement_max_tokens,
                                    max_context_chars=recipe.synthesis.statement_max_context_chars)


def sample_config(agent: ModelPolicyConfig, sample: int) -> ModelPolicyConfig:
    """The agent settings of one sample: its own seed, so samples differ and each is reproducible."""
    return agent.model_copy(update={"seed": (agent.seed or 0) + sample})


@task(name="model-rollout", persist_result=True, cache_key_fn=MODEL_ROLLOUT_KEY)
def model_rollout_task(recipe: Recipe, endpoint: ModelEndpoint, environments: dict[str, EnvironmentHandle],
                       tasks: list[Task]) -> tuple[list[Trajectory], ModelUsage]:
    """Every sample of a chunk of tasks, `rollout.model.concurrency` episodes in flight sharing one client."""
    journal(recipe, "model-rollout", MODEL_ROLLOUT_KEY.of(dict(recipe=recipe, tasks=tasks)))
    cfg = recipe.rollout.model
    client = endpoint.client()
    backend = get_backend(environments[tasks[0].environment.repo].backend)

    async def run():
        async with client:
            return await run_episodes(
                tasks, lambda task_, sample: ModelPolicy(client, sample_config(cfg.agent, sample)), backend,
                lambda task_: environments[task_.environment.repo], concurrency=cfg.concurrency,
                samples=cfg.samples, limits=EpisodeLimits(max_steps=recipe.rollout.max_steps),
                sandbox_limits=limits(recipe))

    trajectories, _ = asyncio.run(run())
    return trajectories, ModelUsage.of_client("rollout", client)


@task(name="judge", persist_result=True, cache_key_fn=JUDGE_KEY)
def judge_task(recipe: Recipe, endpoint: ModelEndpoint, task_: Task, trajectories: list[Trajectory]):
    """The judge's verdict on every trajectory of one task (abstentions included: never a pass)."""
    journal(recipe, "judge", JUDGE_KEY.of(dict(recipe=recipe, task_=task_, trajectories=trajectories)))
    # Judge tasks run `sandbox.concurrency` at once: share the endpoint's request bound between them.
    client = endpoint.client(max_concurrency=max(1, endpoint.max_concurrency // recipe.sandbox.concurrency))
    cfg = recipe.judge

    async def run():
        async with client:
            return await asyncio.gather(*(
                judge.judge_trajectory(client, task_, tr, structured=cfg.structured,
                                       sampling={"max_tokens": cfg.max_tokens}, max_steps=cfg.max_history_steps,
                                       max_observation_chars=cfg.max_observation_chars,
                                       max_patch_chars=cfg.max_patch_chars) for tr in trajectories))

    return list(asyncio.run(run())), ModelUsage.of_client("judge", client)
