"""The SWE half as one story of plain functions: repositories in, a verified dataset version out.

    harvest ─► synthesize ─► rollout ─► verify ─► build
    repos      per repository: sandbox image,     oracle and model    tests in a fresh     tasks, trajectories,
               procedural + LM candidates,        episodes            sandbox; the judge   verdicts, quarantine
               reference run, validation,                                                  as a dataset version
               gold proof, problem statements

    result = swe.run(recipe, LocalRunner())          # the whole story, no Prefect
    synthesis = swe.synthesize(recipe, sources, runner)

Each stage takes records and returns records. Its units of work are the step functions below (one
candidate's validation, one rollout, one verdict, ...), which the stage hands to a `Runner`: `LocalRunner`
runs them in threads, and the Prefect flows (`flows/swe.py`) run each as a cached, retried Prefect task.
The model (LM rewrite, statements, model rollouts, the judge) is opened once per stage, or once for the
whole run by `run`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from trajfactory.agents.model import ModelPolicy
from trajfactory.agents.oracle import OraclePolicy
from trajfactory.executors import get_backend
from trajfactory.executors.base import EnvironmentHandle, InfrastructureError
from trajfactory.executors.episode import require_server, run_episodes
from trajfactory.executors.pool import SandboxPool
from trajfactory.executors.swe_env import SweEnvironments, run_swe_episode, verify_gold_batch
from trajfactory.models.service import ModelEndpoint, model_session
from trajfactory.pipelines.runner import Runner
from trajfactory.pipelines.swe_build import build
from trajfactory.pipelines.swe_records import Harvest, Rollouts, Synthesis, Verification
from trajfactory.runtime import run_sync
from trajfactory.schema import (Candidate, Evidence, ModelUsage, Quarantine, ReferenceRun, Source, Task, Trajectory,
                                Validation, Verdict)
from trajfactory.settings import EpisodeLimits, Recipe
from trajfactory.sources import expand_repo, harvest_repo
from trajfactory.sources.mirrors import SourceError
from trajfactory.sources.repos import parse_uri
from trajfactory.synthesizers.swe import combine, external, lm_stage, stage
from trajfactory.synthesizers.swe import validate as validation
from trajfactory.synthesizers.swe.selection_lines import probe_plan
from trajfactory.verifiers import judge as judge_verifier
from trajfactory.verifiers.tests import gold_verdict

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- the units of work (what a runner maps)


def resolve_repos(recipe: Recipe) -> tuple[list[str], list[Quarantine]]:
    """The recipe's repositories as the URIs to harvest, in order and once each (`pypi:NAME@latest:N` stands for its
    N newest releases, asked of the package index at every run, so never cached), and the quarantine rows of those
    that resolve to nothing."""
    uris, bad = [], []
    # a chosen Python is checked here, the first step: a backend that cannot run it stops the run before any work
    wanted = recipe.sandbox.python or any("@latest:" in spec.uri for spec in recipe.repos)
    python = sandbox_python(recipe) if wanted else None
    for spec in recipe.repos:
        resolved = expand_repo(spec.uri, python)
        if isinstance(resolved, Quarantine):
            bad.append(resolved)
        else:
            uris += [u for u in resolved if u not in uris]
    return uris, bad


def sandbox_python(recipe: Recipe) -> str | None:
    """The Python version the recipe's sandboxes run (`3.11.2`): `pypi:NAME@latest:N` takes releases that support it.
    None (and a warning) when the backend cannot say."""
    try:
        return get_backend(recipe.sandbox.backend, recipe.sandbox.python).python_version()
    except ValueError:  # a Python the backend does not offer: the recipe's error, not an unknown version
        raise
    except Exception as exc:  # noqa: BLE001 — the build stage reports an engine that does not answer
        log.warning("the sandbox's Python version is unknown (%s); @latest takes the newest releases whatever Python "
                    "they need", exc)
        return None


def harvest_one(recipe: Recipe, uri: str) -> Source | Quarantine:
    """One repository -> a pinned mirror (or its quarantine record)."""
    return harvest_repo(uri, Path(recipe.work_dir) / "mirrors")


def asks_for(entry: str, uri: str) -> bool:
    """Whether the recipe entry `entry` asked for the source harvested as `uri`: the same URI, or a
    `pypi:NAME@latest:N` that resolved to `pypi:NAME==VERSION` (names compared as pip compares them)."""
    if entry == uri:
        return True
    if "@latest:" not in entry:
        return False
    try:
        wanted, got = parse_uri(entry), parse_uri(uri)
    except SourceError:
        return False
    return got.kind == "pypi" and wanted.normalized == got.normalized


def build_environment(recipe: Recipe, source: Source) -> EnvironmentHandle | Quarantine:
    """The repository's sandbox image (built once per content), with the test requirements its recipe entry adds, the
    test paths it leaves out and the variables it sets."""
    specs = [spec for spec in recipe.repos if asks_for(spec.uri, source.uri)]
    extra = [r for spec in specs for r in spec.test_requirements]
    ignore = [p for spec in specs for p in spec.ignore_tests]
    variables = {name: value for spec in specs for name, value in spec.test_env.items()}
    backend = get_backend(recipe.sandbox.backend, recipe.sandbox.python)
    return stage.build_environment(backend, source, list(dict.fromkeys(extra)), list(dict.fromkeys(ignore)), variables)


def procedural_candidates(recipe: Recipe, source: Source, pooled: bool = False
                          ) -> tuple[list[Candidate], list[Quarantine]]:
    """The recipe's procedural candidates, or with `pooled` the pool they are picked from (`stage.pick`)."""
    return stage.synthesize(source, recipe.synthesis, Path(recipe.work_dir) / "checkouts", pooled)


