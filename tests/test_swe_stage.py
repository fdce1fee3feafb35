"""The SWE stages as library calls against a real Docker engine and the bundled demo repository."""

from __future__ import annotations

import json

import pytest

from forged_gold import assert_refused, forged
from trajfactory.agents.oracle import OraclePolicy
from trajfactory.settings import SynthesisConfig, ValidationConfig
from trajfactory.settings import SandboxConfig
from trajfactory.synthesizers.swe.stage import build_environment
from trajfactory.executors.pool import SandboxPool
from trajfactory.schema import Source
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.selection_lines import probe_plan
from trajfactory.synthesizers.swe.validate import select_tests
from trajfactory.executors.swe_env import run_swe_episode, verify_gold, verify_gold_batch, verify_trajectory
from trajfactory.verifiers.claims import contradictions

pytestmark = pytest.mark.docker
LIMITS = SandboxConfig(memory="1g", cpus=1, pids=256, command_timeout_s=120)


@pytest.fixture(scope="module")
def demo(docker_backend, tmp_path_factory):
    """Harvest, build, synthesize, reference-run and validate the demo repository once."""
    work = tmp_path_factory.mktemp("demo")
    source = harvest_repo("builtin:textkit", work / "mirrors")
    assert isinstance(source, Source), source
    env = build_environment(docker_backend, source)
    candidates, bad = stage.synthesize(source, SynthesisConfig(max_candidates_per_repo=24), work / "checkouts")
    ref = stage.reference(docker_backend, env, source, ValidationConfig(), LIMITS)
    with SandboxPool(docker_backend, env, size=1, limits=LIMITS) as pool:
        validations = [stage.validate(pool, c, ref, ValidationConfig()) for c in candidates]
        started = pool.started
    tasks = stage.tasks_from(source, env, candidates, validations)
    return dict(source=source, env=env, candidates=candidates, bad=bad, ref=ref, validations=validations,
                tasks=tasks, started=started)


def test_builtin_source_has_provenance(demo):
    source = demo["source"]
    assert source.uri == "builtin:textkit"
    assert len(source.commit) == 40
    assert source.license == "MIT"
    assert demo["bad"] == []


def test_reference_run_records_passing_tests_and_coverage(demo):
    ref = demo["ref"]
    assert len(ref.passing) >= 20
    assert all(outcome == "passed" for t, outcome in ref.tests.items() if t in ref.passing)
    covered = [f for f in ref.coverage if f.startswith("src/textkit/")]
    assert covered, ref.coverage.keys()
    # Every context is a test id of the suite, or a marker for import-time / fixture code.
    from trajfactory.executors.testrun import FIXTURE, IMPORT_TIME

    contexts = {t for lines in ref.coverage.values() for tests in lines.values() for t in tests}
    assert contexts - {IMPORT_TIME, FIXTURE} <= set(ref.tests)
    assert IMPORT_TIME in contexts  # module-level lines ran at import
    assert contexts & set(ref.passing)


def test_a_reference_run_measures_only_the_files_it_is_given(demo, docker_backend):
    """The pipeline measures only the files validation reads (`stage.coverage_files`): their coverage is the same as
    when every file is measured, and no other file has any."""
    files = stage.coverage_files(demo["candidates"][:2])
    assert files and all(f.startswith("src/textkit/") for f in files), files
    ref = stage.reference(docker_backend, demo["env"], demo["source"], ValidationConfig(reference_runs=1), LIMITS,
                          cover=files)
    assert ref.measured == files and ref.coverage and set(ref.coverage) <= set(files)
    assert {f: ref.coverage[f] for f in ref.coverage} == {f: demo["ref"].coverage[f] for f in ref.coverage}
    assert set(demo["ref"].coverage) - set(files), "the whole run measured more files"
    assert demo["ref"].measured is None and demo["ref"].by_id


def test_line_probes_select_the_tests_coverage_selects(demo, docker_backend):
    """The pipeline's reference run records only the lines the candidates' selections read, with line probes
    (`line_probe.py`) instead of coverage of whole files: the same tests pass, and every candidate selects the same
    tests as with coverage of every file."""
    plan = probe_plan(demo["candidates"])
    ref = stage.reference(docker_backend, demo["env"], demo["source"], ValidationConfig(reference_runs=1), LIMITS,
                          probe=plan)
    assert ref.probed == plan and ref.measured == sorted(plan) and ref.tests == demo["ref"].tests
    assert set(ref.coverage) <= set(plan) and all(set(lines) <= set(plan[f]) for f, lines in ref.coverage.items())
    chosen = [select_tests(c, ref, "coverage") for c in demo["candidates"]]
    assert chosen == [select_tests(c, demo["ref"], "coverage") for c in demo["candidates"]]
    assert sum(how == "coverage" for _, how in chosen) >= len(chosen) // 2


