"""The pipelines' units of work as Prefect tasks: cache keys, retries and the run journal, nothing else.

`STEPS` maps each step function of `pipelines/swe.py` and `pipelines/web.py` to its Prefect task; the flows'
runner (`flows/runner.py`) submits those. Every cache key is a content hash of what the work depends on,
so a run that was killed and started again finds finished validations, rollouts and verdicts in the
result store. The journal (`journal.jsonl` in the work dir) gets one line, keyed by the cache key, each
time a step really runs (a cache hit writes nothing): that is how the tests see resumption.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from prefect import task

from trajfactory.agents.model import POLICY_VERSION
from trajfactory.flows.cluster import run_step
from trajfactory.executors.base import InfrastructureError
from trajfactory.executors.testrun import CONTEXTS_VERSION
from trajfactory.models.client import ModelError
from trajfactory.models.service import ModelEndpoint
from trajfactory.pipelines import closed_loop, swe, web
from trajfactory.schema import content_hash
from trajfactory.settings import Recipe
from trajfactory.synthesizers.swe import procedural, reference, rewrite, statements
from trajfactory.synthesizers.swe import validate as validation
from trajfactory.synthesizers.web import stage as web_stage
from trajfactory.verifiers import judge as judge_verifier
from trajfactory.verifiers import tests as test_verifier

_journal_lock = threading.Lock()


def journal(work_dir: str | Path, stage: str, key: str) -> None:
    """One line each time a step really runs (a cache hit writes nothing)."""
    path = Path(work_dir) / "journal.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _journal_lock, path.open("a") as fh:
        fh.write(json.dumps({"stage": stage, "key": key, "pid": os.getpid(), "at": time.time()}) + "\n")


def infrastructure_only(task, task_run, state) -> bool:
    """Retry a task only when what is under it failed (the engine, the browser, the model server after the client's
    own retries), never for a bad item."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, InfrastructureError) or (isinstance(exc, ModelError) and exc.infrastructure)


def work_dir(recipe: Recipe, half: str) -> Path:
    """Where a half keeps its journal and cached results."""
    return recipe.web_work_dir if half == "web" else Path(recipe.work_dir)


def _model(recipe: Recipe) -> dict:
    """What identifies the model's outputs (never the port of a served model, prices or timeouts)."""
    return recipe.model.digest_fields() if recipe.model else {}


def _file_digest(path: str) -> str:
    """What a file-backed step depends on: the file's content (a missing file keys on its name and fails in the step)."""
    file = Path(path)
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else f"missing:{path}"


def _endpoint_id(endpoint: ModelEndpoint) -> tuple:
    """What identifies a web model's outputs: its name and weights (a served model's port changes per run)."""
    return (endpoint.name, endpoint.model_dir or endpoint.base_url)


# ---------------------------------------------------------------- cache keys: what each step's result depends on


def _validate(p):
    v = p["recipe"].validation
    return ("validate", validation.VERSION, p["candidate"].candidate_id, p["ref"].image, v.selection, v.test_timeout_s,
            v.timeout_factor, sorted(p["ref"].passing), p["ref"].by_id)


def _validate_batch(p):
    v = p["recipe"].validation
    return ("validate-batch", validation.VERSION, [c.candidate_id for c in p["candidates"]], p["ref"].image,
            v.selection, v.test_timeout_s, v.timeout_factor, sorted(p["ref"].passing), p["ref"].by_id)


def _rollout(p):
    r = p["recipe"].rollout
    return ("rollout", p["task"].task_id, r.samples, r.max_steps, p["sample"])


def _lm_rewrite(p):
    s = p["recipe"].synthesis
    return ("lm-rewrite", rewrite.VERSION, p["source"].name, p["source"].commit, s.lm_rewrite.model_dump(),
            s.min_complexity, s.seed, _model(p["recipe"]))


def _statement(p):
    s = p["recipe"].synthesis
    return ("statement", statements.DEFAULT_SAMPLING, p["task"].task_id, p["task"].checks.FAIL_TO_PASS,
            s.statement_max_tokens, s.statement_max_context_chars, _model(p["recipe"]))


def _model_rollout(p):
    r = p["recipe"].rollout
    return ("model-rollout", POLICY_VERSION, sorted(t.task_id for t in p["tasks"]), r.model.samples,
            r.model.agent.model_dump(), r.max_steps, _model(p["recipe"]))


def _judge(p):
    return ("judge", judge_verifier.VERSION, p["task"].task_id, sorted(tr.trajectory_id for tr in p["trajectories"]),
            p["recipe"].judge.model_dump(), _model(p["recipe"]))


def _web_establish(p):
    w = p["recipe"].web
    return ("web-establish", p["task"].task_id, w.max_steps, web_stage.POLICY, w.judge)


def _web_rollout(p):
    return ("web-rollout", p["task"].task_id, [c.model_dump() for c in p["task"].checks], p["recipe"].web.max_steps,
            web_stage.POLICY, p["sample"])


def _web_model_rollout(p):
    w = p["recipe"].web
    return ("web-model-rollout", p["task"].task_id, [c.model_dump() for c in p["task"].checks], w.max_steps,
            w.agent.model_dump(), _endpoint_id(p["endpoint"]), web_stage.POLICY, p["sample"])


def _web_judge(p):
    w = p["recipe"].web
    return ("web-judge", p["task"].task_id, p["trajectory"].trajectory_id,
            w.judge_settings.model_dump(exclude={"min_confidence"}), _endpoint_id(p["endpoint"]),
            judge_verifier.VERSION, web_stage.STAGE_VERSION)


# ---------------------------------------------------------------- the tasks


