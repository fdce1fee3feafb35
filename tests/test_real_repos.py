"""Real PyPI packages mined the way their own maintainers test them.

Each package goes through the factory's own library calls (harvest → image → candidates → reference run →
validation in a pool → tasks → gold proof of every task) and was chosen for one thing the harness must get right:

| package | what it exercises |
|---|---|
| cachetools 5.5.0 | a unittest suite whose tests are inherited from mixin classes (`tests/__init__.py`) |
| tomlkit 0.12.5 | poetry pins `pytest = "^7.2.0"`: the sandbox runs pytest 7; tests import `tests.util` |
| validators 0.28.3 | parametrized ids with spaces, brackets and (escaped) unicode |
| jsonschema 4.23.0 | a large suite: ~7,700 unittest tests, most generated from JSON files |
| inflect 7.4.0 | `addopts = --doctest-modules --import-mode importlib` in pytest.ini: doctests are tests |
| semver 3.1.1 | documentation doctests that pass only after the tests ran (`testpaths = tests docs`) |
| soupsieve 2.7 | a test requirement (beautifulsoup4) pulls the project itself, whose newest release needs a newer Python |
| boltons 25.0.0 | a suite that writes to a closed socket, run whole in the batch worker's forked child |
| markdown 3.11.3 | a suite its maintainers run with `python -m unittest discover tests`, which pytest's defaults fail |
| jsonpatch 1.48 | tests in `tests.py` (`python_files = tests.py property_tests.py`), which a patch may not change either |
| dictdiffer 0.10.0 | a doctest that expects a bare `AssertionError`, selected by id as in the whole suite |

plus packaging 24.1, a project pytest itself depends on (its image must still import the checkout's copy), and a
repository whose `setup.py` raises, quarantined `install_failed` at build time. Images are content-addressed,
so a second run reuses them.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from trajfactory.executors.base import EnvironmentHandle
from trajfactory.executors.collection import (collection_options, command_paths, sandbox_addopts, script_options,
                                             unittest_options)
from trajfactory.executors.pytest_options import pytest_addopts, pytest_config
from trajfactory.executors.testrun import run_tests
from trajfactory.schema import Quarantine, ReferenceRun, Source
from trajfactory.settings import SynthesisConfig
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.stage import build_environment
from trajfactory.synthesizers.swe.validate import validate_batch

from mining import LIMITS, QUICK, in_sandbox, mine

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.docker
def test_unittest_suite_with_mixin_tests(docker_backend, mirrors, tmp_path):
    """cachetools: unittest.TestCase classes whose test methods come from mixins in `tests/__init__.py`."""
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:cachetools==5.5.0", ("src/cachetools/__init__.py",),
                 every_check=True, single=True)
    assert len(mined.ref.passing) > 150
    assert all(t.count("::") == 2 for t in mined.ref.tests), "a unittest suite: file::TestCase::method"

    def inherited(test: str) -> bool:
        file, _, method = test.split("::")
        return f"def {method}(" not in (mined.checkout / file).read_text()

    assert sum(map(inherited, mined.ref.passing)) > 100
    # the inherited ids are checked by the tasks, and round-trip: the gold proof ran them by the same id
    inherited_checked = sorted(filter(inherited, mined.checked()))
    assert inherited_checked and any(inherited(t) for t in mined.failing())
    assert all(mined.outcome(t) == {"passed"} for t in inherited_checked)


@pytest.mark.docker
def test_project_pinning_pytest_7_runs_pytest_7(docker_backend, mirrors, tmp_path):
    """tomlkit: poetry's `pytest = "^7.2.0"` means pytest 7 (not the newest); its tests import `tests.util`."""
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:tomlkit==0.12.5", ("tomlkit/items.py", "tomlkit/parser.py"),
                 every_check=True, single=True)
    out = in_sandbox(docker_backend, mined.env, "python -m pytest --version 2>&1; python -c 'import pytest; "
                     "print(pytest.__version__)'")
    assert re.search(r"^7\.\d+", out.splitlines()[-1]), out
    # the modules that do `from tests.util import ...` import and pass (a tests package imported by its own modules)
    importers = [f"tests/{p.name}" for p in (mined.checkout / "tests").glob("test_*.py")
                 if "from tests.util import" in p.read_text()]
    assert importers and all(any(t.startswith(f + "::") for t in mined.ref.passing) for f in importers)
    # the tasks' selected tests really ran under pytest 7, each by its own id
    for task in mined.tasks:
        for test in [*task.checks.FAIL_TO_PASS, *task.checks.PASS_TO_PASS]:
            assert mined.outcome(test) == {"passed"}, test


