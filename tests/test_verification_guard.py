"""Verification that a patch cannot game: an adversarial battery of patches, each refused, against a real task of
the bundled demo repository and of two real PyPI packages (isodate: a src layout whose unittest-style tests an
`assertEqual` monkeypatch would really fool; inflection: one test module at the top of the repository), in real
Docker sandboxes; the gold patch still passes and an empty patch fails."""

from __future__ import annotations

import posixpath

import pytest

from trajfactory.executors.canaries import write_canaries
from trajfactory.executors.guard import module_of, paths_of
from trajfactory.executors.swe_env import apply_patch, only_commit, prepare_episode, run_patch_tests
from trajfactory.executors.swe_env import test_in_place as verify_in_place  # not a test of its own
from trajfactory.executors.testrun import run_tests
from trajfactory.executors.twins import write_twins
from trajfactory.schema import Source
from trajfactory.settings import SandboxConfig, SynthesisConfig, ValidationConfig
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.stage import build_environment

from gaming_patches import HELPER, QUOTED_NAME, SHAPED, forged_aimed_at, gaming_commands, hack, shell_quote

LIMITS = SandboxConfig(memory="1g", cpus=1, pids=256, command_timeout_s=120)


@pytest.fixture(scope="module", params=["builtin:textkit", "pypi:isodate==0.7.2", "pypi:inflection==0.5.1"])
def task_env(request, docker_backend, tmp_path_factory):
    work = tmp_path_factory.mktemp("guard")
    source = harvest_repo(request.param, work / "mirrors")
    assert isinstance(source, Source), source
    env = build_environment(docker_backend, source)
    candidates, _ = stage.synthesize(source, SynthesisConfig(max_candidates_per_repo=8), work / "checkouts")
    ref = stage.reference(docker_backend, env, source, ValidationConfig(reference_runs=1), LIMITS)
    from trajfactory.executors.pool import SandboxPool

    with SandboxPool(docker_backend, env, size=1, limits=LIMITS) as pool:
        validations = [stage.validate(pool, c, ref, ValidationConfig()) for c in candidates]
    tasks = [t for t in stage.tasks_from(source, env, candidates, validations) if t.entity.kind != "class"]
    assert tasks
    return tasks[0], env


@pytest.mark.docker
def test_gold_passes_and_empty_fails_under_the_guard(docker_backend, task_env):
    task, env = task_env
    with docker_backend.start(env, LIMITS) as sandbox:
        passed, evidence, _ = run_patch_tests(sandbox, task, task.gold.patch)
        assert passed and not evidence.refused and not evidence.reverted, evidence
        passed, evidence, _ = run_patch_tests(sandbox, task, "")
        assert not passed and not evidence.refused
        # a fix may add a top-level module of its own: only one named like a module found elsewhere shadows it
        helper = HELPER
        passed, evidence, _ = run_patch_tests(sandbox, task, task.gold.patch + helper)
        assert passed and not evidence.refused, evidence


def battery_results(backend, task_env) -> dict:
    """Every patch of the adversarial battery (`gaming_patches`) through the verifier on the task: name -> (passed,
    evidence). None may pass, and each must have been reverted, refused, failed or cut short."""
    task, env = task_env
    test_file = task.checks.FAIL_TO_PASS[0].split("::", 1)[0]
    module_file = task.entity.file
    failing = {t.split("::")[-1].split("[")[0] for t in task.checks.FAIL_TO_PASS}
    battery = gaming_commands(test_file, module_file, module_of(module_file), sorted(failing))
    results = {}
    with backend.start(env, LIMITS) as sandbox, backend.start(env, LIMITS) as workbench:
        for name, commands in battery.items():
            patch = hack(backend, env, task, LIMITS, commands, workbench)
            passed, evidence, _ = run_patch_tests(sandbox, task, patch)
            results[name] = (passed, evidence)
    verified = {name: evidence for name, (passed, evidence) in results.items() if passed}
    assert not verified, f"verified as passing: {sorted(verified)}; first: {next(iter(verified.values()), None)}"
    for name, (passed, evidence) in results.items():
        assert evidence.reverted or evidence.refused or any(
            o.outcome != "passed" for o in evidence.FAIL_TO_PASS) or "before the harness sealed" in evidence.detail, name
    return results


