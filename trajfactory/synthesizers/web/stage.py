"""The web stage as plain library calls (no Prefect): tutorials -> web tasks -> checked tasks -> verified rollouts.

    with tutorial_sources(["builtin:docs"]) as uris:
        tutorials, quarantine = harvest(uris)
    tasks, bad = tasks_from_tutorials(tutorials, seed=0, infeasible_share=0.25)
    with BrowserPool(2) as pool:
        checked = establish_checks(tasks[0], pool)          # WebTask with checks + gold, or Quarantine
        trajectory, verdict = rollout_and_verify(checked, pool, ScreenshotStore(work))
        trajectory, verdict = model_rollout(checked, endpoint, pool, store, config)   # the model agent
        judged = judge_web(endpoint, checked, trajectory, store, config.judge_settings)
    records = verification(tasks, trajectories, verdicts, min_confidence=0.8)   # the verdict of record

Verification rule: a trajectory is verified by its task's state checks; a task without state checks (a
read-only tutorial, kept only when the judge is on) is verified only by a judge pass at least
`min_confidence` sure; an abstention never verifies. The judge's agreement with the state checks is
reported by `web_yields`.

`flows/web.py` only orchestrates these calls (caching, concurrency, artifacts, the dataset write).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from trajfactory.agents.replay import NAME as REPLAY_NAME, ReplayPolicy
from trajfactory.agents.web_model import WebModelPolicy
from trajfactory.executors.browser import BrowserPool
from trajfactory.executors.web_rollout import ScreenshotStore, WebRollout, final_screenshot, web_rollout
from trajfactory.executors.webapps import APPS, launch
from trajfactory.schema import (Quarantine, ScreenshotRow, Trajectory, Tutorial, Verdict, WebTask,
                                WebVerification, content_hash)
from trajfactory.sources.docsite import serve_docs
from trajfactory.sources.tutorials import CrawlConfig, HarvestConfig, harvest_tutorials
from trajfactory.synthesizers.web.spec import make_infeasible, make_web_task, parse_tutorial
from trajfactory.verifiers import judge as judge_verifier, state as state_verifier
from trajfactory.web_config import BUILTIN_DOCS, WebConfig, WebJudgeConfig

if TYPE_CHECKING:
    from trajfactory.models.service import ModelEndpoint

__all__ = ["STAGE_VERSION", "WebConfig", "establish_checks", "harvest", "judge_web", "model_rollout",
           "rollout_and_verify", "screenshot_rows", "tasks_from_tutorials", "tutorial_sources", "verification",
           "web_yields"]

STAGE_VERSION = "4"
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


def establish_checks(task: WebTask, pool: BrowserPool, store: ScreenshotStore | None = None,
                     max_steps: int = 40, keep_unchecked: bool = False) -> WebTask | Quarantine:
    """Replay the tutorial once (gold replay): checks from the expected outcome + the replay's state diff.

    Feasible: the replay must submit, change the state, and meet its own outcome checks. Infeasible: the
    replay must report infeasibility with the state untouched. Otherwise the task is quarantined. A
    replay that submits but changes nothing (a read-only tutorial) is quarantined, or with
    `keep_unchecked` (the judge is on) kept without state checks, for the judge to verify.
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
        return task.model_copy(update={"checks": state_verifier.unchanged_checks(run.initial_state), "gold": gold})
    if traj.exit_status != "submitted":
        why = (last.arguments.get("reason") if last and last.tool == "report_infeasible" else last.error if last else "") or ""
        return _quarantine(task.task_id, "web_task", "establish_checks", "replay_failed",
                           f"{uri}: gold replay ended {traj.exit_status!r} after {len(traj.steps)} steps: {why}", uri)
    diff = state_verifier.predicates_from_diff(run.initial_state, run.final_state)
    if not diff and keep_unchecked:
        return task.model_copy(update={"checks": [], "gold": gold})
    if not diff:
        return _quarantine(task.task_id, "web_task", "establish_checks", "no_state_change",
                           f"{uri}: the gold replay changed no data and left no sign-in, search, filter or view in the "
                           "app's activity log, so no state check can tell doing the task from doing nothing", uri)
    checked = task.model_copy(update={"checks": state_verifier.predicates_from_outcome(task, run.initial_state) + diff,
                                      "gold": gold})
    verdict = state_verifier.verify_state(checked, traj, run.initial_state, run.final_state)
    if not verdict.passed:  # the replay changed something, but not what the tutorial says it should
        return _quarantine(task.task_id, "web_task", "establish_checks", "outcome_not_reached",
                           f"{uri}: the gold replay's state misses the expected outcome: {verdict.evidence.detail}", uri)
    return checked


