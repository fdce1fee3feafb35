"""Validation throughput: SWE-smith's way (a fresh container + the whole suite per candidate) against warm
containers, and where each candidate's CPU goes.

For each repository the same procedural candidates are validated in these modes:

- a fresh+full (SWE-smith): a new container per candidate, `validate_candidate(selection="full")`, with SWE-smith's
  fixed limit per candidate (`--swe-smith-timeout`, 90 s as its repository profiles default to);
- b warm+full: one warm container (reset with git between candidates), the whole suite, the fixed limit
  (`test_timeout_s`): the audit's ground truth;
- c warm+coverage: the same, only the coverage-selected tests (`validate_candidate`, the one-candidate path);
- d batch+coverage (the factory's default): one warm container, the same selection, candidates in batches of
  `--batch-size` to one warm test worker per batch (`validate_batch`, `executors/batchrun.py`);
- e batch+full (with `--modes ... e`): the batch worker running the whole suite (the worker's gain alone);
- f batch+coverage, fresh children (with `--modes ... f`): mode d without the worker's collected session
  (`batch_worker_hot.py`), each candidate in a pytest session of its own, as before the session was built.

What is counted as CPU: the bench's own containers (each container's cgroup `cpuacct.usage`, read by
`DockerSandbox` just before the container is removed) plus this process and its children. Not counted: other
containers on the machine, and the Docker engine's own work (dockerd, containerd, runc, the shims) for container
starts, execs and file copies. Leaving the engine out flatters (a) most, which starts and removes a container per
candidate, and (b)/(c), which make 5-8 engine calls per candidate, against (d)'s five per batch.

Where the CPU goes, per candidate (each `execute` of the one-candidate modes is measured by the container's
cgroup before and after it; inside pytest a probe plugin, loaded through `PYTEST_PLUGINS` for the bench only,
reads its process's CPU at configure / collection finish / session finish and sums pytest's per-test durations;
the batch worker measures the same marks itself):

- start/stop: the container's CPU outside any command (its init and keeper, the start's own exec);
- exec: the commands' shells, `timeout`, mkdir/rm, the batch worker's per-item bookkeeping and its exec;
- reset: the kill loop + git checkout/reset/clean (one-candidate modes; once per batch in the batch modes);
- apply: `git apply`;
- start: the interpreter and pytest until `pytest_configure` (the batch worker: fork to configure);
- collect: collection (importing test modules and the code under test);
- tests: the tests' own time, pytest's durations (setup + call + teardown) of the tests that ran;
- pytest: the rest of the pytest process (reporting, hooks between tests, exit);
- restore: the batch worker's `git checkout -f` + `git clean -fdqx`;
- host: this process (the Docker client, the factory's own bookkeeping).

The floor is the coverage-selected tests' own time (their durations in mode d): what a candidate costs if nothing
but its tests ran. The reference runs (the whole suite with coverage of the files validation reads, then its passing
tests by id) are measured once per repository and shown apart: SWE-smith's way needs one plain run. `--gold K`
adds the gold proofs of mode d's tasks (`gold_cost.py`), which SWE-smith's way does not make.

Every mode's results are compared with mode b's (the whole suite, for every candidate): the audit. Mode c and d
must agree exactly (the batch path is the one-candidate path, batched).

    python bench/validate_throughput.py --repos pypi:inflection==0.5.1 pypi:isodate==0.7.2 --candidates 30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from trajfactory.executors.batchrun import WORKER
from trajfactory.executors.docker import DockerBackend, container_cpu_seconds
from trajfactory.executors.images import ensure_base_image
from trajfactory.executors.testrun import IMPORT_TIME, IMPORTED_BY
from trajfactory.pipelines import swe
from trajfactory.schema import Quarantine
from trajfactory.settings import Recipe, RepoSpec, SandboxConfig, SynthesisConfig, ValidationConfig
from trajfactory.synthesizers.swe.selection_lines import probe_plan
from trajfactory.synthesizers.swe.stage import coverage_files
from trajfactory.synthesizers.swe.reference import RepoRejected, reference_run
from trajfactory.synthesizers.swe.validate import (TIMEOUT_FACTOR, select_tests, validate_batch_detailed,
                                                   validate_candidate)

from gold_cost import gold_proofs, print_gold  # noqa: E402  (bench/)
from validate_report import PHASES, host_cpu, print_tables  # noqa: E402  (bench/)

LIMITS = SandboxConfig(backend="docker", memory="1g", cpus=1, pids=256, command_timeout_s=600)
PROBE_DIR = "/tmp/trajfactory-bench-probe"
PROBE = '''
import atexit, json, os, time
_t0 = time.process_time()
_marks = {"loaded": _t0}
_sum = {"durations": 0.0, "tests": 0}

def pytest_configure(config):
    _marks["configured"] = time.process_time()

def pytest_collection_finish(session):
    _marks["collected"] = time.process_time()

def pytest_runtest_logreport(report):
    _sum["durations"] += getattr(report, "duration", 0.0) or 0.0
    _sum["tests"] += report.when == "call"

def pytest_sessionfinish(session):
    _marks["finished"] = time.process_time()

@atexit.register
def _write():
    _marks["exit"] = time.process_time()
    with open(os.environ["TRAJFACTORY_BENCH_PROBE"], "w") as fh:
        json.dump({"marks": _marks, **_sum}, fh)
'''


@dataclass
class Account:
    """CPU seconds by phase, for one mode of one repository."""

    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    containers: float = 0.0
    host: float = 0.0
    excluded_host: float = 0.0
    """The bench's own probe reads: subtracted from the host's CPU."""

    batch: float = 0.0
    """Container CPU of batch-worker executes not yet split into the worker's own phases."""

    def add(self, phase: str, seconds: float) -> None:
        if phase == "batch":
            self.batch += seconds
        else:
            self.phases[phase] += seconds


