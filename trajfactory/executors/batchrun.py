"""Testing many patches in one warm sandbox with one process start: the batch path beside `testrun.run_tests`.

`run_batch(sandbox, items)` resets the sandbox once, copies the warm worker (`batch_worker.py` and its three helper
modules) and one input file in, runs the worker with one `execute`, and reads one output file back. The worker
applies each item's patch, forks a child that runs `pytest.main` with the factory's plugin (`pytest_harness.py`,
the same arguments and environment as `run_tests`) on the item's tests, waits for it up to the item's timeout,
kills what it left running and restores the checkout. A "hot" item (`BatchItem.hot`) skips the child's pytest
start and collection in the worker's collected session (`batch_worker_hot.py`); one the session refuses comes back
and runs the plain way. Each item's result is a `TestRun`, read by the same `parse_results` as a single run, so a
caller judges both the same way.

A crash or kill of one item is that item's result: the child gets the kill (its own process group, and
`oom_score_adj` 1000 for the OOM killer). Should the worker itself die, the item it was running becomes a cut-short
run (`finished=False`) and the items after it go to a new worker after a reset.

Per-batch cost: one reset, five file copies in, one `execute`, one file copy out; per item: `git apply`, a fork,
the child's pytest session, `git checkout -f` + `git clean -fdqx`. The worker imports pytest once, and the
third-party modules that earlier children of the same environment imported (`PRELOAD`): never a module of the
checkout, never one pytest rewrites. It also compiles once what those children compiled (`PRECOMPILE`: the
checkout's files and the files pytest rewrote, taken by a child only where the source is byte-identical;
`REGEXES`: their regular expressions), and a child reports only what it added to what its worker held.
"""

from __future__ import annotations

import json
import shlex
import threading
from dataclasses import dataclass, field
from pathlib import Path

from trajfactory.executors.base import Sandbox, apply_patch
from trajfactory.executors.guard import paths_of
from trajfactory.executors.testrun import (HARNESS_DIR, HARNESS_FILES, PYTEST, SCRATCH, TestRun, cpu_note,
                                          cpu_seconds, parse_results, run_tests)

BATCH_DIR = "/tmp/trajfactory-batch"
"""Where the worker, its input, the children's records and outputs live in the sandbox (outside the checkout)."""
WORKER = "trajfactory_batch_worker.py"
WORKER_FILES = {f"trajfactory_{name}": Path(__file__).with_name(name).read_text()
                for name in ("batch_worker.py", "batch_worker_procs.py", "batch_worker_warm.py",
                             "batch_worker_hot.py")}
"""The worker's modules as named in the sandbox (each imports the others by these names) -> their source."""
STARTUP_S = 60.0
"""Allowance of one worker for its start, the preloads and the restores, beyond its items' own timeouts."""

PRELOAD: dict[str, list[str]] = {}
"""Environment (image or commit) -> the third-party modules its children imported; [] once a preload was refused."""
PRECOMPILE: dict[str, tuple[list[str], list[str]]] = {}
"""Environment -> the checkout's files its children imported plainly, and the files pytest's rewriting imported (test
modules, conftests, pytest plugins): a worker compiles them once from the clean checkout, and a child takes the code
where its source is byte-identical."""
REGEXES: dict[str, list[tuple[str, int]]] = {}
"""Environment -> the regular expressions its children compiled: a worker compiles them once before its forks."""
REGEX_LIMIT = 512
"""At most this many per environment (`re` caches 512 patterns; a project that builds patterns from data makes new
ones every run, and a pattern left out only costs its child the compile)."""
_preload_lock = threading.Lock()
FRESH: set[str] = set()
"""Environments whose project pytest itself imports (pluggy, packaging): a worker forked after pytest's import would
test the code it imported, never an item's patch, so their items run afresh (`_run_fresh`), as `run_tests` runs."""


