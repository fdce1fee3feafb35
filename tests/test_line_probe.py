"""The reference run's line probes (`executors/line_probe.py`) against coverage.py, on real pytest runs on the host.

The probes must record, for every wanted line, at least the contexts coverage records (a selection may widen,
never narrow), leave the program's behaviour, line numbers and source alone, and say which files they reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from trajfactory.executors.testrun import (COVERAGE_MAP_SOURCE, HARNESS_FILES, PLUGIN, PROBE_PLUGIN, PROBE_SOURCE,
                                           parse_coverage_map, parse_results)
from trajfactory.schema import Candidate, Entity, ReferenceRun
from trajfactory.synthesizers.swe.selection_lines import probe_plan, probed_enough
from trajfactory.synthesizers.swe.validate import select_tests

MODULE = '''\
"""A module that uses what the probes must get around."""
from __future__ import annotations

import asyncio

TABLE = {k: len(k) for k in ("a", "bb")}


def deco(tag):
    def wrap(f):
        f.tag = tag
        return f
    return wrap


@deco(
    "x")
def sign(a,
         b=1):
    """Docstring: the probe goes after it."""
    if a > 0:
        return 1 + b - 1
    elif a < 0:
        return -1
    else:
        return 0


def only_doc():
    """Nothing but a docstring."""


def gen(n):
    for i in range(n):
        yield i * 2
    else:
        pass


async def later(x):
    await asyncio.sleep(0)
    return x + 1


def guarded(x):
    try:
        return 10 // x
    except ZeroDivisionError:
        return None
    finally:
        pass


def matched(x):
    match x:
        case [a, b]:
            return a + b
        case {"k": v}:
            return v
        case _:
            return None


COUNT = 0


def bump():
    global COUNT
    COUNT += 1
    return COUNT


def nested(x):
    def inner(y):
        return y * x
    return inner(3)


def raises():
    raise ValueError("here")


class Shape:
    """A class with a docstring."""
    sides = sign(4)

    def area(self, w,
             h=lambda: 2):
        return w * h()
'''

TESTS = '''\
import asyncio
import inspect
import traceback

import pkg.mod as m


def test_sign():
    assert m.sign(5) == 1 and m.sign.tag == "x"


def test_negative():
    assert m.sign(-5) == -1


def test_gen():
    assert list(m.gen(3)) == [0, 2, 4]


def test_async():
    assert asyncio.run(m.later(1)) == 2


def test_guarded():
    assert m.guarded(0) is None and m.guarded(5) == 2


def test_matched():
    assert m.matched([1, 2]) == 3 and m.matched({"k": 4}) == 4


def test_bump_and_nested():
    assert m.bump() >= 1 and m.nested(2) == 6


def test_line_numbers_and_source_are_the_files():
    try:
        m.raises()
    except ValueError as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
    assert (frame.lineno, frame.line) == (RAISE_LINE, 'raise ValueError("here")')
    assert inspect.getsource(m.nested).startswith("def nested(x):")
    assert m.sign.__doc__ == "Docstring: the probe goes after it." and m.only_doc.__doc__


def test_shape():
    assert m.Shape().area(3) == 6 and m.Shape.__doc__ == "A class with a docstring."


def test_asserts_are_still_rewritten_by_pytest():
    value = 1
    try:
        assert value == 2
    except AssertionError as exc:
        message = str(exc)
    assert "assert 1 == 2" in message
'''.replace("RAISE_LINE", str(MODULE.splitlines().index('    raise ValueError("here")') + 1))


def _project(root):
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "mod.py").write_text(MODULE)
    (root / "tests").mkdir()
    (root / "tests" / "test_mod.py").write_text(TESTS)
    harness = root.parent / f"{root.name}-harness"
    harness.mkdir()
    for name, text in HARNESS_FILES.items():
        (harness / name).write_text(text)
    (harness / f"{PROBE_PLUGIN}.py").write_text(PROBE_SOURCE)
    (harness / "coverage_map.py").write_text(COVERAGE_MAP_SOURCE)
    return harness


def _pytest(root, harness, *args, env=()):
    full = {**os.environ, "PYTHONPATH": str(harness), "PYTHONDONTWRITEBYTECODE": "1", "TRAJFACTORY_FIXTURE_SCOPES": "1",
            "TRAJFACTORY_RESULTS": str(root / "results.jsonl"), **dict(env)}
    (root / "results.jsonl").unlink(missing_ok=True)
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", "-q",
                          f"--rootdir={root}", *args], cwd=root, capture_output=True, text=True, env=full)
    return parse_results((root / "results.jsonl").read_text())[0], run


def _covered(root, harness):
    """pytest with pytest-cov's per-test contexts: (outcomes, the run, the compact map `run_tests` reads)."""
    env = {"COVERAGE_FILE": str(root / ".cov")}
    outcomes, run = _pytest(root, harness, "--cov=.", "--cov-context=test", "--cov-report=", env=env)
    subprocess.run([sys.executable, str(harness / "coverage_map.py"), str(root / "cov.json")], cwd=root,
                   check=True, env={**os.environ, **env})
    return outcomes, run, (root / "cov.json").read_text()


