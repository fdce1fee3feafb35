"""The web stage as plain library calls (no Prefect): tutorials -> web tasks -> checked tasks -> verified rollouts.

    with tutorial_sources(["builtin:docs"]) as uris:
        tutorials, quarantine = harvest(uris)
    tasks, bad = tasks_from_tutorials(tutorials, seed=0, infeasible_share=0.25)
    with BrowserPool(2) as pool:
        checked = establish_checks(tasks[0], pool)          # WebTask with checks + gold, or Quarantine
        trajectory, verdict = rollout_and_verify(checked, pool, ScreenshotStore(work))

`flows/web.py` only orchestrates these calls (caching, concurrency, artifacts, the dataset write).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

from trajfactory.agents.replay import NAME as REPLAY_NAME, ReplayPolicy
from trajfactory.executors.browser import BrowserPool
from trajfactory.executors.web_rollout import ScreenshotStore, web_rollout
from trajfactory.executors.webapps import APPS, launch
from trajfactory.schema import Quarantine, ScreenshotRow, StatePredicate, Trajectory, Tutorial, Verdict, WebTask, content_hash
from trajfactory.sources.docsite import serve_docs
from trajfactory.sources.tutorials import CrawlConfig, HarvestConfig, harvest_tutorials
from trajfactory.synthesizers.web.spec import make_infeasible, make_web_task, parse_tutorial
from trajfactory.verifiers import state as state_verifier
from trajfactory.web_config import BUILTIN_DOCS, WebConfig

__all__ = ["STAGE_VERSION", "WebConfig", "establish_checks", "harvest", "rollout_and_verify", "screenshot_rows",
           "tasks_from_tutorials", "tutorial_sources", "web_yields"]

STAGE_VERSION = "2"
"""Bump when establish/rollout logic changes: it is part of the flow's cache keys."""


def _quarantine(item_id: str, kind: str, stage: str, reason: str, detail: str, uri: str = "") -> Quarantine:
    return Quarantine(item_id=content_hash(item_id, reason), item_kind=kind, stage=stage, reason=reason,
                      detail=detail, uri=uri)


# ---------------------------------------------------------------- harvest


@contextlib.contextmanager
def tutorial_sources(uris: Iterable[str]) -> Iterator[list[str]]:
    """Resolve `builtin:docs` to the bundled docs served on a loopback port (for as long as the block runs)."""
    with contextlib.ExitStack() as stack:  # one stack closes every docs server started here
        resolved = [stack.enter_context(serve_docs()).url if u == BUILTIN_DOCS else u for u in uris]
        yield resolved


def harvest(uris: Iterable[str], config: HarvestConfig | None = None) -> tuple[list[Tutorial], list[Quarantine]]:
    """Every page of every source as a classified `Tutorial` (tutorial or not), plus quarantined pages."""
    tutorials: dict[str, Tutorial] = {}
    quarantine: list[Quarantine] = []
    for uri in uris:
        for item in harvest_tutorials(uri, config):
            if isinstance(item, Tutorial):
                tutorials.setdefault(item.tutorial_id, item)  # a page reached from two sources counts once
            else:
                quarantine.append(item)
    return list(tutorials.values()), quarantine


def harvest_config(config: WebConfig) -> HarvestConfig:
    return HarvestConfig(crawl=CrawlConfig(max_pages=config.max_pages))


# ---------------------------------------------------------------- synthesis


