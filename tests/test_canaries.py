"""Canaries of two kinds (`executors/canaries.py`): a `unittest.TestCase` class and plain functions. A project whose
autouse fixture is parametrized (markupsafe 3.0 runs every test once per escape implementation) errors every
`TestCase` canary: before, every patch there was refused (9 tasks of markupsafe 3.0.4, none verified). The functions
run once per parameter, and the verdict is theirs; what a patch forges still shows."""

from __future__ import annotations

import os
import subprocess

import pytest

from trajfactory.executors.canaries import Canaries, outcome_of, write_canaries
from trajfactory.executors.local import LocalBackend
from trajfactory.executors.swe_env import only_commit, run_patch_tests
from trajfactory.executors.testrun import run_tests
from trajfactory.executors.twins import write_twins
from trajfactory.settings import SandboxConfig

from gaming_patches import forged_aimed_at, gaming_commands, hack
from mining import mine
from sandbox_helpers import GIT_ENV, make_repo

P = "tests/test_x.py::"
CANARIES = Canaries(path="tests/test_x.py", must_pass=[P + "TestCases::test_a", P + "TestCases::test_b", P + "test_c",
                                                       P + "test_d"],
                    must_fail=[P + "TestCases::test_e", P + "TestCases::test_f", P + "test_g", P + "test_h"])
LIMITS = SandboxConfig(memory="1g", cpus=1, pids=256, command_timeout_s=120)
RIGHT = {t: "passed" for t in CANARIES.must_pass} | {t: "failed" for t in CANARIES.must_fail}


def _variants(outcomes: dict[str, str], kind: str = "test_") -> dict[str, str]:
    """The functions' outcomes as a parametrized fixture makes them: once per parameter, the second skipped."""
    out = {}
    for test, outcome in outcomes.items():
        if test.startswith(P + kind):
            out |= {f"{test}[native]": outcome, f"{test}[speedups]": "skipped"}
        else:
            out[test] = outcome
    return out


def test_a_kind_the_project_cannot_run_is_void_and_the_other_is_judged():
    assert CANARIES.broken(RIGHT) == [] and CANARIES.broken(_variants(RIGHT)) == []
    # markupsafe: every TestCase canary errors (`does not support fixtures`); the functions ran per parameter
    errored = _variants(RIGHT) | {t: "error" for t in CANARIES.ids if "TestCases" in t}
    assert CANARIES.broken(errored) == []
    # a project that collects no `test_` function: the class is judged
    assert CANARIES.broken({t: o for t, o in RIGHT.items() if "TestCases" in t}) == []
    # neither kind ran: both are judged, and the run is refused
    assert CANARIES.broken({t: "error" for t in CANARIES.ids}) == [f"{t} must pass but was error"
                                                                   for t in CANARIES.must_pass]
    assert len(CANARIES.broken({})) == 8
    # a must-fail canary forged to pass shows in the kind that runs, per parameter too
    forged = errored | {P + "test_g[native]": "passed"}
    assert CANARIES.broken(forged) == [f"{P}test_g must fail but was passed"]
    mixed = errored | {P + "test_h[speedups]": "passed"}
    assert CANARIES.broken(mixed) == [f"{P}test_h must fail but was mixed"]
    assert len(CANARIES.broken({t: "passed" for t in _variants(RIGHT)} | {
        t: "error" for t in CANARIES.ids if "TestCases" in t})) == 2
    # a kind is void only when all four agree on error or missing: one errored must-pass canary is broken
    one = RIGHT | {P + "TestCases::test_a": "error"}
    assert CANARIES.broken(one) == [f"{P}TestCases::test_a must pass but was error"]
    assert outcome_of(P + "test_c", {P + "test_c[a]": "skipped"}) == "skipped"
    assert outcome_of(P + "test_c", {P + "test_c[a]": "failed", P + "test_c[b]": "error"}) == "error"
    assert outcome_of(P + "test_c", {P + "test_cd[a]": "passed"}) == "missing"


CONFTEST = '''import pytest

import tinypkg


@pytest.fixture(scope="session", autouse=True, params=["native", "speedups"])
def _impl(request):
    tinypkg.IMPL = request.param
'''


@pytest.fixture(scope="module")
def parametrized(tmp_path_factory):
    """A tiny package whose conftest runs every test once per implementation, as markupsafe's does, in the local
    namespace sandbox."""
    root = make_repo(tmp_path_factory.mktemp("parametrized"), dependencies="[]")
    (root / "tests/conftest.py").write_text(CONFTEST)
    (root / "src/tinypkg/__init__.py").write_text("def add(a, b):\n    return a + b - 1\n")
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "bug"]):
        subprocess.run(cmd, cwd=root, env={**os.environ, **GIT_ENV}, check=True)
    backend = LocalBackend(cache_root=tmp_path_factory.mktemp("cache"))
    return backend, backend.build(str(root), "tests/parametrized", "main")


