"""Real pytest on chosen test ids in a folder, for the tests that run copies of tests beside their originals
(mutants and their helpers' copies): each id's outcome, and for a failure the exception that failed it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PLUGIN = '''
import json, os
import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.when == "call" or report.outcome != "passed":
        kind = call.excinfo.typename if call.excinfo is not None and report.outcome == "failed" else ""
        with open(os.environ["OUTCOMES_FILE"], "a") as fh:
            fh.write(json.dumps([report.nodeid, report.when, report.outcome, kind]) + "\\n")
'''


def outcomes(folder: Path, ids: list[str]) -> dict[str, str]:
    """pytest on `ids` in `folder`: id -> `passed`, `skipped`, `failed on an assertion` (its call raised
    `AssertionError`, as a failed `assert` or unittest assertion does), `failed (Error)` for any other exception (an
    `AttributeError` is not the failure a mutant is for), or `error` for a failed setup or teardown. A test whose
    `subTest` failed is failed: pytest 9 reports each failed subtest, then the test itself as passed."""
    plugin_dir = folder / ".outcomes-plugin"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / "outcomes_plugin.py").write_text(PLUGIN)
    record = plugin_dir / "outcomes.jsonl"
    record.unlink(missing_ok=True)
    env = {**os.environ, "OUTCOMES_FILE": str(record),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_dir), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "pytest", "-p", "outcomes_plugin", "-p", "no:cacheprovider", "-q", *ids],
                   cwd=folder, capture_output=True, text=True, timeout=120, env=env)
    out: dict[str, str] = {}
    for line in record.read_text().splitlines() if record.exists() else []:
        test, when, outcome, kind = json.loads(line)
        if when != "call":
            got = "skipped" if outcome == "skipped" else "error"
        else:
            got = "passed" if outcome == "passed" else "skipped" if outcome == "skipped" else \
                "failed on an assertion" if kind == "AssertionError" else f"failed ({kind})"
        if not out.get(test, "passed").startswith("failed"):  # a failed subtest (pytest 9 reports each) fails it
            out[test] = got
    return out
