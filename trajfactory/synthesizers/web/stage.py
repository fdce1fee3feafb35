"""Web task synthesis as plain library calls: tutorials -> web tasks -> tasks with checks established.

    with tutorial_sources(["builtin:docs"]) as uris:
        tutorials, quarantine = harvest(uris)
    tasks, bad = tasks_from_tutorials(tutorials, seed=0, infeasible_share=0.25)
    # or with a served model writing the specs (the rule parser where its answer is unusable):
    tasks, bad = tasks_from_tutorials(tutorials, specs=model_specs(tutorials, endpoint.client))
    with BrowserPool(2) as pool:
        checked = establish_checks(tasks[0], pool)          # WebTask with checks + gold, or Quarantine

`pipelines/web.py` tells the rest of the story (rollouts, the judge, the verdict of record, the dataset).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Callable, Iterable, Iterator

from trajfactory.agents.replay import NAME as REPLAY_NAME, ReplayPolicy
from trajfactory.executors.browser_pool import BrowserPool
from trajfactory.executors.web_env import ScreenshotStore, run_web_episode
from trajfactory.executors.webapps import adapters, get_adapter
from trajfactory.schema import Quarantine, Tutorial, WebTask, WebTaskSpec, content_hash, quarantined
from trajfactory.settings import BUILTIN_DOCS
from trajfactory.sources.docsite import serve_docs
from trajfactory.sources.tutorials import CrawlConfig, HarvestConfig, harvest_tutorials
from trajfactory.synthesizers.web.spec import make_infeasible, make_web_task, parse_tutorial, parse_tutorial_with_model
from trajfactory.verifiers import state as state_verifier

__all__ = ["POLICY", "STAGE_VERSION", "establish_checks", "harvest", "model_specs", "tasks_from_tutorials",
           "tutorial_sources"]

STAGE_VERSION = "4"
"""Bump when establish/rollout logic changes: it is part of the flow's cache keys."""
POLICY = {"name": REPLAY_NAME, "verifier": state_verifier.VERIFIER, "verifier_version": state_verifier.VERSION,
          "stage_version": STAGE_VERSION}
"""What a cached web rollout depends on besides the task: part of the flow's cache keys."""


def _quarantine(item_id: str, kind: str, stage: str, reason: str, detail: str, uri: str = "") -> Quarantine:
    return quarantined(stage, kind, content_hash(item_id, reason), reason, detail, uri)


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


def harvest_config(max_pages: int) -> HarvestConfig:
    return HarvestConfig(crawl=CrawlConfig(max_pages=max_pages))


# ---------------------------------------------------------------- synthesis


def model_specs(tutorials: Iterable[Tutorial], client_factory: Callable) -> dict[str, tuple[WebTaskSpec | None, str]]:
    """tutorial_id -> (spec, parser) of every page classified as a tutorial, written by a served model
    (`parse_tutorial_with_model`): parser `model`, or `rule-fallback: ...` where the answer was unusable and the
    rule parser wrote the spec. A spec of None: neither found a step (the reason is the parser string).
    `client_factory()` makes the model client (one per event loop)."""
    todo = [t for t in tutorials if t.is_tutorial]

    async def one(client, tut: Tutorial) -> tuple[WebTaskSpec | None, str]:
        try:
            return await parse_tutorial_with_model(tut, client)
        except ValueError as exc:  # the rule fallback found no step either
            return None, f"no steps: {exc}"

    async def go():
        async with client_factory() as client:
            return await asyncio.gather(*(one(client, t) for t in todo))

    return dict(zip((t.tutorial_id for t in todo), asyncio.run(go()) if todo else []))


def tasks_from_tutorials(tutorials: Iterable[Tutorial], seed: int = 0, infeasible_share: float = 0.25,
                         max_tasks_per_site: int | None = None,
                         site_labels: dict[str, dict[str, str]] | None = None,
                         specs: dict[str, tuple[WebTaskSpec | None, str]] | None = None,
                         ) -> tuple[list[WebTask], list[Quarantine]]:
    """Feasible web tasks of the pages classified as tutorials, plus infeasible twins of a seeded share per site.

    Pages the classifier calls non-tutorials are not tasks (they count as pages in the yields). A tutorial
    with no steps, no target site or a site without a registered adapter is quarantined with its reason. Specs come
    from `specs` (tutorial_id -> (spec, parser), e.g. `model_specs`) where given, else from the rule parser; each
    task's provenance names the parser (`params["parser"]`).
    """
    per_site: dict[str, list[WebTask]] = defaultdict(list)
    quarantine: list[Quarantine] = []
    for tut in sorted((t for t in tutorials if t.is_tutorial), key=lambda t: t.uri):
        try:
            spec, parser = (specs or {}).get(tut.tutorial_id) or (parse_tutorial(tut), "rule")
            if spec is None:
                raise ValueError(parser)
        except ValueError as exc:
            quarantine.append(_quarantine(tut.tutorial_id, "tutorial", "synthesize", "no_steps", f"{tut.uri}: {exc}", tut.uri))
            continue
        if not spec.target_site:
            quarantine.append(_quarantine(tut.tutorial_id, "tutorial", "synthesize", "no_site",
                                          f"{tut.uri}: no registered site named in the text or location; expected one "
                                          f"of {sorted(adapters())}, or declare the source's site (web.sites)", tut.uri))
            continue
        if spec.target_site not in adapters():
            quarantine.append(_quarantine(tut.tutorial_id, "tutorial", "synthesize", "unknown_site",
                                          f"{tut.uri}: site {spec.target_site!r} has no site adapter (registered: "
                                          f"{sorted(adapters())}); declare it in the recipe's web.sites:", tut.uri))
            continue
        task = make_web_task(spec, tut, seed=seed, parser=parser)
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
            labels[site] = get_adapter(site).labels(seed)
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

    Feasible: the replay must submit, change the state, add no rows beyond the ones its outcome names
    (`gold_overreach`), and meet its own outcome checks. Infeasible: the
    replay must report infeasibility with the state untouched. Otherwise the task is quarantined. A
    replay that submits but changes nothing (a read-only tutorial) is quarantined, or with
    `keep_unchecked` (the judge is on) kept without state checks, for the judge to verify.
    """
    uri = task.provenance.tutorial_uri
    run = run_web_episode(task, ReplayPolicy(), pool, store, max_steps=max_steps)
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
    outcome = state_verifier.predicates_from_outcome(task, run.initial_state)
    if beyond := state_verifier.overreach(outcome, run.initial_state, run.final_state):
        # checks taken from this replay would encode its extra changes as the task's outcome
        return _quarantine(task.task_id, "web_task", "establish_checks", "gold_overreach",
                           f"{uri}: the gold replay changed more than the expected outcome says: {'; '.join(beyond)}", uri)
    checked = task.model_copy(update={"checks": outcome + diff, "gold": gold})
    verdict = state_verifier.verify_state(checked, traj, run.initial_state, run.final_state)
    if not verdict.passed:  # the replay changed something, but not what the tutorial says it should
        return _quarantine(task.task_id, "web_task", "establish_checks", "outcome_not_reached",
                           f"{uri}: the gold replay's state misses the expected outcome: {verdict.evidence.detail}", uri)
    return checked