@pytest.mark.docker
def test_parametrized_ids_with_spaces_brackets_and_unicode(docker_backend, mirrors, tmp_path):
    """validators: ids such as `test_returns_true_on_valid_url[http://foo.com/blah_blah_(wikipedia)]`."""
    # the factory's default reference: the passing tests are collected again by id; the gold proofs run the tests
    # the bugs' changes reached
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:validators==0.28.3",
                 ("src/validators/url.py", "src/validators/email.py", "src/validators/i18n/fr.py"), n=5, single=True)

    def odd(test: str) -> bool:
        param = test.partition("[")[2]
        return bool(re.search(r" |\(|\\u|\\x|[^\x00-\x7f]", param))

    assert mined.ref.by_id
    assert sum(map(odd, mined.ref.passing)) > 20  # each collected again when selected by its id
    assert not [t for t, why in mined.ref.excluded.items() if odd(t)], mined.ref.excluded
    odd_checked = sorted(filter(odd, mined.checked()))
    assert any(odd(t) for t in mined.failing()), sorted(mined.failing())
    for sample in (" ", "(", "\\u"):
        assert any(sample in t.partition("[")[2] for t in odd_checked), sample
    # spaces, brackets and pytest's escapes of unicode (`\u272a`) round-trip through the gold proofs, which run the
    # tests the bugs' changes reached (every F2P test among them)
    proved = [t for t in odd_checked if mined.outcome(t)]
    assert any(odd(t) for t in mined.failing() if t in proved)
    assert all(mined.outcome(t) == {"passed"} for t in proved)
    assert all(t.validation.reached for t in mined.tasks if t.validation.selection == "coverage")


@pytest.mark.docker
def test_documentation_doctests_that_need_the_tests_to_run_first(docker_backend, mirrors, tmp_path):
    """semver: `testpaths = tests docs`, and the doctests of its documentation (`--doctest-glob='*.rst'`) read names
    that an autouse fixture of `tests/conftest.py` puts into the session's doctest namespace, so in the maintainers'
    run they pass because the tests of `tests` ran first. A selection names its files alphabetically (`docs` first);
    the harness collects them in the project's order (`pytest_harness._maintainers_order`). Before, each gold proof
    that ran one of those doctests failed it: 10 of semver's first 11 validated tasks were `gold_failed`."""
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:semver==3.1.1", ("src/semver/version.py",), n=3,
                 every_check=True, single=True)
    docs = sorted(t for t in mined.checked() if t.startswith("docs/") and t.endswith(".rst"))
    assert len(docs) > 10, sorted(mined.checked())[:5]
    assert all(mined.outcome(t) == {"passed"} for t in docs)


@pytest.mark.docker
def test_requirements_are_chosen_for_the_sandboxs_python(docker_backend, mirrors, tmp_path):
    """soupsieve 2.7: its tests need beautifulsoup4, which needs soupsieve, whose newest wheel (2.10 in this
    index) says `Requires-Python >=3.11.5`. The host's Python (3.11.7) admits it, the image's (3.11.2) does not:
    the wheelhouse was resolved for the host, the image's install refused it, and the repository was quarantined
    `install_failed`. It is resolved for the image's Python now (`wheelhouse.build_wheelhouse`)."""
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:soupsieve==2.7", ("soupsieve/css_match.py",), n=2)
    out = in_sandbox(docker_backend, mined.env, "python -c 'import soupsieve, bs4, importlib.metadata as m; "
                     "print(soupsieve.__file__, m.version(\"soupsieve\"))'")
    where, version = out.split()
    assert where == "/repo/soupsieve/__init__.py" and version == "2.7", out  # the project itself, from the checkout
    assert len(mined.ref.passing) > 300 and mined.tasks


