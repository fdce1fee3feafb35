"""The reference run: the clean suite run the maintainers' way once per image, recording which test ran which line
(the ground truth every candidate is judged against), and the reasons a repository's suite cannot serve as one."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import time
import tomllib

from packaging.utils import canonicalize_name

from trajfactory.executors.base import Sandbox
from trajfactory.executors.requirements import requirement_name
from trajfactory.executors.testrun import EXIT_NO_TESTS, TestRun, run_tests, summary_line
from trajfactory.schema import ReferenceRun

REFERENCE_VERSION = "5"
"""Bumped when what a reference run records changes (2: per-test durations; 3: the runs after the first select the
first run's passing tests by id; 4: one run's passing tests are collected again by id; 5: tests that time code are
excluded); reference runs are cached on it."""

_NETWORK_ERRORS = re.compile(
    r"Network is unreachable|Temporary failure in name resolution|Name or service not known|"
    r"ConnectionRefusedError|gaierror|URLError|Could not resolve host|Failed to establish a new connection|"
    r"'git', 'clone'"
)


class RepoRejected(Exception):
    """The repository cannot give tasks; `reason` is the quarantine code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def tail(text: str, lines: int = 15) -> str:
    """The last `lines` lines of a run's output."""
    return "\n".join(text.strip().splitlines()[-lines:])


KILLED = (137, -9)
"""Exit statuses of a run the kernel killed with SIGKILL: in a sandbox, its memory limit (the OOM killer)."""


def _reject_reason(run: TestRun, timeout: float) -> RepoRejected | None:
    if run.timed_out:
        return RepoRejected(
            "suite_timeout",
            f"the test suite did not finish within {timeout:.0f}s (a hang, a sleep, or a fork bomb "
            f"held back by the pids limit, or a suite that takes longer on `sandbox.cpus` than its maintainers' "
            f"machines): where it is only long, raise `validation.suite_timeout_s` (or `sandbox.cpus`) in the "
            f"recipe; a usable suite finishes well inside the limit, since verification runs it too",
        )
    if run.exit_code in KILLED:
        return RepoRejected("out_of_memory", f"the test run was killed (exit {run.exit_code}), which in a sandbox "
                            "is its memory limit; raise `sandbox.memory` if the suite needs more:\n" + tail(run.output))
    if run.results_error:
        return RepoRejected("results_unreadable", f"the harness's record of the session was not read: "
                            f"{run.results_error} (something in the suite writes into it)")
    if not run.finished and run.exit_code != EXIT_NO_TESTS:
        return RepoRejected("results_unreadable", f"pytest exited {run.exit_code} without the harness's record of the "
                            "session (the run was cut short, or pytest could not load the harness plugin):\n"
                            + tail(run.output))
    if run.exit_code == EXIT_NO_TESTS or (run.exit_code == 0 and not run.outcomes):
        return RepoRejected("no_tests", "pytest collected no tests; the repository needs a pytest-runnable suite")
    if "SyntaxError" in run.output and not any(o == "passed" for o in run.outcomes.values()):
        return RepoRejected("syntax_error", "a module does not parse:\n" + tail(run.output))
    if run.collection_failed:
        modules = list(dict.fromkeys(_COLLECT_ERROR.findall(run.output)))  # named here: the tail may not show them
        where = f" ({', '.join(modules)})" if modules else ""
        return RepoRejected("collection_failed", f"pytest could not collect the suite{where}:\n" + tail(run.output))
    return None


STOPPED = {3: "an internal error", 4: "a usage error"}
"""pytest's exit statuses for a run that stopped before its session: `INTERNALERROR` (a plugin's `pytest_configure`
raised) or a usage error."""
TEST_FILES = r"git ls-files | grep -Ec '(^|/)(test_[^/]*|[^/]*_test)\.py$'"
SHIPS_NO_TESTS = "the checkout holds no test file (test_*.py, *_test.py): the package ships no tests"


