"""A project's compiled extension modules are built with its environment, as its maintainers build them in place
(`wheelhouse.INSTALL_PROJECT`): the checkout holds their C sources, the built files live beside the environment, and
the import system finds them after the checkout's own modules. Before, the installed copies were deleted with the
rest of the installed package, so a package that cannot import without its compiled part (bitarray) failed every
test, and one with a pure fallback (markupsafe) was tested without its compiled half."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trajfactory.executors.guard import NOT_REBUILT
from trajfactory.executors.swe_env import run_patch_tests
from trajfactory.executors.local import LocalBackend
from trajfactory.schema import Quarantine
from trajfactory.settings import SandboxConfig
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.diffs import unified_diff
from trajfactory.synthesizers.swe.stage import build_environment
from mining import LIMITS as MINING_LIMITS, QUICK, in_sandbox, mine
from sandbox_helpers import commit_all, fresh_backend

FIXTURE = Path(__file__).parent / "fixtures" / "c_extension"
LIMITS = SandboxConfig(pids=128, memory="1g", command_timeout_s=120)


def _repo(dest: Path) -> Path:
    shutil.copytree(FIXTURE, dest)
    return commit_all(dest)


@pytest.fixture(scope="module", params=["docker", "local"])
def built(request, tmp_path_factory):
    backend = fresh_backend(request.param, tmp_path_factory.mktemp("cache"))
    env = backend.build(str(_repo(tmp_path_factory.mktemp("cwords") / "cwords")), "tests/cwords", "main")
    return backend, env


def test_a_compiled_module_is_built_and_the_checkout_stays_its_commit(built):
    backend, env = built
    with backend.start(env, LIMITS) as sandbox:
        where = sandbox.execute("python -c 'import cwords, cwords._count as c; print(cwords.__file__); "
                                "print(c.__file__)'", timeout=60)
        assert where.exit_code == 0, where.output
        package, compiled = where.output.split()
        # the package's Python code is the checkout's, its compiled module the built one, outside the checkout
        assert package == f"{sandbox.workdir}/cwords/__init__.py", where.output
        assert compiled.endswith(".so") and not compiled.startswith(sandbox.workdir), where.output
        run = sandbox.execute("python -m pytest -q -p no:cacheprovider tests", timeout=120)
        assert run.exit_code == 0 and "4 passed" in run.output, run.output
        # nothing built sits in the checkout, not even what its .gitignore hides: a reset's `git clean -x` keeps it
        status = sandbox.execute("git status --porcelain --ignored --untracked-files=all", timeout=30)
        assert status.exit_code == 0 and status.output.strip() == "", status.output
        # a patch to the Python code is what the tests import, beside the compiled module
        sandbox.write_file("cwords/__init__.py", sandbox.read_file("cwords/__init__.py").decode().replace(
            "len(word) > len(best)", "len(word) >= len(best)"))
        patched = sandbox.execute("python -m pytest -q -p no:cacheprovider tests", timeout=120)
        assert patched.exit_code != 0 and "1 failed, 3 passed" in patched.output, patched.output
        sandbox.reset()
        again = sandbox.execute("python -m pytest -q -p no:cacheprovider tests", timeout=120)
        assert again.exit_code == 0 and "4 passed" in again.output, again.output


def test_a_checkout_module_of_the_same_name_comes_before_the_built_one(built):
    """A patch may replace a compiled module by Python code of the same name (a pure fallback): the checkout's wins,
    as it does in a maintainer's in-place build, where the source file comes first in the package's folder."""
    backend, env = built
    with backend.start(env, LIMITS) as sandbox:
        sandbox.write_file("cwords/_count.py", "def count_words(text):\n    return -1\n")
        out = sandbox.execute("python -c 'import cwords; print(cwords.count_words(\"a b\"))'", timeout=60)
        assert out.exit_code == 0 and out.output.strip() == "-1", out.output


@pytest.mark.docker
def test_bitarray_cannot_import_without_its_compiled_part_and_is_mined(docker_backend, mirrors, tmp_path):
    """bitarray 3.12.3: `bitarray/__init__.py` imports `_bitarray` (C) and `util.py` imports `_util` (C). Its
    `test_free_threading.py` asserts at import that the interpreter has no GIL (its maintainers run it on a
    free-threaded build only), so the whole suite does not collect here: the reason says which module and how to leave
    it out. Left out by the recipe's `ignore_tests`, the rest of the suite runs, tasks are mined in its Python module,
    and each gold patch passes the verifier's own path."""
    source = harvest_repo("pypi:bitarray==3.12.3", mirrors)
    env = build_environment(docker_backend, source)
    rejected = stage.reference(docker_backend, env, source, QUICK, MINING_LIMITS)
    assert isinstance(rejected, Quarantine) and rejected.reason == "collection_failed", rejected
    assert "`bitarray/test_free_threading.py`" in rejected.detail and "`ignore_tests`" in rejected.detail, rejected
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:bitarray==3.12.3", ("bitarray/util.py",), n=2, single=True,
                 ignore_tests=["bitarray/test_free_threading.py"])
    assert mined.tasks and all(t.checks.FAIL_TO_PASS for t in mined.tasks)
    passing = [t for t, o in mined.ref.tests.items() if o == "passed"]
    # the C half of the package ran under its tests: bitarray's own tests of its compiled methods pass
    assert len(passing) > 300 and "bitarray/test_bitarray.py::SpecialMethodTests::test_sizeof" in passing, len(passing)
    assert not [t for t in mined.ref.tests if "test_free_threading" in t]
    # a submitted fix's change to a C source is dropped, and its verdict says so: the module was built with the image
    c_file = "bitarray/_util.c"
    text = (mined.checkout / c_file).read_text()
    c_change, _ = unified_diff(c_file, text, text.replace("#include", "/* a fix the build never sees */\n#include", 1))
    task = mined.tasks[0]
    with docker_backend.start(mined.env, MINING_LIMITS) as sandbox:
        with_gold = run_patch_tests(sandbox, task, task.gold.patch + c_change, timeout=QUICK.suite_timeout_s)
        alone = run_patch_tests(sandbox, task, c_change, timeout=QUICK.suite_timeout_s)
    assert with_gold[0] and with_gold[1].reverted == [f"{c_file} ({NOT_REBUILT})"], with_gold[1]
    assert not alone[0] and alone[1].reverted == [f"{c_file} ({NOT_REBUILT})"], alone[1]