def tasks_from_tutorials(tutorials: Iterable[Tutorial], seed: int = 0, infeasible_share: float = 0.25,
                         max_tasks_per_site: int | None = None,
                         site_labels: dict[str, dict[str, str]] | None = None) -> tuple[list[WebTask], list[Quarantine]]:
    """Feasible web tasks of the pages classified as tutorials, plus infeasible twins of a seeded share per site.

    Pages the classifier calls non-tutorials are not tasks (they count as pages in the yields). A tutorial
    with no steps, no target site or a site that is not a bundled app is quarantined with its reason.
    """
    per_site: dict[str, list[WebTask]] = defaultdict(list)
    quarantine: list[Quarantine] = []
    for tut in sorted((t for t in tutorials if t.is_tutorial), key=lambda t: t.uri):
        try:
            spec = parse_tutorial(tut)
        except ValueError as exc:
            quarantine.append(_quarantine(tut.tutorial_id, "tutorial", "synthesize", "no_steps", f"{tut.uri}: {exc}", tut.uri))
            continue
        if not spec.target_site:
            quarantine.append(_quarantine(tut.tutorial_id, "tutorial", "synthesize", "no_site",
                                          f"{tut.uri}: no bundled app named in the text or location; expected one of "
                                          f"{sorted(APPS)}", tut.uri))
            continue
        if spec.target_site not in APPS:
            quarantine.append(_quarantine(tut.tutorial_id, "tutorial", "synthesize", "unknown_site",
                                          f"{tut.uri}: site {spec.target_site!r} is not a bundled app ({sorted(APPS)})",
                                          tut.uri))
            continue
        task = make_web_task(spec, tut, seed=seed)
        if all(t.task_id != task.task_id for t in per_site[spec.target_site]):  # two pages, one spec: one task
            per_site[spec.target_site].append(task)
    tasks: list[WebTask] = []
    labels = dict(site_labels or {})
    for site, feasible in sorted(per_site.items()):
        feasible = feasible[:max_tasks_per_site] if max_tasks_per_site else feasible
        tasks += feasible
        if infeasible_share <= 0:
            continue
        if site not in labels:  # the seeded site's real labels: the "missing" feature must really be missing
            with launch(site, seed) as app:
                labels[site] = dict(app.labels)
        k = max(1, round(infeasible_share * len(feasible)))
        ranked = sorted(feasible, key=lambda t: content_hash(seed, t.task_id))  # seeded, order-independent pick
        for pick, task in enumerate(ranked[:k]):
            try:
                tasks.append(make_infeasible(task, labels[site], pick=pick))
            except ValueError as exc:
                quarantine.append(_quarantine(task.task_id, "web_task", "synthesize", "no_infeasible_variant",
                                              f"{task.provenance.tutorial_uri}: {exc}", task.provenance.tutorial_uri))
    return tasks, quarantine


# ---------------------------------------------------------------- checks and rollouts


def _unchanged_checks(initial: dict) -> list[StatePredicate]:
    """Checks of an infeasible task: no table gains or loses rows (verify_state also requires no change at all)."""
    return [StatePredicate(table=table, count=0, delta=True, origin="manual", description=f"no rows added to or removed from {table}")
            for table, rows in sorted(initial.items()) if isinstance(rows, list)]


def establish_checks(task: WebTask, pool: BrowserPool, store: ScreenshotStore | None = None,
                     max_steps: int = 40) -> WebTask | Quarantine:
    """Replay the tutorial once (gold replay): checks from the expected outcome + the replay's state diff.

    Feasible: the replay must submit, change the state, and meet its own outcome checks. Infeasible: the
    replay must report infeasibility with the state untouched. Otherwise the task is quarantined.
    """
    uri = task.provenance.tutorial_uri
    run = web_rollout(task, ReplayPolicy(), pool, store, max_steps=max_steps)
    traj = run.trajectory
    gold = [m.content or "" for m in traj.messages if m.role == "assistant"]
    last = traj.steps[-1] if traj.steps else None
    if not task.feasible:
        verdict = state_verifier.verify_state(task, traj, run.initial_state, run.final_state)
        if not verdict.passed:
            return _quarantine(task.task_id, "web_task", "establish_checks", "replay_failed",
                               f"{uri}: the infeasible task's gold replay did not report infeasibility with the state "
                               f"unchanged: {verdict.evidence.detail}", uri)
        feature = task.provenance.params.get("missing_feature", "")
        reason = last.arguments.get("reason", "") if last else ""
        if feature and feature.lower() not in reason.lower():  # infeasible, but stuck on another step: proves nothing
            return _quarantine(task.task_id, "web_task", "establish_checks", "replay_failed",
                               f"{uri}: the gold replay reported infeasibility before reaching the missing "
                               f"{feature!r} step: {reason}", uri)
        return task.model_copy(update={"checks": _unchanged_checks(run.initial_state), "gold": gold})
    if traj.exit_status != "submitted":
        why = (last.arguments.get("reason") if last and last.tool == "report_infeasible" else last.error if last else "") or ""
        return _quarantine(task.task_id, "web_task", "establish_checks", "replay_failed",
                           f"{uri}: gold replay ended {traj.exit_status!r} after {len(traj.steps)} steps: {why}", uri)
    diff = state_verifier.predicates_from_diff(run.initial_state, run.final_state)
    if not diff:
        return _quarantine(task.task_id, "web_task", "establish_checks", "no_state_change",
                           f"{uri}: the gold replay changed nothing in the app's state, so no state check can tell "
                           "doing the task from doing nothing (read-only tutorials such as search or browse)", uri)
    checked = task.model_copy(update={"checks": state_verifier.predicates_from_outcome(task, run.initial_state) + diff,
                                      "gold": gold})
    verdict = state_verifier.verify_state(checked, traj, run.initial_state, run.final_state)
    if not verdict.passed:  # the replay changed something, but not what the tutorial says it should
        return _quarantine(task.task_id, "web_task", "establish_checks", "outcome_not_reached",
                           f"{uri}: the gold replay's state misses the expected outcome: {verdict.evidence.detail}", uri)
    return checked


