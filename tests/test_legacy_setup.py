"""Projects older than the tools of today, html5lib 1.1 (2020) the real case.

- A setup.py that imports `pkg_resources` builds with a setuptools that still has it: setuptools 82 removed it,
  pip's isolated build took the newest, and a sweep lost html5lib as `install_failed` (No module named
  'pkg_resources'). `find_build_requirements` caps setuptools for such a setup.py, as it was built when it was
  released.
- A pytest pin that predates the sandbox's Python (html5lib: `pytest<6`, which crashes on 3.10+) is named in the
  reason, and a newer pytest in the recipe's `test_requirements` replaces the pin instead of conflicting with it;
  else `sandbox.python: "3.9"` runs the pinned one."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sandbox_helpers import commit_all
from trajfactory.executors.base import EnvironmentHandle
from trajfactory.executors.build_requirements import SETUPTOOLS_WITH_PKG_RESOURCES, find_build_requirements
from trajfactory.executors.requirements import find_requirements
from trajfactory.settings import SandboxConfig

SETUP = '''import pkg_resources
from setuptools import setup

# as html5lib 1.1's does: a version check through pkg_resources at build time
assert pkg_resources.parse_version("1.10") > pkg_resources.parse_version("1.9")
setup(name="oldkit", version="0.1", py_modules=["oldkit"])
'''


def _project(root: Path, setup: str) -> Path:
    root.mkdir(parents=True)
    (root / "setup.py").write_text(setup)
    # a commit of its own each time: the image is built, never an earlier run's reused
    (root / "oldkit.py").write_text(f"# {uuid.uuid4().hex}\ndef double(x):\n    return 2 * x\n")
    (root / "test_oldkit.py").write_text("import oldkit\n\n\ndef test_double():\n    assert oldkit.double(2) == 4\n")
    return commit_all(root)


def test_a_setup_py_that_imports_pkg_resources_builds_with_a_setuptools_that_has_it(tmp_path):
    old = _project(tmp_path / "old", SETUP)
    assert SETUPTOOLS_WITH_PKG_RESOURCES in find_build_requirements(old)
    plain = _project(tmp_path / "plain", SETUP.replace("import pkg_resources\n", "").replace(
        'assert pkg_resources.parse_version("1.10") > pkg_resources.parse_version("1.9")\n', ""))
    assert SETUPTOOLS_WITH_PKG_RESOURCES not in find_build_requirements(plain)
    assert "setuptools>=40.8.0" in find_build_requirements(plain)  # pip's legacy default, uncapped


@pytest.mark.docker
def test_it_installs_and_its_tests_run(docker_backend, tmp_path):
    repo = _project(tmp_path / "oldkit", SETUP)
    env = docker_backend.build(str(repo), "tests/oldkit", "main")
    assert isinstance(env, EnvironmentHandle)
    try:
        with docker_backend.start(env, SandboxConfig(memory="512m")) as sandbox:
            ran = sandbox.execute("python -m pip show oldkit && python -m pytest -q -p no:cacheprovider", timeout=120)
    finally:
        docker_backend.client.images.remove(env.name, force=True)  # its tag is this run's alone
    assert ran.exit_code == 0 and "1 passed" in ran.output, ran.output


def test_a_recipes_test_requirement_replaces_the_projects_pin_of_it(tmp_path):
    repo = _project(tmp_path / "pinned", SETUP)
    (repo / "requirements-test.txt").write_text("pytest>=5.4.2,<6\nsix>=1.9\n")
    assert "pytest<6,>=5.4.2" in find_requirements(repo)
    lifted = find_requirements(repo, ["pytest>=6.2.5,<7"])
    assert "pytest>=6.2.5,<7" in lifted and not [r for r in lifted if r.startswith("pytest<") or "<6" in r]
    assert "six>=1.9" in lifted  # the project's other requirements stay


@pytest.mark.docker
def test_html5lib_whose_pytest_pin_predates_this_python_is_refused_naming_it(docker_backend, mirrors):
    from mining import LIMITS, QUICK
    from trajfactory.schema import Quarantine
    from trajfactory.sources import harvest_repo
    from trajfactory.synthesizers.swe import stage

    source = harvest_repo("pypi:html5lib==1.1", mirrors)
    env = stage.build_environment(docker_backend, source)  # it builds: setuptools<82
    assert isinstance(env, EnvironmentHandle), env
    rejected = stage.reference(docker_backend, env, source, QUICK, LIMITS)
    assert isinstance(rejected, Quarantine) and rejected.reason == "pytest_error", rejected
    assert "pytest 5.4.3, the one the project's requirements allow, crashed before its session on Python 3.11" \
        in rejected.detail and 'required field "lineno" missing from alias' in rejected.detail, rejected.detail
    assert "`test_requirements`" in rejected.detail and "`sandbox.python` to an older Python" in rejected.detail
    # on Python 3.9 it runs and tasks are mined from it: tests/test_sandbox_python.py, bench/RESULTS.md


def test_a_setup_py_whose_extras_compute_one_item_keeps_the_others(tmp_path):
    """sqlglot 30.31.0's setup.py computes one extra's item (`f"sqlglotc=={version}"`), so its `extras_require` is
    no literal as a whole: reading it whole lost its `dev` extra, the one its tests need (duckdb, pytz), and every
    test module that imports them failed to collect. Each item is read on its own."""
    (tmp_path / "setup.py").write_text(
        "from setuptools import setup\nfrom setuptools_scm import get_version\n\nversion = get_version()\n\n"
        "setup(\n    install_requires=['sqlparse', f'helper=={version}'],\n"
        "    extras_require={\n        'dev': ['duckdb>=0.6', 'pytz', \"mypy; python_version < '3.10'\"],\n"
        "        'c': [f'sqlglotc=={version}'],\n        'test': 'hypothesis',\n    },\n)\n")
    reqs = find_requirements(tmp_path)
    assert {"sqlparse", "duckdb>=0.6", "pytz", 'mypy; python_version < "3.10"', "hypothesis"} <= set(reqs), reqs
    assert not any(r.startswith(("helper", "sqlglotc")) for r in reqs), reqs