@pytest.mark.docker
def test_a_whole_suite_that_writes_to_a_closed_socket_runs_in_the_batch_worker(docker_backend, mirrors, tmp_path):
    """boltons 25.0.0: a test writes to a closed socket, which `python -m pytest` survives (Python ignores SIGPIPE,
    so the write raises). The batch worker's forked child had SIGPIPE at its default action, so every whole-suite
    run of boltons there died (exit 141) and its candidate was an `error`; removing `SpooledBytesIO`'s base class,
    a class change every module's import sees, is such a candidate."""
    source = harvest_repo("pypi:boltons==25.0.0", mirrors)
    assert isinstance(source, Source), source
    env = build_environment(docker_backend, source)
    assert isinstance(env, EnvironmentHandle), env
    found, _ = stage.synthesize(source, SynthesisConfig(max_candidates_per_repo=2000, seed=0), tmp_path / "co")
    base = [c for c in found if c.family == "remove_base_class" and c.entity.name == "SpooledBytesIO"]
    assert base, sorted({(c.family, c.entity.name) for c in found if c.scope == "class"})
    ref = stage.reference(docker_backend, env, source, QUICK, LIMITS)
    assert isinstance(ref, ReferenceRun), ref
    with docker_backend.start(env, LIMITS) as sandbox:
        full = validate_batch(sandbox, base[:1], ref, selection="full")[0]
        clean = validate_batch(sandbox, [base[0].model_copy(update={"patch": ""})], ref, selection="full")[0]
    assert full.status == "valid", (full.status, full.detail)
    assert full.FAIL_TO_PASS and all(t.startswith("tests/test_ioutils.py::TestSpooled")
                                     for t in full.FAIL_TO_PASS), full.FAIL_TO_PASS
    assert len(full.PASS_TO_PASS) > 300
    assert clean.status != "error", (clean.status, clean.detail)  # the clean code's whole suite finishes too


@pytest.mark.docker
def test_a_suite_its_maintainers_run_with_unittest_is_collected_as_unittest_does(docker_backend, mirrors, tmp_path):
    """markdown 3.11.3: `tox.ini` runs `coverage run -m unittest discover {toxinidir}/tests`, and there is no pytest
    configuration. Under pytest's defaults the whole suite failed collection (`collection_failed`): a test module
    imports `unittest.TestSuite` for its `load_tests`, pytest warns that it cannot collect that class, and
    `tests/test_legacy.py`, collected first, sets `warnings.simplefilter("error")` at import. The image now tells
    pytest to collect what unittest collects: `unittest.TestCase` classes from `test*.py` under `tests`."""
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:markdown==3.11.3", ("markdown/util.py",), n=2)
    out = in_sandbox(docker_backend, mined.env, "printf '%s' \"$TRAJFACTORY_ADDOPTS\"")
    assert shlex.split(out) == ["-o", "python_classes=", "-o", "python_functions=", "-o", "python_files=test*.py",
                           "-o", "testpaths=tests"], out
    assert len(mined.ref.passing) > 1000 and all(t.startswith("tests/") for t in mined.ref.passing)