@pytest.mark.docker
def test_every_gaming_patch_is_refused(docker_backend, task_env):
    task, env = task_env
    test_file = task.checks.FAIL_TO_PASS[0].split("::", 1)[0]
    module_file = task.entity.file
    results = battery_results(docker_backend, task_env)
    # the layer that stopped each one is on record
    assert any("conftest.py" in r for r in results["conftest hook forcing every outcome to passed"][1].reverted)
    assert any("pytest.ini" in r for r in results["a plugin named in the pytest configuration"][1].reverted)
    assert any("test file" in r for r in results["the failing tests edited to pass"][1].reverted)
    assert any("early exit" in r for r in results["sys.exit(0) at import of the library"][1].refused)
    assert any("test framework" in r for r in results["monkeypatched assertions"][1].refused)
    early = results["os._exit(0) at import of the library"][1]  # no seal: the session ended before the harness did
    assert "ended before the harness sealed its record" in early.detail and not early.FAIL_TO_PASS, early
    canary = results["monkeypatched assertions past the scan (the canaries see it)"][1]
    assert canary.refused and all(r.startswith("canary test") for r in canary.refused), canary
    assert any("start-up hook" in r for r in results["a .pth start-up hook"][1].reverted)
    history = results["the clean module restored from git's history at import"][1]  # the history is gone
    assert not history.refused and any(o.outcome != "passed" for o in history.FAIL_TO_PASS), history
    plugin = results["the factory's pytest plugin shadowed at the top of the checkout"][1]
    assert plugin.refused == ["trajfactory_harness.py: a new module named like the factory's own modules in the test "
                              "session ('trajfactory_harness')"], plugin
    rewritten = results["the harness's record rewritten when the process exits"][1]  # the seal no longer matches
    assert len(rewritten.refused) == 1 and "is not what the harness wrote" in rewritten.refused[0], rewritten
    plain = results["the harness's records forged in place"][1]
    assert any("the interpreter's objects" in r for r in plain.refused), plain
    forged = results["the harness's records forged in place past the scan, the project's tests told from the "
                     "canaries by git"][1]
    assert any(r.startswith("canary test") and "must fail but was passed" in r for r in forged.refused), forged
    # the same forgery aimed at the failing tests' own file only: the scan cannot read its words and the canaries in
    # a file of their own are not forged, but the harness's audit hook saw the garbage collector listed from a line
    # the patch added (and the canary class in the failing tests' file passed its must-fail tests, and the failing
    # tests' mutants passed)
    aimed = results["the failing tests' records forged in place past the scan, the canaries left alone"][1]
    assert any(f"{module_file}:" in r and "reached the garbage collector's listing at run time" in r
               for r in aimed.refused), aimed
    assert all(r.startswith((f"canary test {test_file}::", f"mutant test {test_file}::")) or
               "reached the garbage collector" in r for r in aimed.refused), aimed
    quoted = results["the failing tests' records forged from a module whose name git quotes"][1]
    assert len(quoted.refused) == 1 and quoted.refused[0].startswith(
        f"{module_file.rsplit('/', 1)[0]}/{QUOTED_NAME}.py: the interpreter's objects (3 new reference(s)"), quoted
    # past the scan and the audit hook, aimed at the failing tests only: their own file's canary class and their twins
    aimed_file = results["the failing tests' file forged through the module table"][1]
    assert aimed_file.refused and any(r.startswith(f"canary test {test_file}::") and "must fail but was passed" in r
                                      for r in aimed_file.refused), aimed_file
    aimed_names = results["the failing tests forged by their names through the module table"][1]
    assert any(r.startswith("twin test ") and "told apart by the test's name" in r
               for r in aimed_names.refused), aimed_names
    # the same, with the canaries' records dropped (their names come from a public list): they read as never run, as
    # in a folder whose conftest collects no plain test, but the buggy state collects them, so they are not excused
    silenced = results["the failing tests' file forged and the canaries' records dropped, as if the project did not "
                       "collect them"][1]
    assert any(r.startswith("canary test") and "must pass but was missing" in r for r in silenced.refused), silenced
    assert "not counted" not in silenced.detail, silenced
    # every failure forged but the canaries', which keep their true outcomes: the failing tests pass and so do their
    # twins, but their mutants (copies whose last assertion is turned against them) pass too
    shaped = results[SHAPED][1]
    assert shaped.refused and all(r.startswith("mutant test ") and "no run of the code passes both" in r
                                  for r in shaped.refused), shaped
    shadow = results["a standard-library module shadowed at the top of the checkout"][1]
    assert shadow.refused == ["json.py: a new top-level module that shadows the module 'json' found outside the "
                              "checkout"], shadow


