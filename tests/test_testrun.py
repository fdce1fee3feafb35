"""The harness plugin's records and coverage parsing against real pytest runs on the host."""

import os
import subprocess
import sys
import textwrap

import pytest

from trajfactory.executors.testrun import (COVERAGE_MAP_SOURCE, PLUGIN, PLUGIN_SOURCE, PROBE_PLUGIN, PROBE_SOURCE,
                                           parse_coverage_map, parse_results, summary_line)


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


def _run(tmp_path, *args, select=None):
    """pytest on the host with the harness plugin, as `run_tests` runs it in a sandbox: (records, stdout)."""

    plugin_dir = tmp_path / "harness"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    results = tmp_path / "results.jsonl"
    results.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(plugin_dir), "TRAJFACTORY_RESULTS": str(results)}
    if select is not None:
        (tmp_path / "select.txt").write_text("\n".join(select) + "\n")
        env["TRAJFACTORY_SELECT"] = str(tmp_path / "select.txt")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", "-q",
                           f"--rootdir={tmp_path}", *args], cwd=tmp_path, capture_output=True, text=True, env=env)
    return parse_results(results.read_text()), proc.stdout


def test_plugin_records_pytest_node_ids_that_round_trip(tmp_path):
    _project(tmp_path)
    # tests inherited from a mixin of the tests package, and parametrized ids with odd characters
    (tmp_path / "tests" / "__init__.py").write_text(
        "class Mixin:\n    def test_inherited(self):\n        assert self.value == 1\n")
    (tmp_path / "tests" / "test_more.py").write_text(textwrap.dedent("""
        import pytest
        from tests import Mixin

        class TestChild(Mixin):
            value = 1

        @pytest.mark.parametrize("s", ["a b", "x[1]", "caf\u00e9", "::"])
        def test_odd(s):
            assert s
    """))
    (outcomes, errors, finished), out = _run(tmp_path)
    assert finished and errors == {}
    assert outcomes == {
        "tests/test_calc.py::test_add": "passed",
        "tests/test_calc.py::test_fails": "failed",
        "tests/test_calc.py::test_param[1]": "passed",
        "tests/test_calc.py::test_param[a b]": "passed",
        "tests/test_calc.py::TestGroup::test_method": "passed",
        "tests/test_calc.py::TestGroup::test_skipped": "skipped",
        "tests/test_calc.py::test_error": "error",
        "tests/test_more.py::TestChild::test_inherited": "passed",
        "tests/test_more.py::test_odd[a b]": "passed",
        "tests/test_more.py::test_odd[x[1]]": "passed",
        "tests/test_more.py::test_odd[caf\\xe9]": "passed",  # pytest escapes non-ASCII in ids
        "tests/test_more.py::test_odd[::]": "passed",
    }
    assert "1 failed" in summary_line(out)
    # The recorded ids select exactly those tests again; an id that names no test is `missing`, not failed.
    wanted = ["tests/test_more.py::TestChild::test_inherited", "tests/test_more.py::test_odd[x[1]]",
              "tests/test_more.py::test_odd[caf\\xe9]", "tests/test_calc.py::test_fails", "tests/test_calc.py::test_gone"]
    (again, _, finished), _ = _run(tmp_path, "tests/test_more.py", "tests/test_calc.py", select=wanted)
    assert finished and again == {**{t: outcomes[t] for t in wanted[:4]}, "tests/test_calc.py::test_gone": "missing"}
    assert again["tests/test_more.py::test_odd[caf\\xe9]"] == "passed"
    # Collected only (the one-run reference's check): nothing runs, and only the id that selects nothing is recorded.
    (collected, _, finished), _ = _run(tmp_path, "--collect-only", "tests/test_more.py", "tests/test_calc.py",
                                       select=wanted)
    assert finished and collected == {"tests/test_calc.py::test_gone": "missing"}


def test_plugin_records_collection_errors_and_an_unfinished_session(tmp_path):
    _project(tmp_path)
    (tmp_path / "tests" / "test_broken.py").write_text("import pkg.nowhere\n\ndef test_x():\n    pass\n")
    (outcomes, errors, finished), _ = _run(tmp_path)
    assert finished and list(errors) == ["tests/test_broken.py"] and "nowhere" in errors["tests/test_broken.py"]
    (tmp_path / "tests" / "test_broken.py").write_text("import os\nos._exit(0)\n")
    (outcomes, errors, finished), _ = _run(tmp_path)
    assert not finished  # the process ended without the session's end: the harness knows the run was cut short