@pytest.mark.docker
def test_the_pure_python_run_its_maintainers_make_mines_the_fallback(docker_backend, mirrors, tmp_path):
    """msgpack 1.2.4 packs with its C extension wherever it is built, so a bug in its pure-Python fallback
    (`msgpack/fallback.py`) fails no test: a sweep mined no task from msgpack. Its maintainers run the suite a second
    time with `MSGPACK_PUREPYTHON=1`; a recipe's `repos[].test_env` sets it for the image's install and every run,
    and the fallback is mined, each gold patch passing the verifier's own path."""
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:msgpack==1.2.4", ("msgpack/fallback.py",), n=2,
                 single=True, test_env={"MSGPACK_PUREPYTHON": "1"})
    assert mined.tasks and all(t.checks.FAIL_TO_PASS for t in mined.tasks)
    assert in_sandbox(docker_backend, mined.env, "python -c 'import msgpack; print(msgpack.Packer.__module__)'"
                      ).strip() == "msgpack.fallback"


def test_a_local_environment_sets_the_recipes_variables_and_is_keyed_by_them(tmp_path):
    backend = LocalBackend(cache_root=tmp_path / "cache")
    repo = tmp_path / "cwords"
    _repo(repo)
    plain = backend.build(str(repo), "tests/cwords", "main")
    pure = backend.build(str(repo), "tests/cwords", "main", test_env={"CWORDS_MODE": "pure python"})
    assert plain.name != pure.name
    for env, expected in ((plain, ""), (pure, "pure python")):
        with backend.start(env, LIMITS) as sandbox:
            out = sandbox.execute('printf "%s" "$CWORDS_MODE"', timeout=30)
            assert out.exit_code == 0 and out.output == expected, out.output