def _stopped_early(sandbox: Sandbox, run: TestRun, rejected: RepoRejected) -> RepoRejected:
    """A run pytest stopped before its session (exit 3 or 4) is not a record lost: say what stopped it, and, where the
    checkout holds no test file at all, that the package ships no tests (bidict 0.24.1's sdist has none, while its
    `addopts` name a hypothesis profile that only its missing `tests/conftest.py` registers)."""
    if rejected.reason != "results_unreadable" or run.finished or run.results_error:
        return rejected
    if run.exit_code not in STOPPED:
        return _pytest_crashed(sandbox, run) or rejected
    error = _last_error(run.output)
    count = sandbox.execute(TEST_FILES, timeout=60).output.strip()
    stopped = f"pytest stopped with {STOPPED[run.exit_code]} (exit {run.exit_code}) before any test was collected"
    if count == "0":
        return RepoRejected("no_tests", f"{SHIPS_NO_TESTS}. Its pytest configuration is for a suite that is not "
                            f"there: {stopped}: {error}")
    return RepoRejected("pytest_error", f"{stopped}: {error}; the maintainers' run with this configuration stops "
                        "the same way:\n" + tail(run.output))


def _last_error(output: str) -> str:
    """The last line of a traceback pytest printed: its error (not the `^~~~` marks under the line it names)."""
    lines = [line.removeprefix("INTERNALERROR>").strip() for line in output.splitlines()]
    return next((line for line in reversed(lines) if line and not line.startswith(("^", "~"))), "")


_CRASHED_IN_PYTEST = re.compile(r"Traceback \(most recent call last\):\n(?:.*\n)*?\s+File \"[^\"]*/_pytest/")
VERSIONS = "python -c 'import platform, pytest; print(pytest.__version__, platform.python_version())'"


def _pytest_crashed(sandbox: Sandbox, run: TestRun) -> RepoRejected | None:
    """pytest itself raised before its session (a traceback through `_pytest/`, no record): html5lib 1.1 pins
    `pytest<6`, whose assertion rewriter builds code Python 3.10+ refuses (`required field "lineno" missing from
    alias`). Says which pytest on which Python, and that a newer one in the recipe replaces the project's pin, or an
    older sandbox Python runs it."""
    if not _CRASHED_IN_PYTEST.search(run.output):
        return None
    error = _last_error(run.output)
    versions = sandbox.execute(VERSIONS, timeout=60).output.split()
    pytest_v, python_v = versions[:2] if len(versions) >= 2 else ("?", "?")
    return RepoRejected("pytest_error", f"pytest {pytest_v}, the one the project's requirements allow, crashed before "
                        f"its session on Python {python_v}: {error}; a maintainer's run here stops the same way. An old "
                        "pin does not run on a newer Python: where the suite works with a newer pytest, name it in this "
                        "repository's `test_requirements` in the recipe (`pytest>=7.4`: it replaces the project's pin); "
                        "else set the recipe's `sandbox.python` to an older Python the pin runs on (`3.9`, Debian "
                        "bullseye's, runs pytest 5), or mine a release made for this Python:\n" + tail(run.output))


_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")
_NAMESPACE_IMPORT = re.compile(r"ImportError: cannot import name '\w+' from '([\w.]+)' \(unknown location\)")
_NAME_ERROR = re.compile(r"NameError: name '(\w+)' is not defined")
# pytest's traceback of a test module whose relative import has no package to be relative to: its file, the import
_RELATIVE_IMPORT = re.compile(r"([\w./-]+\.py):\d+: in <module>\n\s+from (\.+)([\w.]*) import [^\n]*\n"
                              r"(?:[^\n]*\n){0,3}?E\s+ImportError: attempted relative import with no known parent")
