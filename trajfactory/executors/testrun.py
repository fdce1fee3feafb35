"""Running pytest inside a sandbox and reading its results per test (JUnit XML, coverage contexts)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from trajfactory.executors.base import Sandbox

SCRATCH = "/tmp/trajfactory"
PYTEST = (
    "python -m pytest -p no:cacheprovider -o junit_family=xunit1 -o addopts='' "
    "-q --tb=short --no-header -rN"
)
# pytest exit codes (pytest.ExitCode)
EXIT_OK, EXIT_TESTS_FAILED, EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_TESTS = 0, 1, 2, 3, 4, 5


@dataclass
class TestRun:
    outcomes: dict[str, str]
    """pytest node id -> passed | failed | error | skipped."""
    exit_code: int
    output: str
    duration_s: float
    timed_out: bool = False
    coverage: dict[str, dict[int, list[str]]] = field(default_factory=dict)
    """file -> line -> node ids that executed it (only when run with coverage)."""

    @property
    def collection_failed(self) -> bool:
        return self.exit_code in (EXIT_INTERRUPTED, EXIT_USAGE) and "error" in self.output.lower()


def _nodeid(case: ET.Element) -> str:
    """Rebuild the pytest node id from an xunit1 testcase (file + classname + name)."""
    name = case.get("name", "")
    classname = case.get("classname", "")
    file = case.get("file")
    if not file:
        parts = classname.split(".")
        return "/".join(parts) + ".py::" + name if parts and parts[0] else name
    module = file[:-3].replace("/", ".") if file.endswith(".py") else file.replace("/", ".")
    rest = classname[len(module) :].lstrip(".") if classname.startswith(module) else ""
    return "::".join([file, *filter(None, rest.split(".")), name])


def parse_junit(xml_text: str) -> dict[str, str]:
    """Outcome per test id from pytest's JUnit XML (xunit1 family, which records the file)."""
    if not xml_text.strip():
        return {}
    root = ET.fromstring(xml_text)
    outcomes: dict[str, str] = {}
    for case in root.iter("testcase"):
        tags = {child.tag for child in case}
        if "error" in tags:
            outcome = "error"
        elif "failure" in tags:
            outcome = "failed"
        elif "skipped" in tags:
            outcome = "skipped"
        else:
            outcome = "passed"
        nodeid = _nodeid(case)
        # A teardown error is reported as a second testcase with the same id: the worse outcome wins.
        if outcomes.get(nodeid) in ("failed", "error") and outcome == "passed":
            continue
        outcomes[nodeid] = outcome
    return outcomes


IMPORT_TIME = "<import>"
"""Marks a line executed outside any test (at import or collection): a change there can reach every test."""
FIXTURE = "<fixture>"
"""Marks a line executed in a fixture's setup or teardown: shared fixtures are attributed to one test only."""


def parse_coverage_json(text: str) -> dict[str, dict[int, list[str]]]:
    """coverage.py's `json --show-contexts` report -> file -> line -> test node ids (+ the markers above)."""
    data = json.loads(text)
    result: dict[str, dict[int, list[str]]] = {}
    for file, info in data.get("files", {}).items():
        lines: dict[int, list[str]] = {}
        for line, contexts in (info.get("contexts") or {}).items():
            tests: set[str] = set()
            for context in contexts:
                if not context:
                    tests.add(IMPORT_TIME)
                    continue
                test, _, phase = context.rpartition("|")
                tests.add(test or context)
                if phase in ("setup", "teardown"):
                    tests.add(FIXTURE)
            if tests:
                lines[int(line)] = sorted(tests)
        if lines:
            result[file] = lines
    return result


def run_tests(
    sandbox: Sandbox,
    test_ids: list[str] | None = None,
    *,
    timeout: float,
    coverage: bool = False,
) -> TestRun:
    """Run the given tests (all when None) and return per-test outcomes."""
    sandbox.execute(f"rm -rf {SCRATCH} && mkdir -p {SCRATCH}", timeout=30)
    args = ""
    if test_ids is not None:
        # An args file keeps long id lists off the command line (pytest >= 8.2 reads @file).
        sandbox.write_file(f"{SCRATCH}/tests.txt", "\n".join(test_ids) + "\n")
        args = f"@{SCRATCH}/tests.txt"
    cov = ""
    if coverage:
        cov = "--cov=. --cov-context=test --cov-report= "
    env = f"COVERAGE_FILE={SCRATCH}/.coverage PYTHONDONTWRITEBYTECODE=1"
    cmd = f"{env} {PYTEST} {cov}--junitxml={SCRATCH}/junit.xml {args}"
    result = sandbox.execute(cmd, timeout=timeout)
    outcomes: dict[str, str] = {}
    if not result.timed_out:
        try:
            outcomes = parse_junit(sandbox.read_file(f"{SCRATCH}/junit.xml").decode("utf-8", "replace"))
        except (FileNotFoundError, ET.ParseError, OSError):
            outcomes = {}
    cov_map: dict[str, dict[int, list[str]]] = {}
    if coverage and not result.timed_out:
        report = sandbox.execute(
            f"cd {sandbox.workdir} && COVERAGE_FILE={SCRATCH}/.coverage python -m coverage json "
            f"--show-contexts -q -o {SCRATCH}/coverage.json",
            timeout=timeout,
        )
        if report.exit_code == 0:
            cov_map = parse_coverage_json(sandbox.read_file(f"{SCRATCH}/coverage.json").decode())
    return TestRun(
        outcomes=outcomes,
        exit_code=result.exit_code,
        output=result.output,
        duration_s=result.duration_s,
        timed_out=result.timed_out,
        coverage=cov_map,
    )


def summary_line(output: str) -> str:
    """pytest's closing summary line (or the last line of output), for short evidence strings."""
    lines = [ln.strip("= ").strip() for ln in output.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.search(r"\b(passed|failed|errors?|no tests ran)\b", line):
            return line
    return lines[-1] if lines else ""