def test_a_projects_flaky_reruns_are_recorded_by_their_last_attempt(tmp_path):
    """pytest-rerunfailures reports a failed attempt that runs again as `rerun`, an outcome pytest itself never
    gives: the harness crashed on it (INTERNALERROR) and recorded nothing. The last attempt decides now."""
    _project(tmp_path)
    (tmp_path / "tests" / "test_flaky.py").write_text(textwrap.dedent(f"""
        import os

        import pytest

        COUNT = {str(tmp_path / "attempts")!r}


        @pytest.mark.flaky(reruns=2)
        def test_passes_on_its_second_attempt():
            n = int(open(COUNT).read()) if os.path.exists(COUNT) else 0
            open(COUNT, "w").write(str(n + 1))
            assert n >= 1


        @pytest.mark.flaky(reruns=1)
        def test_always_fails():
            assert False
    """))
    (outcomes, _, finished), out = _run(tmp_path, "tests/test_flaky.py")
    assert finished and "INTERNALERROR" not in out, out
    assert outcomes == {"tests/test_flaky.py::test_passes_on_its_second_attempt": "passed",
                        "tests/test_flaky.py::test_always_fails": "failed"}
    assert (tmp_path / "attempts").read_text() == "2" and "rerun" in out


def test_coverage_contexts_map_lines_to_tests(tmp_path):
    _project(tmp_path)
    env = {"COVERAGE_FILE": str(tmp_path / ".cov")}

    subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--cov=.", "--cov-context=test",
         "--cov-report="],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **env},
    )
    cov = _coverage_map(tmp_path, {**os.environ, **env})
    add_line = cov["pkg/calc.py"][2]
    sub_line = cov["pkg/calc.py"][6]
    assert "tests/test_calc.py::test_add" in add_line
    assert "tests/test_calc.py::TestGroup::test_method" in add_line
    assert sub_line == ["tests/test_calc.py::test_fails"]


def test_import_time_and_fixture_lines_are_marked(tmp_path):
    """Code run at import or in a shared fixture reaches tests coverage does not attribute it to."""

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
    cov = _coverage_map(tmp_path, env)["mod.py"]
    assert IMPORT_TIME in cov[2]  # build()'s body ran only at import
    assert FIXTURE in cov[9] and "test_mod.py::test_two" not in cov[9]  # shared() ran once, in setup