_COLLECT_ERROR = re.compile(r"_ ERROR collecting (\S+\.py) _")
GUARDED = r"""
import ast, importlib.util, json, os, sys
name, found = sys.argv[1], []
for path in sys.argv[2:]:
    try:
        tree = ast.parse(open(path, encoding="utf-8").read())
    except (OSError, SyntaxError, ValueError):
        continue
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        imports = [n for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        bound = {(a.asname or a.name).split(".")[0] for n in imports for a in n.names}
        if name not in bound:
            continue
        tops = [(n.module or "") if isinstance(n, ast.ImportFrom) else a.name for n in imports for a in n.names
                if not (isinstance(n, ast.ImportFrom) and n.level)]
        missing = [m for m in dict.fromkeys(t.split(".")[0] for t in tops if t)
                   if importlib.util.find_spec(m) is None]
        if missing:
            found.append({"file": path, "line": node.lineno, "missing": missing})
print(json.dumps(found))
"""
"""Run in the sandbox with a name a test module's import raised `NameError` for and the files the error names: the
`try:` blocks that import that name and the modules of those imports that do not import here."""


def _unmet(sandbox: Sandbox, rejected: RepoRejected, output: str) -> RepoRejected:
    """What a suite that could not be collected, or collected nothing, lacks, where the checkout shows it: a test
    module importing from a folder the sdist ships without its `__init__.py` (jmespath 1.1.0: `from tests import
    unittest`; peewee 4.5.3 ships `tests/test_utils.py` alone, which imports `.base`), a module no requirement installs (funcy 2.1's tests import `whatever`, which only its repository's
    `test_requirements.txt` names; pycodestyle 2.15.0's import its `testing/` folder, which only its `setup.cfg`
    names), an import under a guard the module cannot do without (mccabe 0.7.0's test module imports `hypothesis`
    in a `try:` and uses its `settings` at import), the network (chardet 7.7.0's conftest clones its test data), or
    no test file at all (backoff 2.2.1's sdist ships none). `output`: the run's whole output (the detail holds its
    tail)."""
    if rejected.reason == "no_tests":
        if sandbox.execute(TEST_FILES, timeout=60).output.strip() == "0":
            return RepoRejected("no_tests", f"{SHIPS_NO_TESTS}; mine its repository (a git URL), where its suite is")
        return rejected
    if rejected.reason != "collection_failed":
        return rejected
    if match := _NAMESPACE_IMPORT.search(output):
        folder = match[1].replace(".", "/")
        if sandbox.execute(f"test -d {folder} && ! test -e {folder}/__init__.py", timeout=60).exit_code == 0:
            return RepoRejected("collection_failed", f"the test modules import names from `{match[1]}`, a folder "
                                f"this checkout holds without its `{folder}/__init__.py`, which the sdist left out: a "
                                "run of this sdist fails the same way, and the maintainers' own run, in their "
                                f"repository, has the file; mine the repository (a git URL) instead. {rejected.detail}")
    if match := _RELATIVE_IMPORT.search(output):
        folder = posixpath.dirname(match[1])
        for _ in match[2][1:]:
            folder = posixpath.dirname(folder)
        target = posixpath.join(folder, *match[3].split(".")) if match[3] else folder
        if sandbox.execute(f"! test -e {shlex.quote(folder or '.')}/__init__.py", timeout=60).exit_code == 0:
            there = sandbox.execute(f"test -e {shlex.quote(target)}.py || test -d {shlex.quote(target)}",
                                    timeout=60).exit_code == 0
            lacks = f"its `{folder}/__init__.py`" + ("" if there else f" and `{target}.py`")
            return RepoRejected("collection_failed", f"`{match[1]}` imports `{match[2]}{match[3]}` relative to its "
                                f"package `{folder}`, which this checkout holds without {lacks}: the sdist ships the "
                                "suite incomplete, and a run of it fails the same way; the maintainers' own run, in "
                                "their repository, has the package whole. Mine the repository (a git URL) instead. "
                                f"{rejected.detail}")
    if _NETWORK_ERRORS.search(rejected.detail):
        url = re.search(r"https?://[^\s'\"]+", rejected.detail)
        return RepoRejected("needs_network", "the suite reaches the network while pytest collects it"
                            f"{f' (it fetches {url[0]})' if url else ''}, and a sandbox has none: its tests cannot "
                            "run offline, as verification must run them; mine a release whose suite ships its data. "
                            f"{rejected.detail}")
    if (unbound := _NAME_ERROR.search(output)) and (guarded := _guarded(sandbox, unbound[1], output)):
        where, missing = f"{guarded['file']}:{guarded['line']}", ", ".join(f"`{m}`" for m in guarded["missing"])
        return RepoRejected("collection_failed", f"the suite imports {missing} under a guard ({where}: `try: ... "
                            f"except ImportError`) and then uses `{unbound[1]}`, which only that import defines, so "
                            f"the module fails without them, and nothing the project declares installs them: name the "
                            "distributions that provide them in this repository's `test_requirements` in the recipe, "
                            f"and its image installs them. {rejected.detail}")
    absent = []  # the whole output: a long warnings summary can push the errors out of the detail's tail
    for name in dict.fromkeys(m.split(".")[0] for m in _MISSING_MODULE.findall(output)):
        here = sandbox.execute(f"ls -d {name} {name}.py src/{name} src/{name}.py 2>/dev/null", timeout=60)
        if here.output.strip():
            continue
        named = sandbox.execute(f"grep -HEm1 '(^|[^A-Za-z0-9_.-]){name}/' {_CONFIG_FILES} 2>/dev/null", timeout=60)
        if line := named.output.strip().splitlines()[0:1]:
            return RepoRejected("collection_failed", f"the suite imports `{name}`, a folder of the project that its "
                                f"configuration names ({line[0][:200]}) and that the sdist does not ship: a run of "
                                "this sdist fails the same way; mine the repository (a git URL), where the folder "
                                f"is. {rejected.detail}")
        absent.append(name)
    if absent:
        offered = _offered_by_extras(sandbox, absent)
        listed = ", ".join(f"`{n}`" + (f" (the project's optional extra `{offered[n][0]}` installs "
                                        f"{', '.join(f'`{r}`' for r in offered[n][1])})" if n in offered else "")
                           for n in absent)
        return RepoRejected("collection_failed", f"the suite imports {listed}, which "
                            f"{'is' if len(absent) == 1 else 'are'} not in the checkout "
                            "and which no requirement the project declares for its tests installs (an sdist often "
                            "leaves its test requirements file out; a project may install extras for its tests that "
                            "it does not name as test extras): name the distributions that provide them in this "
                            "repository's `test_requirements` in the recipe, and its image installs them (where one "
                            "is a folder of the project's repository that the sdist does not ship, mine the "
                            f"repository). {rejected.detail}")
    if modules := list(dict.fromkeys(_COLLECT_ERROR.findall(output))):
        named, them = ", ".join(f"`{m}`" for m in modules), "them" if len(modules) > 1 else "it"
        return RepoRejected("collection_failed", f"pytest cannot collect {named} here, and a collection error stops "
                            f"the whole suite, as it stops a maintainer's run here; where the project runs {them} only "
                            "elsewhere (on another platform, or a Python built otherwise), list "
                            f"{them} under this repository's `ignore_tests` in the recipe, and the rest of its suite "
                            f"is mined. {rejected.detail}")
    return rejected