class Probed:
    """A DockerSandbox seen through the bench: each call's container CPU goes to its phase; pytest runs get a probe."""

    def __init__(self, sandbox, account: Account):
        self._sb, self._acct = sandbox, account
        self.workdir = sandbox.workdir
        self._measured = 0.0
        self.probes: list[dict] = []

    def __getattr__(self, name):
        return getattr(self._sb, name)

    def _cpu(self) -> float:
        """CPU seconds of the sandbox's containers so far: the removed ones (replaced after a timeout), the live one."""
        live = container_cpu_seconds(self._sb.container_id) if self._sb.container is not None else 0.0
        return self._sb.cpu_s + live

    def _measure(self, phase: str, fn, *args, **kw):
        c0 = self._cpu()
        try:
            return fn(*args, **kw)
        finally:
            used = max(0.0, self._cpu() - c0)
            self._measured += used
            self._acct.add(phase, used)

    def reset(self):
        self._measure("reset", self._sb.reset)

    def write_file(self, path, content):
        self._measure("exec", self._sb.write_file, path, content)

    def read_file(self, path, **kw):
        return self._measure("exec", self._sb.read_file, path, **kw)

    def execute(self, command, timeout=None):
        if WORKER in command:
            return self._measure("batch", self._sb.execute, command, timeout)
        if "-m pytest" in command:
            return self._pytest(command, timeout)
        return self._measure("apply" if "git apply" in command else "exec", self._sb.execute, command, timeout)

    def _pytest(self, command, timeout):
        # every time: a reset empties the sandbox's /tmp
        h0 = host_cpu()
        self._sb.write_file(f"{PROBE_DIR}/trajfactory_bench_probe.py", PROBE)
        self._acct.excluded_host += host_cpu() - h0
        prefix = (f"export PYTEST_PLUGINS=trajfactory_bench_probe PYTHONPATH={PROBE_DIR} "
                  f"TRAJFACTORY_BENCH_PROBE={PROBE_DIR}/probe.json; rm -f {PROBE_DIR}/probe.json; ")
        c0 = self._cpu()
        result = self._sb.execute(prefix + command, timeout)
        used = max(0.0, self._cpu() - c0)
        self._measured += used
        h0 = host_cpu()
        try:
            probe = json.loads(self._sb.read_file(f"{PROBE_DIR}/probe.json"))
        except (OSError, ValueError):
            probe = None
        self._acct.excluded_host += host_cpu() - h0
        if probe is None:
            self._acct.add("pytest", used)
            return result
        m = probe["marks"]
        exit_ = m.get("exit", m.get("finished", 0.0))
        collected = m.get("collected", m.get("configured", 0.0))
        tests = min(probe["durations"], max(0.0, m.get("finished", exit_) - collected))
        self._acct.add("start", m.get("configured", 0.0))
        self._acct.add("collect", max(0.0, collected - m.get("configured", 0.0)))
        self._acct.add("tests", tests)
        # the rest of the container's CPU of this command: pytest's own bookkeeping, its exit, the shell
        self._acct.add("pytest", max(0.0, exit_ - m.get("configured", 0.0) - (collected - m.get("configured", 0.0))
                                     - tests))
        self._acct.add("exec", max(0.0, used - exit_))
        self.probes.append(probe)
        return result

    def close(self):
        self._sb.close()
        self._acct.containers += self._sb.cpu_s
        self._acct.add("start/stop", max(0.0, self._sb.cpu_s - self._measured))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_mode(mode: str, backend, env, candidates, ref, batch_size: int, timeout: float, smith_timeout: float):
    acct = Account()
    h0 = host_cpu()
    w0 = time.monotonic()
    floors: dict[str, float] = {}
    per: dict[str, float] = {}
    """Candidate id -> its own CPU seconds (container + this process; the batch modes: its item plus an even share
    of its batch's overhead)."""
    vals = []
    if mode == "a":
        for c in candidates:
            h = host_cpu()
            with Probed(backend.start(env, LIMITS), acct) as sb:
                vals.append(validate_candidate(sb, c, ref, selection="full", timeout=smith_timeout, timeout_factor=0))
            per[c.candidate_id] = sb._sb.cpu_s + host_cpu() - h
    elif mode in ("b", "c"):
        with Probed(backend.start(env, LIMITS), acct) as sb:
            sel = "full" if mode == "b" else "coverage"
            for c in candidates:
                h, c0 = host_cpu(), sb._cpu()
                # b, the audit's ground truth, keeps the fixed limit; c scales it as d does
                vals.append(validate_candidate(sb, c, ref, selection=sel, timeout=timeout,
                                               timeout_factor=0 if mode == "b" else TIMEOUT_FACTOR))
                per[c.candidate_id] = sb._cpu() - c0 + host_cpu() - h
    else:
        sel = "full" if mode == "e" else "coverage"
        with Probed(backend.start(env, LIMITS), acct) as sb:
            for i in range(0, len(candidates), batch_size):
                h, c0 = host_cpu(), sb._cpu()
                batch = candidates[i:i + batch_size]
                out = validate_batch_detailed(sb, batch, ref, selection=sel, timeout=timeout, hot=mode != "f")
                vals += out.validations
                batch_cpu = sb._cpu() - c0 + host_cpu() - h
                own = {k: sum(it.stats.get(x, 0.0) for x in ("apply", "child", "restore", "worker"))
                       for k, it in out.items.items()}
                share = (batch_cpu - sum(own.values())) / len(batch)
                per.update({c.candidate_id: own.get(c.candidate_id, 0.0) + share for c in batch})
                # the worker's execute, split by the worker's own accounting: its start (interpreter, pytest,
                # preloads), its items, and the rest (the exec's shell, the worker's exit)
                worker_cpu, acct.batch = acct.batch, 0.0
                acct.add("start", out.info.startup_cpu)
                acct.add("collect", out.info.hot_cpu)  # the collected session's start, collection and finish
                items_cpu = out.info.startup_cpu + out.info.hot_cpu
                for key, item in out.items.items():
                    s = item.stats
                    child = s.get("child", 0.0)
                    conf, coll, fin = s.get("configured", 0.0), s.get("collected", 0.0), s.get("finished", 0.0)
                    tests = min(s.get("durations", 0.0), max(0.0, fin - coll))
                    acct.add("apply", s.get("apply", 0.0))
                    acct.add("start", conf)
                    acct.add("collect", max(0.0, coll - conf))
                    acct.add("tests", tests)
                    acct.add("pytest", max(0.0, child - coll - tests) if child else 0.0)
                    acct.add("restore", s.get("restore", 0.0))
                    acct.add("exec", s.get("worker", 0.0))
                    items_cpu += s.get("apply", 0.0) + child + s.get("restore", 0.0) + s.get("worker", 0.0)
                    floors[key] = s.get("durations", 0.0)
                acct.add("exec", max(0.0, worker_cpu - items_cpu))
    acct.host = host_cpu() - h0 - acct.excluded_host
    acct.add("host", acct.host)
    return vals, acct, time.monotonic() - w0, floors, per