@pytest.mark.parametrize("recorder", ["coverage", "probe"])
def test_fixtures_wider_than_a_test_get_contexts_of_their_own_in_the_reference_run(tmp_path, recorder):
    """With the harness splitting fixture scopes (as `run_tests(coverage=True)` asks), what a class-, module- or
    session-scoped fixture ran, set up or torn down, reaches every test of its scope, a function-scoped fixture's
    setup and teardown only its test; the selection picks the tests of the fixture's scope. The line probes
    (`line_probe.py`, the pipeline's default recorder) give the same contexts as coverage."""
    import json

    from trajfactory.executors.testrun import FIXTURE, SCOPE
    from trajfactory.schema import Candidate, Entity, ReferenceRun
    from trajfactory.synthesizers.swe.validate import select_tests

    (tmp_path / "lib.py").write_text(textwrap.dedent("""\
        def per_module():
            return 1
        def per_class():
            return 2
        def per_test():
            return 3
        def per_session():
            return 4
        def on_teardown():
            return 5
        def in_test():
            return 6
        def on_my_teardown():
            return 7
        def on_class_teardown():
            return 8
    """))
    (tmp_path / "conftest.py").write_text(
        "import pytest\nimport lib\n\n\n@pytest.fixture(scope='session')\ndef everywhere():\n"
        "    return lib.per_session()\n")
    (tmp_path / "test_a.py").write_text(textwrap.dedent("""\
        import pytest
        import lib

        @pytest.fixture(scope="module")
        def shared():
            yield lib.per_module()
            lib.on_teardown()

        @pytest.fixture
        def mine():
            yield lib.per_test()
            lib.on_my_teardown()

        def test_one(shared, everywhere):
            assert shared == 1

        def test_two(shared, mine):
            assert mine == 3

        class TestK:
            @classmethod
            def setup_class(cls):
                cls.value = lib.per_class()

            def test_k1(self):
                assert self.value == 2

            def test_k2(self):
                assert lib.in_test() == 6

            @classmethod
            def teardown_class(cls):
                lib.on_class_teardown()
    """))
    (tmp_path / "test_b.py").write_text("def test_other():\n    assert True\n")
    plugin_dir = tmp_path / "harness"
    plugin_dir.mkdir()
    (plugin_dir / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    env = {**os.environ, "PYTHONPATH": str(plugin_dir), "TRAJFACTORY_RESULTS": str(tmp_path / "results.jsonl"),
           "COVERAGE_FILE": str(tmp_path / ".cov"), "TRAJFACTORY_FIXTURE_SCOPES": "1"}
    record = ["--cov=.", "--cov-context=test", "--cov-report="]
    probed = {"lib.py": list(range(1, 17))}
    if recorder == "probe":
        (plugin_dir / f"{PROBE_PLUGIN}.py").write_text(PROBE_SOURCE)
        (tmp_path / "plan.json").write_text(json.dumps(probed))
        env.update(TRAJFACTORY_PROBE=str(tmp_path / "plan.json"), TRAJFACTORY_PROBE_OUT=str(tmp_path / "map.json"))
        record = ["-p", PROBE_PLUGIN]
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", "-q",
                          f"--rootdir={tmp_path}", *record], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout
    records = (tmp_path / "results.jsonl").read_text()
    assert {"fixture_scopes": True} in [json.loads(line) for line in records.splitlines()]
    assert {"fixture_teardown": True} in [json.loads(line) for line in records.splitlines()]
    outcomes = parse_results(records)[0]
    if recorder == "coverage":
        (tmp_path / "coverage_map.py").write_text(COVERAGE_MAP_SOURCE)
        subprocess.run([sys.executable, "coverage_map.py", "map.json"], cwd=tmp_path, check=True, env=env)
    else:
        assert json.loads((tmp_path / "map.json").read_text())["probed"] == probed
    cov = parse_coverage_map((tmp_path / "map.json").read_text(), scoped=True, teardown=True)["lib.py"]
    assert cov[2] == [SCOPE + "test_a.py"]  # per_module: the module fixture's own context
    assert cov[4] == [SCOPE + "test_a.py::TestK"]  # per_class: setup_class is a class-scoped fixture
    assert cov[6] == ["test_a.py::test_two"]  # per_test: a function fixture's setup is that test's alone
    assert cov[8] == [SCOPE]  # per_session: the session's node id is ''
    assert cov[10] == [SCOPE + "test_a.py"]  # on_teardown: the module fixture's teardown, its context again
    assert cov[12] == ["test_a.py::TestK::test_k2"]
    assert cov[14] == ["test_a.py::test_two"]  # on_my_teardown: a function fixture's teardown is its test's
    assert cov[16] == [SCOPE + "test_a.py::TestK"]  # on_class_teardown: teardown_class is the class fixture's

    passing = sorted(t for t, o in outcomes.items() if o == "passed")
    ref = ReferenceRun(image="i", tests=outcomes, passing=passing, coverage={"lib.py": cov},
                       probed=probed if recorder == "probe" else None)

    def selected(lineno: int) -> list[str]:
        entity = Entity(file="lib.py", name="f", kind="function", lineno=lineno, end_lineno=lineno + 1,
                        complexity=1, body_lineno=lineno + 1)
        c = Candidate(candidate_id="c", source_id="s", repo="r", base_commit="0" * 40, family="change_constants",
                      scope="function", entity=entity, patch="", changed_lines=[lineno + 1])
        return select_tests(c, ref, "coverage")

    assert selected(1) == (["test_a.py::TestK::test_k1", "test_a.py::TestK::test_k2", "test_a.py::test_one",
                            "test_a.py::test_two"], "coverage")
    assert selected(3) == (["test_a.py::TestK::test_k1", "test_a.py::TestK::test_k2"], "coverage")
    assert selected(5) == (["test_a.py::test_two"], "coverage")
    assert selected(7) == (passing, "coverage")
    assert selected(9) == (["test_a.py::TestK::test_k1", "test_a.py::TestK::test_k2", "test_a.py::test_one",
                            "test_a.py::test_two"], "coverage")
    assert selected(13) == (["test_a.py::test_two"], "coverage")
    assert selected(15) == (["test_a.py::TestK::test_k1", "test_a.py::TestK::test_k2"], "coverage")
    # without the harness's records, any setup may be a shared fixture's, and any teardown: marked as before
    unscoped = parse_coverage_map((tmp_path / "map.json").read_text())["lib.py"]
    assert FIXTURE in unscoped[6] and FIXTURE in unscoped[2] and FIXTURE in unscoped[10]
    no_teardown = parse_coverage_map((tmp_path / "map.json").read_text(), scoped=True)["lib.py"]
    assert FIXTURE in no_teardown[14] and FIXTURE not in no_teardown[6]