def test_which_suites_are_run_with_unittest(tmp_path):
    """The maintainers' runner, read from the commands of tox, make, nox and CI workflows (jsonpointer's makefile
    says `python3 -munittest`, and its tests live in `tests.py`, which pytest's default pattern does not match)."""
    def options(files: dict[str, str]) -> list[str]:
        repo = tmp_path / str(len(list(tmp_path.iterdir())))
        for name, text in files.items():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_text(text)
        return unittest_options(repo)

    assert options({"makefile": "test:\n\tpython3 -munittest\n", "tests.py": ""}) == \
        ["-o", "python_classes=", "-o", "python_functions=", "-o", "python_files=test*.py"]
    assert options({"tox.ini": "[testenv]\ndeps = coverage\ncommands = coverage run -m unittest discover "
                               "-s {toxinidir}/src/tests -p 'check_*.py'\n", "src/tests/check_a.py": ""})[-4:] == \
        ["-o", "python_files=check_*.py", "-o", "testpaths=src/tests"]
    assert options({"Makefile": "test:\n\tpython -m unittest tests.test_core -v\n", "tests/test_core.py": ""})[-2:] \
        == ["-o", "testpaths=tests/test_core.py"]
    workflow = "jobs:\n  t:\n    steps:\n      - run: python -m unittest discover tests\n"
    assert options({".github/workflows/ci.yml": workflow, "tests/test_x.py": ""})[-1] == "testpaths=tests"
    # a project that runs pytest anywhere, or configures it, is collected the way pytest does
    assert options({"tox.ini": "[testenv]\ncommands = python -m unittest discover\n",
                    "Makefile": "test:\n\tpytest -q\n"}) == []
    assert options({"makefile": "test:\n\tpython -m unittest\n", "setup.cfg": "[tool:pytest]\naddopts = -q\n"}) == []
    assert sandbox_addopts(tmp_path / "0")[0] == "-o python_classes= -o python_functions= -o 'python_files=test*.py'"
    assert options({"README.md": "python -m unittest"}) == []  # a readme is not the maintainers' command



def test_files_the_maintainers_pytest_command_names_are_the_suite(tmp_path):
    """A project with no pytest configuration whose tox command names a file pytest's default pattern skips
    (texttable: `pytest --cov-report=term-missing --cov=texttable tests.py`) is collected from what it names."""
    def options(tox: str) -> list[str]:
        repo = tmp_path / str(len(list(tmp_path.iterdir())))
        for name in ("tests.py", "checks.py", "other_test.py", "mypkg/__init__.py", "tests/test_a.py"):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_text("")
        (repo / "tox.ini").write_text(f"[testenv]\ncommands = {tox}\n")
        return command_paths(repo)

    assert options("pytest --cov-report=term-missing --cov=texttable tests.py") == ["-o", "testpaths=tests.py"]
    assert options("pytest {posargs:tests.py} && echo done") == ["-o", "testpaths=tests.py"]
    assert options("python -m pytest -k fast checks.py other_test.py") == ["-o", "testpaths=checks.py other_test.py"]
    assert options("py.test --cov mypkg tests/") == []  # the default pattern finds these: nothing changes
    assert options("pytest {toxinidir}/tests.py -c {toxinidir}/pytest.ini") == ["-o", "testpaths=tests.py"]
    # no command at all, and no file pytest's default pattern matches: the files named as tests are collected
    bare = tmp_path / "bare"
    for name in ("tests/test.py", "tests/documentation.py", "src/pkg/__init__.py", "ext_tests.py"):
        (bare / name).parent.mkdir(parents=True, exist_ok=True)
        (bare / name).write_text("")
    assert collection_options(bare) == ["-o", "python_files=ext_tests.py test.py"]
    (bare / "tests/test_more.py").write_text("")
    assert collection_options(bare) == []  # pytest's defaults find a suite: nothing changes


