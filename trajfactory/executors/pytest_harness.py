"""trajfactory's pytest plugin: runs inside a sandbox, selects the requested tests and records each one's outcome.

It is copied into the sandbox outside the checkout and loaded with `-p trajfactory_harness` (so it imports only
the standard library and pytest, which every sandbox has), with its audit hook's module beside it
(`harness_reaches.py`, `testrun.HARNESS_FILES`). Through environment variables:

- `TRAJFACTORY_SELECT`: a file of pytest node ids, one per line: only those run (the others are deselected).
  Every pytest since 3.x honours it, unlike `@file` arguments (pytest >= 8.2 only). An id without the `[...]` of
  parameters selects every variant of its test (the canaries written into a project whose autouse fixture is
  parametrized run once per parameter). An id that no collected test has is recorded with outcome `missing`. The files named on the command line are collected in the order of the
  project's `testpaths`, as its maintainers' run collects them (`_maintainers_order`).
- `TRAJFACTORY_RESULTS`: the JSON-lines file the records go to: one `{"test", "outcome", "duration"}` per test (its
  worst phase: `error` for a failed setup or teardown, `failed`, `skipped`, `passed`; its phases' seconds in all), `{"collect_error", "detail"}`
  per module that did not import, `{"marked_flaky": node id}` per collected test the project marks `flaky`,
  `{"timed": node id}` per collected test that times code (`_times_code`), and a closing `{"session": exit status,
  "collected": n}`.

Node ids are pytest's own (`item.nodeid`), so an id recorded here is accepted back by the selection: methods a
test class inherits from a mixin and parametrized ids with spaces, brackets or unicode round-trip unchanged.

- `TRAJFACTORY_SEAL` (`run_tests`): a file holding a secret key, read and deleted when this plugin is imported (before
  pytest imports any module of the checkout). The plugin keeps an HMAC-SHA256 of every byte it writes to the record,
  and when pytest unconfigures it writes `SEAL_MARK <hex digest> <bytes>` to the process's original standard output,
  which leaves the sandbox as it is written: a record rewritten, truncated or appended to after the plugin wrote it (at
  exit, by a process the tests left behind) no longer matches a seal, and code without the key cannot make one.

- `TRAJFACTORY_FIXTURE_SCOPES` (the reference run, with per-test contexts: `trajfactory_probe`'s line probes or
  pytest-cov's coverage): a fixture wider than one test (class, module, package or session scope; `setup_class`
  and `setup_module` are such fixtures) is set up under a context of its own, `<node id of its scope>|<scope>-fixture`, instead of the context of the test that
  happened to need it first, and its teardown under the same context instead of the teardown of whichever test
  happened to be last; `{"fixture_scopes": true}` and `{"fixture_teardown": true}` records say the contexts were so
  split. The lines such a fixture runs then reach every test of its class, module or package, and a test's own
  `|setup` and `|teardown` contexts hold only what was set up and torn down for that test alone.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import os
import sys

import pytest

_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
_state: dict = {"fh": None, "outcomes": {}, "durations": {}, "again": set()}  # again: attempts rerun
SEAL_MARK = "[trajfactory-harness-seal]"


def _lifted(fd: int) -> int:
    """`fd` moved to 10 or above (close-on-exec, its old number closed), as a shell keeps its own: a shell leaves
    descriptors 3-9 to the commands it runs, and the tests may use them so (argcomplete's library writes to 8 and 9
    where they are open, and closes them)."""
    if fd >= 10:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    finally:
        os.close(fd)


def append_to(path: str):
    """The record file, opened for appending on a descriptor of the harness's own (`_lifted`)."""
    return os.fdopen(_lifted(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)), "a", encoding="utf-8")


def _take_seal_key() -> dict:
    """The key of `TRAJFACTORY_SEAL` (its file deleted) and a copy of the original standard output, taken at import:
    pytest's capture has not replaced file descriptor 1 yet, and no code of the checkout has run."""
    path = os.environ.pop("TRAJFACTORY_SEAL", None)
    if not path:
        return {}
    try:
        with open(path, "rb") as fh:
            key = fh.read()
        os.unlink(path)
        return {"mac": hmac.new(key, digestmod="sha256"), "out": _lifted(os.dup(1)), "bytes": 0}
    except OSError:
        return {}


_seal = _take_seal_key()

