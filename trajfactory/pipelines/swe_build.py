"""The SWE half's last stage: the stage records (`pipelines/swe.py`) -> one new immutable dataset version.

Trajectories whose words contradict their observations are quarantined here, infra-failed episodes and near-duplicate
tasks leave in the release (`datasets/release.py`), and the version is published once per run
(`datasets/resume.py`), with its yields, lineage and licenses.
"""

from __future__ import annotations

from pathlib import Path

import trajfactory
from trajfactory.datasets import curriculum
from trajfactory.datasets.changes import sources_digest, unchanged_version
from trajfactory.datasets.publish import write_dataset
from trajfactory.datasets.release import release
from trajfactory.datasets.resume import publish_once
from trajfactory.datasets.yields import yields
from trajfactory.pipelines.swe_records import Harvest, Rollouts, Synthesis, Verification
from trajfactory.schema import Quarantine, Trajectory, quarantined
from trajfactory.settings import Recipe
from trajfactory.verifiers import claims, judge as judge_verifier


def _consistent(trajectories: list[Trajectory]) -> tuple[list[Trajectory], list[Quarantine]]:
    """The trajectories whose words match their observations, and a quarantine record for each that does not."""
    kept, bad = [], []
    for tr in trajectories:
        if problems := claims.contradictions(tr):
            bad.append(quarantined("build", "trajectory", tr.trajectory_id, "claim_contradicts_observation",
                                   f"task {tr.task_id}, policy {tr.policy.name}: " + "; ".join(problems)[:1000]))
        else:
            kept.append(tr)
    return kept, bad


def build(recipe: Recipe, harvested: Harvest, synthesis: Synthesis, rollouts: Rollouts, verification: Verification,
          run_id: str = "", only_if_new: bool = False) -> dict:
    """The stage records -> one new immutable dataset version with its card; returns its name, root and yields.
    `only_if_new` (scheduled runs): no new version when the latest was made from the same recipe and sources."""
    sources = {s.uri: s.commit for s in harvested.sources}
    root = Path(recipe.dataset.root) / recipe.dataset.name
    lineage = {"recipe": recipe.name, "recipe_hash": recipe.digest(), "factory_version": trajfactory.__version__,
               "flow_run_id": run_id, "sources": sources, "sources_digest": sources_digest(sources)}
    if only_if_new and (same := unchanged_version(root, lineage)):
        return {"version": same, "root": str(root), "summary": {}, "counts": {}, "unchanged": True}
    usage = synthesis.usage + rollouts.usage + verification.usage
    trajectories, contradicted = _consistent(rollouts.trajectories)
    kept = {tr.trajectory_id for tr in trajectories}
    verdicts = [v for v in verification.verdicts if v.trajectory_id in kept]
    judged = [v for v in verification.judged if v.trajectory_id in kept]
    # infra-failed episodes and near-duplicate tasks out, splits in (`datasets/release.py`)
    out = release(curriculum.rate(synthesis.tasks, trajectories, verdicts), trajectories,
                  synthesis.gold_verdicts + verdicts + judged, seed=recipe.dataset.split_seed,
                  threshold=recipe.dataset.near_duplicate_threshold)
    kept = {tr.trajectory_id for tr in out.trajectories}
    verdicts, judged = [v for v in verdicts if v.trajectory_id in kept], [v for v in judged if v.trajectory_id in kept]
    quarantine = harvested.quarantine + synthesis.quarantine + contradicted + out.quarantine
    names = {s.uri: s.name for s in harvested.sources}
    asked = harvested.uris or [s.uri for s in harvested.sources] + [q.uri for q in harvested.quarantine]
    repositories = {uri: names.get(uri, uri) for uri in asked}  # a repository never harvested: its uri
    summary = yields(synthesis.candidates, synthesis.validations, out.tasks, out.trajectories, verdicts, usage=usage,
                     judge_agreement=judge_verifier.agreement(judged, verdicts) if judged else None,
                     quarantine=quarantine, repositories=repositories)
    summary.update(out.summary)
    records = {"tasks": out.tasks, "trajectories": out.trajectories, "verdicts": out.verdicts, "quarantine": quarantine}
    lineage.update(out.lineage)
    if recipe.model is not None and usage:
        lineage["model"] = recipe.model.digest_fields()
    licenses = {s.repo_slug or s.name: s.license for s in harvested.sources}
    version = publish_once(recipe.work_dir, root, lineage, lambda: write_dataset(
        recipe.dataset.root, recipe.dataset.name, records, lineage, summary, licenses=licenses))
    return {"version": version, "root": str(root), "summary": summary,
            "counts": {k: len(v) for k, v in records.items()}}
