"""Running pytest inside a sandbox and reading its results per test, from the harness's own record.

Every test run of the factory (reference runs, validation, gold proofs, verification, statements) goes through
`run_tests`: `python -m pytest` in the checkout with the factory's plugin (`pytest_harness.py`, copied into the
sandbox outside the checkout), which selects the requested node ids and records each test's outcome. Node ids
are pytest's own, so they round-trip between runs on any pytest version the project pins.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import shlex
import signal
from dataclasses import dataclass, field
from pathlib import Path

from trajfactory.executors.base import READ_LIMIT, FileTooLargeError, Sandbox

SCRATCH = "/tmp/trajfactory"
HARNESS_DIR = "/tmp/trajfactory-harness"
"""Where the plugin lives in the sandbox: outside the checkout, so no patch can replace it."""
COVERAGE_READ_LIMIT = 4 * READ_LIMIT
"""The per-test coverage map is large for a large suite (networkx: ~40 MB); it is still capped."""
PLUGIN = "trajfactory_harness"
PLUGIN_SOURCE = (Path(__file__).with_name("pytest_harness.py")).read_text()
HARNESS_FILES = {f"{PLUGIN}.py": PLUGIN_SOURCE,
                 "trajfactory_harness_reaches.py": (Path(__file__).with_name("harness_reaches.py")).read_text()}
"""The plugin's files, as they go into `HARNESS_DIR` (the plugin imports its audit hook's module by that name)."""
COVERAGE_MAP_SOURCE = (Path(__file__).with_name("coverage_map.py")).read_text()
PROBE_PLUGIN = "trajfactory_probe"
PROBE_SOURCE = (Path(__file__).with_name("line_probe.py")).read_text()
SEAL_MARK = re.search(r'^SEAL_MARK = "(.+)"$', PLUGIN_SOURCE, re.M).group(1)
"""Starts the line the plugin writes to the run's output with its seal of the record (`pytest_harness.py`)."""
_SEAL_LINE = re.compile(r"\n?^" + re.escape(SEAL_MARK) + r" ([0-9a-f]{64}) (\d+)$\n?", re.M)
PYTEST = f'python -m pytest -p {PLUGIN} -p no:cacheprovider -o addopts="$TRAJFACTORY_ADDOPTS" -q --tb=short --no-header -rN --color=no'
# pytest exit codes (pytest.ExitCode)
EXIT_OK, EXIT_TESTS_FAILED, EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_TESTS = 0, 1, 2, 3, 4, 5
EXIT_CPU = 128 + signal.SIGXCPU
"""What the shell reports for a process its CPU limit stopped (SIGXCPU at the soft limit, `cpu_limit`)."""


def cpu_seconds(limit: float) -> int:
    """A CPU limit as the kernel counts it: whole seconds (`RLIMIT_CPU`), at least 1."""
    return max(1, math.ceil(limit))


def cpu_note(seconds: int) -> str:
    """The line a run stopped by its CPU limit gets at the end of its output."""
    return f"\n[command stopped: past its limit of {seconds} CPU seconds]"