@dataclass
class BatchItem:
    key: str
    patch: str
    """A unified diff applied to the clean checkout before the tests ('' for none)."""
    tests: list[str] | None
    """pytest node ids to run; None: the whole suite; []: none (the worker only applies and checks the patches)."""
    timeout: float
    hot: bool = False
    """The patch changes only function bodies no test ran at import or collection time: the worker may test it in
    its collected session (`batch_worker_hot.py`), which runs it the plain way where the swap could differ."""
    cpu_limit: float | None = None
    """CPU seconds the item's pytest child may use beside `timeout` (`testrun.run_tests`'s `cpu_limit`); None: none."""
    ceiling: float | None = None
    """Where above `timeout`: seconds the wall clock may reach in all when the item's tests were kept waiting for a
    CPU (the time they waited is not counted against `timeout`: `batch_worker_procs.wait_child`)."""
    then: str = ""
    """A second diff applied after `patch` that must bring the checkout back exactly to its commit (a task's gold patch
    after its bug patch); the item fails as a patch that does not apply where it does not."""


@dataclass
class ItemResult:
    key: str
    run: TestRun | None
    """The test run; None when the patch did not apply."""
    patch_error: str | None = None
    stats: dict = field(default_factory=dict)
    """Where the item's CPU went (seconds): `apply`, `child` (the pytest session), `restore`, `worker`, and the
    child's own `configured` / `collected` / `finished` marks and `durations` (the tests' own time)."""


@dataclass
class BatchInfo:
    workers: int = 0
    """Worker processes started (more than one when a worker died or left the sandbox dirty)."""
    startup_cpu: float = 0.0
    """CPU seconds of the workers before their first item (interpreter, pytest, preloads)."""
    preloaded: bool = False
    hot_cpu: float = 0.0
    """CPU seconds of the workers' collected sessions outside their items (start, collection, the function index)."""
    hot_items: int = 0
    hot_refused: int = 0
    notes: list[str] = field(default_factory=list)


PYTEST_PREFIX = "python -m pytest "


def _pytest_args(workdir: str) -> str:
    """`run_tests`'s pytest arguments (after `python -m pytest`) as shell words, rooted at the checkout: the sandbox's
    shell expands them exactly as it does for `run_tests`. One more: `--tb=no`, since a batch keeps only the outcomes
    and pytest's closing line (formatting the tracebacks of a bug's failures cost ~2.5 ms a failure, reporting only)."""
    if not PYTEST.startswith(PYTEST_PREFIX):
        raise RuntimeError(f"testrun.PYTEST no longer starts with {PYTEST_PREFIX!r}: {PYTEST!r}")
    return f"{PYTEST[len(PYTEST_PREFIX):]} --tb=no --rootdir={shlex.quote(workdir)}"


def _env_key(sandbox: Sandbox) -> str:
    return str(getattr(sandbox, "image", "") or getattr(sandbox, "commit", "") or sandbox.workdir)


def _item_spec(item: BatchItem, index: int, hot: bool) -> dict:
    env = {"TRAJFACTORY_RESULTS": f"{BATCH_DIR}/results-{index}.jsonl"}
    args: list[str] = []
    if item.tests is not None:
        env["TRAJFACTORY_SELECT"] = f"{BATCH_DIR}/tests-{index}.txt"
        args = sorted({t.split("::", 1)[0] for t in item.tests})
    return {"key": item.key, "patch": item.patch, "then": item.then, "tests": item.tests, "args": args, "env": env,
            "timeout": item.timeout, "cpu_limit": cpu_seconds(item.cpu_limit) if item.cpu_limit else None,
            "ceiling": item.ceiling,
            "hot": hot and item.hot and item.tests is not None}


