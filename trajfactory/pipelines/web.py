"""The web half as one story of plain functions: tutorials in, a versioned dataset of verified browser trajectories out.

    harvest ─► synthesize ─► establish checks ─► rollouts (replay / model) ─► judge (optional) ─► build
    tutorials  task specs,     a gold replay:      state verdicts              goal + actions +     verdict of record,
    classified infeasible      checks from the                                  final screenshot     yields, a dataset
               twins           outcome + state diff                                                  version
               └───────── one BrowserPool of `web.browsers` Chromiums; a fresh seeded site per episode ──────────┘

    result = web.run(recipe, LocalRunner())

The step functions below are the units of work a `Runner` maps (`flows/web.py` runs each as a cached Prefect
task). Verification rule (`verifiers/record.py`): a trajectory is verified by its task's state checks; a task
without state checks (a read-only tutorial, kept only when the judge is on) only by a confident judge pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import trajfactory
from trajfactory.agents.replay import ReplayPolicy
from trajfactory.agents.web_model import WebModelPolicy
from trajfactory.datasets.changes import sources_digest
from trajfactory.datasets.publish import write_dataset
from trajfactory.datasets.release import release
from trajfactory.datasets.resume import publish_once
from trajfactory.datasets.yields import web_yields
from trajfactory.executors.browser_pool import BrowserPool
from trajfactory.executors.episode import require_server, run_episode
from trajfactory.executors.web_env import ScreenshotStore, WebEnvironment, final_screenshot, run_web_episode
from trajfactory.executors.webapps import adapters, get_adapter, register_sites
from trajfactory.models.service import ModelEndpoint, model_session
from trajfactory.pipelines.runner import Runner
from trajfactory.runtime import run_sync
from trajfactory.schema import (Quarantine, ScreenshotRow, Trajectory, Tutorial, Verdict, WebTask, content_hash,
                                quarantined)
from trajfactory.settings import BUILTIN_DOCS, EpisodeLimits, Recipe, WebJudgeConfig
from trajfactory.sources.licenses import folder_license
from trajfactory.synthesizers.web import stage
from trajfactory.verifiers import judge as judge_verifier
from trajfactory.verifiers.record import verification

# ---------------------------------------------------------------- the units of work (what a runner maps)


def use_sites(recipe: Recipe) -> None:
    """Register the recipe's `web.sites:` adapters in this process (each unit calls it: runners may use workers)."""
    if recipe.web is not None and recipe.web.sites:
        register_sites(recipe.web.sites)


def harvest_tutorials(recipe: Recipe, uris: list[str]) -> tuple[list[Tutorial], list[Quarantine]]:
    """Every page of every source, classified; bad pages quarantined."""
    use_sites(recipe)
    return stage.harvest(uris, stage.harvest_config(recipe.web.max_pages))


def synthesize_tasks(recipe: Recipe, tutorials: list[Tutorial], endpoint: ModelEndpoint | None = None,
                     ) -> tuple[list[WebTask], list[Quarantine]]:
    """Web tasks of the tutorials; with `web.spec_parser: model` the served model writes the specs (`endpoint`)."""
    w = recipe.web
    use_sites(recipe)
    specs = None
    if w.spec_parser == "model":
        if endpoint is None:
            raise ValueError("web.spec_parser is 'model' but the run has no model endpoint: add a `model:` section "
                             "to the recipe, or set web.spec_parser: rule")
        specs = stage.model_specs(tutorials, endpoint.client)
    return stage.tasks_from_tutorials(tutorials, w.seed, w.infeasible_share, w.max_tasks_per_site, specs=specs)


def establish(recipe: Recipe, pool: BrowserPool, task: WebTask) -> WebTask | Quarantine:
    """The gold replay: the task with its checks, or its quarantine record. Gold replays keep no screenshots; with
    the judge on, read-only tutorials stay as judge-verified tasks."""
    use_sites(recipe)
    return stage.establish_checks(task, pool, None, max_steps=recipe.web.max_steps, keep_unchecked=recipe.web.judge)


def replay_rollout(recipe: Recipe, pool: BrowserPool, store: ScreenshotStore, task: WebTask, sample: int = 0
                   ) -> tuple[Trajectory, Verdict | None]:
    """The replay policy in a fresh site and browser context, with the task's state verdict."""
    use_sites(recipe)
    run = run_web_episode(task, ReplayPolicy(), pool, store, max_steps=recipe.web.max_steps, sample=sample)
    return run.trajectory, run.verdict