@dataclass
class TestRun:
    outcomes: dict[str, str]
    """pytest node id -> passed | failed | error | skipped | missing (selected, but no such test was collected)."""
    exit_code: int
    output: str
    duration_s: float
    timed_out: bool = False
    cpu_out: bool = False
    """Timed out by its CPU limit (`run_tests`'s `cpu_limit`) rather than the wall clock."""
    coverage: dict[str, dict[int, list[str]]] = field(default_factory=dict)
    """file -> line -> node ids that executed it (only when run with coverage)."""
    probed: dict[str, list[int]] | None = None
    """With line probes instead of coverage (`line_probe.py`): the wanted lines of the files they know about
    (instrumented, or never imported); any other line tells nothing. None: coverage measured whole files."""
    collect_errors: dict[str, str] = field(default_factory=dict)
    """Modules (collection node ids) that did not import, with the error's tail."""
    finished: bool = False
    """The plugin recorded the end of the session: without it the run was cut short (a crash, `os._exit`, a kill)."""
    durations: dict[str, float] = field(default_factory=dict)
    """pytest node id -> seconds its setup, call and teardown took (wall clock, pytest's own durations)."""
    results_error: str = ""
    """Why the harness's record could not be read (e.g. a test grew it past the read limit) or was not trusted (it
    was changed after the harness wrote it); empty when it was read and trusted."""
    sealed: bool = False
    """The record read is exactly what the harness wrote, byte for byte, as its seal in the output says (only
    `run_tests` seals: `check_seal`). A session that crashed or exited early wrote no seal."""
    reaches: list[dict] = field(default_factory=list)
    """A sealed run's reaches into the interpreter made by code in the checkout, as its audit hook saw them:
    `{"reach", "event", "file", "line"}` (`harness_reaches.watch_reaches`)."""
    marked_flaky: list[str] = field(default_factory=list)
    """The collected tests the project marks `flaky` (`@pytest.mark.flaky`: a timing or environment test its
    maintainers let fail now and then)."""
    timed: list[str] = field(default_factory=list)
    """The collected tests that time code (`pytest_harness._times_code`: they read a clock that measures elapsed
    time), whose outcome may hang on the machine's load."""

    @property
    def collection_failed(self) -> bool:
        return self.exit_code in (EXIT_INTERRUPTED, EXIT_USAGE) and "error" in self.output.lower()

    @property
    def conftest_failed(self) -> str:
        """The conftest.py pytest could not import before its session began (it then exits 4 and runs no test, in
        any selection that loads that conftest, the whole suite included); '' when none."""
        if self.exit_code != EXIT_USAGE or self.finished:
            return ""
        found = _CONFTEST_FAILED.search(self.output)
        return found.group(1) if found else ""


_CONFTEST_FAILED = re.compile(r"ImportError while loading conftest '([^'\n]+)'")
"""pytest's line for a conftest that raised at its import, whatever it raised."""

_WORST = {"passed": 0, "skipped": 1, "missing": 2, "failed": 3, "error": 4}
"""How bad an outcome is: a test with more than one record keeps its worst (a record added later cannot undo one)."""


def parse_results(text: str) -> tuple[dict[str, str], dict[str, str], bool]:
    """The plugin's JSON lines -> (outcome per test, collection errors, whether the session finished). A test
    recorded more than once keeps its worst outcome, so a record appended later never turns a failure into a pass."""
    outcomes: dict[str, str] = {}
    errors: dict[str, str] = {}
    finished = False
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if "test" in record:
            before = outcomes.get(record["test"])
            if before is None or _WORST.get(record["outcome"], 4) >= _WORST.get(before, 4):
                outcomes[record["test"]] = record["outcome"]
        elif "collect_error" in record:
            errors[record["collect_error"]] = record.get("detail", "")
        elif "session" in record:
            finished = True
    return outcomes, errors, finished


def parse_listed(text: str, key: str) -> list[str]:
    """The plugin's JSON lines -> the collected tests it listed under `key` (`marked_flaky`: those the project marks
    `flaky`; `timed`: those that time code)."""
    listed = []
    for line in text.splitlines():
        if f'"{key}"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get(key), str):
            listed.append(record[key])
    return listed


def parse_reaches(text: str) -> list[dict]:
    """The plugin's JSON lines -> the reaches into the interpreter its audit hook recorded, in order."""
    reaches = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "reach" in record and isinstance(record.get("line"), int):
            reaches.append(record)
    return reaches


def check_seal(key: bytes, record: bytes, output: str) -> tuple[bool, str]:
    """Whether the harness's `record` is what it wrote, by the seals its output holds (`pytest_harness.py`):
    (sealed, why not). No seal and no end of session in the record: the session crashed or exited before the plugin
    sealed it (not sealed, no reason). A seal that does not match, or an ended session without one: the record was
    changed after the plugin wrote it, or the seal was kept out of the output."""
    want = hmac.new(key, record, hashlib.sha256).hexdigest()
    seals = _SEAL_LINE.findall(output)
    if any(hmac.compare_digest(digest, want) and int(size) == len(record) for digest, size in seals):
        return True, ""
    if seals:
        return False, (f"the harness's record ({len(record):,} bytes) is not what the harness wrote: it was changed "
                       "after the harness wrote it")
    if b'{"session": ' in record:
        return False, ("the harness's record says the session ended but the harness's seal is missing from the "
                       "output (the output was cut, or the record was written by something else)")
    return False, ""


