"""Drive mini-swe-agent on trajfactory's tasks and time each step; run by `bench/rollout_throughput.py`.

Runs inside the bench's mini-swe-agent venv (it imports only mini-swe-agent and the standard library):

    python bench/mini_swe_driver.py SPEC.json RESULT.json

SPEC holds the tasks (image, bug patch, instruction), the server and the sampling settings. Each episode
uses mini-swe-agent's own pieces: `DockerEnvironment` on the task's image, `LitellmTextbasedModel`
(`openai/<model>` with `api_base`) and `DefaultAgent` with its SWE-bench text-based config
(`benchmarks/swebench_backticks.yaml`: its agent templates, its environment settings but the image, the
working directory /repo and the sandbox limits, its model templates), saving its trajectory after every
step as its batch runner does.
The buggy starting state is made the way trajfactory's `prepare_episode` makes it. Episodes run in a
thread pool of `workers`, as mini-swe-agent's batch runner runs them.

A step is one agent-loop iteration with a model call: from `agent.step()` entry to the next entry (or
the end of `run()`), so the trajectory save and the loop's own bookkeeping count. Model time is
`model.query` (litellm, parsing and cost included), sandbox time `env.execute`; the overhead is the rest.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

import minisweagent
from minisweagent.agents.default import DefaultAgent
from minisweagent.config import builtin_config_dir
from minisweagent.environments.docker import DockerEnvironment
from minisweagent.models.litellm_textbased_model import LitellmTextbasedModel


def prepare(env: DockerEnvironment, patch: str, bug_path: str) -> None:
    """trajfactory's `prepare_episode`: bug applied, history reduced to one commit."""
    encoded = base64.b64encode(patch.encode()).decode()
    script = (
        f"echo {encoded} | base64 -d > {bug_path} && git apply {bug_path} && rm -f {bug_path} && rm -rf .git "
        "&& git init -q && printf '__pycache__/\\n*.pyc\\n.pytest_cache/\\n.coverage\\n' >> .git/info/exclude "
        "&& git add -A && git -c user.name=trajfactory -c user.email=trajfactory@localhost commit -qm initial"
    )
    out = env.execute({"command": script}, timeout=120)
    if out["returncode"] != 0:
        raise RuntimeError(f"the bug patch does not apply: {out['output'][-500:]}")