def test_a_suite_its_maintainers_run_as_a_script_is_collected_as_the_script_runs(tmp_path):
    """dill 0.4.1's tox runs `{envpython} dill/tests/__main__.py`, which runs each test file as a script: they import
    each other as top-level modules (`import test_mixins`), which only the script's folder on `sys.path` allows.
    argcomplete 3.7.2's make runs `coverage run --source=argcomplete ./test/test.py -v`, beside a
    `test/test_package/test_module.py` that is a package its tests install, no test."""
    def options(file: str, command: str, config: str = "") -> list[str]:
        repo = tmp_path / str(len(list(tmp_path.iterdir())))
        for name in ("dill/tests/__main__.py", "dill/tests/test_mixins.py", "test/test.py", "tools/run.py"):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_text("")
        (repo / file).write_text(command)
        if config:
            (repo / "pytest.ini").write_text(config)
        return collection_options(repo)

    assert options("tox.ini", "[testenv]\ncommands =\n    {envpython} -m pip install .\n"
                              "    {envpython} dill/tests/__main__.py\n") == ["-o", "pythonpath=dill/tests", "--capture=sys"]
    assert options("Makefile", "test:\n\tcoverage run --source=argcomplete --omit=x.py ./test/test.py -v\n") == \
        ["-o", "pythonpath=test", "-o", "testpaths=test/test.py", "--capture=sys"]
    assert options("Makefile", "test:\n\tpython3 test/test.py\n") == \
        ["-o", "pythonpath=test", "-o", "testpaths=test/test.py", "--capture=sys"]
    assert options("Makefile", "lint:\n\tpython tools/run.py\n") == []  # no test folder's script
    assert options("Makefile", "test:\n\tpython test/test.py\n\tpytest test\n") == []  # pytest is run
    assert options("tox.ini", "[testenv]\ncommands = python dill/tests/__main__.py\n", "[pytest]\n") == []
    assert script_options(tmp_path / "none") == []


@pytest.mark.docker
def test_a_suite_run_as_scripts_is_collected(docker_backend, mirrors):
    """dill 0.4.1 was quarantined `collection_failed` naming six modules. Two import their siblings as top-level
    modules, which its scripts' folder on `sys.path` now allows. Four run code at import that only a process of
    their own allows (they pickle what is open in the process, pytest's captured streams among it, or assert what
    the process has imported): the recipe leaves those out (`ignore_tests`), as their quarantine reason says."""
    alone = [f"dill/tests/test_{name}.py" for name in ("module", "objects", "registered", "selected")]
    source = harvest_repo("pypi:dill==0.4.1", mirrors)
    assert isinstance(source, Source), source
    env = build_environment(docker_backend, source, ignore_tests=alone)
    assert isinstance(env, EnvironmentHandle), env
    ref = stage.reference(docker_backend, env, source, QUICK, LIMITS)
    assert isinstance(ref, ReferenceRun), ref
    for module in ("sources", "session"):  # `import test_source as ts`, `import test_dictviews as local_mod`
        assert any(t.startswith(f"dill/tests/test_{module}.py::") for t in ref.passing), ref.excluded
    assert len(ref.passing) > 50 and not any(t.startswith(tuple(alone)) for t in ref.tests)


@pytest.mark.docker
def test_a_suite_named_on_the_command_line_is_mined(docker_backend, mirrors, tmp_path):
    """texttable 1.7.2 keeps its tests in `tests.py` and names it in its tox command; it was quarantined no_tests."""
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:texttable==1.7.2", ("texttable.py",), n=3)
    assert len(mined.ref.passing) > 20 and all(t.startswith("tests.py::") for t in mined.ref.tests)


@pytest.mark.docker
def test_a_suite_named_only_as_tests_are_is_mined(docker_backend, mirrors, tmp_path):
    """decorator 5.2.1 runs its suite as `python tests/test.py` (its README): no configuration, no command file, and
    no file pytest's default pattern matches. It was quarantined no_tests."""
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:decorator==5.2.1", ("src/decorator.py",), n=2)
    assert len(mined.ref.passing) > 20 and all(t.startswith("tests/test.py::") for t in mined.ref.tests)