def parse_durations(text: str) -> dict[str, float]:
    """The plugin's JSON lines -> seconds per test (its setup, call and teardown); tests without a figure are left
    out."""
    durations: dict[str, float] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "test" in record and isinstance(record.get("duration"), (int, float)):
            durations[record["test"]] = float(record["duration"])
    return durations


CONTEXTS_VERSION = "4"
"""Bumped when the meaning of the coverage contexts changes (2: fixtures wider than a test have contexts of their
own; 3: their teardown too; 4: the line probes name a test module's own import); reference runs are cached on it."""
SCOPE = "<scope>"
"""Prefix of a fixture scope's marker, `<scope>NODE_ID`: a line a class-, module-, package- or session-scoped
fixture ran while it was set up reaches every test under that node id (`validate.select_tests`)."""
IMPORTED_BY = "<imported-by>"
"""Prefix of a test module's import marker, `<imported-by>FILE`: a line that test module's own module-level code ran
while pytest imported it (`line_probe.py`) reaches every test of it, and only in a session that imports it again."""
IMPORT_TIME = "<import>"
"""Marks a line executed outside any test (at import or collection): a change there can reach every test."""
FIXTURE = "<fixture>"
"""Marks a line executed in a fixture's setup or teardown: shared fixtures are attributed to one test only."""


def parse_coverage_map(text: str, scoped: bool = False, teardown: bool = False) -> dict[str, dict[int, list[str]]]:
    """The sandbox's per-test coverage map (`coverage_map.py`) -> file -> line -> test node ids (+ the markers
    above). `scoped`: the harness gave the setup of fixtures wider than a test contexts of their own
    (`pytest_harness.py`), so a test's `|setup` context is that test's alone; otherwise any setup may be a shared
    fixture's. `teardown`: their teardown too, so a test's `|teardown` context is that test's alone."""
    data = json.loads(text)
    tests_of: list[tuple[str, ...]] = []  # per context: the test it names, plus FIXTURE for a setup or teardown
    for context in data.get("contexts", []):
        if not context:
            tests_of.append((IMPORT_TIME,))
            continue
        test, _, phase = context.rpartition("|")
        if phase == "import":
            tests_of.append((IMPORTED_BY + test,))
        elif phase.endswith("-fixture"):
            tests_of.append((SCOPE + test,) if scoped else (FIXTURE,))
        elif (phase == "teardown" and not (scoped and teardown)) or (phase == "setup" and not scoped):
            tests_of.append((test or context, FIXTURE))
        else:
            tests_of.append((test or context,))
    result: dict[str, dict[int, list[str]]] = {}
    for file, by_line in data.get("files", {}).items():
        lines: dict[int, list[str]] = {}
        for line, indices in by_line.items():
            tests = {name for i in indices for name in tests_of[i]}
            if tests:
                lines[int(line)] = sorted(tests)
        if lines:
            result[file] = lines
    return result


def coverage_include(workdir: str, files: list[str]) -> str:
    """A coverage configuration that measures only `files` (relative to `workdir`); glob characters in a name are
    escaped. With no file at all it still names one that does not exist, so nothing is measured."""
    escape = str.maketrans({"[": "[[]", "*": "[*]", "?": "[?]"})
    paths = [f"{workdir.rstrip('/')}/{f}".translate(escape) for f in sorted(set(files))] or [f"{workdir}/-nothing-"]
    return "[run]\ninclude =\n" + "".join(f"    {p}\n" for p in paths)


