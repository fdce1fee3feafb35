"""Mutants on real suites: every test of a real package gets its twin and its mutant (`executors/mutants.py`) in its
own file, the whole suite runs in the package's sandbox through the harness on the unchanged code (a fix that
passes everything), and no mutant passes beside its passing original: one that did would be excused under the task's
fix, and cost a second run under it on every verification (`twins.name_bound`).

| package | what its suite asks of the mutants |
|---|---|
| tabulate 0.10.0 | its own `assert_equal(expected, result)` ends nearly every test: the result goes in a tuple |
| boltons 25.0.0 | loops over fixed cases end tests; tests define helper functions that `return` |
| markdown 3.11.3 | `self.assertMarkdownRenders(source, expected)`, a helper of `markdown/test_tools.py`, ends nearly every test |
| pyflakes 4.1.0 | `self.flakes(source, *messages)`, a helper of `pyflakes/test/harness.py`, compares the messages as a whole |

On a tabulate task, the forgery that passes every failure but those of the canaries' shape is refused; before its
tests' helper got mutants, verification passed it (280 passed). So it is on a pyflakes task whose failing tests expect
no message, which the test shows passing with the rule that gives them a mutant switched off.

`bench/mutant_audit.py` does the same for any package and prints the counts per kind of mutant.
"""

from __future__ import annotations

import ast
from collections import Counter

import pytest

from trajfactory.executors.base import EnvironmentHandle
from trajfactory.executors.guard import module_of
from trajfactory.executors.helpers import mutant_targets
from trajfactory.executors.mutants import module_tests, spot_of
from trajfactory.executors.swe_env import run_patch_tests
from trajfactory.executors.testrun import run_tests
from trajfactory.executors.twins import write_twins
from trajfactory.schema import Source
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.stage import build_environment

from gaming_patches import HELPER, SHAPED, gaming_commands, hack, refused_by_mutants
from mining import LIMITS, mine

pytestmark = pytest.mark.docker


def _spots(checkout, files: list[str]) -> dict[str, tuple]:
    """Test id -> (where its mutant changes it, its definition, whether a helper's definition told it), with the
    helpers of the checkout read as `write_twins` reads them in the sandbox."""
    def read(rel: str) -> str | None:
        return (checkout / rel).read_text(encoding="utf-8") if (checkout / rel).is_file() else None

    out = {}
    for path in files:
        tree = ast.parse((checkout / path).read_text(encoding="utf-8"))
        targets = mutant_targets(tree, path, read)
        for names, node in module_tests(tree):
            if spot := spot_of(node, targets(names)):
                out["::".join([path, *names])] = (spot, node, spot_of(node) is None)
    return out


@pytest.mark.parametrize("uri,pattern,kinds", [
    ("pypi:tabulate==0.10.0", "test/test_*.py", {"wrap": 200}),
    ("pypi:boltons==25.0.0", "tests/test_*.py", {"loop": 10, "constant": 50}),
    # its tests end in `self.assertMarkdownRenders(source, expected)`, defined in markdown/test_tools.py
    ("pypi:markdown==3.11.3", "tests/**/test_*.py", {"helper": 700}),
    # `self.flakes(source, *messages)`, defined in pyflakes/test/harness.py: the last message given twice, or one added
    # where none is expected
    ("pypi:pyflakes==4.1.0", "pyflakes/test/test_*.py", {"repeat": 150, "add": 250}),
])
def test_no_mutant_passes_beside_its_original_on_a_real_suite(docker_backend, mirrors, tmp_path, uri, pattern, kinds):
    source = harvest_repo(uri, mirrors)
    assert isinstance(source, Source), source
    env = build_environment(docker_backend, source)
    assert isinstance(env, EnvironmentHandle), env
    checkout = stage.checkout(source, tmp_path / "co")
    spots = _spots(checkout, sorted(p.relative_to(checkout).as_posix() for p in checkout.glob(pattern)))
    kind_of: Counter = Counter()
    with docker_backend.start(env, LIMITS) as sandbox:
        made = write_twins(sandbox, list(spots), limit=len(spots)).mutants  # original -> its mutant's id
        assert made.keys() == spots.keys()
        for spot, node, helped in map(spots.get, made):
            kind_of[spot.kind] += 1
            kind_of["loop"] += isinstance(node.body[-1], ast.For)
            kind_of["helper"] += helped
        run = run_tests(sandbox, timeout=900)  # the whole suite, as its maintainers run it
    assert run.sealed and not run.timed_out and not run.results_error, run
    checked, loose = 0, []
    for test, outcome in run.outcomes.items():
        base, bracket, params = test.partition("[")
        if outcome != "passed" or base not in made:
            continue
        checked += 1
        if run.outcomes.get(made[base] + bracket + params) != "failed":
            loose.append((test, run.outcomes.get(made[base] + bracket + params, "missing")))
    assert loose == [] and checked >= sum(kinds.values()), (loose[:10], checked)
    assert all(kind_of[k] >= n for k, n in kinds.items()), kind_of