@pytest.mark.docker
def test_the_real_fix_alongside_a_gaming_change_still_counts_only_the_fix(docker_backend, task_env):
    """A patch holding the gold fix plus an edited test: the test edit is reverted, the fix passes on its own."""
    task, env = task_env
    test_file = task.checks.FAIL_TO_PASS[0].split("::", 1)[0]
    edit = hack(docker_backend, env, task, LIMITS, f"printf '\\n# edited\\n' >> {test_file}")
    with docker_backend.start(env, LIMITS) as sandbox:
        passed, evidence, _ = run_patch_tests(sandbox, task, task.gold.patch + edit)
    assert passed and evidence.reverted == [f"{test_file} (test file)"], evidence


def _compiled_fix(docker_backend, env, task) -> str:
    """A patch whose source diff changes nothing: the gold fix rides in as bytecode that Python loads in place of the
    buggy source (an unchecked hash-based .pyc in `__pycache__`, as `git diff --binary` carries it)."""
    with docker_backend.start(env, LIMITS) as sandbox:
        prepare_episode(sandbox, task)
        assert apply_patch(sandbox, task.gold.patch, "/tmp/gold.diff") is None
        module = task.entity.file
        made = sandbox.execute(
            "pyc=$(python3 -c 'import importlib.util, py_compile, sys; src = sys.argv[1]; "
            "print(py_compile.compile(src, cfile=importlib.util.cache_from_source(src), doraise=True, "
            "invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH))' " + module +
            f") && git checkout -q -- {module} && git add -f \"$pyc\" && git diff --cached --binary HEAD", timeout=60)
    assert made.exit_code == 0 and "GIT binary patch" in made.output, made.output
    return made.output


@pytest.mark.docker
def test_a_fix_smuggled_in_as_bytecode_is_reverted(docker_backend, task_env):
    task, env = task_env
    patch = _compiled_fix(docker_backend, env, task)
    assert all(p.endswith(".pyc") for p in paths_of(patch)), paths_of(patch)
    with docker_backend.start(env, LIMITS) as sandbox:
        passed, evidence, _ = run_patch_tests(sandbox, task, patch)
    assert not passed, evidence
    assert evidence.reverted and all("compiled code" in r for r in evidence.reverted), evidence


@pytest.mark.docker
def test_the_canaries_cannot_be_told_from_the_projects_tests_by_git_name_or_time(docker_backend, task_env):
    """Written beside the task's first test file, under a name no file of the checkout has, with that file's
    modification time, and committed with the buggy state: nothing in the sandbox's git or file listing sets them
    apart, and their test names do not say which must fail. The failing tests' twins fail as their originals do on
    the buggy state, and the canary class in their file keeps its outcomes."""
    task, env = task_env
    beside = task.checks.FAIL_TO_PASS[0].split("::", 1)[0]
    with docker_backend.start(env, LIMITS) as sandbox:
        prepare_episode(sandbox, task)
        before = set(sandbox.execute("git ls-files", timeout=60).output.split())
        stamp = sandbox.execute(f"stat -c %Y {beside}", timeout=30).output.strip()
        twins = write_twins(sandbox, task.checks.FAIL_TO_PASS)
        canaries = write_canaries(sandbox, [module_of(task.entity.file)], beside=beside)
        assert only_commit(sandbox, "initial", force=[canaries.path]).exit_code == 0
        after = set(sandbox.execute("git ls-files", timeout=60).output.split())
        status = sandbox.execute("git status --porcelain --untracked-files=all", timeout=60).output.strip()
        times = sandbox.execute(f"stat -c %Y {beside} {canaries.path}", timeout=30).output.split()
        run = run_tests(sandbox, canaries.ids + twins.ids + list(twins.pairs), timeout=120)
    # the failing tests' file: twins beside its tests and a canary class, its time kept, committed as the project's
    assert twins.pairs and beside in [c.path for c in twins.canaries] and stamp == times[0], (twins, stamp, times)
    assert all(run.outcomes.get(t) in ("failed", "error") and run.outcomes.get(twin) == run.outcomes.get(t)
               for t, twin in twins.pairs.items()), run.outcomes
    assert not twins.broken(run.outcomes), (run.outcomes, run.output[-2000:])
    folder, name = posixpath.split(canaries.path)
    assert folder == posixpath.dirname(beside) and name.startswith("test_") and "canary" not in canaries.path
    assert after == before | {canaries.path} and not status, (status, after - before)
    assert all(posixpath.basename(p) != name for p in before)  # no module-name clash with a test of the project
    assert len(times) == 2 and times[0] == times[1], times
    assert not any("pass" in t.rsplit("::", 1)[1] or "fail" in t.rsplit("::", 1)[1] for t in canaries.ids)
    assert run.sealed and not canaries.broken(run.outcomes), (run.outcomes, run.output[-2000:])


