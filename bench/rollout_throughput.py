"""Rollout throughput of model-served agents: trajectories per minute, model-server busy fraction, and the
harness's own overhead per agent step, at several concurrencies; mini-swe-agent on the same tasks and server.

Tasks are real: procedural bugs of the bundled `builtin:textkit` repository, synthesized and validated in
Docker exactly as the factory does (cached in the work dir). Each episode runs in a fresh Docker sandbox
in the task's buggy starting state, against a real vLLM server (its own CPU server on the built-in tiny
model by default, or `--base-url`).

The tiny model has random weights, so its free text is noise. To make every step a real step (a model
call, then a command in the sandbox) the replies of BOTH harnesses are constrained by the server
(vLLM `structured_outputs.regex`) to the harness's own action format: a short thought, then one bash
block holding one of a few read-only commands. No command submits, so every episode runs to the step
limit: this measures plumbing throughput, not solve rate.

Per step, model time is the wait for the model's reply, sandbox time the command's run in the container,
and the harness overhead is the rest of the step's wall time (the harness's own work, thread hand-offs,
event-loop contention). The model-server busy fraction is the share of ~50 ms polls of vLLM's
`/metrics` with at least one request running (`vllm:num_requests_running`), over the run's window; also
shown: the share with a request running or waiting, and the union of the client's request intervals.
"HTTP s/step" is the client's request time (for mini-swe-agent: `litellm.completion`), "vLLM s/request"
the server's own end-to-end request time (`vllm:e2e_request_latency_seconds`): the gap between the two is
client-side time that the step accounting counts as model time.

mini-swe-agent is installed (pip, from PyPI) into its own venv in the trajfactory cache the first time
the bench needs it and driven by `bench/mini_swe_driver.py` inside that venv: its `DockerEnvironment`
on the same images, the same bug patch applied the same way, its `LitellmModel` against the same server.

    python bench/rollout_throughput.py --concurrency 1,2,4,8 --tasks 4 --samples 2 --max-steps 6
    python bench/rollout_throughput.py --base-url http://127.0.0.1:18000/v1 --model tiny --skip-mini
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's trajfactory, installed or not

from trajfactory.agents.model import ModelPolicy
from trajfactory.executors.base import EnvironmentHandle
from trajfactory.executors.docker import DockerBackend, engine_available
from trajfactory.executors.episode import run_episodes
from trajfactory.executors.images import ensure_base_image
from trajfactory.executors.pool import SandboxPool
from trajfactory.executors.swe_env import SweEnvironments
from trajfactory.models.client import ModelClient
from trajfactory.models.server import CACHE_ROOT, VLLMServer
from trajfactory.models.service import tiny_model_dir
from trajfactory.pipelines import swe
from trajfactory.schema import Quarantine, Task
from trajfactory.settings import (EpisodeLimits, ModelPolicyConfig, Recipe, RepoSpec, SandboxConfig, SynthesisConfig,
                                  ValidationConfig)
from trajfactory.synthesizers.swe import stage

from rollout_mini import action_regex, mini_python, run_mini  # noqa: E402  (bench/)
from server_metrics import BusyPoller, mean, pct, progress, server_totals, union_busy  # noqa: E402  (bench/)

LIMITS = SandboxConfig(backend="docker", memory="1g", cpus=1, pids=256, command_timeout_s=60)
TASKS_FORMAT = "1"
"""Bump when the cached task file changes shape."""

# ---------------------------------------------------------------- tasks


def build_tasks(backend: DockerBackend, work: Path, n: int) -> tuple[EnvironmentHandle, list[Task]]:
    """`n` validated textkit tasks, cached in `work` (rebuilt when the image is gone or too few are cached)."""
    cache = work / "tasks.json"
    if cache.is_file():
        try:
            data = json.loads(cache.read_text())
            env = EnvironmentHandle(**data["env"])
            tasks = [Task.model_validate(t) for t in data["tasks"]]
        except Exception as exc:  # noqa: BLE001 - an old or broken cache is rebuilt
            progress(f"tasks: the cache {cache} does not load ({type(exc).__name__}); rebuilding it")
        else:
            if data.get("format") == TASKS_FORMAT and len(tasks) >= n and _image_exists(backend, env.name):
                progress(f"tasks: {n} of {len(tasks)} cached in {cache}")
                return env, tasks[:n]
    progress("tasks: harvesting builtin:textkit, building its image, synthesizing and validating bugs ...")
    # The factory's own SWE steps (pipelines/swe.py), one at a time: the bench stops as soon as it has `n` tasks.
    recipe = Recipe(work_dir=str(work), repos=[RepoSpec(uri="builtin:textkit")], sandbox=LIMITS,
                    synthesis=SynthesisConfig(max_candidates_per_repo=max(6, 3 * n)),
                    validation=ValidationConfig(reference_runs=1))
    source = swe.harvest_one(recipe, "builtin:textkit")
    if isinstance(source, Quarantine):
        raise SystemExit(f"builtin:textkit was quarantined: {source.reason}: {source.detail}")
    env = swe.build_environment(recipe, source)
    if isinstance(env, Quarantine):
        raise SystemExit(f"the textkit environment did not build: {env.reason}: {env.detail}")
    candidates, _ = swe.procedural_candidates(recipe, source)
    ref = swe.reference_run(recipe, env, source)
    if isinstance(ref, Quarantine):
        raise SystemExit(f"the textkit reference run failed: {ref.reason}: {ref.detail}")
    tasks: list[Task] = []
    validated, validations = [], []
    with SandboxPool(backend, env, size=1, limits=LIMITS) as pool:
        for c in candidates:
            validated.append(c)
            validations.append(swe.validate(recipe, pool, c, ref))
            tasks = stage.tasks_from(source, env, validated, validations)
            progress(f"tasks: {len(validated)}/{len(candidates)} candidates validated, {len(tasks)} tasks")
            if len(tasks) >= n:
                break
    if len(tasks) < n:
        raise SystemExit(f"--tasks {n}: only {len(tasks)} valid textkit tasks came out of {len(candidates)} "
                         "candidates; ask for fewer")
    cache.write_text(json.dumps({"format": TASKS_FORMAT, "env": asdict(env),
                                 "tasks": [t.model_dump(mode="json") for t in tasks]}))
    return env, tasks[:n]


def _image_exists(backend: DockerBackend, tag: str) -> bool:
    try:
        backend.client.images.get(tag)
        return True
    except Exception:  # noqa: BLE001 - any failure means: rebuild
        return False


# ---------------------------------------------------------------- trajfactory


def run_trajfactory(tasks, env, backend, args, concurrency: int, metrics_url: str) -> dict:
    client = ModelClient(args.base_url, args.model, max_concurrency=concurrency, timeout_s=args.request_timeout)
    config = ModelPolicyConfig(
        actions="text", max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
        extra_body={"structured_outputs": {"regex": action_regex("bash")}},
        limits=EpisodeLimits(max_steps=args.max_steps),
    )
    total = len(tasks) * args.samples
    done = [0]

    class Done(logging.Handler):  # run_episodes logs one INFO line per finished episode
        def emit(self, record):
            if record.getMessage().startswith("episode "):
                done[0] += 1

    def report(poller: BusyPoller) -> None:
        progress(f"trajfactory c={concurrency}: {done[0]}/{total} episodes, {len(client.requests)} model calls, "
                 f"busy so far {poller.busy() or 0:.0%}")

    logger = logging.getLogger("trajfactory.executors.episode")
    handler, old_level = Done(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        before = server_totals(metrics_url, args.model)
        with BusyPoller(metrics_url, args.model, args.poll_ms / 1000, report) as poller:
            t0 = time.time()
            with SweEnvironments(backend, env, LIMITS, concurrency) as envs:
                episodes, stats = asyncio.run(run_episodes(
                    tasks, envs, lambda task, sample: ModelPolicy(client, config), concurrency=concurrency,
                    samples=args.samples, limits=EpisodeLimits(max_steps=args.max_steps)))
            trajs = [e.trajectory for e in episodes]
            t1 = time.time()
        after = server_totals(metrics_url, args.model)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    turns = [t for e in stats.episodes for t in e.turns]
    errors = [e.error for e in stats.episodes if e.error]
    statuses: dict[str, int] = {}
    for t in trajs:
        statuses[t.exit_status] = statuses.get(t.exit_status, 0) + 1
    commands = sum(1 for t in trajs for s in t.steps if s.tool == "bash" and s.exit_code is not None)
    steps = sum(len(t.steps) for t in trajs)
    intervals = [(r.started_at, r.started_at + r.latency_s) for r in client.requests]
    return {
        "harness": "trajfactory", "concurrency": concurrency, "episodes": len(trajs), "wall_s": stats.wall_s,
        "turns": len(turns), "commands": commands, "steps": steps,
        "model_s": [t.model_s for t in turns], "sandbox_s": [t.sandbox_s for t in turns],
        "overhead_s": [t.overhead_s for t in turns], "setup_s": [e.setup_s for e in stats.episodes],
        "busy": poller.busy(t0, t1), "occupied": poller.occupied(t0, t1), "load": os.getloadavg()[0],
        "polls": len(poller.window(t0, t1)),
        "poll_errors": poller.errors,
        "poll_error": poller.last_error, "busy_union": union_busy(intervals, t0, t1),
        "http_s": sum(r.latency_s for r in client.requests), "model_calls": len(client.requests),
        "failed_calls": sum(r.status != 200 for r in client.requests),
        "statuses": statuses, "errors": errors[:3], "server_s": after[0] - before[0], "server_n": after[1] - before[1],
    }


# ---------------------------------------------------------------- report


def row(r: dict) -> str:
    n = max(1, r["turns"])
    over_ms = [x * 1000 for x in r["overhead_s"]]
    busy = "n/a" if r["busy"] is None else f"{r['busy']:.0%}"
    occupied = "n/a" if r["occupied"] is None else f"{r['occupied']:.0%}"
    server = f"{r['server_s'] / r['server_n']:.3f}" if r.get("server_n") else "n/a"
    return (f"| {r['harness']} | {r['concurrency']} | {r['episodes']} | {r['turns']} | "
            f"{r['episodes'] / r['wall_s'] * 60:.1f} | {r['turns'] / r['wall_s']:.2f} | {busy} | {occupied} | "
            f"{r['busy_union']:.0%} | {sum(r['model_s']) / n:.3f} | {r['http_s'] / n:.3f} | {server} | "
            f"{sum(r['sandbox_s']) / n:.3f} | "
            f"{statistics.median(over_ms) if over_ms else float('nan'):.1f} | {pct(over_ms, 0.9):.1f} | "
            f"{mean(r['setup_s']):.2f} | {r['load']:.1f} |")


HEADER = ("| harness | concurrency | trajectories | steps | trajectories/min | steps/s | server busy: running "
          "| running or waiting | request union | model s/step | HTTP s/step | vLLM s/request | sandbox s/step "
          "| overhead ms/step median | p90 | setup s/episode | load avg |\n" + "|---" * 17 + "|")


def parse_concurrency(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--concurrency {text!r}: give comma-separated integers, e.g. 1,2,4,8")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--concurrency {text!r}: every value must be at least 1")
    return values


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=parse_concurrency, default=[1, 2, 4, 8],
                        help="comma-separated episode concurrencies (default 1,2,4,8)")
    parser.add_argument("--tasks", type=positive, default=4, help="textkit tasks (default 4)")
    parser.add_argument("--samples", type=positive, default=2, help="episodes per task (default 2)")
    parser.add_argument("--max-steps", type=positive, default=6, help="agent steps per episode (default 6)")
    parser.add_argument("--max-tokens", type=positive, default=96, help="completion tokens per model call (default 96)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed sent with every request")
    parser.add_argument("--base-url", default=None,
                        help="a running OpenAI-compatible vLLM server (e.g. http://127.0.0.1:18000/v1); "
                             "default: start a CPU vLLM server on the built-in tiny model for the run")
    parser.add_argument("--model", default="tiny", help="served model name (default tiny)")
    parser.add_argument("--max-model-len", type=positive, default=8192,
                        help="context length of the server the bench starts (default 8192: mini-swe-agent's "
                             "SWE-bench prompt alone is about 2,900 tokens of the tiny model's tokenizer)")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="seconds per model request")
    parser.add_argument("--poll-ms", type=float, default=50.0, help="/metrics poll interval in ms (default 50)")
    parser.add_argument("--skip-mini", action="store_true", help="do not run mini-swe-agent")
    parser.add_argument("--mini-concurrency", type=parse_concurrency, default=None,
                        help="concurrencies for mini-swe-agent (default: the same as --concurrency)")
    parser.add_argument("--work", type=Path, default=CACHE_ROOT / "bench-rollout",
                        help="work dir: cached tasks, server log, driver files (default: in the trajfactory cache)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    if not engine_available():
        raise SystemExit("no Docker engine answers (start dockerd: scripts/setup.sh); the bench needs Docker sandboxes")
    ensure_base_image(progress=progress)
    backend = DockerBackend(labels={"trajfactory.bench": "rollout-throughput"})
    env, tasks = build_tasks(backend, args.work, args.tasks)

    mini, mini_why = (None, "skipped (--skip-mini)") if args.skip_mini else mini_python(CACHE_ROOT)
    if mini is None and not args.skip_mini:
        progress(f"mini-swe-agent cannot run: {mini_why}")

    server = None
    if args.base_url is None:
        progress("starting a CPU vLLM server on the built-in tiny model (about a minute) ...")
        model_dir = tiny_model_dir()
        positions = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings", 0)
        extra = []
        if args.max_model_len > positions:  # random weights: a longer window costs nothing in quality
            extra = ["--hf-overrides", json.dumps({"max_position_embeddings": args.max_model_len})]
        server = VLLMServer(model_dir, name=args.model, max_model_len=args.max_model_len, extra_args=extra,
                            log_path=args.work / "vllm.log").start()
        args.base_url = server.base_url
    server_note = "the bench's own vLLM server" if server else f"the running server at {args.base_url}"
    base = args.base_url.rstrip("/")
    metrics_url = (base[: -len("/v1")] if base.endswith("/v1") else base) + "/metrics"
    try:
        models = httpx.get(f"{base}/models", timeout=10).json()
        names = [m["id"] for m in models.get("data", [])]
    except Exception as exc:  # noqa: BLE001
        raise SystemExit(f"--base-url {args.base_url}: GET /models failed: {type(exc).__name__}: {exc}")
    if args.model not in names:
        raise SystemExit(f"--model {args.model!r}: the server at {args.base_url} serves {names}")

    results, notes = [], []
    try:
        # Interleaved (trajfactory at c, then mini-swe-agent at c), so both see much the same machine load.
        mini_levels = (args.mini_concurrency or args.concurrency) if mini is not None else []
        for c in sorted(set(args.concurrency) | set(mini_levels)):
            if c in args.concurrency:
                progress(f"trajfactory c={c}: {len(tasks)} tasks x {args.samples} samples, "
                         f"{args.max_steps} steps each")
                r = run_trajfactory(tasks, env, backend, args, c, metrics_url)
                results.append(r)
                progress(f"trajfactory c={c}: done in {r['wall_s']:.1f}s, exits {r['statuses']}")
                if r["errors"]:
                    notes.append(f"trajfactory c={c}: {len(r['errors'])}+ episode errors, e.g. "
                                 f"{r['errors'][0][:400]}")
            if c in mini_levels:
                progress(f"mini-swe-agent c={c}: {len(tasks)} tasks x {args.samples} samples, "
                         f"{args.max_steps} steps each")
                try:
                    r = run_mini(mini, tasks, env, args, c, metrics_url, args.work, LIMITS)
                except Exception as exc:  # noqa: BLE001 - the bench says why and goes on
                    notes.append(f"mini-swe-agent c={c} did not run: {exc}")
                    progress(notes[-1])
                    continue
                results.append(r)
                progress(f"mini-swe-agent c={c}: done in {r['wall_s']:.1f}s, exits {r['statuses']}")
                if r.get("errors"):
                    notes.append(f"mini-swe-agent c={c}: {len(r['errors'])}+ episode errors, e.g. "
                                 f"{r['errors'][0][:400]} (tracebacks in {args.work / f'mini-result-c{c}.json'})")
        if mini is None:
            notes.append(f"mini-swe-agent: {mini_why}")
    finally:
        if server is not None:
            server.stop()

    print(f"\nserver: {server_note}, model {args.model!r}; {len(tasks)} textkit tasks x {args.samples} samples, "
          f"{args.max_steps} steps, {args.max_tokens} max tokens; load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cores\n")
    results.sort(key=lambda r: (r["harness"] != "trajfactory", r["concurrency"]))
    print(HEADER)
    for r in results:
        print(row(r))
    for r in results:
        if r["poll_errors"]:
            print(f"\n{r['harness']} c={r['concurrency']}: {r['poll_errors']} of {r['polls'] + r['poll_errors']} "
                  f"/metrics polls failed, last: {r['poll_error']}")
        print(f"{r['harness']} c={r['concurrency']}: {r['commands']} sandbox commands in {r['turns']} steps, "
              f"{r['model_calls']} model calls ({r['failed_calls']} failed), exits {r['statuses']}")
    for note in notes:
        print(f"\nnote: {note}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
