"""What a `trajfactory run` subprocess pays for its Prefect server: a throwaway one of its own (Prefect's default with
no PREFECT_API_URL: a fresh SQLite server started at the run's first flow) against one lasting server it shares
(`trajfactory server start`'s, on PostgreSQL), which is what the tests' `shared_prefect_api` fixture gives their runs.

    python bench/prefect_startup.py --rounds 3

One small recipe (the bundled textkit, 4 candidates) is run once to fill its work dir, then again `--rounds` times
each way, interleaved (so both ways see the same machine); every timed run is fully cached, so what differs is the
server. Prints the lasting server's own start and a table of the runs' wall seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trajfactory.server import prefect_server  # noqa: E402
from trajfactory.server.postgres import PostgresCluster  # noqa: E402

CLI = [sys.executable, "-m", "trajfactory.cli"]


def _recipe(tmp: Path) -> Path:
    body = {"name": "prefect-startup", "work_dir": str(tmp / "work"), "repos": [{"uri": "builtin:textkit"}],
            "synthesis": {"max_candidates_per_repo": 4, "seed": 3},
            "validation": {"reference_runs": 1, "suite_timeout_s": 60, "batch_size": 2},
            "sandbox": {"concurrency": 1, "memory": "1g"}, "dataset": {"name": "swe", "root": str(tmp / "datasets")}}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def _run(tmp: Path, recipe: Path, api: str | None) -> float:
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    if api:
        env["PREFECT_API_URL"] = api
    began = time.monotonic()
    proc = subprocess.run([*CLI, "run", str(recipe)], env=env, cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the run failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.monotonic() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed runs each way (default 3)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="prefect-startup-") as d:
        tmp = Path(d)
        recipe = _recipe(tmp)
        began = time.monotonic()
        state = prefect_server.start(tmp / "server")
        print(f"lasting server started in {time.monotonic() - began:.1f} s (once per test session)", flush=True)
        try:
            print(f"first run (fills the work dir): {_run(tmp, recipe, None):.1f} s", flush=True)
            times: dict[str, list[float]] = {"throwaway server": [], "shared server": []}
            for i in range(args.rounds):
                for way, api in (("throwaway server", None), ("shared server", state["api_url"])):
                    times[way].append(_run(tmp, recipe, api))
                    print(f"round {i + 1}, {way}: {times[way][-1]:.1f} s", flush=True)
        finally:
            prefect_server.stop(tmp / "server")
            PostgresCluster(Path(state["postgres_data"])).remove()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}\n")
    print("| server | runs (s) | mean (s) |\n|---|---|---|")
    for way, values in times.items():
        print(f"| {way} | {' / '.join(f'{v:.1f}' for v in values)} | {sum(values) / len(values):.1f} |")


if __name__ == "__main__":
    main()