def rollout_and_verify(task: WebTask, pool: BrowserPool, store: ScreenshotStore | None = None, max_steps: int = 40,
                       sample: int = 0) -> tuple[Trajectory, Verdict]:
    """The replay policy in a fresh app instance and browser context, judged by the task's state checks."""
    run = web_rollout(task, ReplayPolicy(), pool, store, max_steps=max_steps, sample=sample)
    return run.trajectory, state_verifier.verify_state(task, run.trajectory, run.initial_state, run.final_state)


POLICY = {"name": REPLAY_NAME, "verifier": state_verifier.VERIFIER, "verifier_version": state_verifier.VERSION,
          "stage_version": STAGE_VERSION}
"""What a cached rollout depends on besides the task: part of the flow's cache keys."""


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
                missing.append(_quarantine(f"{traj.trajectory_id}:{sha}", "trajectory", "publish", "screenshot_missing",
                                           f"trajectory {traj.trajectory_id} step {step.index}: screenshot {sha} is not "
                                           f"in {store.dir}; keep the work dir between runs", ""))
                continue
            rows[sha] = ScreenshotRow.of(path.read_bytes())
    return list(rows.values()), missing


def _site_of_uri(uri: str) -> str:
    parts = Path(uri.split("#", 1)[0]).parts  # /docs/shop/x.html, http://h/shop/x.html
    return next((p for p in parts if p in APPS), "-")


def web_yields(tutorials: list[Tutorial], harvest_quarantine: list[Quarantine], tasks: list[WebTask],
               trajectories: list[Trajectory], verdicts: list[Verdict]) -> dict[str, list[dict]]:
    """The AgentTrek funnel per site: pages -> tutorials -> tasks (checked) -> trajectories -> verified.

    `verified` counts feasible tasks done; `verified_infeasible` the infeasible twins correctly reported.
    """
    keys = ("pages", "tutorials", "tasks", "infeasible_tasks", "trajectories", "verified", "verified_infeasible")
    rows: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(keys, 0))
    for tut in tutorials:
        site = tut.site or "-"
        rows[site]["pages"] += 1
        rows[site]["tutorials"] += bool(tut.is_tutorial)
    for q in harvest_quarantine:
        rows[_site_of_uri(q.uri)]["pages"] += 1
    by_id = {t.task_id: t for t in tasks}
    for t in tasks:
        rows[t.environment.app]["tasks" if t.feasible else "infeasible_tasks"] += 1
    traj_task = {tr.trajectory_id: by_id.get(tr.task_id) for tr in trajectories}
    for tr in trajectories:
        rows[by_id[tr.task_id].environment.app if tr.task_id in by_id else "-"]["trajectories"] += 1
    for v in verdicts:
        if v.passed and (t := traj_task.get(v.trajectory_id)) is not None:  # the yield counts feasible successes only
            rows[t.environment.app]["verified" if t.feasible else "verified_infeasible"] += 1
    out = [{"site": site, **r, "yield": round(r["verified"] / r["tutorials"], 3) if r["tutorials"] else 0.0}
           for site, r in sorted(rows.items())]
    return {"by_site": out}