def _coverage_map(project, env) -> dict[str, dict[int, list[str]]]:
    """The map `run_tests` reads: the sandbox script run on the project's coverage data, parsed."""
    (project / "coverage_map.py").write_text(COVERAGE_MAP_SOURCE)
    subprocess.run([sys.executable, "coverage_map.py", "map.json"], cwd=project, check=True, capture_output=True,
                   env=env)
    (project / "coverage_map.py").unlink()
    return parse_coverage_map((project / "map.json").read_text())


def test_the_compact_coverage_map_holds_what_coverage_json_reports_in_a_fraction_of_the_bytes(tmp_path):
    """Every line's contexts are coverage json's own (`--show-contexts`), each test id written once, not per line."""
    import json

    _project(tmp_path)
    env = {**os.environ, "COVERAGE_FILE": str(tmp_path / ".cov")}
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--cov=.", "--cov-context=test",
                    "--cov-report="], cwd=tmp_path, capture_output=True, env=env)
    subprocess.run([sys.executable, "-m", "coverage", "json", "--show-contexts", "-o", "cov.json"],
                   cwd=tmp_path, check=True, capture_output=True, env=env)
    reported = {file: {int(line): sorted(contexts) for line, contexts in info["contexts"].items() if contexts}
                for file, info in json.loads((tmp_path / "cov.json").read_text())["files"].items()}
    compact = _coverage_map(tmp_path, env)
    raw = json.loads((tmp_path / "map.json").read_text())
    ours = {file: {int(line): sorted(raw["contexts"][i] for i in indices) for line, indices in lines.items()}
            for file, lines in raw["files"].items()}
    assert ours == {file: lines for file, lines in reported.items() if lines}
    assert "tests/test_calc.py::test_add" in compact["pkg/calc.py"][2]
    assert (tmp_path / "map.json").stat().st_size < (tmp_path / "cov.json").stat().st_size / 2


def test_plugin_records_each_tests_duration_across_its_phases(tmp_path):
    from trajfactory.executors.testrun import parse_durations

    (tmp_path / "test_slow.py").write_text(textwrap.dedent("""
        import time
        import pytest

        @pytest.fixture
        def slow_setup():
            time.sleep(0.2)
            yield
            time.sleep(0.2)

        def test_slow(slow_setup):
            time.sleep(0.1)

        def test_quick():
            pass
    """))
    _run(tmp_path)
    durations = parse_durations((tmp_path / "results.jsonl").read_text())
    assert set(durations) == {"test_slow.py::test_slow", "test_slow.py::test_quick"}
    assert 0.5 <= durations["test_slow.py::test_slow"] < 5  # setup + call + teardown
    assert durations["test_slow.py::test_quick"] < 0.1


def test_a_selection_runs_its_files_in_the_order_of_the_projects_testpaths(tmp_path):
    """As semver's suite does: its documentation doctests (under `docs`, after `tests` in `testpaths`) read a name
    that an autouse fixture of `tests/conftest.py` puts into the session's doctest namespace, so they pass in the
    maintainers' run only because a test of `tests` ran first. A selection names its files alphabetically (`docs`
    first); the harness collects them in the project's order, so they pass there too."""
    (tmp_path / "pytest.ini").write_text("[pytest]\ntestpaths = tests docs\naddopts = --doctest-glob='*.rst'\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "conftest.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.fixture(autouse=True)
        def names(doctest_namespace):
            doctest_namespace["ANSWER"] = 42
    """))
    (tmp_path / "tests" / "test_answer.py").write_text("def test_answer():\n    assert 6 * 7 == 42\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.rst").write_text("The answer:\n\n    >>> ANSWER\n    42\n")
    (whole, _, finished), _ = _run(tmp_path)
    assert finished and whole == {"tests/test_answer.py::test_answer": "passed", "docs/guide.rst::guide.rst": "passed"}
    assert list(whole) == ["tests/test_answer.py::test_answer", "docs/guide.rst::guide.rst"]  # the records' order
    files = sorted({t.split("::")[0] for t in whole})
    assert files == ["docs/guide.rst", "tests/test_answer.py"]  # as the harness names them
    (selected, _, finished), _ = _run(tmp_path, *files, select=list(whole))
    assert finished and selected == whole and list(selected) == list(whole)
    # the order matters: named alone, the doctest runs before any test of `tests` and fails, as it would for pytest
    (alone, _, _), _ = _run(tmp_path, "docs/guide.rst", select=["docs/guide.rst::guide.rst"])
    assert alone == {"docs/guide.rst::guide.rst": "failed"}
