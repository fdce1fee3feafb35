"""The warm test worker's collected session: one pytest collection for many patches that change function bodies only.

Part of the warm test worker (`batch_worker.py`): `batchrun.py` copies it into the sandbox as
`trajfactory_batch_worker_hot.py`. Standard library only (pytest is the sandbox's own).

A child of the plain worker starts pytest and collects its tests for every patch: most of a small suite's cost per
candidate. Here the worker runs one pytest session itself, over the test files of all its "hot" items (patches the
caller found to change only code that no test ran at import or collection time), and takes over
`pytest_runtestloop`: after collection, for each item it applies the patch, compiles the changed files before and
after, and forks. The child replaces the code of every live function whose body changed (`function.__code__`, so
every reference to the function sees the patched code: the module's name, a class's method, a decorator's
wrapper), keeps only the item's tests and returns into pytest's own run loop, which sets them up, runs them and
reports them through the factory's plugin exactly as a fresh session would. The parent waits for it and restores
the checkout as for any item.

The worker refuses an item, before any fork, where the swap could differ from a fresh import: a change in a module
or class body (a default value, a decorator, an annotation, a class attribute, an added or removed function), a
function whose closure changed, a module pytest rewrote (a test module, a conftest), or a changed top-level or class
function that was imported but has no live function object. A refused item (`status: swap_refused`, with the
reason) goes back to the caller, which runs it the plain way.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import types

_CO_OPTIMIZED = 0x0001  # a function's code; a module or class body is not optimized


class Refused(Exception):
    pass


class HotChild(BaseException):
    """Raised in the forked child to unwind into the session's run loop (never caught by the item's plumbing)."""


def changed_paths(patch: str) -> list[str]:
    """The files a unified diff changes (`+++ b/PATH`); a file created or deleted is refused."""
    paths = []
    for line in patch.splitlines():
        if line.startswith("+++ "):
            target = line[4:].split("\t", 1)[0].strip()
            if target == "/dev/null":
                raise Refused("the patch deletes a file")
            paths.append(target[2:] if target.startswith("b/") else target)
        elif line.startswith("--- /dev/null"):
            raise Refused("the patch creates a file")
    return sorted(set(paths))


def _codes(code) -> list:
    return [c for c in code.co_consts if isinstance(c, types.CodeType)]


def _shape(code) -> tuple:
    """What a module or class body executes, without positions, with nested code objects by name only."""
    consts = tuple(("<code>", c.co_name) if isinstance(c, types.CodeType) else (type(c).__name__, repr(c))
                   for c in code.co_consts)
    return (code.co_code, consts, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars, code.co_flags,
            code.co_argcount, code.co_kwonlyargcount)


def code_pairs(old, new, *, parent_is_body: bool = True) -> list[tuple]:
    """(old code, new code, must be live) for each function whose code differs, walking both trees in step."""
    pairs: list[tuple] = []
    body = not old.co_flags & _CO_OPTIMIZED
    if old.co_name != new.co_name or bool(new.co_flags & _CO_OPTIMIZED) != (not body):
        raise Refused(f"{old.co_name} changed its kind or name")
    if body and _shape(old) != _shape(new):
        raise Refused(f"the body of {old.co_name} (module or class level) changed")
    if not body and old != new:
        if old.co_freevars != new.co_freevars:
            raise Refused(f"the closure of {old.co_name} changed")
        differs = _shape(old) != _shape(new) or _codes(old) != _codes(new)
        pairs.append((old, new, differs and parent_is_body))
    inner_old, inner_new = _codes(old), _codes(new)
    if len(inner_old) != len(inner_new):
        raise Refused(f"{old.co_name} gained or lost a nested function or class")
    for a, b in zip(inner_old, inner_new):
        pairs.extend(code_pairs(a, b, parent_is_body=body))
    return pairs


def live_functions(workdir: str) -> dict:
    """Code object -> the live functions running it, for every function defined in the checkout."""
    gc.unfreeze()  # frozen objects are invisible to get_objects
    index: dict = {}
    prefix = workdir + os.sep
    for obj in gc.get_objects():
        if type(obj) is types.FunctionType:
            code = obj.__code__
            if code.co_filename.startswith(prefix) or os.path.realpath(code.co_filename).startswith(prefix):
                index.setdefault(code, []).append(obj)
    return index


def _modules_by_file() -> dict[str, object]:
    out = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and file.endswith(".py"):
            out[os.path.realpath(file)] = module
    return out


def plan_swap(patch: str, originals: dict[str, bytes], workdir: str, live: dict, modules: dict) -> list[tuple]:
    """(function, new code) for every live function the patch changes; Refused where a swap could differ from a fresh
    import. `originals`: the changed files' clean source, read before the patch was applied."""
    swaps: list[tuple] = []
    for rel, old_src in originals.items():
        path = os.path.join(workdir, rel)
        if not rel.endswith(".py"):
            raise Refused(f"{rel} is not a Python source file")
        module = modules.get(os.path.realpath(path))
        if module is None:
            continue  # not imported at collection: a child that needs it imports the patched file
        if type(getattr(module, "__loader__", None)).__name__ == "AssertionRewritingHook":
            raise Refused(f"{rel} is rewritten by pytest (a test module or conftest)")
        with open(path, "rb") as fh:
            new_src = fh.read()
        filename = module.__file__
        try:
            old = compile(old_src, filename, "exec", dont_inherit=True)
            new = compile(new_src, filename, "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise Refused(f"{rel} does not compile: {exc}") from None
        for old_code, new_code, must_be_live in code_pairs(old, new):
            functions = live.get(old_code, [])
            if must_be_live and not functions:
                raise Refused(f"{rel}: no live function runs {getattr(old_code, 'co_qualname', old_code.co_name)}")
            swaps.extend((f, new_code) for f in functions)
    return swaps


def reroute_output(config, fd: int) -> None:
    """Point the child's stdout and stderr at `fd`, including the descriptors pytest's capture restores after each
    test (it saved the worker's own at the start of the session)."""
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    capman = config.pluginmanager.getplugin("capturemanager")
    capturing = getattr(capman, "_global_capturing", None)
    for name in ("out", "err"):
        saved = getattr(getattr(capturing, name, None), "targetfd_save", None)
        if isinstance(saved, int):
            os.dup2(fd, saved)


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _restart_clock(config) -> None:
    """The closing line's "in N s" counts from the child's start, not the worker's session (pytest 7 and 8 name
    the start differently)."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    try:
        from _pytest import timing

        if hasattr(reporter, "_session_start") and hasattr(timing, "Instant"):
            reporter._session_start = timing.Instant()
        elif hasattr(reporter, "_sessionstarttime"):
            reporter._sessionstarttime = timing.time()
    except Exception:  # noqa: BLE001 - only the closing line's figure
        pass


def _die() -> None:
    import traceback

    traceback.print_exc()
    os._exit(3)


class HotSession:
    """The worker's pytest plugin for a collected session (see the module's docstring)."""

    def __init__(self, items: list[tuple[int, dict]], spec: dict, *, run_item, child_setup, emit, probe):
        self.items, self.spec, self.run_item, self.emit, self.probe = items, spec, run_item, emit, probe
        self.child_setup = child_setup
        self.child: dict | None = None
        self.handled: set[str] = set()
        self.refused: list[tuple[dict, str]] = []
        self.dirty: str | None = None
        self.loop_cpu = (0.0, 0.0)
        """The worker's CPU when the run loop began (after collection and the function index) and when it ended."""

    def pytest_runtestloop(self, session):
        if session.testsfailed:  # a collection error: a fresh session of one item's files may not have it
            self.refused = [(item, "collection errors in the collected session") for _, item in self.items]
            return True
        if _threads() > 1:  # a fork copies one thread: a lock another thread held stays held in the child
            self.refused = [(item, "the collection started a thread") for _, item in self.items]
            return True
        workdir = self.spec["workdir"]
        live, modules = live_functions(workdir), _modules_by_file()
        start = time.process_time()
        for index, item in self.items:
            try:
                originals = {}
                for rel in [] if item.get("then") else changed_paths(item["patch"]):  # `then`: nothing changes
                    with open(os.path.join(workdir, rel), "rb") as fh:
                        originals[rel] = fh.read()
            except (Refused, OSError) as exc:
                self.refused.append((item, str(exc)))
                continue
            plan: dict = {}

            def prepare(item=item, originals=originals, plan=plan):
                try:
                    plan["swaps"] = plan_swap(item["patch"], originals, workdir, live, modules)
                except Refused as exc:
                    return str(exc)
                return None

            self.emit({"start": item["key"]})
            try:
                result = self.run_item(item, self.spec, index, child=self._enter_child, prepare=prepare)
            except HotChild:
                try:
                    self._become_child(session, item, index, plan["swaps"])
                except BaseException:  # noqa: BLE001 - the child never returns into the worker's loop
                    _die()
                return None  # pytest's own run loop runs the kept tests in this child
            if result["status"] == "swap_refused":
                self.refused.append((item, result["detail"]))
                if not result["restored"]:
                    self.dirty = result.get("restore_error") or "the checkout was not restored"
                    break
                continue
            self.handled.add(item["key"])
            self.emit(result)
            if not (result.get("clean", True) and result.get("restored", True)):
                self.dirty = result.get("restore_error") or "processes left running"
                break
        self.loop_cpu = (start, time.process_time())
        return True

    def _enter_child(self, item: dict, spec: dict, index: int) -> None:
        try:
            self.child_setup(item, spec, index)
        except BaseException:  # noqa: BLE001
            _die()
        raise HotChild()

    def _become_child(self, session, item: dict, index: int, swaps: list[tuple]) -> None:
        self.child = {"item": item, "index": index}
        for function, code in swaps:
            function.__code__ = code
        out = os.open(f"{self.spec['scratch']}/output-{index}.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        reroute_output(session.config, out)
        os.close(out)
        # the factory's plugin (loaded with `-p`) records to the item's file and selects the item's tests itself, from
        # the TRAJFACTORY_SELECT file the item's environment names, as in a fresh session
        harness = sys.modules["trajfactory_harness"]
        if harness._state["fh"] is not None:
            harness._state["fh"].close()
        harness._state["fh"] = harness.append_to(item["env"]["TRAJFACTORY_RESULTS"])
        harness.pytest_collection_modifyitems(session, session.config, session.items)
        session.testscollected = len(session.items)  # what pytest counts after the plugin's deselection
        _restart_clock(session.config)
        self.probe.marks = {"configured": time.process_time(), "collected": time.process_time()}
        self.probe.durations, self.probe.tests = 0.0, 0
