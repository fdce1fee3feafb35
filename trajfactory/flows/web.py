"""The web factory as a Prefect flow: tutorials in, a versioned dataset of verified browser trajectories out.

    harvest ─► synthesize ─► establish checks (gold replay) ─► rollouts (replay / model) + state checks
                                   ─► model judge (optional) ─► verdict of record ─► dataset version
                                   └── one BrowserPool of `browsers` Chromiums; episodes in threads ──┘

With `policies: [model]` or `judge: true` the flow needs a model: `run_web(config, model=ModelConfig(...))`
serves or reaches it for the run, or a caller that holds one passes `web_flow(config, endpoint=...)`.

Only orchestration lives here; the domain logic is `synthesizers/web/stage.py`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

import trajfactory
from trajfactory.datasets.publish import write_dataset
from trajfactory.flows import common
from trajfactory.executors.browser import BrowserPool
from trajfactory.executors.web_rollout import ScreenshotStore
from trajfactory.model_config import ModelConfig
from trajfactory.models.service import ModelEndpoint
from trajfactory.schema import Quarantine, Trajectory, WebTask, content_hash
from trajfactory.synthesizers.web import stage
from trajfactory.verifiers import judge as judge_verifier
from trajfactory.web_config import WebConfig

def journal(config: WebConfig, what: str, key: str) -> None:
    common.journal(config.work_dir, what, key)


def _key(parts):
    """A Prefect cache_key_fn from the task's parameters; `.of(params)` gives the same key to the journal."""
    def key_fn(context, params):
        return content_hash(*parts(params), length=32)

    key_fn.of = lambda params: content_hash(*parts(params), length=32)
    return key_fn


def _model_id(endpoint: ModelEndpoint) -> tuple:
    """What identifies the model's outputs: its name and weights (a served model's port changes per run)."""
    return (endpoint.name, endpoint.model_dir or endpoint.base_url)


# the task's content (id + checks) and everything the result depends on; never the pool or the store
ESTABLISH_KEY = _key(lambda p: ("web-establish", p["task_"].task_id, p["config"].max_steps, stage.POLICY,
                                p["config"].judge))
ROLLOUT_KEY = _key(lambda p: ("web-rollout", p["task_"].task_id, [c.model_dump() for c in p["task_"].checks],
                              p["config"].max_steps, stage.POLICY, p["sample"]))
MODEL_ROLLOUT_KEY = _key(lambda p: ("web-model-rollout", p["task_"].task_id, [c.model_dump() for c in p["task_"].checks],
                                    p["config"].max_steps, p["config"].agent.model_dump(), _model_id(p["endpoint"]),
                                    stage.POLICY, p["sample"]))
JUDGE_KEY = _key(lambda p: ("web-judge", p["task_"].task_id, p["trajectory"].trajectory_id,
                            p["config"].judge_settings.model_dump(exclude={"min_confidence"}), _model_id(p["endpoint"]),
                            judge_verifier.VERSION, stage.STAGE_VERSION))


@task(name="web-harvest")
def harvest_task(config: WebConfig, uris: list[str]):
    return stage.harvest(uris, stage.harvest_config(config))


@task(name="web-synthesize")
def synthesize_task(config: WebConfig, tutorials):
    return stage.tasks_from_tutorials(tutorials, config.seed, config.infeasible_share, config.max_tasks_per_site)


@task(name="web-establish-checks", persist_result=True, cache_key_fn=ESTABLISH_KEY)
def establish_task(config: WebConfig, pool: BrowserPool, task_: WebTask):
    journal(config, "establish", ESTABLISH_KEY.of(dict(config=config, task_=task_)))
    # gold replays keep no screenshots; with the judge on, read-only tutorials stay as judge-verified tasks
    return stage.establish_checks(task_, pool, None, max_steps=config.max_steps, keep_unchecked=config.judge)


@task(name="web-rollout", persist_result=True, cache_key_fn=ROLLOUT_KEY)
def rollout_task(config: WebConfig, pool: BrowserPool, store: ScreenshotStore, task_: WebTask, sample: int = 0):
    journal(config, "rollout", ROLLOUT_KEY.of(dict(config=config, task_=task_, sample=sample)))
    return stage.rollout_and_verify(task_, pool, store, max_steps=config.max_steps, sample=sample)


@task(name="web-model-rollout", persist_result=True, cache_key_fn=MODEL_ROLLOUT_KEY)
def model_rollout_task(config: WebConfig, endpoint: ModelEndpoint, pool: BrowserPool, store: ScreenshotStore,
                       task_: WebTask, sample: int = 0):
    journal(config, "model-rollout", MODEL_ROLLOUT_KEY.of(dict(config=config, endpoint=endpoint, task_=task_, sample=sample)))
    return stage.model_rollout(task_, endpoint, pool, store, config, sample=sample)