def external_candidates(recipe: Recipe, source: Source, path: str) -> tuple[list[Candidate], list[Quarantine]]:
    """The bug patches of `path` (SWE-smith instances) as candidates of the source's pinned checkout."""
    return external.external_candidates(path, source, stage.checkout(source, Path(recipe.work_dir) / "checkouts"))


def combined_candidates(recipe: Recipe, source: Source, tasks: list[Task], candidates: list[Candidate]
                        ) -> list[Candidate]:
    """Several proven bugs of one file combined into one candidate (SWE-smith's combine_file)."""
    c = recipe.synthesis.combine
    return combine.combine(tasks, candidates, stage.checkout(source, Path(recipe.work_dir) / "checkouts"),
                           size=c.size, max_per_file=c.max_per_file, seed=recipe.synthesis.seed)


def lm_candidates(recipe: Recipe, endpoint: ModelEndpoint, source: Source
                  ) -> tuple[list[Candidate], list[Quarantine], ModelUsage]:
    return lm_stage.lm_rewrite(source, recipe.synthesis, Path(recipe.work_dir) / "checkouts", endpoint.client())


def reference_run(recipe: Recipe, env: EnvironmentHandle, source: Source, cover: list[str] | None = None,
                  probe: dict[str, list[int]] | None = None) -> ReferenceRun | Quarantine:
    """The repository's reference run, with coverage of the files `cover` names (every file when None), or line
    probes of the lines `probe` names (`validation.recorder`)."""
    return stage.reference(get_backend(env.backend), env, source, recipe.validation, recipe.sandbox, cover, probe)


def validate(recipe: Recipe, pool: SandboxPool, candidate: Candidate, ref: ReferenceRun) -> Validation:
    return stage.validate(pool, candidate, ref, recipe.validation)


def validate_batch(recipe: Recipe, pool: SandboxPool, candidates: list[Candidate], ref: ReferenceRun
                   ) -> list[Validation]:
    """A batch of candidates in one warm sandbox of the pool, by one warm test worker (`executors/batchrun.py`)."""
    cfg = recipe.validation
    with pool.acquire() as sandbox:
        try:
            return validation.validate_batch(sandbox, candidates, ref, selection=cfg.selection,
                                             timeout=cfg.test_timeout_s, timeout_factor=cfg.timeout_factor)
        except InfrastructureError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad batch never stops the others
            return [Validation(candidate_id=c.candidate_id, status="error", detail=f"{type(exc).__name__}: {exc}")
                    for c in candidates]


def validation_batches(recipe: Recipe, pool: SandboxPool, candidates: list[Candidate], ref: ReferenceRun
                       ) -> list[tuple]:
    """`validate_batch` calls: the candidates in order, cut into batches of `validation.batch_size` at most, and
    into at least as many batches as there are sandboxes (when there are that many candidates)."""
    return [(recipe, pool, batch, ref) for batch in _batches(recipe, candidates, recipe.validation.batch_size)]