def step_task(fn: Callable, name: str, *, key: Callable[[dict], tuple] | None = None, half: str = "swe",
              retry: bool = False, remote: bool = False):
    """`fn` as a Prefect task; with `key`, its result is cached under that content hash and each run journaled. With
    `remote`, the work runs on a node of the recipe's Ray cluster when the flow has one (`flows/cluster.py`)."""
    if key is None:
        return task(fn, name=name, retries=2 if retry else 0, retry_delay_seconds=5,
                    retry_condition_fn=infrastructure_only if retry else None)
    signature = inspect.signature(fn)

    def key_of(params: dict[str, Any]) -> str:
        return content_hash(*key(params), length=32)

    @functools.wraps(fn)
    def body(*args, **kwargs):
        params = signature.bind(*args, **kwargs).arguments
        journal(work_dir(params["recipe"], half), name, key_of(params))
        return run_step(fn, args, kwargs) if remote else fn(*args, **kwargs)

    made = task(body, name=name, persist_result=True, cache_key_fn=lambda context, params: key_of(params),
                retries=2 if retry else 0, retry_delay_seconds=2, retry_condition_fn=infrastructure_only if retry else None)
    made.half = half
    return made


STEPS: dict[Callable, Any] = {
    swe.resolve_repos: step_task(swe.resolve_repos, "resolve-repos"),
    swe.harvest_one: step_task(swe.harvest_one, "harvest"),
    swe.build_environment: step_task(swe.build_environment, "build-environment", retry=True),
    swe.procedural_candidates: step_task(
        swe.procedural_candidates, "synthesize",
        key=lambda p: ("synthesize", procedural.VERSION, p.get("pooled", False), p["source"].name, p["source"].commit,
                       p["recipe"].synthesis.model_dump(exclude={"lm_rewrite", "statements"}))),
    swe.lm_candidates: step_task(swe.lm_candidates, "lm-rewrite", key=_lm_rewrite, retry=True),
    swe.combined_candidates: step_task(
        swe.combined_candidates, "combine",
        key=lambda p: ("combine", p["source"].name, p["source"].commit, p["recipe"].synthesis.combine.model_dump(),
                       p["recipe"].synthesis.seed, sorted(t.task_id for t in p["tasks"]))),
    swe.external_candidates: step_task(
        swe.external_candidates, "external",
        key=lambda p: ("external", p["source"].name, p["source"].commit, _file_digest(p["path"]))),
    swe.reference_run: step_task(
        swe.reference_run, "reference", retry=True,
        key=lambda p: ("reference", CONTEXTS_VERSION, reference.REFERENCE_VERSION, p["env"].name,
                       p["recipe"].validation.reference_runs, p["recipe"].validation.suite_timeout_s,
                       p.get("cover"), p.get("probe"))),
    swe.validate: step_task(swe.validate, "validate", key=_validate, retry=True, remote=True),
    swe.validate_batch: step_task(swe.validate_batch, "validate", key=_validate_batch, retry=True,
                                  remote=True),
    swe.prove_gold: step_task(swe.prove_gold, "verify-gold", retry=True, remote=True,
                              key=lambda p: ("gold-batch", test_verifier.VERSION,
                                             [(t.task_id, test_verifier.tests_of(test_verifier.gold_checks(t)))
                                              for t in p["tasks"]])),
    swe.write_statement: step_task(swe.write_statement, "statement", key=_statement, retry=True),
    swe.oracle_rollout: step_task(swe.oracle_rollout, "rollout", key=_rollout, retry=True, remote=True),
    # on a cluster, on its nodes too: a node's episodes reach the model at the endpoint's URL (`model.host`)
    swe.model_rollouts: step_task(swe.model_rollouts, "model-rollout", key=_model_rollout, retry=True, remote=True),
    swe.verify: step_task(swe.verify, "verify", retry=True, remote=True,
                          key=lambda p: ("verify", p["trajectory"].trajectory_id, p["task"].task_id,
                                         test_verifier.VERSION)),
    swe.judge: step_task(swe.judge, "judge", key=_judge, retry=True),
    web.harvest_tutorials: step_task(web.harvest_tutorials, "web-harvest"),
    web.synthesize_tasks: step_task(web.synthesize_tasks, "web-synthesize"),
    # retried when Chromium or the engine under them failed (a crashed browser is relaunched for the retry)
    # on a cluster, on its nodes: each episode there with the node's own Chromium and site (`BrowserPool(fresh=True)`)
    web.establish: step_task(web.establish, "establish", key=_web_establish, half="web", retry=True, remote=True),
    web.replay_rollout: step_task(web.replay_rollout, "rollout", key=_web_rollout, half="web", retry=True,
                                  remote=True),
    web.model_rollout: step_task(web.model_rollout, "model-rollout", key=_web_model_rollout, half="web", retry=True,
                                 remote=True),
    # a judgement on a node reads the final screenshot its store carries there (`ScreenshotStore.sending`)
    web.judge: step_task(web.judge, "judge", key=_web_judge, half="web", retry=True, remote=True),
    # The closed loop's cache is each step's output directory, named by the key of what it depends on
    # (`pipelines/closed_loop.py`): a finished one is reused, a killed training run resumes from its checkpoint.
    closed_loop.sft_step: step_task(closed_loop.sft_step, "train-sft"),
    closed_loop.dpo_step: step_task(closed_loop.dpo_step, "train-dpo"),
    closed_loop.grpo_step: step_task(closed_loop.grpo_step, "train-grpo"),
    closed_loop.eval_step: step_task(closed_loop.eval_step, "eval"),
}