def model_rollout(recipe: Recipe, endpoint: ModelEndpoint, pool: BrowserPool, store: ScreenshotStore, task: WebTask,
                  sample: int = 0) -> tuple[Trajectory, Verdict | None]:
    """The model agent (`WebModelPolicy`, `web.agent`) on `task`, with the task's state verdict."""
    w = recipe.web
    use_sites(recipe)
    client = endpoint.client()
    env = WebEnvironment(pool, store, w.agent.max_observation_chars)

    async def go():
        async with client:
            return await run_episode(env, WebModelPolicy(client, w.agent), task, sample=sample,
                                     limits=EpisodeLimits(max_steps=w.max_steps), evaluate=True)

    episode = run_sync(go())
    require_server([episode.trajectory], f"model rollout of web task {task.task_id}")
    return episode.trajectory, episode.verdict


def judge_web(endpoint: ModelEndpoint, task: WebTask, trajectory: Trajectory, store: ScreenshotStore | None,
              settings: WebJudgeConfig | None = None) -> Verdict:
    """The model judge on one web trajectory: goal + actions + final URL/page + the final screenshot."""
    settings = settings or WebJudgeConfig()
    sha = final_screenshot(trajectory)
    image = store.read(sha) if store is not None and sha and settings.images != "off" else None
    client = endpoint.client()

    async def go() -> Verdict:
        async with client:
            return await judge_verifier.judge_trajectory(
                client, task, trajectory, image=image, structured=settings.structured,
                sampling={"max_tokens": settings.max_tokens}, max_axtree_chars=settings.max_page_chars,
                image_fallback=settings.images == "auto")

    return run_sync(go())


def judge(recipe: Recipe, endpoint: ModelEndpoint, store: ScreenshotStore, task: WebTask,
          trajectory: Trajectory) -> Verdict:
    return judge_web(endpoint, task, trajectory, store, recipe.web.judge_settings)


# ---------------------------------------------------------------- dataset tables


def screenshot_rows(trajectories: Iterable[Trajectory], store: ScreenshotStore) -> tuple[list[ScreenshotRow], list[Quarantine]]:
    """One row per distinct screenshot that a trajectory step references; a missing file is quarantined."""
    rows: dict[str, ScreenshotRow] = {}
    missing: list[Quarantine] = []
    for traj in trajectories:
        for step in traj.steps:
            sha = step.arguments.get("screenshot")
            if not sha or sha in rows:
                continue
            path = store.path(sha)
            if not path.is_file():
                missing.append(quarantined(
                    "publish", "trajectory", content_hash(f"{traj.trajectory_id}:{sha}", "screenshot_missing"),
                    "screenshot_missing", f"trajectory {traj.trajectory_id} step {step.index}: screenshot {sha} is "
                    f"not in {store.dir}; keep the work dir between runs"))
                continue
            rows[sha] = ScreenshotRow.of(path.read_bytes())
    return list(rows.values()), missing


def tutorial_licenses(tutorials: Iterable[Tutorial], sources: dict[str, str]) -> dict[str, str | None]:
    """Per tutorial source (`sources`: served URL -> the recipe's name for it), its license: the bundled
    documentation is the project's (Apache-2.0); a local folder, file or glob says it the way a repository does
    (`folder_license`: a declared `SPDX-License-Identifier:` or a license file beside or above the pages); a page
    from the web or a dump says nothing we can read: unknown."""
    out: dict[str, str | None] = {}
    for t in tutorials:
        name = next((n for url, n in sources.items() if t.uri.startswith(url)), t.uri)
        if name in out:
            continue
        if name == BUILTIN_DOCS:
            out[name] = "Apache-2.0"
        elif name.startswith(("http://", "https://", "hf-dump:")) or not Path(t.uri).exists():
            out[name] = None
        else:  # a folder's pages share its license; a glob's, their own folder's
            out[name] = folder_license(name if Path(name).exists() else t.uri)
    return out


def tutorials_digest(tutorials: Iterable[Tutorial], sources: dict[str, str]) -> str:
    """One hash of what the run read from its tutorial sources (`sources`: served URL -> the recipe's name for it):
    per source, the pages' texts (not their URLs, whose served ports change from run to run)."""
    texts: dict[str, list[str]] = {name: [] for name in sources.values()}
    for t in tutorials:
        name = next((n for url, n in sources.items() if t.uri.startswith(url)), t.uri)
        texts.setdefault(name, []).append(t.text)
    return sources_digest({name: content_hash(sorted(pages)) for name, pages in texts.items()})