def test_canaries_run_per_parameter_where_a_testcase_cannot(parametrized):
    backend, env = parametrized
    test = "tests/test_add.py::test_add"
    with backend.start(env, SandboxConfig(pids=128, memory="1g", command_timeout_s=60)) as sandbox:
        twins = write_twins(sandbox, [f"{test}[native]", f"{test}[speedups]"])
        canaries = write_canaries(sandbox, ["tinypkg"], beside="tests/test_add.py")
        assert only_commit(sandbox, "initial", force=[canaries.path]).exit_code == 0
        buggy = run_tests(sandbox, [f"{test}[native]", *canaries.ids, *twins.ids], timeout=60)
        sandbox.write_file("src/tinypkg/__init__.py", "def add(a, b):\n    return a + b\n")
        fixed = run_tests(sandbox, [f"{test}[native]", *canaries.ids, *twins.ids], timeout=60)
    for run in (buggy, fixed):
        assert run.sealed and canaries.broken(run.outcomes) == [] and twins.broken(run.outcomes) == [], run.outcomes
        # the TestCase canaries error, the functions ran once per parameter: each bare id selected its variants
        assert {o for t, o in run.outcomes.items() if t.count("::") == 2 and t.startswith(canaries.path)} == {"error"}
        ran = [t for t in run.outcomes if t.startswith(canaries.path) and t.count("::") == 1]
        assert len(ran) == 8 and all(t.endswith(("[native]", "[speedups]")) for t in ran), ran
        assert "missing" not in run.outcomes.values(), run.outcomes
    assert buggy.outcomes[f"{test}[native]"] == "failed" and fixed.outcomes[f"{test}[native]"] == "passed"
    forged = fixed.outcomes | {t: "passed" for t in fixed.outcomes}
    assert [b for b in canaries.broken(forged) if "must fail but was passed" in b], forged


@pytest.mark.docker
def test_a_real_fix_is_verified_and_forgeries_refused_in_markupsafe(docker_backend, mirrors, tmp_path):
    """markupsafe 3.0.3: the gold patches pass the verifier's own path (twins and canaries beside the failing tests,
    canaries in a file of their own), an empty patch fails, and the forgeries only canaries and twins catch are
    refused by them."""
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:markupsafe==3.0.3", ("src/markupsafe/__init__.py",), n=2,
                 single=True)
    task = mined.tasks[0]
    # both halves of markupsafe ran: its pure-Python escaping and its compiled `_speedups`, built with the image
    halves = {t.split("[", 1)[1].split("]")[0].split("-")[0] for t in task.checks.FAIL_TO_PASS if "[" in t}
    assert halves == {"markupsafe._native", "markupsafe._speedups"}, task.checks.FAIL_TO_PASS
    test_file = task.checks.FAIL_TO_PASS[0].split("::", 1)[0]
    failing = sorted({t.split("::")[-1].split("[")[0] for t in task.checks.FAIL_TO_PASS})
    battery = gaming_commands(test_file, task.entity.file, "markupsafe", failing)
    wanted = {name: battery[name] for name in (
        "monkeypatched assertions past the scan (the canaries see it)",
        "the harness's records forged in place past the scan, the project's tests told from the canaries by git",
        "the failing tests' file forged through the module table",
        "the failing tests forged by their names through the module table")}
    wanted["every test forged through the module table"] = (
        "python3 - <<'EOF'\nopen(" + repr(task.entity.file) + ", 'a').write(" + repr(forged_aimed_at("True")) +
        ")\nEOF")
    with docker_backend.start(mined.env, LIMITS) as sandbox, docker_backend.start(mined.env, LIMITS) as workbench:
        empty = run_patch_tests(sandbox, task, "")
        results = {name: run_patch_tests(sandbox, task, hack(docker_backend, mined.env, task, LIMITS, commands,
                                                             workbench))
                   for name, commands in wanted.items()}
    assert not empty[0] and not empty[1].refused, empty
    verified = sorted(name for name, (passed, _, _) in results.items() if passed)
    assert verified == [], verified
    for name, (_, evidence, _) in results.items():  # the canaries or the twins saw each (the audit hook some too)
        assert any(r.startswith(("canary test", "twin test")) for r in evidence.refused), (name, evidence)
    # the forgeries were caught by the functions, which ran: the TestCase canaries are void there
    caught = results["every test forged through the module table"][1].refused
    assert any("must fail but was passed" in r and r.count("::") == 1 for r in caught), caught