def _probed(root, harness, plan, *args):
    (root / "plan.json").write_text(json.dumps(plan))
    outcomes, run = _pytest(root, harness, *args, "-p", PROBE_PLUGIN,
                            env={"TRAJFACTORY_PROBE": str(root / "plan.json"),
                                 "TRAJFACTORY_PROBE_OUT": str(root / "probe.json")})
    return outcomes, run, json.loads((root / "probe.json").read_text())


def test_probes_record_every_context_coverage_records_and_change_nothing_else(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    harness = _project(root)
    lines = list(range(1, len(MODULE.splitlines()) + 1))
    plain, run = _pytest(root, harness)
    assert run.returncode == 0, run.stdout
    covered, run, cov_map = _covered(root, harness)
    assert run.returncode == 0, run.stdout
    in_test = TESTS.splitlines().index("    assert m.sign(-5) == -1") + 1
    probed, run, raw = _probed(root, harness, {"pkg/mod.py": lines, "tests/test_mod.py": [in_test]})
    assert run.returncode == 0, run.stdout
    assert plain == covered == probed and set(plain.values()) == {"passed"} and len(plain) == 10
    assert raw["probed"] == {"pkg/mod.py": lines, "tests/test_mod.py": [in_test]}
    # a test module is probed as pytest loads it, its asserts rewritten all the same
    tests = parse_coverage_map(json.dumps(raw), scoped=True, teardown=True)["tests/test_mod.py"]
    assert tests == {in_test: ["tests/test_mod.py::test_negative"]}
    assert (root / "pkg" / "mod.py").read_text() == MODULE and not list(root.rglob("__pycache__"))

    cov = parse_coverage_map(cov_map, scoped=True, teardown=True)["pkg/mod.py"]
    probe = parse_coverage_map(json.dumps(raw), scoped=True, teardown=True)["pkg/mod.py"]
    for line, tests in cov.items():
        assert set(tests) <= set(probe.get(line, ())), (line, MODULE.splitlines()[line - 1], tests, probe.get(line))
    wider = {line: sorted(set(probe[line]) - set(cov.get(line, ()))) for line in probe
             if set(probe[line]) - set(cov.get(line, ()))}
    text = MODULE.splitlines()
    # Only where a line is recorded as its statement starts: a docstring (the body it documents started), a
    # multi-line header's later lines, an `except`/`case` line (the whole `try`/`match` started).
    assert {text[line - 1].strip() for line in wider} <= {
        '"""Docstring: the probe goes after it."""', '"""A class with a docstring."""', '"x")', 'b=1):',
        "except ZeroDivisionError:", "case {\"k\": v}:", "case _:", "h=lambda: 2):", '"""Nothing but a docstring."""',
        "case [a, b]:", "global COUNT"}, wider
    assert text.index("    elif a < 0:") + 1 in probe and "tests/test_mod.py::test_sign" not in probe[
        text.index("    elif a < 0:") + 1]


def _candidate(line: int, body: int, changed: int, file: str = "pkg/mod.py") -> Candidate:
    entity = Entity(file=file, name="f", kind="function", lineno=line, end_lineno=changed + 1, complexity=1,
                    body_lineno=body)
    return Candidate(candidate_id=f"c{line}", source_id="s", repo="r", base_commit="0" * 40, family="f",
                     scope="function", entity=entity, patch="", changed_lines=[changed])


def test_selections_from_probes_contain_those_from_coverage_and_a_file_they_missed_runs_everything(tmp_path):
    """The pipeline's use: probes of only the lines the candidates' selections read (`probe_plan`)."""
    root = tmp_path / "project"
    root.mkdir()
    harness = _project(root)
    text = MODULE.splitlines()
    at = {line.strip(): i + 1 for i, line in enumerate(text)}
    candidates = [
        _candidate(at["def sign(a,"], at['"""Docstring: the probe goes after it."""'], at["return -1"]),
        _candidate(at["def gen(n):"], at["for i in range(n):"], at["yield i * 2"]),
        _candidate(at["def guarded(x):"], at["try:"], at["return None"]),
        _candidate(at["def matched(x):"], at["match x:"], at["return v"]),
        _candidate(at["def nested(x):"], at["def inner(y):"], at["return y * x"]),
    ]
    (root / "pkg" / "unused.py").write_text("def never(x):\n    return x + 1\n")  # no test imports it
    unused = _candidate(1, 2, 2, file="pkg/unused.py")
    _, _, cov_map = _covered(root, harness)
    plan = probe_plan(candidates + [unused])
    outcomes, _, raw = _probed(root, harness, plan)
    passing = sorted(t for t, o in outcomes.items() if o == "passed")
    by_coverage = ReferenceRun(image="i", tests=outcomes, passing=passing, measured=["pkg/mod.py", "pkg/unused.py"],
                               coverage=parse_coverage_map(cov_map, True, True))
    by_probes = ReferenceRun(image="i", tests=outcomes, passing=passing, measured=["pkg/mod.py", "pkg/unused.py"],
                             coverage=parse_coverage_map(json.dumps(raw), True, True), probed=raw["probed"])
    assert sum(len(lines) for lines in plan.values()) < len(text) // 3  # only the lines the selections read
    for c in candidates:
        assert probed_enough(c, raw["probed"])
        coverage_tests, how = select_tests(c, by_coverage, "coverage")
        assert how == "coverage" and coverage_tests, c.entity
        assert select_tests(c, by_probes, "coverage") == (coverage_tests, "coverage"), c.entity
    # a file no test imported: the probes know none of its lines ran, so its candidate reaches no test, where
    # coverage, with no data of the file, cannot tell and runs the whole suite
    assert raw["probed"]["pkg/unused.py"] == [1, 2] and "pkg/unused.py" not in raw["files"]
    assert select_tests(unused, by_probes, "coverage") == ([], "coverage")
    assert select_tests(unused, by_coverage, "coverage") == (passing, "full")
    # the module imported before the probes were in place (a plugin of the project's): no line of it is known
    (harness / "early.py").write_text("import pkg.mod\n")
    _, run, raw = _probed(root, harness, plan, "-p", "early")
    assert run.returncode == 0 and "pkg/mod.py" not in raw["probed"] and raw["files"] == {}
    missed = by_probes.model_copy(update={"probed": raw["probed"]})
    assert select_tests(candidates[0], missed, "coverage") == (passing, "full")


def test_a_package_found_by_an_editable_install_finder_is_probed_too(tmp_path):
    """setuptools' editable installs find a flat-layout package through a finder on `sys.meta_path`, not `sys.path`:
    the probes ask the finders after them, so the package's files are instrumented all the same."""
    root = tmp_path / "project"
    root.mkdir()
    harness = _project(root)
    (root / "pkg").rename(root / "hidden")  # not importable from the rootdir any more
    (harness / "editable_finder.py").write_text(textwrap.dedent(f"""\
        import importlib.util, sys

        class Finder:
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                if name == "pkg":
                    return importlib.util.spec_from_file_location(
                        "pkg", {str(root / "hidden" / "__init__.py")!r},
                        submodule_search_locations=[{str(root / "hidden")!r}])
                return None

        sys.meta_path.append(Finder)
    """))
    wanted = MODULE.splitlines().index("        return -1") + 1
    outcomes, run, raw = _probed(root, harness, {"hidden/mod.py": [wanted]}, "-p", "editable_finder")
    assert run.returncode == 0, run.stdout
    assert raw["probed"] == {"hidden/mod.py": [wanted]}
    recorded = parse_coverage_map(json.dumps(raw), True, True)["hidden/mod.py"][wanted]
    assert recorded == ["tests/test_mod.py::test_negative"]


def test_a_suite_that_takes_the_imports_over_or_reloads_is_never_under_counted(tmp_path):
    """A project's own import hook put in front of the probes' finder (as typeguard's or beartype's are) loads the
    module without probes: the file is reported unprobed, so its candidates run the whole suite. A module a test
    reloads is loaded by the probes' loader again and stays probed."""
    root = tmp_path / "project"
    root.mkdir()
    harness = _project(root)
    wanted = MODULE.splitlines().index("        return -1") + 1
    (harness / "own_hook.py").write_text(textwrap.dedent("""\
        import importlib.machinery, sys

        class Loader(importlib.machinery.SourceFileLoader):
            pass

        class Hook:
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                if name != "pkg.mod":
                    return None
                spec = importlib.machinery.PathFinder.find_spec(name, path)
                spec.loader = Loader(name, spec.origin)
                return spec

        def pytest_configure(config):
            sys.meta_path.insert(0, Hook)
    """))
    outcomes, run, raw = _probed(root, harness, {"pkg/mod.py": [wanted]}, "-p", "own_hook")
    assert run.returncode == 0 and set(outcomes.values()) == {"passed"}, run.stdout
    assert raw["probed"] == {} and raw["files"] == {}
    (root / "tests" / "test_reload.py").write_text(textwrap.dedent("""\
        import importlib
        import pkg.mod

        def test_reloaded():
            assert importlib.reload(pkg.mod).sign(-3) == -1
    """))
    outcomes, run, raw = _probed(root, harness, {"pkg/mod.py": [wanted]})
    assert run.returncode == 0 and set(outcomes.values()) == {"passed"}, run.stdout
    assert raw["probed"] == {"pkg/mod.py": [wanted]}
    recorded = parse_coverage_map(json.dumps(raw), True, True)["pkg/mod.py"][wanted]
    assert recorded == ["tests/test_mod.py::test_negative", "tests/test_reload.py::test_reloaded"]
