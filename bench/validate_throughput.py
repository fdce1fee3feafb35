"""Validation throughput: SWE-smith's way (fresh container + whole suite per candidate) against warm
containers with the whole suite and warm containers with coverage-selected tests.

For each repository the same candidates are validated in the three modes. CPU time is what the work
itself consumed: the CPU of every Docker container (the engine's cpuacct cgroup, which keeps the usage
of removed containers), of this process and its children, and of dockerd and containerd (container
starts), so other load on the machine does not count. Then a random sample of mode (c)'s results is re-validated with the
whole suite and disagreements are reported.

    python bench/validate_throughput.py --repos pypi:inflection==0.5.1 pypi:isodate==0.7.2 --candidates 30
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from trajfactory.executors.docker import DockerBackend
from trajfactory.executors.images import ensure_base_image
from trajfactory.executors.pool import SandboxPool
from trajfactory.pipelines import swe
from trajfactory.schema import Quarantine
from trajfactory.settings import Recipe, RepoSpec, SandboxConfig, SynthesisConfig
from trajfactory.synthesizers.swe.validate import validate_candidate

LIMITS = SandboxConfig(backend="docker", memory="1g", cpus=1, pids=256, command_timeout_s=120)


DOCKER_CPUACCT = Path("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage")


def _proc_cpu(name: str) -> float:
    """utime+stime (+ reaped children) of the processes called `name`, in seconds."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if text[text.index("(") + 1 : text.rindex(")")] == name:
            fields = text[text.rindex(")") + 2 :].split()
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def busy_cpu_seconds() -> float:
    """CPU seconds consumed by the containers, this process (+children), dockerd and containerd."""
    containers = int(DOCKER_CPUACCT.read_text()) / 1e9 if DOCKER_CPUACCT.exists() else 0.0
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return containers + own + _proc_cpu("dockerd") + _proc_cpu("containerd")


def measure(fn):
    cpu0, t0 = busy_cpu_seconds(), time.monotonic()
    results = fn()
    return results, busy_cpu_seconds() - cpu0, time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repos", nargs="+", default=["pypi:inflection==0.5.1", "pypi:isodate==0.7.2"])
    parser.add_argument("--candidates", type=int, default=30, help="candidates per repository")
    parser.add_argument("--audit", type=int, default=10, help="mode (c) results re-validated with the whole suite")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ensure_base_image()
    backend = DockerBackend()
    work = Path(tempfile.mkdtemp(prefix="tf-bench-"))
    rows, audits = [], []
    rng = random.Random(args.seed)
    # The factory's own SWE steps (pipelines/swe.py) make the candidates and the reference run; the modes differ
    # only in how each candidate is validated.
    recipe = Recipe(work_dir=str(work), repos=[RepoSpec(uri=u) for u in args.repos], sandbox=LIMITS,
                    synthesis=SynthesisConfig(max_candidates_per_repo=args.candidates, seed=args.seed))
    for uri in args.repos:
        source = swe.harvest_one(recipe, uri)
        env = swe.build_environment(recipe, source) if not isinstance(source, Quarantine) else source
        if isinstance(env, Quarantine):
            print(f"{uri}: quarantined: {env.reason}: {env.detail}", file=sys.stderr)
            continue
        candidates, _ = swe.procedural_candidates(recipe, source)
        ref = swe.reference_run(recipe, env, source)
        if isinstance(ref, Quarantine):
            print(f"{uri}: quarantined: {ref.reason}", file=sys.stderr)
            continue

        def fresh_full():
            out = []
            for c in candidates:
                with backend.start(env, LIMITS) as sandbox:
                    out.append(validate_candidate(sandbox, c, ref, selection="full"))
            return out

        def warm(selection):
            def run():
                with SandboxPool(backend, env, 1, LIMITS) as pool, pool.acquire() as sandbox:
                    return [validate_candidate(sandbox, c, ref, selection=selection) for c in candidates]
            return run

        results = {}
        for mode, fn in (("a fresh+full (SWE-smith)", fresh_full), ("b warm+full", warm("full")),
                         ("c warm+coverage", warm("coverage"))):
            vals, cpu, wall = measure(fn)
            valid = sum(v.status == "valid" for v in vals)
            results[mode[0]] = vals
            rows.append((source.name, mode, len(candidates), valid, valid / len(candidates),
                         cpu, wall, valid / (cpu / 60) if cpu else 0.0))
            print(f"{source.name} {mode}: {valid}/{len(candidates)} valid, cpu {cpu:.1f}s, wall {wall:.1f}s",
                  file=sys.stderr)

        # Audit: re-run a sample of (c) with the whole suite.
        by_id = {c.candidate_id: c for c in candidates}
        sample = rng.sample(results["c"], min(args.audit, len(results["c"])))
        with SandboxPool(backend, env, 1, LIMITS) as pool, pool.acquire() as sandbox:
            for v in sample:
                full = validate_candidate(sandbox, by_id[v.candidate_id], ref, selection="full")
                agree = (full.status == "valid") == (v.status == "valid") and (
                    v.status != "valid" or full.FAIL_TO_PASS == v.FAIL_TO_PASS)
                audits.append((source.name, v.candidate_id, v.status, full.status, agree))

    print("\n| repo | mode | candidates | valid | yield | CPU s | wall s | valid tasks / CPU-min | vs (a) |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = {r[0]: r[7] for r in rows if r[1].startswith("a")}
    for repo, mode, n, valid, yld, cpu, wall, rate in rows:
        ratio = rate / base[repo] if base.get(repo) else 0.0
        print(f"| {repo} | {mode} | {n} | {valid} | {yld:.2f} | {cpu:.1f} | {wall:.1f} | {rate:.2f} | {ratio:.2f}x |")
    disagree = [a for a in audits if not a[4]]
    print(f"\naudit: {len(audits)} coverage-selected results re-validated with the whole suite, "
          f"{len(disagree)} disagreements")
    for repo, cid, mine, full, _ in disagree:
        print(f"  {repo} {cid}: coverage={mine} full={full}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