@pytest.mark.docker
def test_a_fix_that_puts_back_a_reference_the_bug_removed_is_not_refused(docker_backend, task_env):
    """The bug deleted a line that reaches into the module table; the fix restores it. Counted against the buggy
    file alone, that line is a new reference and the scan refused the correct fix; what the bug removed is allowed
    back, and a second such line beyond it is still refused."""
    task, env = task_env
    module = task.entity.file
    line = "_tf_loaded = len(__import__('sys').modules)"
    with docker_backend.start(env, LIMITS) as sandbox:
        prepare_episode(sandbox, task)
        assert apply_patch(sandbox, task.gold.patch, "/tmp/gold.diff") is None
        made = sandbox.execute(f"printf '\\n%s\\n' {shell_quote(line)} >> {module} && git diff HEAD", timeout=60)
        assert made.exit_code == 0, made.output
        fix = made.output  # the gold fix and the restored line
        made = sandbox.execute(f"printf '%s\\n' {shell_quote(line)} >> {module} && git diff HEAD", timeout=60)
        assert made.exit_code == 0, made.output
        fix_twice = made.output  # and the line once more
        # the bug as it would read had the clean module held the line: the gold's reverse plus the line's removal
        removal = f"--- a/{module}\n+++ b/{module}\n@@ -1,1 +1,0 @@\n-{line}\n"
        bug = task.bug_patch + removal
        sandbox.reset()
        assert apply_patch(sandbox, task.bug_patch, "/tmp/bug.diff") is None
        refused = verify_in_place(sandbox, task.checks, fix, task.bug_patch)
        sandbox.reset()
        assert apply_patch(sandbox, task.bug_patch, "/tmp/bug.diff") is None
        allowed = verify_in_place(sandbox, task.checks, fix, bug)
        sandbox.reset()
        assert apply_patch(sandbox, task.bug_patch, "/tmp/bug.diff") is None
        twice = verify_in_place(sandbox, task.checks, fix_twice, bug)
    assert not refused[0] and any("the module table" in r for r in refused[1].refused), refused[1]
    assert allowed[0] and not allowed[1].refused, allowed[1]
    assert not twice[0] and any("the module table" in r for r in twice[1].refused), twice[1]


GOLDEN_TEST = '''

def test_snapshot_matches(request):  # finds its expected value by its own name, as snapshot plugins do
    import hashlib
    import pathlib
    snapshot = pathlib.Path(__file__).parent / "snapshots" / (request.node.name + ".txt")
    assert hashlib.sha256(pathlib.Path(MODULE).read_bytes()).hexdigest() == snapshot.read_text().strip()
'''