@pytest.mark.docker
def test_a_doctest_selected_by_id_runs_as_in_the_whole_suite(docker_backend, mirrors):
    """dictdiffer 0.10.0's doctest of `assert_no_diff` expects an `AssertionError` with its message alone. Selected
    by id, its module was named on pytest's command line, so pytest rewrote its asserts and added an explanation the
    doctest did not expect: it passed in the whole suite and failed in every verification (5 tasks, none verified)."""
    source = harvest_repo("pypi:dictdiffer==0.10.0", mirrors)
    assert isinstance(source, Source), source
    env = build_environment(docker_backend, source)
    assert isinstance(env, EnvironmentHandle), env
    doctest = "dictdiffer/testing.py::dictdiffer.testing.assert_no_diff"
    with docker_backend.start(env, LIMITS) as sandbox:
        whole = run_tests(sandbox, None, timeout=300)
        passing = sorted(t for t, o in whole.outcomes.items() if o == "passed")
        assert doctest in passing and len(passing) > 10
        for tests in ([doctest], passing):
            selected = run_tests(sandbox, tests, timeout=300)
            assert {t: selected.outcomes.get(t) for t in tests} == dict.fromkeys(tests, "passed"), selected.output
        # a test module named on the command line keeps pytest's explanations, as in the whole suite
        sandbox.write_file("tests/test_explained.py", "def test_lists():\n    assert [1, 2] == [1, 3]\n")
        run = run_tests(sandbox, ["tests/test_explained.py::test_lists", doctest], timeout=120)
        assert run.outcomes == {"tests/test_explained.py::test_lists": "failed", doctest: "passed"}
        assert "At index 1 diff: 2 != 3" in run.output, run.output


@pytest.mark.docker
def test_large_suite(docker_backend, mirrors, tmp_path):
    """jsonschema: ~7,700 unittest tests, most of them generated from the JSON-Schema test suite's files."""
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:jsonschema==4.23.0",
                 ("jsonschema/_keywords.py", "jsonschema/_utils.py"), n=2, every_check=True)
    assert len(mined.ref.tests) > 5_000 and len(mined.ref.passing) > 5_000
    # a task's PASS_TO_PASS is thousands of ids, every one of them run again by the gold proof
    assert max(len(task.checks.PASS_TO_PASS) for task in mined.tasks) > 5_000
    assert all(len(v.evidence.PASS_TO_PASS) == len(t.checks.PASS_TO_PASS) for t, v in zip(mined.tasks, mined.verdicts))


@pytest.mark.docker
def test_project_that_pytest_depends_on_is_imported_from_the_checkout(docker_backend, mirrors):
    """packaging: pytest needs `packaging` installed, yet the tests (and the patches) are the checkout's copy."""
    source = harvest_repo("pypi:packaging==24.1", mirrors)
    assert isinstance(source, Source), source
    env = build_environment(docker_backend, source)
    assert isinstance(env, EnvironmentHandle), env
    out = in_sandbox(docker_backend, env, "python -c 'import packaging, pretend, importlib.metadata as m; "
                     "print(packaging.__file__, m.version(\"packaging\"))'")
    # `pretend` comes from tests/requirements.txt, the file the project's own nox session installs
    assert out.split() == ["/repo/src/packaging/__init__.py", "24.1"]


@pytest.mark.docker
def test_project_addopts_are_honoured(docker_backend, mirrors, tmp_path):
    """inflect: pytest.ini's `addopts = --doctest-modules --import-mode importlib` make doctests part of the suite."""
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:inflect==7.4.0", ("inflect/__init__.py",), n=4,
                 every_check=True)
    out = in_sandbox(docker_backend, mined.env, "printf '%s' \"$TRAJFACTORY_ADDOPTS\"")
    assert out.strip() == "--doctest-modules --import-mode importlib"
    doctests = [t for t in mined.ref.passing if t.startswith("inflect/__init__.py::inflect.")]
    assert len(doctests) >= 5, "the doctests of the package are collected, as in a maintainer's run"
    assert any(t.startswith("tests/") for t in mined.ref.passing)
    # the doctests are checks of the tasks like any test, and the gold proofs ran them by their ids
    assert set(doctests) <= mined.checked()
    assert all(mined.outcome(t) == {"passed"} for t in doctests)


