"""Mutants on real suites: every test of a real package gets its twin and its mutant (`executors/mutants.py`) in its
own file, the whole suite runs in the package's sandbox through the harness on the unchanged code (a fix that
passes everything), and no mutant passes beside its passing original: one that did would be excused under the task's
fix, and cost a second run under it on every verification (`twins.name_bound`).

| package | what its suite asks of the mutants |
|---|---|
| tabulate 0.10.0 | its own `assert_equal(expected, result)` ends nearly every test: the result goes in a tuple |
| boltons 25.0.0 | loops over fixed cases end tests; tests define helper functions that `return` |

On a tabulate task, the forgery that passes every failure but those of the canaries' shape is refused; before its
tests' helper got mutants, verification passed it (280 passed).

`bench/mutant_audit.py` does the same for any package and prints the counts per kind of mutant.
"""

from __future__ import annotations

import ast
from collections import Counter

import pytest

from trajfactory.executors.base import EnvironmentHandle
from trajfactory.executors.guard import module_of
from trajfactory.executors.mutants import module_tests, spot_of
from trajfactory.executors.swe_env import run_patch_tests
from trajfactory.executors.testrun import run_tests
from trajfactory.executors.twins import write_twins
from trajfactory.schema import Source
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.stage import build_environment

from gaming_patches import gaming_commands, hack
from mining import LIMITS, mine

pytestmark = pytest.mark.docker


@pytest.mark.parametrize("uri,folder,kinds", [
    ("pypi:tabulate==0.10.0", "test", {"wrap": 200}),
    ("pypi:boltons==25.0.0", "tests", {"loop": 10, "constant": 50}),
])
def test_no_mutant_passes_beside_its_original_on_a_real_suite(docker_backend, mirrors, tmp_path, uri, folder, kinds):
    source = harvest_repo(uri, mirrors)
    assert isinstance(source, Source), source
    env = build_environment(docker_backend, source)
    assert isinstance(env, EnvironmentHandle), env
    checkout = stage.checkout(source, tmp_path / "co")
    files = sorted(p.relative_to(checkout).as_posix() for p in (checkout / folder).glob("test_*.py"))
    spots = {"::".join([path, *names]): (spot, node) for path in files
             for names, node in module_tests(ast.parse((checkout / path).read_text(encoding="utf-8")))
             if (spot := spot_of(node))}
    kind_of: Counter = Counter()
    with docker_backend.start(env, LIMITS) as sandbox:
        made = write_twins(sandbox, list(spots), limit=len(spots)).mutants  # original -> its mutant's id
        assert made.keys() == spots.keys()
        for spot, node in map(spots.get, made):
            kind_of[spot.kind] += 1
            kind_of["loop"] += isinstance(node.body[-1], ast.For)
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


SHAPED = "every failure forged but the canaries', told by their shape"
HELPER = "--- /dev/null\n+++ b/tf_fix_helper.py\n@@ -0,0 +1 @@\n+VALUE = 1\n"


def test_a_forgery_told_by_the_canaries_shape_is_refused_where_tests_end_in_a_helper(docker_backend, mirrors,
                                                                                    tmp_path):
    """tabulate: a task's failing tests end in `assert_equal(expected, result)`, which got no mutant before. The
    forgery that passes every failure but those of the canaries' shape (`gaming_patches`) then passed verification;
    the mutant (`assert_equal(expected, (result,))`) passes beside its original under it, and the run is refused.
    The task's own fix, made not the gold by a module of its own, still passes."""
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:tabulate==0.10.0", ("tabulate/__init__.py",), n=4)

    def helper_ended(test: str) -> bool:
        path, _, rest = test.partition("::")
        tests = {tuple(n): node for n, node in module_tests(ast.parse((mined.checkout / path).read_text()))}
        node = tests.get(tuple(rest.split("[")[0].split("::")))
        return node is not None and getattr(spot_of(node), "kind", "") == "wrap"

    task = next((t for t in mined.tasks if all(map(helper_ended, t.checks.FAIL_TO_PASS))), None)
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