@task(name="web-judge", persist_result=True, cache_key_fn=JUDGE_KEY)
def judge_task(config: WebConfig, endpoint: ModelEndpoint, store: ScreenshotStore, task_: WebTask, trajectory: Trajectory):
    journal(config, "judge", JUDGE_KEY.of(dict(config=config, endpoint=endpoint, task_=task_, trajectory=trajectory)))
    return stage.judge_web(endpoint, task_, trajectory, store, config.judge_settings)


def _opts(t, config: WebConfig):
    return t.with_options(result_storage=common.result_storage(config.work_dir))


_gather = common.gather


@flow(name="web")
def web_flow(config: WebConfig, endpoint: ModelEndpoint | None = None) -> dict:
    """Tutorials -> web tasks -> checked tasks -> verified trajectories -> one new dataset version."""
    logger = get_run_logger()
    if config.uses_model() and endpoint is None:
        raise ValueError("web.policies: [model] / web.judge need a model endpoint: call run_web(config, model=...) "
                         "or pass web_flow(config, endpoint=...)")
    with stage.tutorial_sources(config.tutorials) as uris:
        tutorials, harvest_q = harvest_task(config, uris)
    tasks, synth_q = synthesize_task(config, tutorials)
    store = ScreenshotStore(config.work_dir)
    with BrowserPool(config.browsers) as pool:  # Chromiums start on first use: a fully cached run starts none
        established = _gather([_opts(establish_task, config).submit(config, pool, t) for t in tasks], "establish checks")
        checked = [r for r in established if isinstance(r, WebTask)]
        futures = []
        if "replay" in config.policies:
            futures += [_opts(rollout_task, config).submit(config, pool, store, t) for t in checked]
        if "model" in config.policies:
            picked = sorted(checked, key=lambda t: t.task_id)[:config.model_max_tasks]
            futures += [_opts(model_rollout_task, config).submit(config, endpoint, pool, store, t, s)
                        for t in picked for s in range(config.model_samples)]
        runs = _gather(futures, "rollout")
    trajectories, verdicts = [tr for tr, _ in runs], [v for _, v in runs if v is not None]
    if config.judge:
        by_id = {t.task_id: t for t in checked}
        verdicts += _gather([_opts(judge_task, config).submit(config, endpoint, store, by_id[tr.task_id], tr)
                             for tr in trajectories], "judge")
    record = stage.verification(checked, trajectories, verdicts, config.judge_settings.min_confidence)
    screenshots, missing = stage.screenshot_rows(trajectories, store)
    quarantine = harvest_q + synth_q + [r for r in established if isinstance(r, Quarantine)] + missing
    summary = stage.web_yields(tutorials, harvest_q, checked, trajectories, verdicts, config.judge_settings.min_confidence)
    create_table_artifact(table=summary["by_site"], key="web-yields-by-site",
                          description="AgentTrek funnel per site: pages -> tutorials -> tasks -> verified tasks")
    create_table_artifact(table=summary["by_policy"], key="web-yields-by-policy",
                          description="Trajectories, verified (by state checks / by judge), malformed turns and model use per policy")
    if "judge_agreement" in summary:
        create_table_artifact(table=summary["judge_agreement"], key="web-judge-agreement",
                              description="The model judge against the state checks: agreement, kappa, abstentions")
    records = {"web_tasks": checked, "trajectories": trajectories, "verdicts": verdicts, "quarantine": quarantine,
               "screenshots": screenshots, "web_verification": record}
    lineage = {"config": config.model_dump(), "config_hash": config.digest(), "factory_version": trajfactory.__version__,
               "flow_run_id": str(flow_run.get_id() or ""),
               "model": endpoint.name if endpoint else None, "model_dir": endpoint.model_dir if endpoint else None}
    version = write_dataset(config.dataset_root, config.dataset_name, records, lineage, summary)
    logger.info("web dataset %s %s: %d tasks, %d trajectories, %d verified, %d quarantined, %d screenshots",
                config.dataset_name, version, len(checked), len(trajectories), sum(r.verified for r in record),
                len(quarantine), len(screenshots))
    return {"version": version, "root": str(Path(config.dataset_root) / config.dataset_name), "summary": summary,
            "counts": {k: len(v) for k, v in records.items()}}


def run_web(config: WebConfig | dict | None = None, model: ModelConfig | dict | None = None,
            endpoint: ModelEndpoint | None = None) -> dict:
    """Run the web flow with `config.browsers` episodes at once; for the CLI and the main flow.

    When the config uses a model (`policies: [model]`, `judge: true`) and no `endpoint` is given, the
    model of `model` is served (or reached) for the length of the run.
    """
    config = config if isinstance(config, WebConfig) else WebConfig.model_validate(config or {})
    if model is not None and not isinstance(model, ModelConfig):
        model = ModelConfig.model_validate(model)
    runner = web_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=config.browsers))
    with common.model_session(model, config.work_dir, endpoint, config.uses_model()) as ep:
        return runner(config, endpoint=ep)
