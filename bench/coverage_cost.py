"""What the per-test record of the reference run costs: the whole suite plain, with the factory's line coverage
(pytest-cov's per-test contexts, as `reference.reference_run` records them), and with a per-test record of the
functions each test called (`cProfile`: call and return events only, no line events).

Validation selects a candidate's tests by the function its change is in (`validate.select_tests`: every test that
ran any line of the changed function), so a record of which functions each test called could stand in for line
coverage, if it costs less. This measures the cost before anything is built on it, and how far the two records
agree: per test, the checkout's files each one saw running code in.

    python bench/coverage_cost.py --repos pypi:networkx==3.4.2 pypi:isodate==0.7.2

CPU is the sandbox container's own (its cgroup's `cpuacct.usage`) for each whole-suite run, in one warm
container reset with git between runs. Python 3.11 in the sandboxes has no `sys.monitoring`, the cheap way to do
this from 3.12 on.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trajfactory.executors.docker import DockerBackend, container_cpu_seconds  # noqa: E402
from trajfactory.executors.images import ensure_base_image  # noqa: E402
from trajfactory.executors.testrun import IMPORT_TIME, run_tests  # noqa: E402
from trajfactory.pipelines import swe  # noqa: E402
from trajfactory.schema import Quarantine  # noqa: E402
from trajfactory.settings import Recipe, RepoSpec, SandboxConfig  # noqa: E402

LIMITS = SandboxConfig(backend="docker", memory="2g", cpus=1, pids=256, command_timeout_s=1800)
RECORDER_DIR = "/tmp/trajfactory-bench-calls"
RECORDER = '''"""The bench's per-test call recorder (bench/coverage_cost.py): one cProfile per test phase."""
import cProfile, json, os
import pytest

ROOT = os.getcwd() + os.sep
STATE = {"prof": None, "ctx": "", "calls": {}}


def _switch(ctx):
    prof = STATE["prof"]
    if prof is not None:
        prof.disable()
        seen = STATE["calls"].setdefault(STATE["ctx"], set())
        for entry in prof.getstats():
            code = entry.code
            if not isinstance(code, str) and code.co_filename.startswith(ROOT):
                seen.add("%s:%d" % (code.co_filename[len(ROOT):], code.co_firstlineno))
    STATE["ctx"] = ctx
    if ctx is None:
        STATE["prof"] = None
        return
    STATE["prof"] = cProfile.Profile()
    STATE["prof"].enable()


def pytest_configure(config):
    _switch("")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _switch(item.nodeid + "|setup")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    _switch(item.nodeid + "|run")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item):
    _switch(item.nodeid + "|teardown")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    _switch(None)
    with open(os.environ["TRAJFACTORY_BENCH_CALLS"], "w") as fh:
        json.dump({k: sorted(v) for k, v in STATE["calls"].items()}, fh)
'''


class Recording:
    """The sandbox, with the call recorder loaded into its pytest runs (`PYTEST_PLUGINS`)."""

    def __init__(self, sandbox):
        self._sb = sandbox

    def __getattr__(self, name):
        return getattr(self._sb, name)

    def execute(self, command, timeout=None):
        if "-m pytest" in command:
            command = (f"export PYTEST_PLUGINS=trajfactory_bench_calls PYTHONPATH={RECORDER_DIR} "
                       f"TRAJFACTORY_BENCH_CALLS={RECORDER_DIR}/calls.json; " + command)
        return self._sb.execute(command, timeout)


def _cpu(sb) -> float:
    return sb.cpu_s + container_cpu_seconds(sb.container_id)


def _files_by_test(record: dict[str, set[str]]) -> dict[str, set[str]]:
    """node id -> the checkout files it ran code in (its setup, call and teardown together)."""
    out: dict[str, set[str]] = {}
    for context, files in record.items():
        test = context.rpartition("|")[0] if "|" in context else context
        out.setdefault(test, set()).update(files)
    return out


def measure(uri: str, work: Path, timeout: float) -> dict | None:
    recipe = Recipe(work_dir=str(work), repos=[RepoSpec(uri=uri)], sandbox=LIMITS)
    source = swe.harvest_one(recipe, uri)
    env = swe.build_environment(recipe, source) if not isinstance(source, Quarantine) else source
    if isinstance(env, Quarantine):
        print(f"{uri}: quarantined: {env.reason}: {env.detail}", file=sys.stderr)
        return None
    row: dict = {"repo": source.name}
    with DockerBackend().start(env, LIMITS) as sb:
        for name, kw in (("plain", {}), ("coverage", {"coverage": True})):
            sb.reset()
            c0 = _cpu(sb)
            run = run_tests(sb, None, timeout=timeout, **kw)
            row[name] = _cpu(sb) - c0
            row[f"{name}_tests"] = sum(o == "passed" for o in run.outcomes.values())
            if kw:
                by_file: dict[str, set[str]] = {}
                for file, lines in run.coverage.items():
                    for tests in lines.values():
                        for test in tests:
                            by_file.setdefault(test, set()).add(file)
                row["coverage_files"] = {t: fs for t, fs in by_file.items() if t != IMPORT_TIME}
        sb.reset()
        sb.execute(f"mkdir -p {RECORDER_DIR}", timeout=30)
        sb.write_file(f"{RECORDER_DIR}/trajfactory_bench_calls.py", RECORDER)
        c0 = _cpu(sb)
        run = run_tests(Recording(sb), None, timeout=timeout)
        row["calls"] = _cpu(sb) - c0
        row["calls_tests"] = sum(o == "passed" for o in run.outcomes.values())
        record = json.loads(sb.read_file(f"{RECORDER_DIR}/calls.json"))
        calls = _files_by_test({k: {f.rpartition(":")[0] for f in v} for k, v in record.items() if k})
    lines = row.pop("coverage_files")
    tests = sorted(set(lines) & set(calls))
    row["tests_compared"] = len(tests)
    row["same_files"] = sum(lines[t] == calls[t] for t in tests)
    row["only_lines"] = sum(bool(lines[t] - calls[t]) for t in tests)
    row["only_calls"] = sum(bool(calls[t] - lines[t]) for t in tests)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repos", nargs="+", default=["pypi:networkx==3.4.2", "pypi:isodate==0.7.2"])
    parser.add_argument("--timeout", type=float, default=1500.0, help="seconds one whole-suite run may take")
    parser.add_argument("--json", help="write the figures to this file too")
    args = parser.parse_args()
    ensure_base_image()
    work = Path(tempfile.mkdtemp(prefix="tf-bench-"))
    rows = []
    for uri in args.repos:
        row = measure(uri, work, args.timeout)
        if row is not None:
            rows.append(row)
            print(f"{row['repo']}: plain {row['plain']:.1f} s, coverage {row['coverage']:.1f} s, "
                  f"calls {row['calls']:.1f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print("| repo | passing | plain CPU s | line coverage CPU s | x plain | call record CPU s | x plain "
          "| tests compared | same files | files only lines saw | files only calls saw |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['repo']} | {r['plain_tests']} | {r['plain']:.1f} | {r['coverage']:.1f} | "
              f"{r['coverage'] / r['plain']:.2f}x | {r['calls']:.1f} | {r['calls'] / r['plain']:.2f}x | "
              f"{r['tests_compared']} | {r['same_files']} | {r['only_lines']} | {r['only_calls']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
