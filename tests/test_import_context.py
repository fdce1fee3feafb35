"""A line a test module's own code ran while pytest imported it (`line_probe.py`'s `FILE|import` context): it reaches
that module's tests, not the whole suite, unless another file names the module or a library module's import ran it.

Real pytest runs on the host, with the reference run's line probes (`tests/test_line_probe.py` has the rest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_line_probe import _candidate, _probed, _pytest

from trajfactory.executors.testrun import (COVERAGE_MAP_SOURCE, IMPORT_TIME, IMPORTED_BY, HARNESS_FILES, PLUGIN,
                                           PROBE_PLUGIN, PROBE_SOURCE, TestRun, parse_coverage_map, parse_results)
from trajfactory.schema import ReferenceRun
from trajfactory.synthesizers.swe.selection_lines import probe_plan
from trajfactory.synthesizers.swe.validate import _verdict, imported_with, select_tests

MOD = '''\
def double(x):
    return x * 2


def triple(x):
    return x * 3


def quad(x):
    return x * 4


def later(x):
    return x - 1
'''

FILES = {
    "pkg/__init__.py": "",
    "pkg/mod.py": MOD,
    # a library module that calls a function at its import: its state is every test's
    "pkg/table.py": "from pkg.mod import triple\n\nTABLE = [triple(1)]\n",
    # a test module whose own module-level code calls `double`, in a class body and in a parametrize list
    "tests/test_a.py": '''\
import pytest

from pkg import table
from pkg.mod import double

CASES = [double(1), double(2)]


class TestKinds:
    base = double(5)

    def test_base(self):
        assert self.base == 10


@pytest.mark.parametrize("v", CASES)
def test_case(v):
    assert v % 2 == 0


def test_table():
    assert table.TABLE == [3]
''',
    # runs `double` inside a test only; `later` too
    "tests/test_b.py": "from pkg.mod import double, later\n\n\ndef test_b():\n    assert double(3) == later(7)\n",
    "tests/test_c.py": "def test_c():\n    assert True\n",
    # `quad` at test_d's import, and test_e imports what it built: test_d's import reaches test_e's test too
    "tests/test_d.py": "from pkg.mod import quad\n\nD = quad(5)\n\n\ndef test_d():\n    assert D == 20\n",
    "tests/test_e.py": "from test_d import D\n\n\ndef test_e():\n    assert D + 1 == 21\n",
}


def _line(text: str, needle: str) -> int:
    return text.splitlines().index(needle) + 1


def test_a_test_modules_own_import_reaches_its_tests_and_a_librarys_import_reaches_every_test(tmp_path):
    root = tmp_path / "project"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    harness = tmp_path / "harness"
    harness.mkdir()
    for name, source in (*HARNESS_FILES.items(), (f"{PROBE_PLUGIN}.py", PROBE_SOURCE),
                         ("coverage_map.py", COVERAGE_MAP_SOURCE)):
        (harness / name).write_text(source)
    candidates = {name: _candidate(_line(MOD, f"def {name}(x):"), _line(MOD, f"def {name}(x):") + 1,
                                   _line(MOD, f"def {name}(x):") + 1) for name in ("double", "triple", "quad", "later")}
    outcomes, run, raw = _probed(root, harness, probe_plan(list(candidates.values())))
    assert run.returncode == 0 and set(outcomes.values()) == {"passed"} and len(outcomes) == 8, run.stdout + run.stderr
    assert "tests/test_a.py|import" in raw["contexts"] and "tests/test_d.py|import" not in raw["contexts"], raw

    coverage = parse_coverage_map(json.dumps(raw), scoped=True, teardown=True)
    passing = sorted(outcomes)
    ref = ReferenceRun(image="i", tests=outcomes, passing=passing, coverage=coverage, probed=raw["probed"],
                       measured=sorted(raw["probed"]))
    double_body = coverage["pkg/mod.py"][_line(MOD, "    return x * 2")]
    assert IMPORTED_BY + "tests/test_a.py" in double_body and IMPORT_TIME not in double_body, double_body

    # test_a's import ran `double`: every test of test_a (the class's too), and test_b, which ran it itself
    tests, how = select_tests(candidates["double"], ref, "coverage")
    assert how == "coverage" and tests == [
        "tests/test_a.py::TestKinds::test_base", "tests/test_a.py::test_case[2]", "tests/test_a.py::test_case[4]",
        "tests/test_a.py::test_table", "tests/test_b.py::test_b"], tests
    assert imported_with(candidates["double"], ref)  # its tests need a session that imports test_a again
    # a library module's import ran `triple`: any test may read what it built
    assert select_tests(candidates["triple"], ref, "coverage") == (passing, "full")
    # test_e names test_d, whose import ran `quad`: that import is any test's too
    assert IMPORT_TIME in coverage["pkg/mod.py"][_line(MOD, "    return x * 4")]
    assert select_tests(candidates["quad"], ref, "coverage") == (passing, "full")
    # a function only tests ran: their tests, in the batch worker's collected session as before
    assert select_tests(candidates["later"], ref, "coverage") == (["tests/test_b.py::test_b"], "coverage")
    assert not imported_with(candidates["later"], ref)

    # The bug, run: the selected tests in a session of their own, the way validation runs them.
    def verdict(body: str):
        (root / "pkg" / "mod.py").write_text(MOD.replace("    return x * 2", body))
        (root / "select.txt").write_text("\n".join(tests) + "\n")  # as `run_tests` selects: their files, and the ids
        _, run = _pytest(root, harness, *sorted({t.split("::")[0] for t in tests}),
                         env={"TRAJFACTORY_SELECT": str(root / "select.txt")})
        outcomes, errors, finished = parse_results((root / "results.jsonl").read_text())
        result = TestRun(outcomes=outcomes, exit_code=run.returncode, output=run.stdout, duration_s=0.0,
                         collect_errors=errors, finished=finished)
        return _verdict(candidates["double"], tests, how, ref, timeout=60.0, duration=0.0, run=result)

    # wrong for 3 only: test_b fails, test_a's import and tests stand, and the tests not selected pass
    wrong = verdict("    return x * 2 + (x == 3)")
    assert wrong.status == "valid" and wrong.FAIL_TO_PASS == ["tests/test_b.py::test_b"], wrong
    assert "tests/test_c.py::test_c" in wrong.PASS_TO_PASS and "tests/test_a.py::test_table" in wrong.PASS_TO_PASS
    # raising for 1: test_a no longer imports, which stops pytest at collection, the whole suite's run too
    broken = verdict("    return x * 2 if x != 1 else 1 // 0")
    assert broken.status == "no_pass_to_pass" and not broken.PASS_TO_PASS, broken
    assert "tests/test_a.py" in broken.detail and "stops pytest's whole suite at collection" in broken.detail


def test_a_bug_that_breaks_a_conftests_import_is_no_pass_to_pass_not_an_error(tmp_path):
    """A conftest that calls the library at its import (marshmallow's builds its schemas there): a bug that makes
    that call raise stops pytest before it runs any test (exit 4), in any selection and in the maintainers' whole
    suite. No test passes under the bug, so the candidate is `no_pass_to_pass`, with the conftest named, rather than
    a run the harness could not judge (`error`)."""
    root = tmp_path / "project"
    files = {**FILES, "tests/conftest.py": "from pkg.mod import later\n\nBASE = later(1)\n"}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    harness = tmp_path / "harness"
    harness.mkdir()
    for name, text in HARNESS_FILES.items():
        (harness / name).write_text(text)
    line = _line(MOD, "def later(x):")
    candidate = _candidate(line, line + 1, line + 1)
    tests = ["tests/test_b.py::test_b", "tests/test_c.py::test_c"]
    ref = ReferenceRun(image="i", tests={t: "passed" for t in tests}, passing=tests)

    def verdict(body: str):
        (root / "pkg" / "mod.py").write_text(MOD.replace("    return x - 1", body))
        env = {**os.environ, "PYTHONPATH": str(harness), "PYTHONDONTWRITEBYTECODE": "1",
               "TRAJFACTORY_RESULTS": str(root / "results.jsonl")}
        (root / "results.jsonl").unlink(missing_ok=True)
        run = subprocess.run([sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", "-q",
                              f"--rootdir={root}", *tests], cwd=root, capture_output=True, text=True, env=env)
        records = (root / "results.jsonl").read_text() if (root / "results.jsonl").exists() else ""
        outcomes, errors, finished = parse_results(records)
        result = TestRun(outcomes=outcomes, exit_code=run.returncode, output=run.stdout + run.stderr,
                         duration_s=0.0, collect_errors=errors, finished=finished)
        return result, _verdict(candidate, tests, "full", ref, timeout=60.0, duration=0.0, run=result)

    run, broken = verdict("    return x - 1 if x != 1 else 1 // 0")
    assert run.exit_code == 4 and not run.finished and run.conftest_failed.endswith("tests/conftest.py"), run.output
    assert broken.status == "no_pass_to_pass" and not broken.PASS_TO_PASS, broken
    assert "tests/conftest.py does not import" in broken.detail and "ZeroDivisionError" in broken.detail, broken
    # a bug the conftest's call does not reach is judged by the tests as before
    run, wrong = verdict("    return x - 2 if x != 1 else 0")
    assert run.exit_code == 1 and not run.conftest_failed
    assert wrong.status == "valid" and wrong.FAIL_TO_PASS == ["tests/test_b.py::test_b"], wrong
