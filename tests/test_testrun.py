"""JUnit and coverage parsing against the output of a real pytest run on the host."""

import subprocess
import sys
import textwrap

from trajfactory.executors.testrun import parse_coverage_json, parse_junit, summary_line


def _project(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "calc.py").write_text("def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_calc.py").write_text(textwrap.dedent("""
        import pytest
        from pkg.calc import add, sub

        def test_add():
            assert add(1, 2) == 3

        def test_fails():
            assert sub(3, 1) == 1

        @pytest.mark.parametrize("x", [1, "a b"])
        def test_param(x):
            assert x

        class TestGroup:
            def test_method(self):
                assert add(0, 0) == 0

            @pytest.mark.skip(reason="no")
            def test_skipped(self):
                pass

        @pytest.fixture
        def broken():
            raise RuntimeError("fixture")

        def test_error(broken):
            pass
    """))


def test_junit_ids_match_pytest_node_ids(tmp_path):
    _project(tmp_path)
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "junit_family=xunit1",
         f"--junitxml={junit}", "-q"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    outcomes = parse_junit(junit.read_text())
    assert outcomes == {
        "tests/test_calc.py::test_add": "passed",
        "tests/test_calc.py::test_fails": "failed",
        "tests/test_calc.py::test_param[1]": "passed",
        "tests/test_calc.py::test_param[a b]": "passed",
        "tests/test_calc.py::TestGroup::test_method": "passed",
        "tests/test_calc.py::TestGroup::test_skipped": "skipped",
        "tests/test_calc.py::test_error": "error",
    }
    assert "1 failed" in summary_line(proc.stdout)
    # The rebuilt ids are accepted back by pytest (the validator passes them as arguments).
    again = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/test_calc.py::TestGroup::test_method",
         "tests/test_calc.py::test_param[a b]"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert again.returncode == 0 and "2 passed" in again.stdout


def test_coverage_contexts_map_lines_to_tests(tmp_path):
    _project(tmp_path)
    env = {"COVERAGE_FILE": str(tmp_path / ".cov")}
    import os

    subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--cov=.", "--cov-context=test",
         "--cov-report="],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **env},
    )
    subprocess.run([sys.executable, "-m", "coverage", "json", "--show-contexts", "-o", "cov.json"],
                   cwd=tmp_path, check=True, capture_output=True, env={**os.environ, **env})
    cov = parse_coverage_json((tmp_path / "cov.json").read_text())
    add_line = cov["pkg/calc.py"][2]
    sub_line = cov["pkg/calc.py"][6]
    assert "tests/test_calc.py::test_add" in add_line
    assert "tests/test_calc.py::TestGroup::test_method" in add_line
    assert sub_line == ["tests/test_calc.py::test_fails"]


def test_import_time_and_fixture_lines_are_marked(tmp_path):
    """Code run at import or in a shared fixture reaches tests coverage does not attribute it to."""
    import os

    from trajfactory.executors.testrun import FIXTURE, IMPORT_TIME

    (tmp_path / "mod.py").write_text(
        "def build():\n    return {'a': 1}\n\n\nTABLE = build()\n\n\ndef shared():\n    return 2\n")
    (tmp_path / "test_mod.py").write_text(
        "import pytest\nfrom mod import TABLE, shared\n\n\n@pytest.fixture(scope='module')\ndef value():\n"
        "    return shared()\n\n\ndef test_one(value):\n    assert TABLE['a'] + value == 3\n\n\n"
        "def test_two(value):\n    assert value == 2\n")
    env = {**os.environ, "COVERAGE_FILE": str(tmp_path / ".cov")}
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--cov=.", "--cov-context=test",
                    "--cov-report="], cwd=tmp_path, capture_output=True, env=env)
    subprocess.run([sys.executable, "-m", "coverage", "json", "--show-contexts", "-o", "cov.json"],
                   cwd=tmp_path, check=True, capture_output=True, env=env)
    cov = parse_coverage_json((tmp_path / "cov.json").read_text())["mod.py"]
    assert IMPORT_TIME in cov[2]  # build()'s body ran only at import
    assert FIXTURE in cov[9] and "test_mod.py::test_two" not in cov[9]  # shared() ran once, in setup