def run_tests(
    sandbox: Sandbox,
    test_ids: list[str] | None = None,
    *,
    timeout: float,
    coverage: bool = False,
    cover: list[str] | None = None,
    probe: dict[str, list[int]] | None = None,
    collect_only: bool = False,
    cpu_limit: float | None = None,
    last: list[str] | None = None,
) -> TestRun:
    """Run the given tests (all when None) and return per-test outcomes; with `coverage`, per-test line coverage of
    the checkout's files, or only of the files `cover` names (paths relative to the checkout), or, with `probe`,
    only of the lines it names per file, recorded by line probes (`line_probe.py`) at about a plain run's cost.
    `collect_only`: collect the selection and run nothing; the outcomes then hold only the ids that selected no
    collected test (`missing`). `cpu_limit`: the CPU seconds pytest may use beside the `timeout` of the wall clock (a
    soft `RLIMIT_CPU`: SIGXCPU stops it, and the run counts as timed out); a busy machine slows the wall clock, never
    this, so a bug that loops forever is stopped after seconds of its own work. `last`: ids of the selection run
    after all the others (the verifier's twins: state a twin leaves behind reaches none of the project's tests)."""
    sandbox.execute(f"rm -rf {SCRATCH} && mkdir -p {SCRATCH} {HARNESS_DIR}", timeout=30)
    for name, text in HARNESS_FILES.items():
        sandbox.write_file(f"{HARNESS_DIR}/{name}", text)
    key = secrets.token_bytes(32)  # the plugin reads and deletes it at import: the seal of its record
    sandbox.write_file(f"{SCRATCH}/seal.key", key)
    env = [f"TRAJFACTORY_RESULTS={SCRATCH}/results.jsonl", f"TRAJFACTORY_SEAL={SCRATCH}/seal.key",
           f"COVERAGE_FILE={SCRATCH}/.coverage",
           "PYTHONDONTWRITEBYTECODE=1", "PY_COLORS=0", f'PYTHONPATH="{HARNESS_DIR}${{PYTHONPATH:+:$PYTHONPATH}}"']
    args = ""
    if test_ids is not None:
        sandbox.write_file(f"{SCRATCH}/tests.txt", "\n".join(test_ids) + "\n")
        env.append(f"TRAJFACTORY_SELECT={SCRATCH}/tests.txt")
        # collect only the files the selection lives in (a file named here is collected whatever `python_files` says)
        args = " ".join(shlex.quote(f) for f in sorted({t.split("::", 1)[0] for t in test_ids}))
    if last:
        sandbox.write_file(f"{SCRATCH}/last.txt", "\n".join(last) + "\n")
        env.append(f"TRAJFACTORY_LAST={SCRATCH}/last.txt")
    if collect_only:
        args = f"--collect-only {args}".rstrip()
    cov = ""
    if coverage:
        # our own configuration, not the project's (pycodestyle 2.15.0's `setup.cfg` loads a coverage plugin,
        # covdefaults, that its sdist does not declare, and the run died): the checkout's files, or only those `cover`
        # names (the tracer still sees every call)
        rc = f"[run]\nsource =\n    {sandbox.workdir}\n" if cover is None else coverage_include(sandbox.workdir, cover)
        sandbox.write_file(f"{SCRATCH}/coveragerc", rc)
        cov = f"--cov --cov-config={SCRATCH}/coveragerc --cov-context=test --cov-report= "
    if coverage and probe is not None:
        sandbox.write_file(f"{HARNESS_DIR}/{PROBE_PLUGIN}.py", PROBE_SOURCE)
        sandbox.write_file(f"{SCRATCH}/probe-plan.json", json.dumps({f: sorted(set(n)) for f, n in probe.items()}))
        env += [f"TRAJFACTORY_PROBE={SCRATCH}/probe-plan.json", f"TRAJFACTORY_PROBE_OUT={SCRATCH}/probe-map.json"]
        cov = f"-p {PROBE_PLUGIN} "
    if coverage:
        env.append("TRAJFACTORY_FIXTURE_SCOPES=1")
    # --rootdir: node ids stay relative to the checkout whichever files are named (pytest would otherwise root
    # them at the files' common ancestor in a project without a config file)
    limit = f"ulimit -c 0; ulimit -S -t {cpu_seconds(cpu_limit)}; " if cpu_limit else ""
    result = sandbox.execute(f"{limit}{' '.join(env)} {PYTEST} --rootdir={sandbox.workdir} {cov}{args}",
                             timeout=timeout)
    cpu_out = bool(cpu_limit) and result.exit_code == EXIT_CPU and not result.timed_out
    if cpu_out:
        result.timed_out = True
        result.output += cpu_note(cpu_seconds(cpu_limit))
    outcomes: dict[str, str] = {}
    errors: dict[str, str] = {}
    finished = scoped = teardown = False
    durations: dict[str, float] = {}
    results_error = ""
    sealed = False
    reaches: list[dict] = []
    marked_flaky: list[str] = []
    timed: list[str] = []
    if not result.timed_out:
        try:
            raw = sandbox.read_file(f"{SCRATCH}/results.jsonl")
            sealed, results_error = check_seal(key, raw, result.output)
            records = "" if results_error else raw.decode("utf-8", "replace")
            outcomes, errors, finished = parse_results(records)
            durations = parse_durations(records)
            reaches = parse_reaches(records)
            marked_flaky, timed = parse_listed(records, "marked_flaky"), parse_listed(records, "timed")
            scoped = '{"fixture_scopes": true}' in records
            teardown = '{"fixture_teardown": true}' in records
        except FileTooLargeError as exc:
            results_error = str(exc)
        except (FileNotFoundError, OSError):
            pass
    cov_map: dict[str, dict[int, list[str]]] = {}
    probed: dict[str, list[int]] | None = None
    if coverage and probe is not None and not result.timed_out:
        try:
            text = sandbox.read_file(f"{SCRATCH}/probe-map.json", max_bytes=COVERAGE_READ_LIMIT).decode()
            cov_map = parse_coverage_map(text, scoped, teardown)
            probed = {f: sorted(lines) for f, lines in json.loads(text).get("probed", {}).items()}
        except (FileNotFoundError, OSError, ValueError):
            probed = {}  # the session never ended (os._exit, a crash): nothing is known of any line
    elif coverage and not result.timed_out:
        sandbox.write_file(f"{HARNESS_DIR}/coverage_map.py", COVERAGE_MAP_SOURCE)
        report = sandbox.execute(
            f"cd {sandbox.workdir} && COVERAGE_FILE={SCRATCH}/.coverage python {HARNESS_DIR}/coverage_map.py "
            f"{SCRATCH}/coverage-map.json",
            timeout=timeout,
        )
        if report.exit_code == 0:
            # a large suite's per-test contexts make a big file: a wider cap, still a cap
            text = sandbox.read_file(f"{SCRATCH}/coverage-map.json", max_bytes=COVERAGE_READ_LIMIT).decode()
            cov_map = parse_coverage_map(text, scoped, teardown)
    return TestRun(
        outcomes=outcomes,
        exit_code=result.exit_code,
        output=_SEAL_LINE.sub("", result.output),
        duration_s=result.duration_s,
        timed_out=result.timed_out,
        cpu_out=cpu_out,
        coverage=cov_map,
        probed=probed,
        collect_errors=errors,
        finished=finished,
        durations=durations,
        results_error=results_error,
        sealed=sealed,
        reaches=reaches,
        marked_flaky=marked_flaky, timed=timed,
    )


def summarize(outcomes: dict[str, str]) -> str:
    """`20 passed, 1 failed` of the given outcomes (pytest's own words, in pytest's order)."""
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    order = ("failed", "passed", "skipped", "error", "missing")
    return ", ".join(f"{counts[o]} {o}" for o in order if counts.get(o)) or "no tests ran"


def summary_line(output: str) -> str:
    """pytest's closing summary line (or the last line of output), for short evidence strings."""
    lines = [ln.strip("= ").strip() for ln in output.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.search(r"\b(passed|failed|errors?|no tests ran)\b", line):
            return line
    return lines[-1] if lines else ""