def _batches(recipe: Recipe, items: list, most: int) -> list[list]:
    workers = max(1, recipe.sandbox.concurrency)
    size = max(1, min(most, -(-len(items) // workers)))
    return [items[i:i + size] for i in range(0, len(items), size)]


def prove_gold(recipe: Recipe, pool: SandboxPool, tasks: list[Task]) -> list[Verdict]:
    """A batch of tasks' gold proofs in one warm sandbox of the validation's pool, by one warm test worker
    (`swe_env.verify_gold_batch`): each task's bug and gold patches applied, the checkout required to be exactly the
    clean one again, and the task's `gold_checks` run in the worker's collected session."""
    with pool.acquire() as sandbox:
        try:
            return verify_gold_batch(sandbox, tasks, timeout=recipe.validation.suite_timeout_s)
        except InfrastructureError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad batch never stops the others
            return [gold_verdict(t, False, Evidence(detail=f"gold proof: {type(exc).__name__}: {exc}"[:2000]), 0.0)
                    for t in tasks]


GOLD_BATCH = 4
"""A gold batch holds up to this many times `validation.batch_size` tasks. Its collected session collects the union
of its tasks' test files once (about 7 s a batch on networkx), and a proof's own tests are few."""


def gold_batches(recipe: Recipe, pool: SandboxPool, tasks: list[Task]) -> list[tuple]:
    """`prove_gold` calls: the tasks cut into as many batches as there are sandboxes, of at most `GOLD_BATCH` times
    `validation.batch_size` tasks."""
    return [(recipe, pool, batch) for batch in _batches(recipe, tasks, GOLD_BATCH * recipe.validation.batch_size)]


def write_statement(recipe: Recipe, endpoint: ModelEndpoint, env: EnvironmentHandle, task: Task
                    ) -> tuple[Task, ModelUsage]:
    """The failing tests' output on the buggy state (a fresh sandbox), then the model's statement from it."""
    with get_backend(env.backend).start(env, recipe.sandbox) as sandbox:
        output = lm_stage.failing_output(sandbox, task, timeout=recipe.validation.test_timeout_s)
    return lm_stage.write_statement(endpoint.client(max_concurrency=1), task, output,
                                    max_tokens=recipe.synthesis.statement_max_tokens,
                                    max_context_chars=recipe.synthesis.statement_max_context_chars)


def oracle_rollout(recipe: Recipe, env: EnvironmentHandle, task: Task, sample: int) -> Trajectory:
    """One oracle episode in a fresh sandbox."""
    return run_swe_episode(task, OraclePolicy(), get_backend(env.backend), env, recipe.sandbox,
                           max_steps=recipe.rollout.max_steps, sample=sample)


def model_rollouts(recipe: Recipe, endpoint: ModelEndpoint, environments: dict[str, EnvironmentHandle],
                   tasks: list[Task], concurrency: int | None = None) -> tuple[list[Trajectory], ModelUsage]:
    """Every sample of a chunk of tasks, `concurrency` (default `rollout.model.concurrency`) episodes in flight
    sharing one client."""
    cfg = recipe.rollout.model
    concurrency = concurrency or cfg.concurrency
    client = endpoint.client()
    backend = get_backend(environments[tasks[0].environment.repo].backend)

    with SweEnvironments(backend, environments, recipe.sandbox, concurrency) as envs:
        async def go():
            async with client:
                return await run_episodes(
                    tasks, envs, lambda task, sample: ModelPolicy(client, cfg.agent.for_sample(sample)),
                    concurrency=concurrency, samples=cfg.samples,
                    limits=EpisodeLimits(max_steps=recipe.rollout.max_steps))

        episodes, _ = run_sync(go())
    trajectories = [e.trajectory for e in episodes]
    require_server(trajectories, f"model rollouts of {len(tasks)} tasks")
    return trajectories, ModelUsage.of_client("rollout", client)


def verify(recipe: Recipe, env: EnvironmentHandle, task: Task, trajectory: Trajectory) -> Verdict:
    """The tests' verdict on a trajectory's final state, in a fresh sandbox."""
    with SweEnvironments(get_backend(env.backend), env, recipe.sandbox) as envs:
        return envs(task).evaluate_sync(task, trajectory, timeout=recipe.validation.suite_timeout_s)


def judge(recipe: Recipe, endpoint: ModelEndpoint, task: Task, trajectories: list[Trajectory]
          ) -> tuple[list[Verdict], ModelUsage]:
    """The judge's verdict on every trajectory of one task (abstentions included: never a pass)."""
    # Judge units run `sandbox.concurrency` at once: they share the endpoint's request bound.
    client = endpoint.client(max_concurrency=max(1, endpoint.max_concurrency // recipe.sandbox.concurrency))
    cfg = recipe.judge

    async def go():
        async with client:
            return await asyncio.gather(*(
                judge_verifier.judge_trajectory(
                    client, task, tr, structured=cfg.structured, sampling={"max_tokens": cfg.max_tokens},
                    max_steps=cfg.max_history_steps, max_observation_chars=cfg.max_observation_chars,
                    max_patch_chars=cfg.max_patch_chars) for tr in trajectories))

    return list(run_sync(go())), ModelUsage.of_client("judge", client)


# ---------------------------------------------------------------- the stages


def harvest(recipe: Recipe, runner: Runner) -> Harvest:
    """Repositories -> pinned mirrors."""
    uris, unresolved = runner.call(resolve_repos, recipe)
    results = runner.map(harvest_one, [(recipe, uri) for uri in uris], "harvest", workers=recipe.sandbox.concurrency)
    return Harvest([r for r in results if isinstance(r, Source)],
                   unresolved + [r for r in results if isinstance(r, Quarantine)],
                   uris + [q.uri for q in unresolved])


def synthesize_repo(recipe: Recipe, source: Source, runner: Runner, endpoint: ModelEndpoint | None,
                    out: Synthesis) -> None:
    """One repository's tasks: environment, candidates, reference run, validation, gold proof, statements."""
    syn, workers = recipe.synthesis, recipe.sandbox.concurrency
    env = runner.call(build_environment, recipe, source)
    if isinstance(env, Quarantine):
        out.quarantine.append(env)
        return
    drawn, bad_files = runner.call(procedural_candidates, recipe, source, True)
    candidates = list(drawn)
    out.quarantine += bad_files
    spec = next((r for r in recipe.repos if asks_for(r.uri, source.uri)), None)
    if spec is not None and spec.bug_patches:  # bug patches from elsewhere go through the same validation
        outside, rejects = runner.call(external_candidates, recipe, source, spec.bug_patches)
        candidates, out.quarantine = candidates + outside, out.quarantine + rejects
    if syn.lm_rewrite.enabled:  # LM candidates go through the same validation as procedural ones
        lm, rejects, used = runner.call(lm_candidates, recipe, endpoint, source)
        candidates, out.usage = candidates + lm, out.usage + [used]
        out.quarantine += rejects
    if recipe.validation.recorder == "probe":
        ref = runner.call(reference_run, recipe, env, source, None, probe_plan(candidates))
    else:
        ref = runner.call(reference_run, recipe, env, source, stage.coverage_files(candidates))
    if isinstance(ref, Quarantine):
        out.quarantine.append(ref)
        return
    candidates = stage.pick(drawn, ref, syn) + candidates[len(drawn):]  # the cap, code the tests ran first
    with SandboxPool(get_backend(env.backend), env, workers, recipe.sandbox) as pool:
        validations = [v for batch in runner.map(validate_batch, validation_batches(recipe, pool, candidates, ref),
                                                 f"validate {source.name}", workers=workers) for v in batch]
        tasks = stage.tasks_from(source, env, candidates, validations)
        gold = [v for batch in runner.map(prove_gold, gold_batches(recipe, pool, tasks), f"prove gold {source.name}",
                                          workers=workers) for v in batch]
        accepted, rejected = stage.accept_proven(tasks, gold, source)
        if syn.combine.max_per_file and len(accepted) > 1:  # several proven bugs of one file as one task
            combos = runner.call(combined_candidates, recipe, source, accepted, candidates)
            more = [v for batch in runner.map(validate_batch, validation_batches(recipe, pool, combos, ref),
                                              f"validate combined {source.name}", workers=workers) for v in batch]
            tasks = stage.tasks_from(source, env, combos, more)
            proofs = [v for batch in runner.map(prove_gold, gold_batches(recipe, pool, tasks),
                                                f"prove gold combined {source.name}", workers=workers) for v in batch]
            kept, dropped = stage.accept_proven(tasks, proofs, source)
            candidates, validations, gold = candidates + combos, validations + more, gold + proofs
            accepted, rejected = accepted + kept, rejected + dropped
    if syn.statements == "model" and accepted:
        written = runner.map(write_statement, [(recipe, endpoint, env, t) for t in accepted],
                             f"statements {source.name}", workers=workers)
        accepted, out.usage = [t for t, _ in written], out.usage + [used for _, used in written]
    out.tasks += accepted
    out.quarantine += rejected
    out.gold_verdicts += [v for v in gold if v.passed]
    out.candidates += candidates
    out.validations += validations
    out.environments[source.name] = env


def synthesize(recipe: Recipe, sources: list[Source], runner: Runner, endpoint: ModelEndpoint | None = None) -> Synthesis:
    """Sources -> validated tasks with proven gold patches and their problem statements."""
    out = Synthesis()
    needed = recipe.synthesis.lm_rewrite.enabled or recipe.synthesis.statements == "model"
    with model_session(recipe.model, recipe.work_dir, endpoint, needed, recipe.cluster) as endpoint:
        for source in sources:
            synthesize_repo(recipe, source, runner, endpoint, out)
    return out


def _chunks(tasks: list[Task], environments: dict[str, EnvironmentHandle], size: int) -> list[list[Task]]:
    """Tasks in id order, cut into chunks of one sandbox backend each (a chunk is one unit of work)."""
    by_backend: dict[str, list[Task]] = {}
    for task in sorted(tasks, key=lambda x: x.task_id):
        by_backend.setdefault(environments[task.environment.repo].backend, []).append(task)
    return [group[i:i + size] for group in by_backend.values() for i in range(0, len(group), size)]


def rollout(recipe: Recipe, tasks: list[Task], environments: dict[str, EnvironmentHandle], runner: Runner,
            endpoint: ModelEndpoint | None = None) -> Rollouts:
    """Tasks -> trajectories of the recipe's policies (oracle and/or the model), each in a fresh sandbox."""
    out = Rollouts()
    if "oracle" in recipe.rollout.policies:
        calls = [(recipe, environments[t.environment.repo], t, s) for t in tasks for s in range(recipe.rollout.samples)]
        out.trajectories += runner.map(oracle_rollout, calls, "rollout oracle", workers=recipe.sandbox.concurrency)
    cfg = recipe.rollout.model
    chosen = sorted(tasks, key=lambda x: x.task_id)[:cfg.max_tasks]
    if "model" in recipe.rollout.policies and chosen:
        # `rollout.model.concurrency` episodes in flight against the model in all: here one chunk at a time fills
        # them; on a cluster, one chunk per node (up to that many) runs at once with its share of them.
        at_once = max(1, min(runner.machines(), cfg.concurrency, recipe.sandbox.concurrency))
        per_chunk = cfg.concurrency // at_once
        chunks = _chunks(chosen, environments, max(1, -(-per_chunk // cfg.samples)))
        with model_session(recipe.model, recipe.work_dir, endpoint, True, recipe.cluster) as endpoint:
            calls = [(recipe, endpoint, environments, chunk, per_chunk) for chunk in chunks]
            for done, used in runner.map(model_rollouts, calls, f"rollout model ({len(chosen)} tasks)",
                                         workers=at_once):
                out.trajectories, out.usage = out.trajectories + done, out.usage + [used]
    return out


def verify_all(recipe: Recipe, tasks: list[Task], environments: dict[str, EnvironmentHandle],
               trajectories: list[Trajectory], runner: Runner, endpoint: ModelEndpoint | None = None) -> Verification:
    """Trajectories -> test verdicts on their final state; with `judge:`, the judge's verdicts beside them."""
    by_id = {t.task_id: t for t in tasks}
    env_of = lambda tr: environments[by_id[tr.task_id].environment.repo]  # noqa: E731
    out = Verification()
    out.verdicts = runner.map(verify, [(recipe, env_of(tr), by_id[tr.task_id], tr) for tr in trajectories], "verify",
                              workers=recipe.sandbox.concurrency)
    if recipe.judge.enabled and trajectories:
        per_task: dict[str, list[Trajectory]] = {}
        for tr in trajectories:
            per_task.setdefault(tr.task_id, []).append(tr)
        with model_session(recipe.model, recipe.work_dir, endpoint, True, recipe.cluster) as endpoint:
            calls = [(recipe, endpoint, by_id[task_id], group) for task_id, group in per_task.items()]
            for found, used in runner.map(judge, calls, "judge", workers=recipe.sandbox.concurrency):
                out.judged, out.usage = out.judged + found, out.usage + [used]
    return out


def run(recipe: Recipe, runner: Runner, endpoint: ModelEndpoint | None = None) -> dict:
    """The whole SWE half: harvest -> synthesize -> rollout -> verify -> a dataset version."""
    with model_session(recipe.model, recipe.work_dir, endpoint, recipe.swe_uses_model(),
                       recipe.cluster) as endpoint:
        harvested = harvest(recipe, runner)
        synthesis = synthesize(recipe, harvested.sources, runner, endpoint)
        rollouts = rollout(recipe, synthesis.tasks, synthesis.environments, runner, endpoint)
        verification = verify_all(recipe, synthesis.tasks, synthesis.environments, rollouts.trajectories, runner,
                                  endpoint)
    result = build(recipe, harvested, synthesis, rollouts, verification, runner.run_id)
    return {**result, "verified": sum(v.passed for v in verification.verdicts), "verdicts": len(verification.verdicts),
            "judge_agreement": verification.agreement()}