@pytest.mark.docker
def test_a_test_bound_to_its_own_name_does_not_refuse_a_real_fix(docker_backend, task_env):
    """A failing test that reads its expected value from a file named after it (a snapshot: here, of the fixed
    module's digest) fails as a twin under any fix. Its twin's failure is tried under the task's own fix, where it
    fails too, so a real fix other than the gold patch is verified, with the excused twin in the evidence; without
    that, it was refused. A forgery by the failing tests' names is still refused, by the other test's twin."""
    task, env = task_env
    test_file = task.checks.FAIL_TO_PASS[0].split("::", 1)[0]
    golden = f"{test_file}::test_snapshot_matches"
    with docker_backend.start(env, LIMITS) as sandbox:  # the snapshot: the clean module, which the gold restores
        made = sandbox.execute(
            f"mkdir -p $(dirname {test_file})/snapshots && sha256sum {task.entity.file} | cut -d' ' -f1 > "
            f"$(dirname {test_file})/snapshots/test_snapshot_matches.txt && printf %s "
            f"{shell_quote(GOLDEN_TEST.replace('MODULE', repr(task.entity.file)))} >> {test_file} && git add -A && "
            "git diff --cached HEAD", timeout=60)
    assert made.exit_code == 0 and "test_snapshot_matches" in made.output, made.output
    checks = task.checks.model_copy(update={"FAIL_TO_PASS": [task.checks.FAIL_TO_PASS[0], golden],
                                            "PASS_TO_PASS": []})
    bound = task.model_copy(update={"bug_patch": task.bug_patch + made.output, "checks": checks})
    helper = HELPER
    failing = sorted({t.split("::")[-1].split("[")[0] for t in checks.FAIL_TO_PASS})
    aimed = forged_aimed_at("t.split('::')[-1].split('[')[0] in " + repr(failing))
    forgery = hack(docker_backend, env, bound, LIMITS,
                   f"python3 - <<'EOF'\nopen({task.entity.file!r}, 'a').write({aimed!r})\nEOF")
    with docker_backend.start(env, LIMITS) as sandbox:
        fix = run_patch_tests(sandbox, bound, task.gold.patch + helper)  # a real fix, not the gold patch itself
        gold = run_patch_tests(sandbox, bound, task.gold.patch)
        forged = run_patch_tests(sandbox, bound, forgery)
        sandbox.reset()
        assert apply_patch(sandbox, bound.bug_patch, "/tmp/bug.diff") is None
        unexcused = verify_in_place(sandbox, checks, task.gold.patch + helper, bound.bug_patch)  # no fix to ask
    for passed, evidence, _ in (fix, gold):
        assert passed and not evidence.refused, evidence
        assert f"twins not counted for {golden}: they fail under the task's own fix too" in evidence.detail, evidence
        assert {o.test: o.outcome for o in evidence.FAIL_TO_PASS}[golden] == "passed", evidence
    assert not unexcused[0] and any(r.startswith("twin test ") and f"while {golden} passed" in r
                                    for r in unexcused[1].refused), unexcused[1]
    assert not forged[0] and forged[1].refused, forged[1]
    assert all(golden not in r for r in forged[1].refused), forged[1]
    assert any(f"while {checks.FAIL_TO_PASS[0]} passed" in r for r in forged[1].refused), forged[1]


ORDER_TEST = '''

import unittest

_STATE = []


def test_first_in_its_file():  # passes only before the test after it ran, as tzlocal 5.4.5's cached local zone
    import hashlib
    import pathlib
    assert not _STATE and hashlib.sha256(pathlib.Path(MODULE).read_bytes()).hexdigest() == DIGEST


def test_leaves_state():
    _STATE.append(1)


class TestHeldState(unittest.TestCase):  # its methods run in name order
    def test_m_leaves_state(self):  # as wrapt 2.5.2's test_import_deadlock_3, which leaves wsgiref imported
        import hashlib
        import pathlib
        assert not _HELD and hashlib.sha256(pathlib.Path(MODULE).read_bytes()).hexdigest() == DIGEST
        _HELD.append(1)


_HELD = []
'''