def _write(record: dict) -> None:
    fh = _state["fh"]
    if fh is None and "pending" in _state:  # before `pytest_configure` opened the record
        _state["pending"].append(record)
    if fh is not None:
        line = json.dumps(record) + "\n"  # ASCII: the bytes written are the bytes sealed
        fh.write(line)
        fh.flush()
        if _seal:
            _seal["mac"].update(line.encode())
            _seal["bytes"] += len(line)


if _seal:  # at import: before pytest loads the checkout's conftest.py files, which may import its modules
    from trajfactory_harness_reaches import watch_reaches  # harness_reaches.py, copied beside this plugin

    _state["pending"] = []
    watch_reaches(_write)


def pytest_addoption(parser) -> None:
    # the harness's command line says `--no-header` (pytest 6): a project that pins pytest 5 (html5lib 1.1, on the
    # sandbox's Python 3.9) runs through the same command, where it asks for nothing
    if int(pytest.__version__.split(".")[0]) < 6:
        parser.addoption("--no-header", action="store_true", help="pytest 6's option, accepted and ignored here")


def pytest_configure(config) -> None:
    path = os.environ.get("TRAJFACTORY_RESULTS")
    worker = hasattr(config, "workerinput")  # pytest-xdist workers report through the controller
    if path and not worker and _state["fh"] is None:
        _state["fh"] = append_to(path)
        for record in _state.pop("pending", ()):
            _write(record)
    if not worker:
        _maintainers_order(config)
    _rewrite_as_maintainers(config)


def _doctest_files(config) -> set[str]:
    """The library modules the selection names only for their doctests (`pkg/mod.py::pkg.mod.func`: the id's name
    is dotted through the module's own name; `guard.suite_files` tells them apart by the same rule), as real paths."""
    path = os.environ.get("TRAJFACTORY_SELECT")
    if not path:
        return set()
    root = str(getattr(config, "rootpath", None) or getattr(config, "rootdir", None) or os.getcwd())
    doctest_only: dict[str, bool] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            file, _, name = line.strip().partition("::")
            stem = os.path.splitext(os.path.basename(file))[0]
            module = os.path.basename(os.path.dirname(file)) if stem == "__init__" else stem
            doctest = file.endswith(".py") and bool(name) and "::" not in name and \
                module in name.split("[")[0].split(".")
            doctest_only[file] = doctest_only.get(file, True) and doctest
    return {os.path.realpath(os.path.join(root, f)) for f, only in doctest_only.items() if only}


def _rewrite_as_maintainers(config) -> None:
    """A library module named on the command line for its doctests keeps its `assert` statements as they are,
    as in the maintainers' whole-suite run. pytest rewrites the asserts of every file named on the command line, and
    a rewritten assert adds its own explanation to the `AssertionError`: dictdiffer 0.10.0's doctest of
    `assert_no_diff` expects the error's message alone, so it passed in the whole suite and failed when selected by
    id. The other reasons pytest rewrites a module (`python_files`, `conftest.py`, `register_assert_rewrite`) stand."""
    files = _doctest_files(config)
    hook = next((f for f in sys.meta_path if type(f).__name__ == "AssertionRewritingHook"), None)
    should = getattr(hook, "_should_rewrite", None)
    if not files or should is None or not hasattr(hook, "session") or getattr(should, "_as_maintainers", False):
        return

    def as_maintainers(name, fn, state):
        session = hook.session
        if session is None or os.path.realpath(str(fn)) not in files:
            return should(name, fn, state)
        hook.session = None  # the clause "named on the command line" reads the session: without it, the rest decide
        try:
            return should(name, fn, state)
        finally:
            hook.session = session

    as_maintainers._as_maintainers = True
    hook._should_rewrite = as_maintainers


def _maintainers_order(config) -> None:
    """The files the harness names (alphabetically, for a selection), put in the order of the project's
    `testpaths`, which is the order its maintainers' own run collects and runs them in. A suite may depend on it:
    semver's documentation doctests, under `docs` after `tests`, read names that an autouse fixture in
    `tests/conftest.py` puts into the session's doctest namespace. Files under one entry keep their order; a file
    under none goes last. Where pytest itself chose the files from `testpaths`, nothing moves."""
    import glob

    args = getattr(config, "args", None)
    if not isinstance(args, list) or len(args) < 2:
        return
    try:
        entries = config.getini("testpaths") or []
    except (ValueError, KeyError):
        return
    root = str(getattr(config, "rootpath", None) or getattr(config, "rootdir", None) or os.getcwd())
    here = str(getattr(getattr(config, "invocation_params", None), "dir", None) or os.getcwd())
    roots: list[str] = []
    for entry in entries:  # as pytest expands them, relative to the root directory, globs included
        path = os.path.join(root, str(entry))
        roots += [os.path.realpath(p) for p in (sorted(glob.glob(path, recursive=True)) if glob.has_magic(path)
                                                else [path])]
    if not roots:
        return

    def rank(arg: str) -> int:
        path = os.path.realpath(os.path.join(here, str(arg).split("::", 1)[0]))
        return next((i for i, r in enumerate(roots) if path == r or path.startswith(r.rstrip(os.sep) + os.sep)),
                    len(roots))

    args[:] = sorted(args, key=rank)


