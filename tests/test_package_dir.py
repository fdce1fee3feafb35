"""A project whose package lives in a folder of setup.py's `package_dir` (PyYAML: `lib/yaml`), beside a folder of
the same name at the top that is not the package (PyYAML's `yaml/` holds the Cython sources of its optional compiled
loader, with no `__init__.py`). The installed copy used to be removed for the top folder, which the import system
then took as an empty namespace package: PyYAML's suite failed to collect (`module 'yaml' has no attribute
'SafeLoader'`) and a sweep lost the package. Now the install finds the folder that holds the package and puts it
on the path (`wheelhouse.INSTALL_PROJECT`), and the tests import the checkout's code there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trajfactory.settings import SandboxConfig
from mining import mine
from sandbox_helpers import commit_all, fresh_backend

FIXTURE = Path(__file__).parent / "fixtures" / "lib_layout"
LIMITS = SandboxConfig(pids=128, memory="1g", command_timeout_s=120)
PYTEST = "python -m pytest -q -p no:cacheprovider tests"


@pytest.fixture(scope="module", params=["docker", "local"])
def built(request, tmp_path_factory):
    backend = fresh_backend(request.param, tmp_path_factory.mktemp("cache"))
    repo = tmp_path_factory.mktemp("ykit") / "ykit"
    shutil.copytree(FIXTURE, repo)
    return backend, backend.build(str(commit_all(repo)), "tests/ykit", "main")


def test_the_tests_import_the_package_from_its_folder_and_see_a_patch_there(built):
    backend, env = built
    with backend.start(env, LIMITS) as sandbox:
        where = sandbox.execute("python -c 'import ykit; print(ykit.__file__)'", timeout=60)
        assert where.output.strip() == f"{sandbox.workdir}/lib/ykit/__init__.py", where.output
        run = sandbox.execute(PYTEST, timeout=120)
        assert run.exit_code == 0 and "4 passed" in run.output, run.output
        sandbox.write_file("lib/ykit/__init__.py", sandbox.read_file("lib/ykit/__init__.py").decode().replace(
            "out[key.strip()] = value.strip()", "out[key.strip()] = value"))
        patched = sandbox.execute(PYTEST, timeout=120)
        assert patched.exit_code == 1 and "2 failed, 2 passed" in patched.output, patched.output
        sandbox.reset()
        again = sandbox.execute(PYTEST, timeout=120)
        assert again.exit_code == 0 and "4 passed" in again.output, again.output


@pytest.mark.docker
def test_pyyaml_is_mined_from_lib(docker_backend, mirrors, tmp_path):
    """PyYAML 6.0.4, the real case. One test module of its suite uses the libyaml loaders at import
    (`yaml.CLoader`), which its maintainers' CI builds and this image does not: the reason names that module (its
    name was cut from the tail of pytest's output the detail shows) and how to leave it out. Left out, the rest of
    the suite collects, and tasks in `lib/yaml/` are mined and proven."""
    from trajfactory.schema import Quarantine
    from trajfactory.sources import harvest_repo
    from trajfactory.synthesizers.swe import stage
    from mining import LIMITS as MINING_LIMITS, QUICK

    source = harvest_repo("pypi:PyYAML==6.0.4", mirrors)
    rejected = stage.reference(docker_backend, stage.build_environment(docker_backend, source), source, QUICK,
                               MINING_LIMITS)
    assert isinstance(rejected, Quarantine) and rejected.reason == "collection_failed", rejected
    assert "`tests/test_libyaml_recursion_control.py`" in rejected.detail and "`ignore_tests`" in rejected.detail
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:PyYAML==6.0.4", ("lib/yaml/scanner.py",), n=2,
                 ignore_tests=["tests/test_libyaml_recursion_control.py"], single=True)
    assert mined.tasks and all(t.checks.FAIL_TO_PASS for t in mined.tasks)
    assert len([t for t, o in mined.ref.tests.items() if o == "passed"]) > 100
    # Its `tests/legacy_tests/conftest.py` makes its own items of data files and collects no plain test there, so the
    # verifier's canaries beside the failing tests never ran and every real fix was refused (sweep 21: 7 tasks, 0
    # verified). Canaries the buggy state does not collect either are not counted, and the evidence says so; an
    # empty patch still fails.
    from trajfactory.executors.swe_env import run_patch_tests

    task = next(t for t in mined.tasks if t.checks.FAIL_TO_PASS[0].startswith("tests/legacy_tests/"))
    with docker_backend.start(mined.env, MINING_LIMITS) as sandbox:
        fixed = run_patch_tests(sandbox, task, task.gold.patch, timeout=QUICK.suite_timeout_s)
        empty = run_patch_tests(sandbox, task, "", timeout=QUICK.suite_timeout_s)
    assert fixed[0] and not fixed[1].refused, fixed[1]
    assert "canary tests not counted: the project does not collect plain tests in tests/legacy_tests" in fixed[1].detail
    assert not empty[0]