@pytest.mark.docker
def test_project_that_does_not_install_is_quarantined(docker_backend, tmp_path):
    """A setup.py that raises: `install_failed` at build time with the true reason, and no host pip noise."""
    repo = shutil.copytree(FIXTURES / "install_raises", tmp_path / "install_raises")
    source = harvest_repo(str(repo), tmp_path / "mirrors")
    assert isinstance(source, Source), source
    result = build_environment(docker_backend, source)
    assert isinstance(result, Quarantine), result
    assert result.reason == "install_failed"
    first = result.detail.splitlines()[0]
    assert "RuntimeError: calcpkg 0.1 supports Python < 3.10 only" in first, result.detail
    assert "WARNING: Location" not in result.detail and "Running pip as" not in result.detail
    assert "trajfactory-install-" not in result.detail  # paths are the checkout's, not the build's copy


@pytest.mark.docker
def test_tests_package_without_init_imports_as_under_python_m_pytest(docker_backend, tmp_path):
    """`from tests.helpers import ...` with no tests/__init__.py: a maintainer's `python -m pytest` puts the checkout
    on sys.path, so `tests` is a namespace package there; the harness runs `python -m pytest` the same way."""
    repo = shutil.copytree(FIXTURES / "tests_package_no_init", tmp_path / "tests_package_no_init")
    source = harvest_repo(str(repo), tmp_path / "mirrors")
    assert isinstance(source, Source), source
    env = build_environment(docker_backend, source)
    assert isinstance(env, EnvironmentHandle), env
    ref = stage.reference(docker_backend, env, source, QUICK, LIMITS)
    assert isinstance(ref, ReferenceRun), ref
    assert ref.passing == ["tests/test_calc.py::test_mean", "tests/test_calc.py::test_mean_of_one"]


def test_pytest_config_follows_pytests_precedence(tmp_path):
    """pytest.ini beats pyproject.toml, which beats tox.ini, which beats setup.cfg (humanize has the last two)."""
    (tmp_path / "setup.cfg").write_text("[tool:pytest]\naddopts = --strict-markers\n")
    (tmp_path / "tox.ini").write_text("[tox]\nenvlist = py\n[pytest]\naddopts = --color=yes --doctest-modules\n")
    assert pytest_config(tmp_path)[0] == "tox.ini"
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')  # no pytest table: not a config
    assert pytest_config(tmp_path)[0] == "tox.ini"
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\naddopts = "--color=yes"\n')
    assert pytest_config(tmp_path) == ("pyproject.toml", {"addopts": "--color=yes"})
    assert pytest_addopts(tmp_path) == ("", ["--color=yes"])
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # a pytest.ini is the config even when empty
    assert pytest_config(tmp_path) == ("pytest.ini", {})


def test_addopts_allowlist(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "setup.cfg").write_text(
        "[tool:pytest]\naddopts = -ra -q --strict-markers --cov=mypkg --cov-report term-missing -p no:randomly\n"
        "    -p pytester -p xdist -n 4 --doctest-modules -W error::DeprecationWarning --import-mode=importlib\n"
        '    --tb=short -m "not slow" --junitxml=out.xml -x --maxfail 2 -p mypkg.plugin --cov tests\n'
        "    --timeout 30 --unknown-flag tests --unknown-option value -vv\n")
    kept, dropped = pytest_addopts(tmp_path)
    assert kept == ("--strict-markers -p no:randomly -p pytester --doctest-modules -W error::DeprecationWarning "
                    "--import-mode=importlib -m 'not slow' -p mypkg.plugin tests")
    # an option of an uninstalled plugin would be a usage error; a value is never mistaken for a path
    assert dropped == ["-ra", "-q", "--cov=mypkg", "--cov-report", "term-missing", "-p", "xdist", "-n", "4",
                       "--tb=short", "--junitxml=out.xml", "-x", "--maxfail", "2", "--cov", "tests", "--timeout",
                       "30", "--unknown-flag", "--unknown-option", "value", "-vv"]
