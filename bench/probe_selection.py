"""The reference run's two records of which test ran which line, side by side on real repositories: line probes of
only the lines the candidates' selections read (`executors/line_probe.py`, the pipeline's default) against
coverage.py of the candidates' files (`validation.recorder: coverage`).

For each repository: the same procedural candidates, one reference run each way (the whole suite once, in a fresh
sandbox), then every candidate's test selection (`validate.select_tests`) from each record. A selection from the
probes may be wider than coverage's (a multi-line statement recorded whole), never narrower: a narrower one would
miss a test the bug breaks. Wall seconds of each run are printed (`bench/validate_throughput.py` counts CPU).

    python bench/probe_selection.py --repos pypi:inflection==0.5.1 pypi:isodate==0.7.2 pypi:networkx==3.4.2 \\
        --candidates 60
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from trajfactory.pipelines import swe
from trajfactory.executors import get_backend
from trajfactory.schema import Quarantine
from trajfactory.settings import Recipe, RepoSpec, SandboxConfig, SynthesisConfig, ValidationConfig
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.selection_lines import probe_plan
from trajfactory.synthesizers.swe.validate import select_tests

LIMITS = SandboxConfig(backend="docker", memory="1g", cpus=1, pids=256, command_timeout_s=600)


def compare(uri: str, candidates_per_repo: int, suite_timeout: float, work: Path) -> dict | None:
    recipe = Recipe(work_dir=str(work), repos=[RepoSpec(uri=uri)], sandbox=LIMITS,
                    synthesis=SynthesisConfig(max_candidates_per_repo=candidates_per_repo),
                    validation=ValidationConfig(reference_runs=1, suite_timeout_s=suite_timeout))
    source = swe.harvest_one(recipe, uri)
    env = swe.build_environment(recipe, source) if not isinstance(source, Quarantine) else source
    if isinstance(env, Quarantine):
        print(f"{uri}: quarantined: {env.reason}: {env.detail}", file=sys.stderr)
        return None
    candidates = swe.procedural_candidates(recipe, source)[0][:candidates_per_repo]
    backend, plan = get_backend(env.backend), probe_plan(candidates)
    started = time.monotonic()
    probes = stage.reference(backend, env, source, recipe.validation, recipe.sandbox, probe=plan)
    probe_s = time.monotonic() - started
    started = time.monotonic()
    coverage = stage.reference(backend, env, source, recipe.validation, recipe.sandbox,
                               cover=stage.coverage_files(candidates))
    coverage_s = time.monotonic() - started
    if isinstance(probes, Quarantine) or isinstance(coverage, Quarantine):
        print(f"{uri}: reference run quarantined: {probes if isinstance(probes, Quarantine) else coverage}",
              file=sys.stderr)
        return None
    row = {"repo": source.name, "tests": len(coverage.tests), "candidates": len(candidates),
           "lines": sum(len(v) for v in plan.values()), "files": len(plan), "same": 0, "wider": 0, "narrower": 0,
           "same_outcomes": probes.tests == coverage.tests, "probe_s": probe_s, "coverage_s": coverage_s}
    for c in candidates:
        by_probes, by_coverage = select_tests(c, probes, "coverage"), select_tests(c, coverage, "coverage")
        kind = "same" if by_probes == by_coverage else "wider" if set(by_coverage[0]) <= set(by_probes[0]) \
            else "narrower"
        row[kind] += 1
        if kind != "same":
            print(f"  {kind}: {c.candidate_id} {c.scope} {c.family} {c.entity.file}:{c.entity.name}: coverage "
                  f"{by_coverage[1]} {len(by_coverage[0])} tests, probes {by_probes[1]} {len(by_probes[0])}",
                  file=sys.stderr)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repos", nargs="+", default=["pypi:inflection==0.5.1", "pypi:isodate==0.7.2"])
    parser.add_argument("--candidates", type=int, default=30, help="candidates per repository")
    parser.add_argument("--suite-timeout", type=float, default=1500, help="seconds a whole-suite run may take")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tf-probe-bench-"))
    rows = []
    for uri in args.repos:
        print(f"{uri}: synthesizing, then one reference run with probes and one with coverage", file=sys.stderr)
        row = compare(uri, args.candidates, args.suite_timeout, work)
        if row is not None:
            rows.append(row)
    print("| repo | tests | candidates | probed lines (files) | same outcomes | same selection | wider | narrower "
          "| probes run s | coverage run s | coverage / probes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['repo']} | {r['tests']} | {r['candidates']} | {r['lines']} ({r['files']}) | "
              f"{'yes' if r['same_outcomes'] else 'NO'} | {r['same']} | {r['wider']} | {r['narrower']} | "
              f"{r['probe_s']:.1f} | {r['coverage_s']:.1f} | {r['coverage_s'] / max(r['probe_s'], 1e-9):.2f}x |")
    return 1 if any(r["narrower"] or not r["same_outcomes"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
