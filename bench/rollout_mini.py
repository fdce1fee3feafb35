"""The mini-swe-agent side of `rollout_throughput.py`: its venv (pip, from PyPI, made on first use), its episodes
through `mini_swe_driver.py`, and the constrained action format both harnesses' replies are held to (a short
thought, then one fenced block holding one of a few read-only commands)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from server_metrics import BusyPoller, progress, server_totals, union_busy

from trajfactory.executors.swe_env import BUG_PATH

DRIVER = Path(__file__).resolve().parent / "mini_swe_driver.py"
MINI_VERSION = "2.4.6"

# The commands the constrained model may choose from: read-only, short output, none submits.
COMMANDS = [
    "ls -la",
    "git status --short",
    "git diff --stat",
    "find . -name '*.py' | head -n 5",
    "grep -rn 'def ' --include='*.py' . | head -n 5",
    "python -c 'import sys; print(sys.version)'",
    "wc -l $(git ls-files '*.py') | tail -n 1",
]


def action_regex(fence: str) -> str:
    """A short lower-case thought, then exactly one fenced block in `fence` holding one of COMMANDS."""
    alternatives = "|".join(re.escape(c) for c in COMMANDS)
    return f"THOUGHT: [a-z ]{{1,30}}\\n\\n```{fence}\\n({alternatives})\\n```"



def mini_python(cache: Path) -> tuple[Path | None, str]:
    """The python of the bench's mini-swe-agent venv, made on first use; (None, why) when it cannot be."""
    venv = cache / "bench-mini-venv"
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import importlib.metadata as m; print(m.version('mini-swe-agent'))"]
    if python.exists():
        got = subprocess.run(check, capture_output=True, text=True)
        if got.returncode == 0 and got.stdout.strip() == MINI_VERSION:
            return python, ""
    progress(f"mini-swe-agent: installing mini-swe-agent=={MINI_VERSION} into {venv} (pip, first use only) ...")
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "-q", f"mini-swe-agent=={MINI_VERSION}"]]
    for cmd in steps:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-8:])
            return None, f"`{' '.join(cmd[-4:])}` failed (exit {res.returncode}):\n{tail}"
    got = subprocess.run(check, capture_output=True, text=True)
    if got.returncode != 0:
        return None, f"mini-swe-agent is not importable in {venv} after installing it: {got.stderr.strip()[-500:]}"
    return python, ""


def run_mini(python: Path, tasks, env, args, concurrency: int, metrics_url: str, work: Path, limits) -> dict:
    """mini-swe-agent's episodes through `mini_swe_driver.py` in its venv, on the same images, tasks, server and
    container limits (`limits`, the bench's `SandboxConfig`), with the server's busy fraction polled meanwhile."""
    spec = {
        "base_url": args.base_url, "model": args.model, "max_steps": args.max_steps, "max_tokens": args.max_tokens,
        "temperature": args.temperature, "seed": args.seed, "workers": concurrency, "samples": args.samples,
        "regex": action_regex("mswea_bash_command"),
        "command_timeout": limits.command_timeout_s, "bug_path": BUG_PATH,
        "docker_run_args": ["--network", "none", "--memory", limits.memory, "--memory-swap", limits.memory,
                            f"--cpus={limits.cpus}", "--pids-limit", str(limits.pids), "--cap-drop", "ALL",
                            "--security-opt", "no-new-privileges", "--init",
                            "--label", "trajfactory=1", "--label", "trajfactory.bench=mini-swe-agent"],
        "tasks": [{"instance_id": t.instance_id, "image": env.name, "bug_patch": t.bug_patch,
                   "instruction": t.instruction} for t in tasks],
    }
    spec_path = work / f"mini-spec-c{concurrency}.json"
    out_path = work / f"mini-result-c{concurrency}.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    total = len(tasks) * args.samples
    done = [0]

    def report(poller: BusyPoller) -> None:
        progress(f"mini-swe-agent c={concurrency}: {done[0]}/{total} episodes, busy so far {poller.busy() or 0:.0%}")

    before = server_totals(metrics_url, args.model)
    with BusyPoller(metrics_url, args.model, args.poll_ms / 1000, report) as poller:
        proc = subprocess.Popen([str(python), str(DRIVER), str(spec_path), str(out_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "MSWEA_SILENT_STARTUP": "1", "MSWEA_COST_TRACKING": "ignore_errors"})
        lines = []
        for line in proc.stdout:  # the driver prints `episode done ...` per finished episode
            if line.startswith("episode done"):
                done[0] += 1
            else:
                lines.append(line.rstrip("\n"))
        proc.wait()
    if proc.returncode != 0 or not out_path.is_file():
        tail = "\n".join(lines[-15:])
        raise RuntimeError(f"the mini-swe-agent driver failed (exit {proc.returncode}):\n{tail}")
    after = server_totals(metrics_url, args.model)
    res = json.loads(out_path.read_text())
    res.update(server_s=after[0] - before[0], server_n=after[1] - before[1], harness="mini-swe-agent",
               concurrency=concurrency, busy=poller.busy(res["start"], res["end"]),
               occupied=poller.occupied(res["start"], res["end"]), polls=len(poller.window(res["start"], res["end"])),
               load=os.getloadavg()[0],
               poll_errors=poller.errors, poll_error=poller.last_error,
               busy_union=union_busy([tuple(i) for i in res["intervals"]], res["start"], res["end"]))
    return res
