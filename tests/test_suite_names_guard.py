"""A suite kept in files the guard's name rules do not know is out of a patch's reach all the same, on real PyPI
packages: jsonpatch 1.48's `tests.py` (its pytest.ini names it) and iso8601 2.1.0 with its suite renamed to a name of
its own (`python_files = ["check_*.py"]`). A forgery rebinding the failing tests to no-ops at the end of their file is
reverted as the task's own test file, and the gold patch still passes."""

from __future__ import annotations

import shutil

import pytest

from trajfactory.executors.guard import protected
from trajfactory.executors.swe_env import prepare_episode, run_patch_tests
from trajfactory.executors.twins import write_twins
from trajfactory.schema import Source
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.entities import iter_source_files

from mining import LIMITS as MINING_LIMITS, QUICK, mine


def _rebinding(task, checkout) -> str:
    """A forgery adding nothing but a rebinding of each failing test to a no-op (keeping its marks and signature) at
    the end of the failing tests' file: no word the tampering scan looks for."""
    path = task.checks.FAIL_TO_PASS[0].split("::", 1)[0]
    names = sorted({".".join(t.split("[")[0].split("::")[1:]) for t in task.checks.FAIL_TO_PASS if t.startswith(path)})
    lines = (checkout / path).read_text().splitlines()
    added = ["import functools"] + [f"{n} = functools.wraps({n})(lambda *args, **kwargs: None)" for n in names]
    return (f"--- a/{path}\n+++ b/{path}\n@@ -{len(lines)},1 +{len(lines)},{1 + len(added)} @@\n {lines[-1]}\n" +
            "".join(f"+{line}\n" for line in added))


@pytest.mark.docker
def test_tests_in_a_file_named_tests_py_are_out_of_a_patchs_reach(docker_backend, mirrors, tmp_path):
    """jsonpatch 1.48 keeps its suite in `tests.py` (its pytest.ini names it). That name was no test file to the
    guard: synthesis put bugs into the tests themselves, the failing tests' file got no twins, and a patch rebinding
    each failing test method to a no-op at the end of `tests.py` passed verification. It is reverted now."""
    # its bug's 62 failing tests take 3x the clean run's time (14 s on a quiet machine): under the suite's load, the
    # default 10x wall limit timed the candidate out once; what is tested here is the guard, not the limit
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:jsonpatch==1.48", ("jsonpatch.py",), n=1,
                 cfg=QUICK.model_copy(update={"timeout_factor": 40.0}))
    task = next(t for t in mined.tasks if any(f.startswith("tests.py::") for f in t.checks.FAIL_TO_PASS))
    failing = [f for f in task.checks.FAIL_TO_PASS if f.startswith("tests.py::") and f.count("::") == 2]
    task = task.model_copy(update={"checks": task.checks.model_copy(update={"FAIL_TO_PASS": failing,
                                                                            "PASS_TO_PASS": []})})
    with docker_backend.start(mined.env, MINING_LIMITS) as sandbox:
        passed, evidence, _ = run_patch_tests(sandbox, task, _rebinding(task, mined.checkout))
        gold, gold_evidence, _ = run_patch_tests(sandbox, task, task.gold.patch)
    assert failing and not passed and "tests.py (test file)" in evidence.reverted, evidence
    assert gold, gold_evidence  # with the twins and the canary class now in tests.py


@pytest.mark.docker
def test_a_suite_under_a_name_of_its_own_is_out_of_a_patchs_reach(docker_backend, mirrors, tmp_path):
    """iso8601 2.1.0 with its test module renamed `iso8601/check_iso8601.py` and `python_files = ["check_*.py"]`
    in its pyproject.toml: a project that names its suite its own way, which no name rule of the guard knows.
    Synthesis leaves the file alone (the project's collection rules say it holds tests), the failing tests get
    twins there, and a forgery rebinding them to no-ops at its end is reverted as the task's own test file; with
    names alone deciding, it passed verification."""
    source = harvest_repo("pypi:iso8601==2.1.0", mirrors)
    assert isinstance(source, Source), source
    repo = tmp_path / "iso8601-checks"
    shutil.copytree(stage.checkout(source, tmp_path / "clean"), repo, ignore=shutil.ignore_patterns(".git"))
    (repo / "iso8601/test_iso8601.py").rename(repo / "iso8601/check_iso8601.py")
    with open(repo / "pyproject.toml", "a") as config:
        config.write('\n[tool.pytest.ini_options]\npython_files = ["check_*.py"]\n')
    assert "iso8601/check_iso8601.py" not in iter_source_files(repo) and "iso8601/iso8601.py" in \
        iter_source_files(repo)
    mined = mine(docker_backend, mirrors, tmp_path, str(repo), ("iso8601/iso8601.py",), n=2)
    task = mined.tasks[0]
    assert all(t.startswith("iso8601/check_iso8601.py::") for t in task.checks.FAIL_TO_PASS), task.checks
    assert protected("iso8601/check_iso8601.py") is None  # the name alone says nothing
    with docker_backend.start(mined.env, MINING_LIMITS) as sandbox:
        prepare_episode(sandbox, task)
        twins = write_twins(sandbox, task.checks.FAIL_TO_PASS)
        assert twins.ids and all(t.startswith("iso8601/check_iso8601.py::") for t in twins.ids), twins.ids
        passed, evidence, _ = run_patch_tests(sandbox, task, _rebinding(task, mined.checkout))
        gold, gold_evidence, _ = run_patch_tests(sandbox, task, task.gold.patch)
    assert not passed and evidence.reverted == ["iso8601/check_iso8601.py (test file)"], evidence
    assert gold and not gold_evidence.reverted, gold_evidence