def episode(spec: dict, config: dict, task: dict, sample: int, out_dir: Path, lock: threading.Lock,
            intervals: list) -> dict:
    t0 = time.monotonic()
    env_config = {k: v for k, v in config.get("environment", {}).items() if k != "environment_class"}
    rec: dict = {"steps": [], "setup_s": 0.0, "status": "", "error": None, "http_s": 0.0, "calls": 0,
                 "failed": 0}
    env = None
    try:
        env = DockerEnvironment(**{**env_config, "image": task["image"], "cwd": "/repo",
                                   "timeout": int(spec["command_timeout"]),
                                   "run_args": ["--rm", *spec["docker_run_args"]]})
        prepare(env, task["bug_patch"], spec["bug_path"])
        model_config = {k: v for k, v in config.get("model", {}).items() if k not in ("model_name", "model_class")}
        kwargs = {**model_config.pop("model_kwargs", {}), "api_base": spec["base_url"], "api_key": "none",
                  "max_tokens": spec["max_tokens"], "temperature": spec["temperature"],
                  "extra_body": {"structured_outputs": {"regex": spec["regex"]}}}
        if spec.get("seed") is not None:
            kwargs["seed"] = spec["seed"]
        model = LitellmTextbasedModel(**{**model_config, "model_name": f"openai/{spec['model']}",
                                         "model_kwargs": kwargs, "cost_tracking": "ignore_errors"})
        agent = DefaultAgent(model, env, **{**config["agent"], "step_limit": spec["max_steps"],
                                            "output_path": out_dir / f"{task['instance_id']}-{sample}.traj.json"})
        current: list[dict] = []

        def close(now: float) -> None:
            if current:
                step = current.pop()
                if step["called"]:
                    step["wall_s"] = now - step.pop("start")
                    rec["steps"].append(step)

        orig_step, orig_query, orig_exec, orig_http = agent.step, model.query, env.execute, model._query

        def step():
            now = time.monotonic()
            close(now)
            current.append({"start": now, "model_s": 0.0, "sandbox_s": 0.0, "called": False, "commands": 0})
            return orig_step()

        def query(*a, **k):
            t = time.monotonic()
            if current:
                current[-1]["called"] = True
            try:
                return orig_query(*a, **k)
            finally:
                if current:
                    current[-1]["model_s"] += time.monotonic() - t

        def http(*a, **k):  # litellm.completion: the request itself (retries included)
            t, started, ok = time.monotonic(), time.time(), False
            try:
                res = orig_http(*a, **k)
                ok = True
                return res
            finally:
                rec["http_s"] += time.monotonic() - t
                rec["calls"] += 1
                rec["failed"] += not ok
                with lock:
                    intervals.append((started, time.time()))

        def execute(*a, **k):
            t = time.monotonic()
            try:
                return orig_exec(*a, **k)
            finally:
                if current:
                    current[-1]["sandbox_s"] += time.monotonic() - t
                    current[-1]["commands"] += 1

        agent.step, model.query, env.execute, model._query = step, query, execute, http
        rec["setup_s"] = time.monotonic() - t0
        try:
            result = agent.run(task["instruction"])
            rec["status"] = result.get("exit_status", "")
        finally:
            close(time.monotonic())
    except Exception as exc:  # noqa: BLE001 - recorded; the other episodes go on
        rec["error"] = f"{type(exc).__name__}: {exc}"[:500]
        rec["status"] = rec["status"] or f"error: {type(exc).__name__}"
        rec["traceback"] = traceback.format_exc()[-2000:]
    finally:
        if env is not None:
            env.cleanup()
    print(f"episode done: {task['instance_id']} sample {sample}: {rec['status']}", flush=True)
    return rec


def main() -> int:
    spec_path, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    spec = json.loads(spec_path.read_text())
    config = yaml.safe_load((builtin_config_dir / "benchmarks" / "swebench_backticks.yaml").read_text())
    out_dir = out_path.parent / f"mini-trajs-c{spec['workers']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    lock, intervals = threading.Lock(), []
    work = [(task, s) for task in spec["tasks"] for s in range(spec["samples"])]
    start, t0 = time.time(), time.monotonic()
    with ThreadPoolExecutor(max_workers=spec["workers"]) as pool:
        recs = list(pool.map(lambda ts: episode(spec, config, ts[0], ts[1], out_dir, lock, intervals), work))
    wall, end = time.monotonic() - t0, time.time()
    steps = [s for r in recs for s in r["steps"]]
    statuses: dict[str, int] = {}
    for r in recs:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    out = {
        "mini_version": minisweagent.__version__, "episodes": len(recs), "wall_s": wall, "start": start, "end": end,
        "turns": len(steps), "steps": len(steps), "commands": sum(s["commands"] for s in steps),
        "model_s": [s["model_s"] for s in steps], "sandbox_s": [s["sandbox_s"] for s in steps],
        "overhead_s": [max(0.0, s["wall_s"] - s["model_s"] - s["sandbox_s"]) for s in steps],
        "setup_s": [r["setup_s"] for r in recs], "http_s": sum(r["http_s"] for r in recs),
        "model_calls": sum(r["calls"] for r in recs), "failed_calls": sum(r["failed"] for r in recs),
        "intervals": intervals, "statuses": statuses,
        "errors": [r["error"] for r in recs if r["error"]][:3],
        "tracebacks": [r["traceback"] for r in recs if r.get("traceback")][:3],
    }
    out_path.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