_CONFIG_FILES = "setup.cfg tox.ini pyproject.toml MANIFEST.in setup.py"


def _offered_by_extras(sandbox: Sandbox, modules: list[str]) -> dict[str, tuple[str, list[str]]]:
    """{module: (extra, its requirements)} for the modules of `modules` that an optional extra of the project's
    `pyproject.toml` names, by the extra's name or a requirement's (cattrs 26.2.1's tests import `msgspec` and `bson`,
    which its extras `msgspec` and `bson` install, and its maintainers' run installs every extra)."""
    try:
        data = tomllib.loads(sandbox.read_file("pyproject.toml").decode())
        extras = data["project"]["optional-dependencies"]
    except Exception:  # noqa: BLE001 - no pyproject, no extras, not TOML: nothing to offer
        return {}
    out: dict[str, tuple[str, list[str]]] = {}
    for module in modules:
        for extra, reqs in extras.items() if isinstance(extras, dict) else ():
            reqs = [r for r in reqs if isinstance(r, str)] if isinstance(reqs, list) else []
            if canonicalize_name(module) in {canonicalize_name(extra), *map(requirement_name, reqs)}:
                out[module] = (extra, reqs)
                break
    return out


def _guarded(sandbox: Sandbox, name: str, detail: str) -> dict | None:
    """The first guarded import (`GUARDED`) of `name` in the files `detail` names, with what of it does not import."""
    files = [f for f in dict.fromkeys(re.findall(r"[\w./-]+\.py\b", detail)) if not f.startswith("/")]
    if not files:
        return None
    res = sandbox.execute(shlex.join(["python3", "-c", GUARDED, name, *files]), timeout=60)
    try:
        found = json.loads(res.output.strip().splitlines()[-1]) if res.exit_code == 0 else []
    except (ValueError, IndexError):
        found = []
    return found[0] if found else None


