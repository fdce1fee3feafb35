"""Validation throughput on a local Ray cluster, 1 node against 2, beside the factory's default thread pool.

    python bench/cluster_throughput.py --repo builtin:textkit --candidates 24 --batch-size 4

The same procedural candidates of one repository, validated in batches (`pipelines.swe.validate_batch`), three ways:

- thread pool: the factory's default, no Ray: `--concurrency` warm sandboxes on the machine's engine;
- ray 1 node: a head that runs nothing (no CPUs) + one worker node with its own Docker engine and 1 CPU;
- ray 2 nodes: the same + a second worker node with its own engine.

The image is built once on the machine's engine and pushed to a local registry (Debian's docker-registry); each
node pulls it on its first sandbox (`first round` includes that pull; `second round` is the same work again, warm).
On this project's machines (2 cores) every node shares the same two cores, so two nodes cannot beat two warm
sandboxes of the thread pool: what the table shows is that work spreads over the nodes and what the round trip
through Ray costs (a fresh sandbox per batch on a node, against warm ones in the pool). On real machines each node
brings its own cores and engine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trajfactory.executors import get_backend  # noqa: E402
from trajfactory.executors.pool import SandboxPool  # noqa: E402
from trajfactory.executors.registry import start_registry, stop_registry, use_registry  # noqa: E402
from trajfactory.flows.cluster import cluster_session, run_step  # noqa: E402
from trajfactory.models.server import free_port  # noqa: E402
from trajfactory.pipelines import swe  # noqa: E402
from trajfactory.schema import Source  # noqa: E402
from trajfactory.server.cluster import start_node, stop_node  # noqa: E402
from trajfactory.settings import ClusterConfig, Recipe  # noqa: E402
from trajfactory.sources import harvest_repo  # noqa: E402
from trajfactory.synthesizers.swe import stage  # noqa: E402


def prepare(args, work: Path):
    recipe = Recipe(work_dir=str(work / "work"), repos=[{"uri": args.repo}],
                    synthesis={"max_candidates_per_repo": args.candidates, "seed": 3},
                    validation={"batch_size": args.batch_size},
                    sandbox={"concurrency": args.concurrency, "memory": "1g"})
    source = harvest_repo(args.repo, work / "mirrors")
    assert isinstance(source, Source), source
    backend = get_backend("docker")
    env = stage.build_environment(backend, source)
    candidates, _ = stage.synthesize(source, recipe.synthesis, work / "checkouts")
    ref = stage.reference(backend, env, source, recipe.validation, recipe.sandbox)
    return recipe, backend, env, candidates, ref


def validate_all(recipe, pool, candidates, ref, submit, workers: int) -> tuple[float, int]:
    calls = swe.validation_batches(recipe.model_copy(update={"sandbox": recipe.sandbox.model_copy(
        update={"concurrency": workers})}), pool, candidates, ref)
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as threads:
        batches = list(threads.map(lambda args: submit(swe.validate_batch, args), calls))
    wall = time.perf_counter() - start
    return wall, sum(v.status == "valid" for batch in batches for v in batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default="builtin:textkit", help="The repository (builtin:NAME, pypi:PKG==V, path).")
    parser.add_argument("--candidates", type=int, default=24, help="Procedural candidates to validate.")
    parser.add_argument("--batch-size", type=int, default=4, help="Candidates per batch (one unit of work).")
    parser.add_argument("--concurrency", type=int, default=2, help="Warm sandboxes of the thread-pool baseline.")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="trajfactory-bench-cluster-") as tmp:
        work = Path(tmp)
        recipe, backend, env, candidates, ref = prepare(args, work)
        print(f"{args.repo}: {len(candidates)} candidates, batches of {args.batch_size}", flush=True)
        with SandboxPool(backend, env, args.concurrency, recipe.sandbox) as pool:
            for round_ in ("first", "second"):
                wall, valid = validate_all(recipe, pool, candidates, ref, lambda f, a: f(*a), args.concurrency)
                rows.append(("thread pool", args.concurrency, round_, len(candidates), valid, wall))
        registry = start_registry(work / "registry", port=free_port())
        use_registry(registry)
        started = []
        try:
            head = start_node(work, "head", head=True, port=free_port(), num_cpus=0, own_engine=False,
                              env={"PYTHONPATH": str(ROOT)})
            started.append("head")
            for n in (1, 2):
                started.append(f"node{n}")
                start_node(work, f"node{n}", address=head["address"], env={"PYTHONPATH": str(ROOT)})
                stage.build_environment(backend, harvest_repo(args.repo, work / "mirrors"))  # pushes it once
                with cluster_session(ClusterConfig(address=head["address"], registry=registry)):
                    pool = SandboxPool(backend, env, n, recipe.sandbox)  # sent to the nodes as fresh sandboxes
                    for round_ in ("first", "second"):
                        wall, valid = validate_all(recipe, pool, candidates, ref,
                                                   lambda f, a: run_step(f, a, {}), n)
                        rows.append((f"ray {n} node{'s' if n > 1 else ''}", n, round_, len(candidates), valid, wall))
        finally:
            for name in reversed(started):
                stop_node(work, name, remove_engine=True)
            stop_registry(work / "registry")
    base = {r[2]: r[5] for r in rows if r[0] == "ray 1 node"}
    print("\n| mode | sandboxes at once | round | candidates | valid | wall s | candidates/s | vs ray 1 node |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, at_once, round_, n, valid, wall in rows:
        print(f"| {mode} | {at_once} | {round_} | {n} | {valid} | {wall:.1f} | {n / wall:.2f} | "
              f"{base[round_] / wall:.2f}x |")


if __name__ == "__main__":
    main()
