"""What reducing a checkout's history to one commit costs (`swe_env.only_commit`), on real repositories.

Every episode starts with it (`prepare_episode`: the bug applied, then the history dropped, so the agent cannot read
the clean code from git) and every verification makes the buggy state, canaries included, the only commit again
(`test_in_place`). It rewrites `.git` (`rm -rf .git && git init && git add -A && git commit`), so the sandbox's next
`reset` sees git's metadata changed and replaces the container (a new container, the image's checkout copied in)
instead of restoring the checkout in place. Both parts are measured here, against the warm reset they stand beside.

Per repository, `--rounds` times in one sandbox: a warm reset, then `only_commit`, then the reset after it (the
replacement). Each step's figures:

- container CPU: the sandbox's containers' cgroups (`cpuacct`) before and after, the removed container's included;
- machine CPU: every CPU second the machine spent meanwhile (`/proc/stat`), which also counts the Docker engine's
  own work (container start and removal, the checkout's copy) and anything else running: run it on a quiet machine;
- wall seconds.

Medians over the rounds.

    python bench/only_commit_cost.py --repos pypi:networkx==3.4.2 pypi:python-dateutil==2.9.0.post0 pypi:isodate==0.7.2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from trajfactory.executors.docker import DockerBackend, container_cpu_seconds
from trajfactory.executors.images import ensure_base_image
from trajfactory.executors.swe_env import only_commit
from trajfactory.pipelines import swe
from trajfactory.schema import Quarantine
from trajfactory.settings import Recipe, RepoSpec, SandboxConfig

LIMITS = SandboxConfig(backend="docker", memory="1g", cpus=1, pids=256, command_timeout_s=600)
STEPS = ("warm reset", "only_commit", "reset after it")


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def container_cpu(sandbox) -> float:
    live = container_cpu_seconds(sandbox.container_id) if sandbox.container is not None else 0.0
    return sandbox.cpu_s + live


def measure(sandbox, fn) -> tuple[float, float, float]:
    """(container CPU s, machine CPU s, wall s) of one call."""
    c0, m0, w0 = container_cpu(sandbox), machine_cpu(), time.monotonic()
    fn()
    return container_cpu(sandbox) - c0, machine_cpu() - m0, time.monotonic() - w0


def one_repo(backend, env, rounds: int) -> dict:
    figures: dict[str, list[tuple[float, float, float]]] = {s: [] for s in STEPS}
    with backend.start(env, LIMITS) as sandbox:
        size = sandbox.execute("git ls-files | wc -l; du -sm --exclude=.git . | cut -f1; du -sm .git | cut -f1",
                               timeout=60).output.split()
        for _ in range(rounds):
            figures["warm reset"].append(measure(sandbox, sandbox.reset))
            result = []
            figures["only_commit"].append(measure(sandbox, lambda: result.append(only_commit(sandbox, "initial"))))
            if result[0].exit_code != 0:
                raise SystemExit(f"only_commit failed: {result[0].output[-500:]}")
            figures["reset after it"].append(measure(sandbox, sandbox.reset))
    medians = {s: [statistics.median(f[i] for f in figures[s]) for i in range(3)] for s in STEPS}
    return {"files": int(size[0]), "mib": int(size[1]), "git_mib": int(size[2]), "rounds": rounds,
            "medians": medians, "all": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", nargs="+", default=["pypi:networkx==3.4.2", "pypi:isodate==0.7.2"])
    parser.add_argument("--rounds", type=int, default=5, help="warm reset / only_commit / reset rounds per repository")
    parser.add_argument("--json", help="write every figure to this file too")
    args = parser.parse_args()

    ensure_base_image()
    backend = DockerBackend()
    work = Path(tempfile.mkdtemp(prefix="tf-bench-"))
    report = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "repos": {},
              "load_before": Path("/proc/loadavg").read_text().split()[:3]}
    for uri in args.repos:
        recipe = Recipe(work_dir=str(work), repos=[RepoSpec(uri=uri)], sandbox=LIMITS)
        source = swe.harvest_one(recipe, uri)
        env = swe.build_environment(recipe, source) if not isinstance(source, Quarantine) else source
        if isinstance(env, Quarantine):
            print(f"{uri}: quarantined: {env.reason}: {env.detail}", file=sys.stderr)
            continue
        print(f"{source.name}: {args.rounds} rounds", file=sys.stderr)
        report["repos"][source.name] = one_repo(backend, env, args.rounds)
    report["load_after"] = Path("/proc/loadavg").read_text().split()[:3]

    print(f"\nload average before {' '.join(report['load_before'])}, after {' '.join(report['load_after'])}; "
          f"medians of {args.rounds} rounds\n")
    print("| repo | files | MiB (.git) | step | container CPU s | machine CPU s | wall s "
          "| vs warm reset (machine CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rep in report["repos"].items():
        base = rep["medians"]["warm reset"][1]
        for step in STEPS:
            cpu, machine, wall = rep["medians"][step]
            ratio = f"{machine / base:.1f}x" if base > 0 else "-"
            print(f"| {name} | {rep['files']} | {rep['mib']} ({rep['git_mib']}) | {step} | {cpu:.2f} | {machine:.2f} | "
                  f"{wall:.2f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