def _state_verdict(task: WebTask, run: WebRollout) -> Verdict | None:
    """The state checks' verdict; None for a task without checks (the judge decides there)."""
    if not task.checks:
        return None
    return state_verifier.verify_state(task, run.trajectory, run.initial_state, run.final_state)


def rollout_and_verify(task: WebTask, pool: BrowserPool, store: ScreenshotStore | None = None, max_steps: int = 40,
                       sample: int = 0) -> tuple[Trajectory, Verdict | None]:
    """The replay policy in a fresh app instance and browser context, judged by the task's state checks."""
    run = web_rollout(task, ReplayPolicy(), pool, store, max_steps=max_steps, sample=sample)
    return run.trajectory, _state_verdict(task, run)


def model_rollout(task: WebTask, endpoint: "ModelEndpoint", pool: BrowserPool, store: ScreenshotStore | None,
                  config: WebConfig, sample: int = 0) -> tuple[Trajectory, Verdict | None]:
    """The model agent (`WebModelPolicy`, `config.agent`) on `task`, with the task's state verdict."""
    with WebModelPolicy(endpoint.client(), config.agent) as policy:
        run = web_rollout(task, policy, pool, store, max_steps=config.max_steps,
                          max_observation_chars=config.agent.max_observation_chars, sample=sample)
    return run.trajectory, _state_verdict(task, run)