def test_candidates_validated_in_one_warm_container(demo):
    assert len(demo["candidates"]) >= 10
    assert demo["started"] == 1  # no container start per candidate
    statuses = {v.status for v in demo["validations"]}
    assert "valid" in statuses
    assert {v.selection for v in demo["validations"] if v.tests_run} >= {"coverage"}


def test_tasks_have_fail_to_pass_and_pass_to_pass(demo):
    tasks = demo["tasks"]
    assert tasks
    for task in tasks:
        assert task.checks.FAIL_TO_PASS and task.checks.PASS_TO_PASS
        assert not set(task.checks.FAIL_TO_PASS) & set(task.checks.PASS_TO_PASS)
        assert set(task.checks.FAIL_TO_PASS) <= set(demo["ref"].passing)
        assert task.checks.p2p_method.startswith(("coverage-selected", "full-suite"))
        assert task.instance_id.startswith("textkit__")
        # The statement names the symptom, never the fix.
        for line in task.gold.patch.splitlines():
            if line.startswith("+") and not line.startswith("+++") and len(line.strip()) > 12:
                assert line[1:].strip() not in task.instruction


def test_gold_proofs_in_one_warm_worker_agree_and_refuse_a_gold_that_leaves_a_change(demo, docker_backend):
    """The pipeline's gold proof: many tasks in one warm test worker, each required to restore the clean checkout."""
    tasks = demo["tasks"][:4]
    assert len(tasks) == 4
    fakes = forged(tasks[0])
    with docker_backend.start(demo["env"], LIMITS) as sandbox:
        batch = verify_gold_batch(sandbox, tasks[:2] + fakes + tasks[2:])
        one = [verify_gold(sandbox, task) for task in tasks]
    proofs = batch[:2] + batch[2 + len(fakes):]
    for task, b, o in zip(tasks, proofs, one):  # the same verdict and outcomes as the one-task proof
        assert b.task_id == task.task_id and b.passed and o.passed, (b.evidence, o.evidence)
        assert [(x.test, x.outcome) for x in b.evidence.FAIL_TO_PASS] == \
            [(x.test, x.outcome) for x in o.evidence.FAIL_TO_PASS]
        assert [(x.test, x.outcome) for x in b.evidence.PASS_TO_PASS] == \
            [(x.test, x.outcome) for x in o.evidence.PASS_TO_PASS]
    assert_refused(batch[2:2 + len(fakes)])

    # The proofs share their runs: each test runs once, in the first proof that wants it. When that proof fails its
    # patches (the forgeries first, each wanting the tests of tasks[0]), the tasks that wanted its tests are proven
    # again with their own, and get the same outcomes.
    from trajfactory.verifiers.tests import gold_checks, tests_of

    wanted = [set(tests_of(gold_checks(t))) for t in tasks]
    assert len(set().union(*wanted)) < sum(map(len, wanted)), "the demo's first tasks share no test"
    costs: list = []
    with docker_backend.start(demo["env"], LIMITS) as sandbox:
        shared = verify_gold_batch(sandbox, fakes + tasks, costs=costs)
        plain = verify_gold_batch(sandbox, tasks, share=False)
    assert_refused(shared[:len(fakes)])
    first, *again = costs
    ran = lambda batch: sum(st.get("tests", 0) for st in batch[1])  # noqa: E731
    assert ran(first) == len(set().union(*wanted) - wanted[0])  # each test once; the forgeries' tests never ran
    retried = [w for w in wanted if w & wanted[0]]  # tasks[0], and those that wanted a test of it
    assert len(again) == 1 and len(again[0][1]) == len(retried) and ran(again[0]) == sum(map(len, retried))
    for task, s, p, o in zip(tasks, shared[len(fakes):], plain, one):
        assert s.task_id == task.task_id and s.passed and p.passed, (s.evidence, p.evidence)
        for x in (s, p):
            assert [(y.test, y.outcome) for y in x.evidence.FAIL_TO_PASS + x.evidence.PASS_TO_PASS] == \
                [(y.test, y.outcome) for y in o.evidence.FAIL_TO_PASS + o.evidence.PASS_TO_PASS]