def narrowed_by_imports(candidates, ref) -> dict[str, int]:
    """Candidate id -> how many tests it selects, for the candidates whose selection would be the whole suite if a
    test module's import counted as any import (`IMPORTED_BY` read as `IMPORT_TIME`, as before validation's version
    7)."""
    def old(tests):
        return sorted({IMPORT_TIME if t.startswith(IMPORTED_BY) else t for t in tests})
    before = ref.model_copy(update={"coverage": {f: {n: old(ts) for n, ts in lines.items()}
                                                 for f, lines in ref.coverage.items()}})
    narrowed = {}
    for c in candidates:
        tests, how = select_tests(c, ref, "coverage")
        if how == "coverage" and select_tests(c, before, "coverage")[1] == "full":
            narrowed[c.candidate_id] = len(tests)
    return narrowed


def reference(backend, env, cfg: ValidationConfig, cover: list[str] | None, probe: dict[str, list[int]] | None):
    """The factory's reference run (line probes of the lines `probe` names, or coverage of the files `cover` names,
    + a run by id), with each run's CPU."""
    acct = Account()
    with Probed(backend.start(env, LIMITS), acct) as sb:
        runs = []
        orig = sb._pytest

        def spy(command, timeout):
            c0 = sb._cpu()
            result = orig(command, timeout)
            runs.append(sb._cpu() - c0)
            return result

        sb._pytest = spy
        ref = reference_run(sb, runs=cfg.reference_runs, timeout=cfg.suite_timeout_s, cover=cover, probe=probe)
    return ref.model_copy(update={"image": env.name}), runs, acct.containers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repos", nargs="+", default=["pypi:inflection==0.5.1", "pypi:isodate==0.7.2"])
    parser.add_argument("--candidates", type=int, default=30, help="candidates per repository")
    parser.add_argument("--max-candidates", nargs="*", default=[], metavar="NAME=N",
                        help="fewer candidates for a repository whose whole suite is slow, e.g. networkx=8")
    parser.add_argument("--modes", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d", "e", "f"])
    parser.add_argument("--families", nargs="*", default=[], metavar="FAMILY",
                        help="validate only the candidates of these families (e.g. remove_methods shuffle_methods)")
    parser.add_argument("--synthesize", nargs="*", default=[], metavar="FAMILY",
                        help="synthesize only these families, `--candidates` of them (`--families` filters the "
                             "candidates of all families instead: the same ones as a run without it)")
    parser.add_argument("--batch-size", type=int, default=ValidationConfig().batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--suite-timeout", type=float, default=ValidationConfig().suite_timeout_s,
                        help="seconds a whole-suite run may take (a large suite on a loaded machine needs more)")
    parser.add_argument("--swe-smith-timeout", type=float, default=90.0,
                        help="mode a's fixed limit per candidate: SWE-smith's repository profiles default to 90 s")
    parser.add_argument("--gold", type=int, metavar="K", help="also prove mode d's tasks' gold patches as the "
                        "pipeline does (batches in one warm test worker), the first K also one by one (a pytest "
                        "start per task)")
    parser.add_argument("--gold-unshared", action="store_true",
                        help="with --gold: also prove them in batches whose proofs each run all their own tests (the "
                        "way before the proofs shared their runs), and compare")
    parser.add_argument("--recorder", choices=["probe", "coverage"], default="probe",
                        help="how the reference run records which test ran which line: line probes of only the lines "
                        "the selections read (the pipeline's default), or coverage of the candidates' files")
    parser.add_argument("--cover-all", action="store_true",
                        help="with --recorder coverage: measure the reference run's coverage of every file")
    parser.add_argument("--json", help="write every figure to this file too")
    parser.add_argument("--b-narrowed", action="store_true",
                        help="run mode b (the audit's whole suite) only on the candidates whose selection a test "
                             "module's import narrowed (`testrun.IMPORTED_BY`; without it they run the whole suite): "
                             "that narrowing's audit where the suite is too large for mode b on every candidate")
    args = parser.parse_args()
    caps = {k: int(v) for k, v in (x.split("=", 1) for x in args.max_candidates)}

    ensure_base_image()
    backend = DockerBackend()
    work = Path(tempfile.mkdtemp(prefix="tf-bench-"))
    cfg = ValidationConfig(suite_timeout_s=args.suite_timeout)
    names = {"a": "a fresh+full (SWE-smith)", "b": "b warm+full", "c": "c warm+coverage",
             "d": f"d batch+coverage (x{args.batch_size})", "e": f"e batch+full (x{args.batch_size})",
             "f": f"f batch+coverage, fresh children (x{args.batch_size})"}
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "batch_size": args.batch_size, "repos": {},
                    "load_before": Path("/proc/loadavg").read_text().split()[:3]}
    for uri in args.repos:
        recipe = Recipe(work_dir=str(work), repos=[RepoSpec(uri=uri)], sandbox=LIMITS,
                        synthesis=SynthesisConfig(max_candidates_per_repo=args.candidates, seed=args.seed,
                                                  families=args.synthesize or "all"))
        source = swe.harvest_one(recipe, uri)
        env = swe.build_environment(recipe, source) if not isinstance(source, Quarantine) else source
        if isinstance(env, Quarantine):
            print(f"{uri}: quarantined: {env.reason}: {env.detail}", file=sys.stderr)
            continue
        candidates, _ = swe.procedural_candidates(recipe, source)
        candidates = [c for c in candidates if not args.families or c.family in args.families]
        candidates = candidates[:caps.get(source.name, len(candidates))]
        # line probes of the lines validation reads, as the pipeline records them (`--recorder coverage`: coverage of
        # the files validation reads; `--cover-all`: of every file)
        probe = probe_plan(candidates) if args.recorder == "probe" else None
        cover = None if probe is not None or args.cover_all else coverage_files(candidates)
        try:
            ref, ref_runs, ref_cpu = reference(backend, env, cfg, cover, probe)
        except RepoRejected as exc:  # the pipeline quarantines the repository; the bench goes on to the next
            print(f"{uri}: quarantined: {exc.reason}: {exc.detail}", file=sys.stderr)
            continue
        print(f"{source.name}: {len(ref.tests)} tests, {len(ref.passing)} passing; reference runs CPU "
              f"{', '.join(f'{r:.1f}s' for r in ref_runs)} (first with {args.recorder})", file=sys.stderr)
        rep = report["repos"][source.name] = {"uri": uri, "tests": len(ref.tests), "passing": len(ref.passing),
                                              "candidates": len(candidates), "recorder": args.recorder,
                                              "reference_runs_cpu": ref_runs,
                                              "reference_cpu": ref_cpu, "modes": {},
                                              "families": {c.candidate_id: c.family for c in candidates}}
        narrowed = narrowed_by_imports(candidates, ref)
        rep["narrowed"] = narrowed
        print(f"{source.name}: a test module's import narrowed {len(narrowed)} selections from the whole suite to "
              f"{sorted(n for n in narrowed.values())} tests", file=sys.stderr)
        results, floors = {}, {}
        for mode in args.modes:
            chosen = [c for c in candidates if c.candidate_id in narrowed] if mode == "b" and args.b_narrowed \
                else candidates
            vals, acct, wall, fl, per = run_mode(mode, backend, env, chosen, ref, args.batch_size,
                                                 cfg.test_timeout_s, args.swe_smith_timeout)
            floors.update(fl if mode == "d" else {})
            results[mode] = vals
            cpu = acct.containers + acct.host
            valid = sum(v.status == "valid" for v in vals)
            rep["modes"][mode] = {"name": names[mode], "valid": valid, "cpu": cpu, "wall": wall,
                                  "containers": acct.containers, "host": acct.host, "phases": acct.phases,
                                  "statuses": {v.candidate_id: v.status for v in vals}, "per": per,
                                  "selection": {v.candidate_id: v.selection if v.tests_run else "none" for v in vals}}
            print(f"{source.name} {names[mode]}: {valid}/{len(candidates)} valid, cpu {cpu:.1f}s "
                  f"(containers {acct.containers:.1f}s + host {acct.host:.1f}s), wall {wall:.1f}s", file=sys.stderr)
        if args.gold is not None and "d" in results:
            rep["gold"] = gold_proofs(backend, env, source, candidates, results["d"], LIMITS, whole=args.gold,
                                      timeout=cfg.suite_timeout_s, unshared=args.gold_unshared)
        rep["floor"] = sum(floors.values())
        rep["floors"] = floors
        # the audit: every candidate's result against the whole suite's (mode b)
        audits = {}
        if "b" in results or "a" in results:
            full = {v.candidate_id: v for v in results["b" if "b" in results else "a"]}
            for mode, vals in results.items():
                verdict = f2p = p2p = 0
                bad = []
                for v in vals:
                    if v.candidate_id not in full:  # (`--b-narrowed`: mode b ran only the narrowed ones)
                        continue
                    w = full[v.candidate_id]
                    if (v.status == "valid") != (w.status == "valid"):
                        verdict += 1
                        bad.append((v.candidate_id, v.status, w.status))
                    elif v.status == "valid" and v.FAIL_TO_PASS != w.FAIL_TO_PASS:
                        f2p += 1
                        bad.append((v.candidate_id, "F2P", sorted(set(w.FAIL_TO_PASS) ^ set(v.FAIL_TO_PASS))[:5]))
                    elif v.status == "valid" and v.PASS_TO_PASS != w.PASS_TO_PASS:
                        p2p += 1
                audits[mode] = {"verdict": verdict, "f2p": f2p, "p2p": p2p, "examples": bad[:5]}
        if "c" in results and "d" in results:
            key = lambda v: (v.status, v.FAIL_TO_PASS, v.PASS_TO_PASS, v.selection, v.tests_run)  # noqa: E731
            rep["c_vs_d_differences"] = sum(key(x) != key(y) for x, y in zip(results["c"], results["d"]))
        rep["audit"] = audits
    report["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    print_tables(report)
    print_gold(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