def _run_async(coro):
    """Run a coroutine to completion from sync code, also from a thread that already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


def judge_web(endpoint: "ModelEndpoint", task: WebTask, trajectory: Trajectory, store: ScreenshotStore | None,
              settings: WebJudgeConfig | None = None) -> Verdict:
    """The model judge on one web trajectory: goal + actions + final URL/page + the final screenshot."""
    settings = settings or WebJudgeConfig()
    sha = final_screenshot(trajectory)
    image = store.path(sha) if store and sha and settings.images != "off" and store.path(sha).is_file() else None
    client = endpoint.client()

    async def go() -> Verdict:
        async with client:
            return await judge_verifier.judge_trajectory(
                client, task, trajectory, image=image, structured=settings.structured,
                sampling={"max_tokens": settings.max_tokens}, max_axtree_chars=settings.max_page_chars,
                image_fallback=settings.images == "auto")

    return _run_async(go())


def verification(tasks: Iterable[WebTask], trajectories: Iterable[Trajectory], verdicts: Iterable[Verdict],
                 min_confidence: float = 0.8) -> list[WebVerification]:
    """The verdict of record of each trajectory: state checks where the task has any, else a confident judge pass."""
    by_task = {t.task_id: t for t in tasks}
    state = {v.trajectory_id: v for v in verdicts if v.verifier == state_verifier.VERIFIER}
    judged = {v.trajectory_id: v for v in verdicts if v.verifier == judge_verifier.VERIFIER}
    out = []
    for tr in trajectories:
        task, s, j = by_task.get(tr.task_id), state.get(tr.trajectory_id), judged.get(tr.trajectory_id)
        status = "not_judged" if j is None else "abstain" if judge_verifier.is_abstention(j) else "verdict"
        confidence = judge_verifier.judge_confidence(j) if j is not None else None
        row = dict(trajectory_id=tr.trajectory_id, task_id=tr.task_id, policy=tr.policy.name, state_passed=s.passed if s else None,
                   judge_status=status, judge_passed=j.passed if status == "verdict" else None, judge_confidence=confidence)
        if task is not None and task.checks:
            ok = s is not None and s.passed
            why = "state checks passed" if ok else "state checks failed" if s is not None else "no state verdict recorded"
            out.append(WebVerification(**row, verified=ok, verified_by="state", reason=why))
        elif status == "verdict":
            ok = bool(j.passed and confidence is not None and confidence >= min_confidence)
            why = (f"no state checks; the judge passed it with confidence {confidence:.2f}" if ok else
                   f"no state checks; the judge {'passed' if j.passed else 'failed'} it with confidence "
                   f"{confidence:.2f} (a pass needs >= {min_confidence})")
            out.append(WebVerification(**row, verified=ok, verified_by="judge", reason=why))
        else:
            why = "no state checks and the judge abstained" if status == "abstain" else "no state checks and no judge verdict"
            out.append(WebVerification(**row, verified=False, verified_by="none", reason=why))
    return out


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
               trajectories: list[Trajectory], verdicts: list[Verdict | None],
               min_confidence: float = 0.8) -> dict[str, list[dict]]:
    """The AgentTrek funnel per site: pages -> tutorials -> tasks (checked) -> trajectories -> verified tasks.

    `verified` counts feasible tasks with a verified trajectory (by the verdict of record, see
    `verification`); `verified_infeasible` the infeasible twins correctly reported. `by_policy` gives each
    policy's trajectories, verified ones (by state / by judge), malformed turns, model use and image
    fallbacks; `judge_agreement` (with judge verdicts) the judge against the state checks.
    """
    verdicts = [v for v in verdicts if v is not None]
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
    for tr in trajectories:
        rows[by_id[tr.task_id].environment.app if tr.task_id in by_id else "-"]["trajectories"] += 1
    record = verification(tasks, trajectories, verdicts, min_confidence)
    for task_id in sorted({r.task_id for r in record if r.verified and r.task_id in by_id}):
        t = by_id[task_id]
        rows[t.environment.app]["verified" if t.feasible else "verified_infeasible"] += 1
    out = [{"site": site, **r, "yield": round(r["verified"] / r["tutorials"], 3) if r["tutorials"] else 0.0}
           for site, r in sorted(rows.items())]
    summary: dict[str, list[dict]] = {"by_site": out, "by_policy": _by_policy(trajectories, record)}
    judged = [v for v in verdicts if v.verifier == judge_verifier.VERIFIER]
    if judged:
        state = [v for v in verdicts if v.verifier == state_verifier.VERIFIER]
        report = judge_verifier.agreement(judged, state)
        confusion = report.pop("confusion")
        report["judge_only"] = sum(r.verified_by == "judge" for r in record)
        report["judge_only_verified"] = sum(r.verified_by == "judge" and r.verified for r in record)
        summary["judge_agreement"] = [{k: round(v, 3) if isinstance(v, float) else v for k, v in report.items()} | confusion]
    return summary


def _by_policy(trajectories: list[Trajectory], record: list[WebVerification]) -> list[dict]:
    rec = {r.trajectory_id: r for r in record}
    rows: dict[str, dict] = {}
    for tr in trajectories:
        r = rows.setdefault(tr.policy.name, dict.fromkeys(
            ("trajectories", "verified", "verified_by_state", "verified_by_judge", "malformed_turns", "model_calls",
             "tokens", "image_fallbacks"), 0) | {"cost_usd": 0.0})
        v = rec.get(tr.trajectory_id)
        r["trajectories"] += 1
        r["verified"] += bool(v and v.verified)
        r["verified_by_state"] += bool(v and v.verified and v.verified_by == "state")
        r["verified_by_judge"] += bool(v and v.verified and v.verified_by == "judge")
        r["malformed_turns"] += sum(1 for s in tr.steps if not s.tool and s.error)
        r["model_calls"] += tr.usage.model_calls
        r["tokens"] += tr.usage.prompt_tokens + tr.usage.completion_tokens
        r["image_fallbacks"] += "images_dropped" in tr.policy.params
        r["cost_usd"] = round(r["cost_usd"] + tr.usage.cost_usd, 6)
    return [{"policy": name, **r} for name, r in sorted(rows.items())]