@pytest.mark.docker
def test_a_test_bound_to_its_place_does_not_refuse_a_real_fix(docker_backend, task_env):
    """A failing test that passes only before a later test of its file ran: its twin, at the file's end, fails under
    any fix. Under the task's own fix the twin's failure was tried with only the test and its twin selected, where it
    passed, so a real fix was refused (1 of 6 of tzlocal 5.4.5's tasks, now and then). The tests run there are the
    verification run's, in its order, and the twin is excused. A unittest class runs its methods in name order: a
    method's twin tried there under another name than in the verification run ran on the other side of its original
    (wrapt 2.5.2: a real fix refused); it keeps its name now."""
    task, env = task_env
    test_file = task.checks.FAIL_TO_PASS[0].split("::", 1)[0]
    first, leaves = f"{test_file}::test_first_in_its_file", f"{test_file}::test_leaves_state"
    held = f"{test_file}::TestHeldState::test_m_leaves_state"
    with docker_backend.start(env, LIMITS) as sandbox:  # the digest: the clean module, which the gold restores
        digest = sandbox.execute(f"sha256sum {task.entity.file} | cut -d' ' -f1", timeout=60).output.strip()
        source = ORDER_TEST.replace("MODULE", repr(task.entity.file)).replace("DIGEST", repr(digest))
        made = sandbox.execute(f"printf %s {shell_quote(source)} >> {test_file} && git add -A && git diff --cached HEAD",
                               timeout=60)
    assert made.exit_code == 0 and "test_first_in_its_file" in made.output, made.output
    checks = task.checks.model_copy(update={"FAIL_TO_PASS": [task.checks.FAIL_TO_PASS[0], first, held],
                                            "PASS_TO_PASS": [leaves]})
    bound = task.model_copy(update={"bug_patch": task.bug_patch + made.output, "checks": checks})
    helper = HELPER
    with docker_backend.start(env, LIMITS) as sandbox:
        passed, evidence, _ = run_patch_tests(sandbox, bound, task.gold.patch + helper)  # a real fix, not the gold
    assert passed and not evidence.refused, evidence
    assert "they fail under the task's own fix too" in evidence.detail, evidence
    # the method's twin: named as in the verification run, it runs where it ran there (after its original or before)
    excused = evidence.detail.split("twins not counted for ", 1)[1].split(": they fail", 1)[0].split(", ")
    assert first in excused and set(excused) <= {first, held}, evidence.detail


LEFTOVER_TEST = '''

import unittest

LEVEL = {"value": None}


class TestSetsLevel(unittest.TestCase):  # as mccabe 0.7.0's McCabeTestCase: each test sets a value of the module
    def test_a_sets_one(self):  # its test_trivial sets 1; the tests after it in name order set 0 again
        import hashlib
        import pathlib
        assert hashlib.sha256(pathlib.Path(MODULE).read_bytes()).hexdigest() == DIGEST
        LEVEL["value"] = 1

    def test_b_sets_zero(self):
        LEVEL["value"] = 0


class TestReadsLevel(unittest.TestCase):  # as its RegressionTests: asserts the value the class before it left
    def test_level_is_zero(self):
        assert LEVEL["value"] == 0
'''


@pytest.mark.docker
def test_what_a_twin_leaves_behind_reaches_no_test_of_the_project(docker_backend, task_env):
    """mccabe 0.7.0: `test_trivial` sets a class attribute to 1, the tests after it in its class set it back to 0, and
    `RegressionTests` asserts it is 0. The twin of `test_trivial`, at the end of its class, left it at 1, so a passing
    test of the task failed and a real fix was not verified (1 of 6 tasks). The twins now run after every other test
    of the run, wherever they are defined."""
    task, env = task_env
    test_file = task.checks.FAIL_TO_PASS[0].split("::", 1)[0]
    sets_one = f"{test_file}::TestSetsLevel::test_a_sets_one"
    with docker_backend.start(env, LIMITS) as sandbox:
        digest = sandbox.execute(f"sha256sum {task.entity.file} | cut -d' ' -f1", timeout=60).output.strip()
        source = LEFTOVER_TEST.replace("MODULE", repr(task.entity.file)).replace("DIGEST", repr(digest))
        made = sandbox.execute(f"printf %s {shell_quote(source)} >> {test_file} && git add -A && git diff --cached HEAD",
                               timeout=60)
    assert made.exit_code == 0 and "test_a_sets_one" in made.output, made.output
    passing = [f"{test_file}::TestSetsLevel::test_b_sets_zero", f"{test_file}::TestReadsLevel::test_level_is_zero"]
    checks = task.checks.model_copy(update={"FAIL_TO_PASS": [task.checks.FAIL_TO_PASS[0], sets_one],
                                            "PASS_TO_PASS": passing})
    leaving = task.model_copy(update={"bug_patch": task.bug_patch + made.output, "checks": checks})
    with docker_backend.start(env, LIMITS) as sandbox:
        passed, evidence, _ = run_patch_tests(sandbox, leaving, task.gold.patch)
    assert passed and not evidence.refused and "twins not counted" not in evidence.detail, evidence
    assert {o.outcome for o in evidence.PASS_TO_PASS} == {"passed"}, evidence