def declared_credentials(tasks: Iterable[WebTask]) -> set[str]:
    """The seeded demo accounts' passwords of every site and seed the tasks use: the scan keeps them."""
    return {p for app, seed in {(t.environment.app, t.environment.seed) for t in tasks} if app in adapters()
            for p in get_adapter(app).accounts(seed).values()}


# ---------------------------------------------------------------- the story


def run(recipe: Recipe, runner: Runner, endpoint: ModelEndpoint | None = None) -> dict:
    """Tutorials -> web tasks -> checked tasks -> verified trajectories -> one new dataset version."""
    w = recipe.web
    if w is None:
        raise ValueError("the recipe has no `web:` section; add one (e.g. `web: {tutorials: [builtin:docs]}`)")
    use_sites(recipe)
    with model_session(recipe.model, recipe.web_work_dir, endpoint, recipe.web_uses_model(),
                       recipe.cluster) as endpoint:
        with stage.tutorial_sources(w.tutorials) as uris:
            tutorials, harvest_q = runner.call(harvest_tutorials, recipe, uris)
            sources = dict(zip(uris, w.tutorials))
        # the endpoint only when the model writes the specs: a rule-parsed run's cache keys do not name it
        tasks, synth_q = runner.call(synthesize_tasks, recipe, tutorials,
                                     endpoint if w.spec_parser == "model" else None)
        store = ScreenshotStore(recipe.web_work_dir)
        with BrowserPool(w.browsers) as pool:  # Chromiums start on first use: a fully cached run starts none
            established = runner.map(establish, [(recipe, pool, t) for t in tasks], "establish checks",
                                     workers=w.browsers)
            checked = [r for r in established if isinstance(r, WebTask)]
            runs: list[tuple[Trajectory, Verdict | None]] = []
            if "replay" in w.policies:
                runs += runner.map(replay_rollout, [(recipe, pool, store, t, 0) for t in checked], "rollout replay",
                                   workers=w.browsers)
            if "model" in w.policies:
                picked = sorted(checked, key=lambda t: t.task_id)[:w.model_max_tasks]
                calls = [(recipe, endpoint, pool, store, t, s) for t in picked for s in range(w.model_samples)]
                runs += runner.map(model_rollout, calls, "rollout model", workers=w.browsers)
        trajectories, verdicts = [tr for tr, _ in runs], [v for _, v in runs if v is not None]
        if w.judge:
            by_id = {t.task_id: t for t in checked}
            # each judgement carries the final screenshot it reads (it may run on a cluster's node)
            verdicts += runner.map(judge, [(recipe, endpoint, store.sending(final_screenshot(tr)), by_id[tr.task_id],
                                            tr) for tr in trajectories], "judge", workers=w.browsers)
    # infra-failed episodes and near-duplicate tasks out, splits in (twins with their originals)
    out = release(checked, trajectories, verdicts, seed=recipe.dataset.split_seed,
                  threshold=recipe.dataset.near_duplicate_threshold)
    checked, trajectories, verdicts = out.tasks, out.trajectories, out.verdicts
    record = verification(checked, trajectories, verdicts, w.judge_settings.min_confidence)
    screenshots, missing = screenshot_rows(trajectories, store)
    quarantine = harvest_q + synth_q + [r for r in established if isinstance(r, Quarantine)] + missing + out.quarantine
    summary = web_yields(tutorials, harvest_q, checked, trajectories, verdicts, w.judge_settings.min_confidence,
                         sites=adapters(), quarantine=quarantine)
    summary.update(out.summary)
    records = {"web_tasks": checked, "trajectories": trajectories, "verdicts": verdicts, "quarantine": quarantine,
               "screenshots": screenshots, "web_verification": record}
    lineage = {"recipe": recipe.name, "web_config": w.model_dump(), "config_hash": w.digest(),
               "factory_version": trajfactory.__version__, "flow_run_id": runner.run_id, **out.lineage,
               "model": recipe.model.digest_fields() if endpoint is not None and recipe.model else None,
               "recipe_hash": recipe.digest(), "sources_digest": tutorials_digest(tutorials, sources)}
    root = Path(recipe.dataset.root) / w.dataset_name
    # a run killed after it wrote this version: its resume takes that version (`datasets/resume.py`)
    version = publish_once(recipe.work_dir, root, lineage, lambda: write_dataset(
        recipe.dataset.root, w.dataset_name, records, lineage, summary, licenses=tutorial_licenses(tutorials, sources),
        allowed=declared_credentials(checked)))
    return {"version": version, "root": str(root), "summary": summary,
            "counts": {k: len(v) for k, v in records.items()},
            "verified": sum(r.verified for r in record)}