def _coverage():
    """The recorder of per-test contexts (the line probes of `trajfactory_probe`, or else coverage.py's instance),
    when asked to split fixture scopes; else None."""
    if not os.environ.get("TRAJFACTORY_FIXTURE_SCOPES"):
        return None
    probes = getattr(sys.modules.get("trajfactory_probe"), "RECORDER", None)
    if probes is not None:
        return probes
    current = getattr(getattr(sys.modules.get("coverage"), "Coverage", None), "current", None)
    return current() if current is not None else None


def pytest_sessionstart(session) -> None:
    if _coverage() is not None and not hasattr(session.config, "workerinput"):
        _write({"fixture_scopes": True})
        _write({"fixture_teardown": True})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    _state["phase"] = f"{item.nodeid}|setup"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item) -> None:
    _state["phase"] = f"{item.nodeid}|run"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item) -> None:
    _state["phase"] = f"{item.nodeid}|teardown"


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    cov = _coverage()
    scope = str(getattr(fixturedef, "scope", "function"))
    phase = _state.get("phase")
    if cov is None or scope == "function" or phase is None:
        yield
        return
    context = f"{getattr(request.node, 'nodeid', '')}|{scope}-fixture"
    cov.switch_context(context)
    try:
        yield
    finally:
        cov.switch_context(phase)
    # finalizers run last in, first out: this one runs just before the fixture's own teardown, whichever test's
    # teardown finishes the scope; `pytest_fixture_post_finalizer` switches back after it
    fixturedef.addfinalizer(lambda: cov.switch_context(context))


def pytest_fixture_post_finalizer(fixturedef, request) -> None:
    cov = _coverage()
    phase = _state.get("phase")
    if cov is not None and phase is not None and str(getattr(fixturedef, "scope", "function")) != "function":
        cov.switch_context(phase)


def pytest_collection_modifyitems(session, config, items) -> None:
    if not hasattr(config, "workerinput"):
        for item in items:  # tests the project calls flaky, and tests that time code: no verdict may hang on them
            if item.get_closest_marker("flaky") is not None:
                _write({"marked_flaky": item.nodeid})
            elif _safely(_times_code, item):
                _write({"timed": item.nodeid})
    path = os.environ.get("TRAJFACTORY_SELECT")
    if path:
        wanted = _ids(path)
        bare = wanted - {item.nodeid for item in items}
        keep = [item for item in items if item.nodeid in wanted or _unparametrized(item.nodeid) in bare]
        kept = {id(item) for item in keep}
        drop = [item for item in items if id(item) not in kept]
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
        if not hasattr(config, "workerinput"):
            for nodeid in sorted(bare - {_unparametrized(item.nodeid) for item in keep}):
                _write({"test": nodeid, "outcome": "missing"})
    last = os.environ.get("TRAJFACTORY_LAST")
    if last:  # run after every other test, in their order: what they leave behind reaches no test of the project
        late = _ids(last)
        after = [item for item in items if item.nodeid in late or _unparametrized(item.nodeid) in late]
        if after:
            moved = {id(item) for item in after}
            items[:] = [item for item in items if id(item) not in moved] + after


def _safely(check, item) -> bool:
    """`check(item)`, False where it raises: a listing must never stop the project's collection."""
    try:
        return bool(check(item))
    except Exception:  # noqa: BLE001 - any object a project's test hangs on may misbehave when looked at
        return False


_CLOCKS = frozenset({"perf_counter", "perf_counter_ns", "process_time", "process_time_ns", "thread_time",
                     "thread_time_ns", "monotonic", "monotonic_ns", "default_timer"})
"""The clocks that measure how long code takes (not `time.time`, which a test reads for the date)."""


