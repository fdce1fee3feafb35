"""The web factory as a Prefect flow: tutorials in, a versioned dataset of verified browser trajectories out.

    harvest ─► synthesize ─► establish checks (gold replay) ─► rollout + verify ─► dataset version
                                   └── one BrowserPool of `browsers` Chromiums; episodes in threads ──┘

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
from trajfactory.schema import Quarantine, WebTask, content_hash
from trajfactory.synthesizers.web import stage
from trajfactory.web_config import WebConfig

def journal(config: WebConfig, what: str, key: str) -> None:
    common.journal(config.work_dir, what, key)


def _key(parts):
    """A Prefect cache_key_fn from the task's parameters; `.of(params)` gives the same key to the journal."""
    def key_fn(context, params):
        return content_hash(*parts(params), length=32)

    key_fn.of = lambda params: content_hash(*parts(params), length=32)
    return key_fn


# the task's content (id + checks) and everything the result depends on; never the pool or the store
ESTABLISH_KEY = _key(lambda p: ("web-establish", p["task_"].task_id, p["config"].max_steps, stage.POLICY))
ROLLOUT_KEY = _key(lambda p: ("web-rollout", p["task_"].task_id, [c.model_dump() for c in p["task_"].checks],
                              p["config"].max_steps, stage.POLICY, p["sample"]))


@task(name="web-harvest")
def harvest_task(config: WebConfig, uris: list[str]):
    return stage.harvest(uris, stage.harvest_config(config))


@task(name="web-synthesize")
def synthesize_task(config: WebConfig, tutorials):
    return stage.tasks_from_tutorials(tutorials, config.seed, config.infeasible_share, config.max_tasks_per_site)


@task(name="web-establish-checks", persist_result=True, cache_key_fn=ESTABLISH_KEY)
def establish_task(config: WebConfig, pool: BrowserPool, task_: WebTask):
    journal(config, "establish", ESTABLISH_KEY.of(dict(config=config, task_=task_)))
    return stage.establish_checks(task_, pool, None, max_steps=config.max_steps)  # gold replays keep no screenshots


@task(name="web-rollout", persist_result=True, cache_key_fn=ROLLOUT_KEY)
def rollout_task(config: WebConfig, pool: BrowserPool, store: ScreenshotStore, task_: WebTask, sample: int = 0):
    journal(config, "rollout", ROLLOUT_KEY.of(dict(config=config, task_=task_, sample=sample)))
    return stage.rollout_and_verify(task_, pool, store, max_steps=config.max_steps, sample=sample)


def _opts(t, config: WebConfig):
    return t.with_options(result_storage=common.result_storage(config.work_dir))


_gather = common.gather


@flow(name="web")
def web_flow(config: WebConfig) -> dict:
    """Tutorials -> web tasks -> checked tasks -> verified trajectories -> one new dataset version."""
    logger = get_run_logger()
    with stage.tutorial_sources(config.tutorials) as uris:
        tutorials, harvest_q = harvest_task(config, uris)
    tasks, synth_q = synthesize_task(config, tutorials)
    store = ScreenshotStore(config.work_dir)
    with BrowserPool(config.browsers) as pool:  # Chromiums start on first use: a fully cached run starts none
        established = _gather([_opts(establish_task, config).submit(config, pool, t) for t in tasks], "establish checks")
        checked = [r for r in established if isinstance(r, WebTask)]
        runs = _gather([_opts(rollout_task, config).submit(config, pool, store, t) for t in checked], "rollout")
    trajectories, verdicts = [tr for tr, _ in runs], [v for _, v in runs]
    screenshots, missing = stage.screenshot_rows(trajectories, store)
    quarantine = harvest_q + synth_q + [r for r in established if isinstance(r, Quarantine)] + missing
    summary = stage.web_yields(tutorials, harvest_q, checked, trajectories, verdicts)
    create_table_artifact(table=summary["by_site"], key="web-yields-by-site",
                          description="AgentTrek funnel per site: pages -> tutorials -> tasks -> verified trajectories")
    records = {"web_tasks": checked, "trajectories": trajectories, "verdicts": verdicts, "quarantine": quarantine,
               "screenshots": screenshots}
    lineage = {"config": config.model_dump(), "config_hash": config.digest(), "factory_version": trajfactory.__version__,
               "flow_run_id": str(flow_run.get_id() or "")}
    version = write_dataset(config.dataset_root, config.dataset_name, records, lineage, summary)
    logger.info("web dataset %s %s: %d tasks, %d trajectories, %d verified, %d quarantined, %d screenshots",
                config.dataset_name, version, len(checked), len(trajectories), sum(v.passed for v in verdicts),
                len(quarantine), len(screenshots))
    return {"version": version, "root": str(Path(config.dataset_root) / config.dataset_name), "summary": summary,
            "counts": {k: len(v) for k, v in records.items()}}


def run_web(config: WebConfig | dict | None = None) -> dict:
    """Run the web flow with `config.browsers` episodes at once; for the CLI and the main flow."""
    config = config if isinstance(config, WebConfig) else WebConfig.model_validate(config or {})
    return web_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=config.browsers))(config)