def test_coverage_selection_agrees_with_full_suite(demo, docker_backend):
    """Re-validate coverage-selected candidates with the whole suite: same F2P, same verdict."""
    picked = [v for v in demo["validations"] if v.selection == "coverage" and v.status == "valid"][:3]
    assert picked
    by_id = {c.candidate_id: c for c in demo["candidates"]}
    with SandboxPool(docker_backend, demo["env"], size=1, limits=LIMITS) as pool:
        for v in picked:
            full = stage.validate(pool, by_id[v.candidate_id], demo["ref"], ValidationConfig(selection="full"))
            assert full.selection == "full"
            assert full.status == "valid"
            assert full.FAIL_TO_PASS == v.FAIL_TO_PASS


def test_gold_patch_passes_and_oracle_trajectory_verifies(demo, docker_backend):
    task = next(t for t in demo["tasks"] if set(t.validation.reached) - set(t.checks.FAIL_TO_PASS))
    env = demo["env"]
    with docker_backend.start(env, LIMITS) as sandbox:
        gold = verify_gold(sandbox, task)
        # without the record of what the change reached (an older task), the proof runs every check
        unknown = task.model_copy(update={"validation": task.validation.model_copy(update={"reached": []})})
        whole = verify_gold(sandbox, unknown)
    assert gold.passed, gold.evidence
    assert all(o.outcome == "passed" for o in gold.evidence.FAIL_TO_PASS)
    # the proof ran the tests the bug's change reached: the FAIL_TO_PASS tests and the PASS_TO_PASS ones among them
    reached = set(task.validation.reached)
    assert set(task.checks.FAIL_TO_PASS) < reached <= set(demo["ref"].passing)
    assert {o.test for o in gold.evidence.PASS_TO_PASS} == reached - set(task.checks.FAIL_TO_PASS)
    assert len(gold.evidence.PASS_TO_PASS) < len(task.checks.PASS_TO_PASS), "the demo's selection is the whole suite"
    assert f"the {len(reached) - len(task.checks.FAIL_TO_PASS)} of {len(task.checks.PASS_TO_PASS)}" \
        in gold.evidence.detail
    assert whole.passed and len(whole.evidence.PASS_TO_PASS) == len(task.checks.PASS_TO_PASS)

    traj = run_swe_episode(task, OraclePolicy(), docker_backend, env, LIMITS, max_steps=20)
    assert traj.exit_status == "submitted"
    roles = [m.role for m in traj.messages]
    assert roles[:3] == ["system", "user", "assistant"]
    assert roles.count("tool") == len(traj.steps)
    tools = [s.tool for s in traj.steps]
    assert tools[0] == "bash" and "edit" in tools and tools[-1] == "submit"
    first = traj.steps[0]
    rerun = [s for s in traj.steps if s.arguments.get("command", "").startswith("python -m pytest")][-1]
    assert first.exit_code != 0 and "failed" in first.observation  # real failing output
    assert rerun.exit_code == 0 and "passed" in rerun.observation
    assert {t["function"]["name"] for t in traj.tools} == {"bash", "edit", "submit"}
    call = traj.messages[2].tool_calls[0]
    assert json.loads(call.function.arguments)["command"].startswith("python -m pytest")
    assert traj.final.patch.startswith("diff --git")
    # It found the code from the failure (a traceback frame or a grep), never from the gold line numbers, ran the
    # related passing tests (whole test files) before it submitted, and said nothing its observations contradict.
    commands = [json.loads(m.tool_calls[0].function.arguments).get("command", "") for m in traj.messages
                if m.role == "assistant" and m.tool_calls]
    edit_at = tools.index("edit")
    located = [c for c in commands[1:edit_at] if c.startswith(("grep ", "nl -ba"))]
    assert located and ("grep -rnE" in " ".join(located) or "traceback" in traj.messages[4].content.lower()
                        or "line" in traj.messages[4].content)
    # the last test run was the related tests' files, and `git status` came after it, before the submission
    assert commands[-2] == "git status --short"
    assert "::" not in commands[-3] and commands[-3].startswith("python -m pytest")
    assert contradictions(traj) == []
    # The bug's history is not visible in the sandbox.
    with docker_backend.start(env, LIMITS) as sandbox:
        verdict = verify_trajectory(sandbox, task, traj)
    assert verdict.passed, verdict.evidence
    assert verdict.trajectory_id == traj.trajectory_id