def _times_code(item) -> bool:
    """Whether the test `item` reads a clock that measures elapsed time, or uses `timeit`, in its own code or in
    the code of the functions and methods of its own module (and class) it names, two calls deep: a test that
    asserts how long code takes (jsonpath-ng 1.17's `test_index_filter_time_is_linear_to_data_size`, a ratio of
    `timeit` runs) passes or fails with the machine's load, whatever a patch does. The project's own code is not
    followed: a library that reads a clock for its timeouts does not make every test of it a timing test."""
    func = getattr(item, "obj", None)
    func = getattr(func, "__func__", func)
    owner, module = getattr(item, "cls", None), getattr(func, "__module__", None)
    seen, todo = set(), [(func, 0)]
    while todo:
        func, depth = todo.pop()
        code = getattr(func, "__code__", None)
        if code is None or id(code) in seen or getattr(func, "__module__", None) != module:
            continue
        seen.add(id(code))
        names, codes = set(), [code]
        while codes:  # the function's own code and the code of what it defines (lambdas, inner functions)
            current = codes.pop()
            names.update(current.co_names)
            codes += [c for c in current.co_consts if hasattr(c, "co_names")]
        scope = getattr(func, "__globals__", {})
        if names & _CLOCKS or any(getattr(scope.get(n), "__name__", "") == "timeit" or
                                  getattr(scope.get(n), "__module__", "") == "timeit" for n in names):
            return True
        if depth < 2:
            todo += [(scope.get(n), depth + 1) for n in names if callable(scope.get(n))]
            todo += [(getattr(getattr(owner, n, None), "__func__", getattr(owner, n, None)), depth + 1)
                     for n in names if owner is not None]
    return False


def _ids(path: str) -> set[str]:
    """The test ids a file the factory wrote holds, one per line."""
    with open(path, encoding="utf-8") as fh:
        return {line.rstrip("\n") for line in fh if line.strip()}


def _unparametrized(nodeid: str) -> str:
    """`path::test_x[p]` -> `path::test_x`: the id a selection names a test by to run it once per parameter."""
    at = nodeid.find("[", nodeid.find("::"))  # a test's name holds no bracket; its parameters may hold `::`
    return nodeid[:at] if at > 0 else nodeid


def pytest_collectreport(report) -> None:
    if report.failed:
        _write({"collect_error": report.nodeid, "detail": str(report.longrepr)[-2000:]})


def pytest_runtest_logreport(report) -> None:
    seen, took = _state["outcomes"], _state["durations"]
    if report.outcome == "rerun":  # pytest-rerunfailures: this attempt failed and the test runs again; the last decides
        seen.pop(report.nodeid, None)
        _state["again"].add(report.nodeid)
        return
    if report.when == "setup":  # an attempt starts: whether or not the last one's teardown was reported
        _state["again"].discard(report.nodeid)
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            outcome = "skipped" if report.skipped else "failed"  # xfail: skipped; a strict xpass: failed
        else:
            outcome = report.outcome
    elif report.failed:
        outcome = "error"
    elif report.skipped:
        outcome = "skipped"
    else:
        outcome = "passed"
    if _RANK.get(outcome, 3) >= _RANK.get(seen.get(report.nodeid, "passed"), 0):
        seen[report.nodeid] = outcome
    took[report.nodeid] = took.get(report.nodeid, 0.0) + (getattr(report, "duration", 0.0) or 0.0)
    if report.when == "teardown" and report.nodeid in _state["again"]:  # the end of an attempt rerun
        seen.pop(report.nodeid, None)
    elif report.when == "teardown":
        _write({"test": report.nodeid, "outcome": seen.pop(report.nodeid, outcome),
                "duration": round(took.pop(report.nodeid, 0.0), 6)})


def pytest_sessionfinish(session, exitstatus) -> None:
    for nodeid, outcome in _state["outcomes"].items():  # a test interrupted before its teardown
        _write({"test": nodeid, "outcome": outcome, "duration": round(_state["durations"].get(nodeid, 0.0), 6)})
    _state["outcomes"], _state["durations"] = {}, {}
    _write({"session": int(exitstatus), "collected": session.testscollected})
    if _state["fh"] is not None:
        _state["fh"].close()
        _state["fh"] = None


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    if _seal and not hasattr(config, "workerinput"):
        os.write(_seal["out"], f"\n{SEAL_MARK} {_seal['mac'].hexdigest()} {_seal['bytes']}\n".encode())
        os.close(_seal.pop("out"))
        _seal.clear()