def _records(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill
    return out


def _timeout_note(record: dict) -> str:
    if record.get("cpu_out"):
        return cpu_note(record["cpu_limit"])
    if "timeout" not in record:
        return ""
    waited = record.get("waited") or 0.0
    besides = f", not counting {waited:.1f}s of waiting for a CPU" if waited >= 0.1 else ""
    return f"\n[command timed out: killed after {record['timeout']:g}s{besides}]"


def _result(record: dict) -> ItemResult:
    key = record["key"]
    stats = {k: record.get(f"{k}_cpu", 0.0) for k in ("apply", "child", "restore", "worker")}
    if record["status"] == "patch_failed":
        return ItemResult(key, None, patch_error=record.get("detail", "git apply failed"), stats=stats)
    probe = record.get("probe") or {}
    stats.update({k: v for k, v in (probe.get("marks") or {}).items()},
                 durations=probe.get("durations", 0.0), tests=probe.get("tests", 0))
    outcomes, errors, finished = parse_results(record.get("records", ""))
    timed_out = record["status"] == "timeout"
    run = TestRun(outcomes={} if timed_out else outcomes, exit_code=record.get("exit_code", -1),
                  output=record.get("output", "") + _timeout_note(record) if timed_out else record.get("output", ""),
                  duration_s=record.get("duration_s", 0.0), timed_out=timed_out, cpu_out=bool(record.get("cpu_out")),
                  collect_errors=errors,
                  finished=finished and not timed_out)
    return ItemResult(key, run, stats=stats)


def run_batch(sandbox: Sandbox, items: list[BatchItem], *, preload: bool = True) -> tuple[list[ItemResult], BatchInfo]:
    """Test every item's patch on the clean checkout, in one worker where nothing goes wrong; results in item order."""
    if len({item.key for item in items}) != len(items):
        raise ValueError("batch items need distinct keys")
    info = BatchInfo()
    done: dict[str, ItemResult] = {}
    key = _env_key(sandbox)
    pending = list(items)
    unswappable: set[str] = set()  # items a collected session refused: they run the plain way
    env = (f"COVERAGE_FILE={SCRATCH}/.coverage PYTHONDONTWRITEBYTECODE=1 PY_COLORS=0 "
           f'PYTHONPATH="{HARNESS_DIR}${{PYTHONPATH:+:$PYTHONPATH}}"')
    if key in FRESH:
        return [_run_fresh(sandbox, item) for item in items], info
    while pending:
        info.workers += 1
        sandbox.reset()
        with _preload_lock:
            modules = PRELOAD.get(key, []) if preload else []
            plain, rewritten = PRECOMPILE.get(key, ([], [])) if preload else ([], [])
            regexes = REGEXES.get(key, []) if preload else []
        spec = {"workdir": sandbox.workdir, "scratch": BATCH_DIR, "private_dirs": [BATCH_DIR, HARNESS_DIR, SCRATCH],
                "preload": modules, "plain": plain, "rewritten": rewritten, "regexes": regexes,
                "items": [_item_spec(item, i, item.key not in unswappable) for i, item in enumerate(pending)]}
        for name, text in HARNESS_FILES.items():
            sandbox.write_file(f"{HARNESS_DIR}/{name}", text)
        for name, source in WORKER_FILES.items():
            sandbox.write_file(f"{BATCH_DIR}/{name}", source)
        sandbox.write_file(f"{BATCH_DIR}/spec.json", json.dumps(spec))
        limit = STARTUP_S + sum(max(item.timeout, item.ceiling or 0.0) + 5 for item in pending)
        res = sandbox.execute(
            f"cd {BATCH_DIR} && rm -f out.jsonl results-*.jsonl tests-*.txt output-*.txt probe-*.json && "
            f"mkdir -p {SCRATCH} && cd {sandbox.workdir} && {env} python {BATCH_DIR}/{WORKER} "
            f"{BATCH_DIR}/spec.json {BATCH_DIR}/out.jsonl -- {_pytest_args(sandbox.workdir)}", timeout=limit)
        try:
            records = _records(sandbox.read_file(f"{BATCH_DIR}/out.jsonl").decode("utf-8", "replace"))
        except (FileNotFoundError, OSError):
            records = []
        started = None
        finished_cleanly = False
        saw_session = False
        for record in records:
            if "ready" in record:
                info.startup_cpu += record["ready"]
                info.preloaded = info.preloaded or record.get("preloaded", False)
                if record.get("preload_rejected"):
                    with _preload_lock:
                        PRELOAD[key] = []
                    info.notes.append("preload refused: a preloaded module loaded code of the checkout or a thread")
            elif "pytest_imports_checkout" in record:
                with _preload_lock:
                    FRESH.add(key)
                held = ", ".join(record["pytest_imports_checkout"])[:200]
                info.notes.append(f"pytest imports the project itself ({held}): each item runs afresh")
            elif "start" in record:
                started = record["start"]
            elif "hot_session" in record:
                saw_session = True
                info.hot_cpu += record["hot_session"]["cpu"]
                info.hot_items += record["hot_session"]["items"]
                info.hot_refused += record["hot_session"]["refused"]
            elif "key" in record and record.get("status") == "swap_refused":
                unswappable.add(record["key"])
                info.notes.append(f"{record['key']}: not in the collected session: {record.get('detail', '')[:200]}")
                started = None
            elif "key" in record:
                done[record["key"]] = _result(record)
                started = None
            elif "done" in record:
                finished_cleanly = record["done"]
                if record.get("dirty"):
                    info.notes.append(f"worker stopped on a dirty sandbox: {record.get('reason', '')[:300]}")
                    if hasattr(sandbox, "dirty"):
                        sandbox.dirty = True  # the next reset starts the sandbox afresh
                if finished_cleanly and preload and record.get("modules") is not None:
                    with _preload_lock:
                        if PRELOAD.get(key) != []:
                            PRELOAD[key] = sorted(set(PRELOAD.get(key, [])) | set(record["modules"]))
                        old_plain, old_rewritten = PRECOMPILE.get(key, ([], []))
                        PRECOMPILE[key] = (sorted(set(old_plain) | set(record.get("plain", []))),
                                           sorted(set(old_rewritten) | set(record.get("rewritten", []))))
                        known = REGEXES.get(key, [])
                        fresh = sorted({tuple(r) for r in record.get("regexes", [])} - set(known))
                        REGEXES[key] = (known + fresh)[:REGEX_LIMIT]
        if key in FRESH:  # the worker ran nothing
            done.update((item.key, _run_fresh(sandbox, item)) for item in pending)
            break
        hot_left = {item.key for item in pending if item.hot and item.key not in done and item.key not in unswappable}
        if not finished_cleanly and not saw_session and hot_left:
            # the worker ended in or before its collected session: its hot items go the plain way, in a new worker
            unswappable |= hot_left
            info.notes.append(f"the collected session ended early ({len(hot_left)} items run the plain way): "
                              + res.output.strip()[-300:])
            if hasattr(sandbox, "dirty"):
                sandbox.dirty = True
            pending = [item for item in pending if item.key not in done]
            continue
        if started is not None:  # the worker died (or the sandbox killed it) while this item ran
            timed_out = res.timed_out
            done[started] = ItemResult(started, TestRun(
                outcomes={}, exit_code=res.exit_code, output=res.output, duration_s=res.duration_s,
                timed_out=timed_out, finished=False))
            info.notes.append(f"worker ended during {started} (exit {res.exit_code})")
            if hasattr(sandbox, "dirty"):
                sandbox.dirty = True
        elif not finished_cleanly and not any(r for r in records if "key" in r):
            # the worker never got to an item: nothing will change by trying again
            detail = res.output.strip()[-2000:] or f"the batch worker exited {res.exit_code}"
            for item in pending:
                done[item.key] = ItemResult(item.key, TestRun(outcomes={}, exit_code=res.exit_code, output=detail,
                                                              duration_s=0.0, timed_out=res.timed_out, finished=False))
            info.notes.append("the batch worker did not start: " + detail[-300:])
        pending = [item for item in pending if item.key not in done]
    return [done[item.key] for item in items], info


def _run_fresh(sandbox: Sandbox, item: BatchItem) -> ItemResult:
    """One item the way `run_tests` runs a test: the checkout reset, the item's patches applied (its second one must
    leave the checkout exactly at its commit, as the worker requires), and a fresh `python -m pytest`."""
    sandbox.reset()
    if (err := apply_patch(sandbox, item.patch, "/tmp/trajfactory-item.diff")) is not None:
        first = "the first patch does not apply: " if item.then else ""
        return ItemResult(item.key, None, patch_error=first + err)
    if item.then:
        if (err := apply_patch(sandbox, item.then, "/tmp/trajfactory-then.diff")) is not None:
            return ItemResult(item.key, None, patch_error=f"the second patch does not apply: {err}")
        paths = " ".join(shlex.quote(f":(literal){p}") for p in paths_of(item.patch + "\n" + item.then))
        left = sandbox.execute("git status --porcelain --untracked-files=all; " + (
            f"git status --porcelain --untracked-files=all --ignored=traditional -- {paths} | grep '^!! '"
            if paths else "true"), timeout=60).output.strip()
        if left:
            return ItemResult(item.key, None, patch_error="the checkout is not its commit again after both "
                                                          f"patches:\n{left[:1500]}")
    if item.tests == []:  # nothing to run: the item only checks its patches
        return ItemResult(item.key, TestRun(outcomes={}, exit_code=0, output="", duration_s=0.0, finished=True))
    return ItemResult(item.key, run_tests(sandbox, item.tests, timeout=item.timeout, cpu_limit=item.cpu_limit))