def test_oracle_wording_and_locating_order_vary_by_task(demo):
    import asyncio

    firsts, orders = set(), set()
    for task in demo["tasks"][:8]:
        policy = OraclePolicy()
        policy.reset(task)
        firsts.add(asyncio.run(policy.act([])).message.content)
        orders.add(policy._read_test_first)
    assert len(firsts) >= 2 and orders == {True, False}


def test_wrong_solution_fails_verification(demo, docker_backend):
    task = demo["tasks"][0]
    traj = run_swe_episode(task, OraclePolicy(), docker_backend, demo["env"], LIMITS, max_steps=1)  # stops before fixing
    assert traj.exit_status == "step_limit"
    with docker_backend.start(demo["env"], LIMITS) as sandbox:
        verdict = verify_trajectory(sandbox, task, traj)
    assert not verdict.passed
    assert any(o.outcome != "passed" for o in verdict.evidence.FAIL_TO_PASS)


def test_episode_hides_the_bug_history(demo, docker_backend):
    from trajfactory.executors.swe_env import prepare_episode

    task = demo["tasks"][0]
    with docker_backend.start(demo["env"], LIMITS) as sandbox:
        prepare_episode(sandbox, task)
        log = sandbox.execute("git log --oneline | wc -l && git status --porcelain | wc -l", timeout=30)
    assert log.output.split() == ["1", "0"]


def test_an_edit_that_does_not_apply_falls_back_to_the_whole_fix_without_a_destructive_command(demo, docker_backend):
    """When an edit of the oracle does not apply (here: its text occurs twice, a copy put into the buggy file), it puts
    back the files its earlier edits changed, by name, and applies the whole fix: the eval counts `git checkout -- .`
    as destructive, so a demonstration must not use it."""
    from trajfactory.agents.oracle import _hunks
    from trajfactory.executors.base import apply_patch
    from trajfactory.training.eval_metrics import destructive_commands

    def trailing_context(body: list[str]) -> int:
        return len(body) - max(i for i, ln in enumerate(body) if ln[0] != " ") - 1

    usable = [t for t in demo["tasks"] if all(trailing_context(b) == 3 for _, _, b in _hunks(t.gold.patch))]
    task = max(usable, key=lambda t: len(_hunks(t.gold.patch)))  # one with several hunks if the demo has it
    hunks = _hunks(task.gold.patch)
    file, _, body = hunks[-1]
    old = "\n".join(ln[1:] for ln in body if ln[0] in " -")
    assert "'''" not in old
    with docker_backend.start(demo["env"], LIMITS) as sandbox:  # the bug, and a copy of the last edit's text
        assert apply_patch(sandbox, task.bug_patch, "/tmp/bug.diff") is None
        text = sandbox.read_file(file).decode()
        sandbox.write_file(file, f"{text}\n_COPY = r'''\n{old}\n'''\n")
        assert sandbox.execute("git diff > /tmp/decoy.diff", timeout=30).exit_code == 0
        bug = sandbox.read_file("/tmp/decoy.diff").decode()
    decoyed = task.model_copy(update={"bug_patch": bug})

    traj = run_swe_episode(decoyed, OraclePolicy(), docker_backend, demo["env"], LIMITS, max_steps=20)
    assert traj.exit_status == "submitted", traj.exit_status
    assert "occurs 2 times" in [s for s in traj.steps if s.tool == "edit"][-1].observation
    commands = [s.arguments.get("command", "") for s in traj.steps]
    fallback = next(c for c in commands if "git apply" in c)
    earlier = list(dict.fromkeys(f for f, _, _ in hunks[:-1]))
    assert fallback.startswith(f"git checkout -- {' '.join(earlier)} && git apply" if earlier else "git apply")
    assert destructive_commands(traj) == [] and contradictions(traj) == []
    with docker_backend.start(demo["env"], LIMITS) as sandbox:
        verdict = verify_trajectory(sandbox, decoyed, traj)
    assert verdict.passed, verdict.evidence