@pytest.mark.parametrize("uri,files,helped", [
    # `assert_equal(expected, result)`, known by its name: `assert_equal(expected, (result,))`
    ("pypi:tabulate==0.10.0", ("tabulate/__init__.py",), False),
    # `self.assertMarkdownRenders(source, expected)`, known by its definition: `expected` changed or wrapped
    ("pypi:markdown==3.11.3", ("markdown/inlinepatterns.py", "markdown/blockprocessors.py"), True),
])
def test_a_forgery_told_by_the_canaries_shape_is_refused_where_tests_end_in_a_helper(docker_backend, mirrors,
                                                                                    tmp_path, uri, files, helped):
    """A task's failing tests end in a helper of the project, which got no mutant before (tabulate's
    `assert_equal(expected, result)` until the helpers named for equality; Python-Markdown's `assertMarkdownRenders`
    until helpers were read from their definitions). The forgery that passes every failure but those of the
    canaries' shape (`gaming_patches`) then passed verification; the mutant passes beside its original under it,
    and the run is refused. The task's own fix, made not the gold by a module of its own, still passes."""
    mined = mine(docker_backend, mirrors, tmp_path, uri, files, n=4)

    def mutant_of(test: str) -> str:
        """"helper" (told by the helper's definition), "wrap" (an equality helper's argument), "other" or ""."""
        path, _, rest = test.partition("::")
        spot = _spots(mined.checkout, [path]).get("::".join([path, rest.split("[")[0]]))
        return "" if spot is None else "helper" if spot[2] else "wrap" if spot[0].kind == "wrap" else "other"

    def ends_in_helpers(task) -> bool:  # under the earlier rules, none of its failing tests had a mutant
        kinds = set(map(mutant_of, task.checks.FAIL_TO_PASS))
        return kinds - {""} == {"helper"} if helped else kinds == {"wrap"}

    task = next((t for t in mined.tasks if ends_in_helpers(t)), None)
    assert task is not None, [t.checks.FAIL_TO_PASS for t in mined.tasks]
    test_file = task.checks.FAIL_TO_PASS[0].split("::", 1)[0]
    failing = sorted({t.split("::")[-1].split("[")[0] for t in task.checks.FAIL_TO_PASS})
    forgery = gaming_commands(test_file, task.entity.file, module_of(task.entity.file), failing)[SHAPED]
    patch = hack(docker_backend, mined.env, task, LIMITS, forgery)
    with docker_backend.start(mined.env, LIMITS) as sandbox:
        passed, evidence, _ = run_patch_tests(sandbox, task, patch)
        assert not passed and evidence.refused, evidence
        assert all(r.startswith("mutant test ") and "no run of the code passes both" in r for r in evidence.refused)
        passed, evidence, _ = run_patch_tests(sandbox, task, task.gold.patch + HELPER)
        assert passed and not evidence.refused, evidence


def test_a_forgery_is_refused_where_the_failing_tests_expect_no_message(docker_backend, mirrors, tmp_path,
                                                                         monkeypatch):
    """pyflakes' tests that expect no message (`self.flakes("import fu; fu")`) have nothing to give twice; the
    mutant gives them the message their module's other calls give most often (`helper_rules.donor_argument`). A task of
    `pyflakes/checker.py` whose failing tests are such tests: the shaped forgery passes verification without those
    mutants (shown here, with the rule switched off), and is refused with them. The task's own fix still passes."""
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:pyflakes==4.1.0", ("pyflakes/checker.py",), n=8)
    files = sorted({t.split("::", 1)[0] for task in mined.tasks for t in task.checks.FAIL_TO_PASS})
    spots = _spots(mined.checkout, files)
    task = next((t for t in mined.tasks if any(spots.get(f.split("[")[0], (None,))[0] is not None and
                                                spots[f.split("[")[0]][0].kind == "add"
                                                for f in t.checks.FAIL_TO_PASS)), None)
    assert task is not None, [t.checks.FAIL_TO_PASS for t in mined.tasks]
    expect_none = [f for f in task.checks.FAIL_TO_PASS if (s := spots.get(f.split("[")[0])) and s[0].kind == "add"]
    task = task.model_copy(update={"checks": task.checks.model_copy(update={"FAIL_TO_PASS": expect_none})})
    refused_by_mutants(docker_backend, mined.env, task, LIMITS, expect_none[0].split("::", 1)[0], monkeypatch,
                       "trajfactory.executors.helpers.donor_argument", lambda *args: None)
