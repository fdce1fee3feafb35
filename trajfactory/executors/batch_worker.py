"""trajfactory's warm test worker: runs inside a sandbox and tests a batch of patches with one process start.

`batchrun.py` copies this file and its three helper modules (`batch_worker_procs.py`: process plumbing,
`batch_worker_warm.py`: what the worker keeps warm for its children, `batch_worker_hot.py`: the collected session
for "hot" items, run after the plain ones) into the sandbox, outside the checkout, each
named `trajfactory_` + its name here, and runs it once per batch with one input file and one output file; they
import only the standard library and the sandbox's own pytest. For each item it

1. applies the item's patch to the checkout (`git apply`), and its second patch where it has one (`then`: a gold
   patch after its bug), which must leave the checkout exactly at its commit again (`git status` empty, and no
   file the patches name left behind where the ignore rules hide it); an item
   with an empty list of tests stops there (its patches checked, the checkout restored),
2. forks a child that runs `pytest.main` exactly as `python -m pytest` with the factory's plugin would (same
   arguments, environment, `sys.path[0]`, working directory), in its own process group, its output to a file,
3. waits for it up to the item's timeout (then kills its process group), kills whatever it left running (the
   worker is the sandbox's child subreaper, so every orphan is its descendant), and
4. restores the checkout (`git checkout -f --detach COMMIT` + `git clean -fdqx`).

The worker imports pytest and, once told which (`preload`), the third-party modules the children imported,
never a module of the checkout (those change per item) nor one pytest rewrites (a test module, a conftest, a
pytest plugin): a fork then starts with them in memory. It also compiles once what children would compile again
and again (the checkout's files, the files pytest rewrites, the regular expressions they compiled), for a child to
take only where the source is byte-identical. Children report what they imported and compiled beyond what the
worker held at the fork, so the caller can preload it next time. A crash, kill or out-of-memory of one child is that item's result, never the batch's:
children carry `oom_score_adj` 1000 so the kernel picks them, not the worker.

Usage: `python WORKER SPEC OUT [--no-preload] -- PYTEST_ARGS`. Output (OUT): JSON lines: `{"ready": ...}` once,
then per item `{"start": key}` and its result record, then `{"done": ...}`.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import time

from trajfactory_batch_worker_hot import HotSession
from trajfactory_batch_worker_procs import (become_subreaper, children_cpu, git, left_ignored, lifted, sweep,
                                            wait_child)
from trajfactory_batch_worker_warm import (COMPILED, REWRITTEN, Probe, checkout_modules, compiled_regexes, imported,
                                           install_code_caches, precompile, preload, rewrite_cache, snapshot,
                                           warm_lookups, warm_regexes)

OUTPUT_TAIL = 16000


def child_setup(item: dict, spec: dict, index: int) -> None:
    """In a forked child: its own process group, default signals, first in line for the OOM killer, the item's CPU
    limit, stdin from /dev/null, the checkout as working directory, the item's environment, fresh random seeds."""
    os.setpgid(0, 0)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    # as Python's own start-up leaves it: a write to a closed pipe or socket raises BrokenPipeError; under SIG_DFL
    # it killed the child (exit 141), and boltons' suite writes to a closed socket on the clean code
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")
    except OSError:
        pass
    if item.get("cpu_limit"):  # a soft limit: SIGXCPU (its default action ends the child), no core file
        import resource

        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
            resource.setrlimit(resource.RLIMIT_CPU, (int(item["cpu_limit"]), hard))
        except (ValueError, OSError):
            pass
        signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.chdir(spec["workdir"])
    os.environ.update(item["env"])
    import random

    random.seed()  # a fresh interpreter seeds from the OS; a fork would share the worker's state
    if "numpy" in sys.modules:
        try:
            sys.modules["numpy"].random.seed()
        except Exception:  # noqa: BLE001
            pass