DISK_FULL_MIB = 64
"""What a killed or cut-short suite must have written for its true reason to be a full disk, not memory."""
WRITTEN = ("{ du -scm /tmp /var/tmp \"$HOME\" /dev/shm 2>/dev/null | tail -1; "
           "git ls-files -oz 2>/dev/null | du -cm --files0-from=- 2>/dev/null | tail -1; } | awk '{s+=$1} END {print s+0}'")


def _disk_full(sandbox: Sandbox, rejected: RepoRejected) -> RepoRejected:
    """A suite that filled the sandbox's writable directories was killed for memory (tmpfs pages count against it)
    or lost the harness's record: name the disk as the reason, with what it wrote and the limits it hit."""
    # a harness record grown on purpose is `results_unreadable` whatever its size; a record lost to a full disk is not
    if rejected.reason != "out_of_memory" and not (rejected.reason == "results_unreadable"
                                                   and "No space left on device" in rejected.detail):
        return rejected
    res = sandbox.execute(WRITTEN, timeout=60)
    written = int(res.output.strip() or 0) if res.exit_code == 0 and res.output.strip().isdigit() else 0
    if written < DISK_FULL_MIB:
        return rejected
    limits = getattr(sandbox, "limits", None)
    caps = f" (sandbox.disk={limits.disk} per directory; the writes count against sandbox.memory={limits.memory})" \
        if limits is not None else ""
    return RepoRejected("disk_full", f"the suite wrote {written} MiB into the sandbox's writable directories until it "
                        f"was stopped{caps}; a usable suite cleans up after itself. Before that: {rejected.detail}")