def child_report(spec: dict, index: int, probe: Probe, *, modules: bool = True) -> None:
    """Write what the child's probe saw (and, in a fresh child, what it imported and compiled) for the worker."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
    report = {"marks": probe.marks, "durations": probe.durations, "tests": probe.tests}
    if modules:
        found, plain, rewritten = imported(spec["workdir"], tuple(d + os.sep for d in spec["private_dirs"]),
                                           probe.collected_modules, probe.marked)
        report.update(modules=found, plain=plain, rewritten=rewritten, regexes=compiled_regexes())
    with open(f"{spec['scratch']}/probe-{index}.json", "w", encoding="utf-8") as fh:
        json.dump(report, fh)


def run_child(item: dict, spec: dict, index: int) -> None:
    """In the forked child: become `python -m pytest` for this item and exit with its status."""
    try:
        child_setup(item, spec, index)
        out = os.open(f"{spec['scratch']}/output-{index}.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        import pytest

        args = list(spec["pytest_args"]) + list(item["args"])
        sys.argv = [os.path.join(os.path.dirname(pytest.__file__), "__main__.py"), *args]
        sys.path.insert(0, spec["workdir"])  # what `python -m` puts first
        probe = Probe()
        code = pytest.main(args, plugins=[probe])
        child_report(spec, index, probe)
        os._exit(int(code))
    except BaseException:  # noqa: BLE001 - the child never returns into the worker's loop
        import traceback

        traceback.print_exc()
        os._exit(3)


def _tail(path: str, limit: int = OUTPUT_TAIL) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _restore(commit: str) -> tuple[bool, str]:
    code_co, out_co = git("checkout", "-q", "-f", "--detach", commit)
    code_cl, out_cl = git("clean", "-fdqx")
    return code_co == 0 and code_cl == 0, (out_co + "\n" + out_cl).strip()[-2000:]


def _apply(scratch: str, patch: str) -> tuple[int, str]:
    path = f"{scratch}/patch.diff"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(patch if patch.endswith("\n") else patch + "\n")
    code, out = git("apply", "--whitespace=nowarn", path)
    os.unlink(path)
    return code, out


def run_item(item: dict, spec: dict, index: int, *, child=run_child, prepare=None) -> dict:
    """Apply the item's patch, fork `child` (which never returns into this loop), wait for it, read its records and
    restore the checkout. `prepare()`, where given, runs on the patched checkout before the fork: a reason it returns
    refuses the item (`swap_refused`) without a fork."""
    scratch, commit = spec["scratch"], spec["commit"]
    result: dict = {"key": item["key"], "timeout": item["timeout"], "cpu_limit": item.get("cpu_limit")}
    p0, c0, w0 = time.process_time(), children_cpu(), time.monotonic()
    if item["patch"]:
        code, out = _apply(scratch, item["patch"])
        if code != 0:
            first = "the first patch does not apply: " if item.get("then") else ""
            result.update(status="patch_failed", detail=first + (out or f"git apply exited {code}"),
                          apply_cpu=children_cpu() - c0)
            return result
    if item.get("then"):  # a second patch that must leave the checkout exactly at its commit (a gold after its bug)
        code, out = _apply(scratch, item["then"])
        detail = f"the second patch does not apply: {out or f'git apply exited {code}'}"
        if code == 0:
            code, out = git("status", "--porcelain", "--untracked-files=all")
            if code == 0 and not out:
                code, out = left_ignored(item["patch"], item["then"])
            detail = (f"git status failed: {out}" if code else
                      f"the checkout is not its commit again after both patches:\n{out[:1500]}")
            code = code or int(bool(out))
        if code != 0:
            restored, error = _restore(commit)
            result.update(status="patch_failed", detail=detail, apply_cpu=children_cpu() - c0, clean=True,
                          restored=restored, restore_error=error)
            return result
    if item["tests"] == []:  # nothing to run: the item only checks its patches (a gold proof whose tests ran earlier)
        restored, error = _restore(commit)
        result.update(status="ran", exit_code=0, records="", output="", duration_s=time.monotonic() - w0,
                      apply_cpu=children_cpu() - c0, worker_cpu=time.process_time() - p0, probe={}, clean=True,
                      restored=restored)
        if not restored:
            result["restore_error"] = error
        return result
    reason = prepare() if prepare is not None else None
    if reason is not None:
        restored, error = _restore(commit)
        result.update(status="swap_refused", detail=reason, restored=restored, clean=True, restore_error=error)
        return result
    c1, w1 = children_cpu(), time.monotonic()
    result["apply_cpu"], result["apply_wall"] = c1 - c0, w1 - w0
    results_file = item["env"]["TRAJFACTORY_RESULTS"]
    if item["tests"] is not None:
        with open(item["env"]["TRAJFACTORY_SELECT"], "w", encoding="utf-8") as fh:
            fh.write("\n".join(item["tests"]) + "\n")
    probe_file = f"{scratch}/probe-{index}.json"
    for stale in (results_file, f"{scratch}/output-{index}.txt", probe_file):
        if os.path.exists(stale):
            os.unlink(stale)
    sys.stdout.flush()
    sys.stderr.flush()
    snapshot()
    gc.freeze()  # what the worker holds is never the child's garbage: its gc passes (pytest runs several) skip it
    pid = os.fork()
    if pid == 0:
        child(item, spec, index)
    status, child_cpu, waited = wait_child(pid, float(item["timeout"]), float(item.get("ceiling") or 0.0))
    wall = time.monotonic() - w1
    timed_out = status is None
    if timed_out:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        _, status, usage = os.wait4(pid, 0)
        child_cpu = usage.ru_utime + usage.ru_stime
    clean = sweep()
    cpu_out = not timed_out and bool(item.get("cpu_limit")) and os.WIFSIGNALED(status) \
        and os.WTERMSIG(status) == signal.SIGXCPU
    timed_out = timed_out or cpu_out
    if os.WIFEXITED(status):
        exit_code = os.WEXITSTATUS(status)
    else:
        exit_code = 128 + os.WTERMSIG(status)  # what a shell reports for a signal (137: SIGKILL, e.g. the OOM killer)
    try:
        with open(results_file, encoding="utf-8", errors="replace") as fh:
            records = fh.read()
    except OSError:
        records = ""
    try:
        with open(probe_file, encoding="utf-8") as fh:
            probe = json.load(fh)
    except (OSError, ValueError):
        probe = {}
    c3, w3 = children_cpu(), time.monotonic()
    restored, error = _restore(commit)
    result.update(
        status="timeout" if timed_out else "ran", exit_code=-1 if timed_out else exit_code, records=records,
        output=_tail(f"{scratch}/output-{index}.txt"), duration_s=wall,
        child_cpu=child_cpu, restore_cpu=children_cpu() - c3, restore_wall=time.monotonic() - w3,
        worker_cpu=time.process_time() - p0, probe=probe, clean=clean, restored=restored, cpu_out=cpu_out,
        waited=waited,
    )
    if not restored:
        result["restore_error"] = error
    return result


def run_hot(spec: dict, items: list[tuple[int, dict]], emit) -> str | None:
    """The hot items in one collected pytest session (`batch_worker_hot.py`); the reason where the checkout was left
    dirty, else None. An item the session could not take is emitted `swap_refused` for the caller to run plainly."""
    import pytest

    scratch, workdir = spec["scratch"], spec["workdir"]
    files = sorted({arg for _, item in items for arg in item["args"]})
    args = list(spec["pytest_args"]) + files
    session_out = os.open(f"{scratch}/session-output.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    saved = lifted(os.dup(1)), lifted(os.dup(2))
    os.dup2(session_out, 1)
    os.dup2(session_out, 2)
    os.close(session_out)
    environ = {k: os.environ.pop(k, None) for k in ("TRAJFACTORY_RESULTS", "TRAJFACTORY_SELECT")}
    os.environ["TRAJFACTORY_RESULTS"] = f"{scratch}/session-results.jsonl"
    sys.argv = [os.path.join(os.path.dirname(pytest.__file__), "__main__.py"), *args]
    sys.path.insert(0, workdir)
    probe = Probe()
    plugin = HotSession(items, spec, run_item=run_item, child_setup=child_setup, emit=emit, probe=probe)
    c0 = time.process_time()
    try:
        code = pytest.main(args, plugins=[probe, plugin])
    except BaseException:  # noqa: BLE001
        if plugin.child is not None:
            import traceback

            traceback.print_exc()
            os._exit(3)
        raise
    if plugin.child is not None:  # this is a child: its session is over
        try:
            child_report(spec, plugin.child["index"], probe, modules=False)
        finally:
            os._exit(int(code))
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for fd in saved:
        os.close(fd)
    for key, value in environ.items():
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value
    refused = list(plugin.refused)
    if plugin.dirty is None:
        reason = f"the collected session ended before its run loop (pytest exit {int(code)})"
        refused += [(item, reason) for _, item in items
                    if item["key"] not in plugin.handled and all(item is not r for r, _ in refused)]
    loop_start, loop_end = plugin.loop_cpu
    outside = time.process_time() - c0 - (loop_end - loop_start if loop_end else 0.0)  # start, collection, finish
    emit({"hot_session": {"cpu": outside, "items": len(items), "refused": len(refused),
                          "files": len(files), "exit": int(code)}})
    for item, reason in refused:
        emit({"key": item["key"], "status": "swap_refused", "detail": reason})
    return plugin.dirty


def main() -> int:
    # argv: SPEC OUT [--no-preload] -- PYTEST_ARGS (the shell expanded them, as for `python -m pytest`)
    split = sys.argv.index("--")
    spec_path, out_path, *opts = sys.argv[1:split]
    no_preload = "--no-preload" in opts
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    spec["pytest_args"] = sys.argv[split + 1:]
    spec["workdir"] = os.path.realpath(spec["workdir"])
    code, head = git("rev-parse", "HEAD")  # the caller reset the checkout to its pinned commit: restores go back here
    if code != 0:
        print(f"the checkout has no commit: {head}", file=sys.stderr)
        return 2
    spec["commit"] = head
    started = time.monotonic()
    out = os.fdopen(lifted(os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)), "a", encoding="utf-8")

    def emit(record: dict) -> None:
        out.write(json.dumps(record) + "\n")
        out.flush()

    del sys.path[0]  # this script's directory; a child puts the checkout there, as `python -m` does
    __import__("pytest")  # the one import every child needs
    if held := checkout_modules(spec["workdir"]):
        # pytest itself imports the project (pluggy, packaging): a child forked from here would test the code this
        # worker imported, never the item's patch, and every bug would pass. The caller runs them afresh.
        emit({"pytest_imports_checkout": held})
        return 0

    rejected: list[str] = []
    if spec.get("preload") and not no_preload:
        rejected = preload(spec["preload"], spec["workdir"])
        if rejected or threading.active_count() > 1 or len(os.listdir("/proc/self/task")) > 1:
            # a preloaded module pulled in code of the checkout, or started a thread: fork from a clean worker
            os.execv(sys.executable, [sys.executable, *sys.argv[:split], "--no-preload", *sys.argv[split:]])
    subreaper = become_subreaper()
    install_code_caches()
    precompile(spec.get("plain", []), spec.get("rewritten", []))
    warm_regexes(spec.get("regexes", []))
    warm_lookups(spec["workdir"])
    emit({"ready": time.process_time(), "wall": time.monotonic() - started, "subreaper": subreaper,
          "preloaded": not no_preload and bool(spec.get("preload")), "preload_rejected": no_preload,
          "rewrite_cache": rewrite_cache(), "precompiled": len(COMPILED) + len(REWRITTEN)})
    seen: set[str] = set()
    plain: set[str] = set()
    rewritten: set[str] = set()
    regexes: set[tuple[str, int]] = set()
    for index, item in enumerate(spec["items"]):
        if item.get("hot"):
            continue  # after the plain items: the collected session imports the checkout's modules
        emit({"start": item["key"]})
        result = run_item(item, spec, index)
        probe = result.get("probe", {})
        seen.update(probe.pop("modules", []))
        new_plain, new_rewritten = probe.pop("plain", []), probe.pop("rewritten", [])
        plain.update(new_plain)
        rewritten.update(new_rewritten)
        new_regexes = [tuple(r) for r in probe.pop("regexes", [])]
        regexes.update(new_regexes)
        if result.get("restored"):
            c0 = time.process_time()
            precompile(new_plain, new_rewritten)
            warm_regexes(new_regexes)
            result["precompile_cpu"] = time.process_time() - c0
        emit(result)
        if not (result.get("clean", True) and result.get("restored", True)):  # a failed `git apply` changes nothing
            emit({"done": False, "dirty": True, "reason": result.get("restore_error") or "processes left running"})
            return 0
    hot = [(index, item) for index, item in enumerate(spec["items"]) if item.get("hot")]
    if hot:
        dirty = run_hot(spec, hot, emit)
        if dirty is not None:
            emit({"done": False, "dirty": True, "reason": dirty})
            return 0
    emit({"done": True, "cpu": time.process_time(), "modules": sorted(seen), "plain": sorted(plain),
          "rewritten": sorted(rewritten), "regexes": sorted(regexes)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