def reference_run(sandbox: Sandbox, *, runs: int = 1, timeout: float = 300.0,
                  cover: list[str] | None = None, probe: dict[str, list[int]] | None = None) -> ReferenceRun:
    """Run the clean suite `runs` times; only tests that passed every time, and whose ids select them, are usable.

    The first run is the whole suite the maintainers' way, and records per-test coverage contexts (which test
    executed which line) of the files `cover` names, or of every file when None; with `probe`, of only the lines it
    names per file, recorded by line probes at about a plain run's cost (`selection_lines.probe_plan`). The later
    runs select the first run's passing tests by id, the way validation and verification select tests: a test that
    fails then is flaky. With one run, its passing tests are collected again, selected by id, and nothing runs: the
    same proof that each id selects its test (a test whose id does not round-trip is excluded as `missing`), at the
    cost of a collection instead of a whole suite. A test that fails at random then gets its second chance to show
    it where it matters: a task's gold proof runs every test the bug's change reached again on the clean repository.
    A test the project marks flaky is excluded whatever it did (`MARKED_FLAKY`), and so is a test that times code
    (`TIMED`). Raises RepoRejected when the suite cannot serve as ground truth.
    """
    started = time.monotonic()
    sandbox.reset()
    first = run_tests(sandbox, None, timeout=timeout, coverage=True, cover=cover, probe=probe)
    if (rejected := _reject_reason(first, timeout)) is not None:
        raise _stopped_early(sandbox, first, _unmet(sandbox, _disk_full(sandbox, rejected), first.output))
    passed_first = sorted(t for t, o in first.outcomes.items() if o == "passed")
    outcomes = [first.outcomes]
    last = first
    for _ in range(runs - 1):
        if not passed_first:
            break
        sandbox.reset()
        last = again = run_tests(sandbox, passed_first, timeout=timeout)
        if (rejected := _reject_reason(again, timeout)) is not None:
            raise _disk_full(sandbox, rejected)
        outcomes.append(again.outcomes)
    if len(outcomes) == 1 and passed_first and (collected := _collect_by_id(sandbox, passed_first, timeout)):
        outcomes.append(collected)
    excluded: dict[str, str] = {}
    passing: list[str] = []
    marked, timed = set(first.marked_flaky), set(first.timed)
    for test, outcome in first.outcomes.items():
        seen = [o.get(test, "missing") for o in outcomes]
        if outcome != "passed":
            excluded[test] = outcome
        elif test in marked:
            excluded[test] = MARKED_FLAKY
        elif test in timed:
            excluded[test] = TIMED
        elif set(seen) == {"passed"}:
            passing.append(test)
        elif "missing" in seen:
            excluded[test] = "missing when selected by its id (passed in the whole-suite run)"
        else:
            excluded[test] = "flaky: " + "/".join(sorted(set(seen)))
    if not passing:
        detail = f"no test passes on the clean repository ({summary_line(first.output)})"
        if _NETWORK_ERRORS.search(first.output):
            raise RepoRejected("needs_network", detail + "; the tests try to reach the network, which sandboxes do not have")
        raise RepoRejected("no_passing_tests", detail + ":\n" + tail(first.output))
    sandbox.reset()
    return ReferenceRun(
        image="",
        tests=first.outcomes,
        passing=sorted(passing),
        excluded=excluded,
        coverage=first.coverage,
        measured=sorted(first.probed or {}) if probe is not None else sorted(set(cover)) if cover is not None else None,
        probed=(first.probed or {}) if probe is not None else None,
        duration_s=time.monotonic() - started,
        durations=last.durations,
        overhead_s=max(0.0, last.duration_s - sum(last.durations.values())) if last.durations else 0.0,
        by_id=len(outcomes) > 1,
    )


MARKED_FLAKY = "marked flaky by the project (`@pytest.mark.flaky`): it may fail whatever a patch does"
TIMED = ("times code (reads a clock that measures elapsed time): it may fail with the machine's load, whatever a "
         "patch does")
"""Why a test the project marks flaky is no check of any task: zipp 4.1.2's complexity tests time their code
(`big_o`) and failed a verified fix's run on a busy machine."""


def _collect_by_id(sandbox: Sandbox, tests: list[str], timeout: float) -> dict[str, str] | None:
    """The passing `tests` collected again, selected by their ids, with nothing run: `passed` for each id that
    selected its test, `missing` for one that selected none. None where the harness's record of the collection
    could not be read: then no id is known to round-trip (`ReferenceRun.by_id` stays false, and the gold proofs run
    every check)."""
    sandbox.reset()
    check = run_tests(sandbox, tests, timeout=timeout, collect_only=True)
    rejected = _reject_reason(check, timeout)
    if rejected is not None and rejected.reason in ("suite_timeout", "out_of_memory"):  # a collection that hangs or
        raise _disk_full(sandbox, rejected)                                             # exhausts the sandbox
    if not check.finished or check.results_error:
        return None
    return {t: check.outcomes.get(t, "passed") for t in tests}
