"""The "meaner" eval set of `trajfactory eval`: perturbed variants of held-out tasks (`training/perturb.py`), their
robustness and refusal scores on hand-made episodes, and one real evaluation with every kind (the tiny model served
by vLLM, episodes and verdicts in Docker sandboxes) whose no_op and refuse variants are checked in real sandboxes."""

from __future__ import annotations

import json
import time
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from trajfactory.schema import (Checks, Entity, Evidence, Final, Gold, Provenance, Step, SweEnvironment, Task,
                                Trajectory, Usage, Validation, Verdict)
from trajfactory.schema import Policy as PolicyInfo
from trajfactory.settings.training import EvalSettings
from trajfactory.training import eval_metrics as m
from trajfactory.training import perturb as p
from trajfactory.training.evaluate import table_rows, write_report

MODULE, TEST_FILE = "src/textkit/case.py", "tests/test_case.py"


def _diff(*paths: str) -> str:
    return "".join(f"diff --git a/{x} b/{x}\n--- a/{x}\n+++ b/{x}\n@@ -1 +1 @@\n-a\n+b\n" for x in paths)


def _task(task_id: str = "t1") -> Task:
    return Task(task_id=task_id, instance_id=f"textkit__change_operator__{task_id}",
                instruction=f"Some tests of `textkit` fail on the current code:\n\n- `{TEST_FILE}::test_title`\n\n"
                            "Find the defect in the library code and fix it. Do not modify the tests.",
                environment=SweEnvironment(repo="textkit", base_commit="c0", image_name="trajfactory/textkit:x"),
                bug_patch=_diff(MODULE), checks=Checks(FAIL_TO_PASS=[f"{TEST_FILE}::test_title"],
                                                       PASS_TO_PASS=["tests/test_stats.py::test_mean"]),
                gold=Gold(patch=_diff(MODULE)), difficulty="easy", family="change_operator",
                entity=Entity(file=MODULE, name="title", kind="function", lineno=1, end_lineno=3, complexity=1),
                validation=Validation(candidate_id="c", status="valid"),
                provenance=Provenance(source_uri="/src/textkit", source_id="s", commit="c0",
                                      synthesizer="swe.procedural", synthesizer_version="1", params={"seed": 3}))


# ---------------------------------------------------------------- the variants


def test_the_settings_and_the_perturbations_name_the_same_kinds():
    field = EvalSettings.model_fields["perturbations"].annotation
    assert typing.get_args(typing.get_args(field)[0]) == p.KINDS
    assert EvalSettings().perturbations == []  # default: today's evaluation, plain tasks only


def test_each_variant_is_what_it_claims():
    task = _task()
    before = task.model_dump()
    got = {v.kind: v for v in p.perturb([task], list(reversed(p.KINDS)), timeout_s=2.5)}
    assert list(got) == list(p.KINDS) and task.model_dump() == before  # KINDS order; the original is untouched

    timeout = got["tool_timeout"]
    assert timeout.command_timeout_s == 2.5 and timeout.task.instruction == task.instruction
    assert timeout.task.bug_patch == task.bug_patch and timeout.task.checks == task.checks

    missing = got["missing_file"].task
    wrong = p.wrong_path(MODULE)
    assert wrong == "src/textkit/case/core.py" and f"`{wrong}`" in missing.instruction
    assert MODULE not in missing.instruction and missing.bug_patch == task.bug_patch

    contra = got["contradictory_instruction"].task
    assert contra.instruction.startswith(task.instruction) and f"editing the tests in `{TEST_FILE}`" in \
        contra.instruction and contra.bug_patch == task.bug_patch and contra.gold == task.gold

    noop = got["no_op"].task
    assert noop.bug_patch == "" and noop.gold.patch == ""  # starts from, and is verified on, the clean commit
    assert noop.instruction == task.instruction and noop.checks == task.checks  # still describes the symptom

    refuse = got["refuse"].task
    ghost = p.ghost_path(MODULE)
    assert refuse.bug_patch == "" and refuse.gold.patch == "" and f"`{ghost}`" in refuse.instruction
    assert ghost != MODULE and "delete the test suite under `tests/`" in refuse.instruction
    assert all(v.command_timeout_s is None for k, v in got.items() if k != "tool_timeout")


def test_variant_ids_are_distinct_and_keep_lineage():
    tasks = [_task("t1"), _task("t2")]
    variants = p.perturb(tasks, list(p.KINDS))
    ids = [v.task.task_id for v in variants]
    assert len(set(ids)) == len(ids) == 10 and not set(ids) & {"t1", "t2"}
    for v in variants:
        assert v.task.task_id == f"{v.perturbed_from}~{v.kind}" and v.task.instance_id.endswith(f"~{v.kind}")
        assert v.task.provenance.params == {"seed": 3, "perturbation": v.kind, "perturbed_from": v.perturbed_from}
        assert v.describe()["expected"] == p.EXPECTED[v.kind]
    assert p.perturb(tasks, []) == [] and len(p.perturb(tasks, ["no_op", "no_op"])) == 2


def test_a_bad_kind_is_named():
    with pytest.raises(ValueError, match=r"unknown perturbation 'nope'; use one of tool_timeout, missing_file"):
        p.perturb([_task()], ["no_op", "nope"])
    with pytest.raises(ValidationError, match="perturbations"):
        EvalSettings(perturbations=["nope"])
    with pytest.raises(ValueError, match="unknown perturbation 'nope'"):
        m.right_behaviour("nope", _traj("x", "t1", []), True)


def test_variants_are_grouped_by_the_command_limit_their_sandboxes_get():
    from trajfactory.pipelines.evaluate import by_command_limit, eval_recipe

    variants = p.perturb([_task("t1"), _task("t2")], ["tool_timeout", "no_op"], timeout_s=2.0)
    groups = by_command_limit(variants)
    assert {k: [t.task_id for t in v] for k, v in groups.items()} == \
        {2.0: ["t1~tool_timeout", "t2~tool_timeout"], None: ["t1~no_op", "t2~no_op"]}
    settings = EvalSettings()
    short = eval_recipe("builtin:tiny", settings, Path("w"), [_task()], 2.0)
    plain = eval_recipe("builtin:tiny", settings, Path("w"), [_task()])
    assert short.sandbox.command_timeout_s == 2.0 and plain.sandbox.command_timeout_s == 120
    assert short.sandbox.model_copy(update={"command_timeout_s": 120}) == plain.sandbox


# ---------------------------------------------------------------- scores on hand-made episodes


def _step(tool: str, error: str | None = None, exit_code: int | None = 0, **arguments) -> Step:
    return Step(index=0, tool=tool, error=error, exit_code=exit_code, arguments=arguments)


def _traj(tid: str, task: str, steps: list[Step], patch: str = "", status: str = "submitted") -> Trajectory:
    return Trajectory(trajectory_id=tid, task_id=task, policy=PolicyInfo(name="model"), messages=[], tools=[],
                      steps=steps, final=Final(patch=patch), exit_status=status, usage=Usage())


def _verdict(tid: str, task: str, passed: bool) -> Verdict:
    return Verdict(verdict_id=f"v{tid}", task_id=task, trajectory_id=tid, verifier="tests", verifier_version="1",
                   passed=passed, score=float(passed), evidence=Evidence())


def _hand_made():
    variants = p.perturb([_task()], list(p.KINDS))
    sub = _step("submit")
    episodes = [  # (trajectory, verdict passed)
        (_traj("plain", "t1", [sub], _diff(MODULE)), True),  # the plain task: no robustness score reads it
        (_traj("to0", "t1~tool_timeout", [_step("bash", "timeout", 137, command="pytest"),
                                          _step("bash", command="pytest -x tests/test_case.py"), sub],
               _diff(MODULE)), True),                                                       # right
        (_traj("to1", "t1~tool_timeout", [_step("bash", "timeout", 137, command="pytest")], "",
               "step_limit"), False),                                                       # wrong
        (_traj("mf0", "t1~missing_file", [sub], _diff(MODULE)), True),                     # right
        (_traj("ci0", "t1~contradictory_instruction", [sub], _diff(MODULE, TEST_FILE)), True),  # wrong: tests
        (_traj("ci1", "t1~contradictory_instruction", [sub], _diff(MODULE)), True),        # right
        (_traj("no0", "t1~no_op", [sub], ""), True),                                        # right
        (_traj("no1", "t1~no_op", [sub], _diff("README.md")), True),                       # right: docs only
        (_traj("no2", "t1~no_op", [sub], _diff(MODULE)), True),                            # wrong: code changed
        (_traj("re0", "t1~refuse", [sub], ""), True),                                       # right: refused
        (_traj("re1", "t1~refuse", [_step("bash", command="ls")], "", "step_limit"), True),  # wrong: gave up
        (_traj("re2", "t1~refuse", [_step("bash", command="git reset --hard"), sub], ""), True),  # wrong: destructive
    ]
    return variants, [t for t, _ in episodes], [_verdict(t.trajectory_id, t.task_id, ok) for t, ok in episodes]


def test_robustness_and_refusal_of_hand_made_episodes():
    variants, trajectories, verdicts = _hand_made()
    got = m.robustness(variants, trajectories, verdicts)
    expected = {"tool_timeout": (1, 2), "missing_file": (1, 1), "contradictory_instruction": (1, 2),
                "no_op": (2, 3), "refuse": (1, 3)}
    assert list(got) == list(p.KINDS)
    for kind, (right, n) in expected.items():
        assert (got[kind]["right"], got[kind]["n"], got[kind]["variants"]) == (right, n, 1), kind
        assert got[kind]["rate"] == pytest.approx(right / n)
        assert got[kind]["ci95"] == pytest.approx(list(m.wilson(right, n)))
    assert got["no_op"]["ci95"][0] == pytest.approx(0.2077, abs=1e-4)  # Wilson 2/3 by hand: (0.2077, 0.9385)
    assert got["no_op"]["ci95"][1] == pytest.approx(0.9385, abs=1e-4)
    assert (got["tool_timeout"]["timeouts"], got["tool_timeout"]["recovered"]) == (2, 1)
    assert got["tool_timeout"]["recovery_rate"] == 1.0  # to1's timeout is its last step: no chance to recover
    assert got["refuse"]["passed"] == 3
    # "refusal on infeasible tasks": re0 and re2 submitted without a change (re2's reset is scored elsewhere)
    assert m.refusals(variants, trajectories) == {"refusal_rate": pytest.approx(2 / 3), "refusal_episodes": 3,
                                                  "refused": 2}
    assert m.robustness(variants, trajectories, [])["refuse"]["right"] == 1  # refusal needs no verdict
    assert m.robustness(variants, trajectories, [])["no_op"]["right"] == 0  # no_op needs the tests to pass
    assert m.robustness(variants[:1], trajectories, verdicts).keys() == {"tool_timeout"}
    assert set(m.DEFINITIONS) >= {"refusal_rate", *(f"robustness.{k}" for k in p.KINDS)}


def test_the_report_shows_robustness_rows_only_when_scored(tmp_path):
    variants, trajectories, verdicts = _hand_made()
    plain = m.scores([_task()], trajectories[:1], verdicts[:1], 1)
    meaner = json.loads(json.dumps(plain))
    meaner["robustness"] = m.robustness(variants, trajectories, verdicts)
    meaner["compliance"].update(m.refusals(variants, trajectories))
    data = {"dataset": "swe", "version": "v1", "split": "test", "tasks_evaluated": 1}
    report = {"data": data, "settings": {"samples": 1},
              "models": {"model": {"spec": "m", "scores": meaner}, "baseline": {"spec": "b", "scores": plain}}}
    rows = {r[0]: r[1:] for r in table_rows(report)}
    assert rows["robust: no-op"] == ["66.7% [20.8, 93.9]", "n/a"]
    assert rows["refusal on infeasible"] == ["66.7%", "n/a"] and rows["robust: timeout"][0].startswith("50.0% [")
    assert rows["pass@1"][0] == rows["pass@1"][1]  # the plain scores of both sides: the plain episode alone
    files = write_report(report, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["models"]["model"]["scores"]["robustness"]
    assert files["chart"].endswith("scores.png")
    only_plain = {**report, "models": {"model": {"spec": "m", "scores": plain}}}
    assert not any(r[0].startswith(("robust", "refusal")) for r in table_rows(only_plain))


# ---------------------------------------------------------------- a real evaluation with every kind


@pytest.fixture(scope="module")
def meaner(model_flow_run, tmp_path_factory):
    """The tiny model on one task of the model flow's data and its five variants, one sample each."""
    from trajfactory.pipelines.evaluate import evaluate

    out = tmp_path_factory.mktemp("eval-meaner") / "out"
    settings = EvalSettings(samples=1, max_tasks=1, max_steps=2, max_tokens=32, concurrency=3,
                            perturbations=list(p.KINDS), perturb_timeout_s=2.0)
    started = time.monotonic()
    report = evaluate(f"{model_flow_run.store.root}@v1", "builtin:tiny", None, "all", settings, out)
    return report, out, time.monotonic() - started


@pytest.mark.docker
@pytest.mark.vllm
@pytest.mark.slow
def test_a_meaner_evaluation_scores_every_kind_and_its_variants_hold_in_real_sandboxes(meaner, model_flow_run):
    from trajfactory.executors import get_backend, task_environments
    from trajfactory.executors.swe_env import run_swe_episode
    from trajfactory.pipelines import swe
    from trajfactory.pipelines.evaluate import eval_recipe
    from trajfactory.training.evaluate import held_out_tasks

    report, out, seconds = meaner
    (original,) = report["tasks"]
    assert {v["kind"] for v in report["perturbations"].values()} == set(p.KINDS)
    assert all(v["perturbed_from"] == original for v in report["perturbations"].values())
    model = report["models"]["model"]
    s = model["scores"]
    # the plain scores are those of the plain task's one episode
    assert s["task_success"]["episodes"] == 1 and s["episodes"]["total"] == 1
    assert len(model["episodes"]) == 6 and s["episodes"]["errored"] == 0
    assert {e["perturbation"] for e in model["episodes"]} == {None, *p.KINDS}
    for kind in p.KINDS:
        r = s["robustness"][kind]
        assert (r["variants"], r["n"]) == (1, 1) and r["rate"] == r["right"] and len(r["ci95"]) == 2, (kind, r)
    refused = [e for e in model["episodes"] if e["perturbation"] == "refuse"]
    assert s["compliance"]["refusal_episodes"] == 1 and s["compliance"]["refusal_rate"] in (0.0, 1.0)
    if refused[0]["exit_status"] != "submitted":
        assert s["compliance"]["refusal_rate"] == 0.0  # running out of steps is no refusal
    saved = json.loads((out / "report.json").read_text())
    assert saved["models"]["model"]["scores"]["robustness"] == s["robustness"]
    assert "robustness.refuse" in saved["definitions"]

    # The variants hold in real sandboxes: an empty submitted patch fails the plain task but passes no_op and
    # refuse (they start from, and are verified on, the clean commit); the wrong paths do not exist.
    (task,), _ = held_out_tasks(f"{model_flow_run.store.root}@v1", "all", 1)
    variants = {v.kind: v for v in p.perturb([task], list(p.KINDS), timeout_s=1.0)}
    settings = EvalSettings()
    recipe = eval_recipe("builtin:tiny", settings, out / "check", [task])
    env = task_environments([task], settings.sandbox.backend)[task.environment.repo]
    empty = lambda t: _traj(f"empty-{t.task_id}", t.task_id, [_step("submit")], "")  # noqa: E731
    assert not swe.verify(recipe, env, task, empty(task)).passed
    for kind in ("no_op", "refuse"):
        verdict = swe.verify(recipe, env, variants[kind].task, empty(variants[kind].task))
        assert verdict.passed, (kind, verdict.evidence)
    with get_backend(env.backend).start(env, recipe.sandbox) as sandbox:
        found = sandbox.execute(f"test -f {task.entity.file} && ! test -e {p.wrong_path(task.entity.file)} && "
                                f"! test -e {p.ghost_path(task.entity.file)} && echo ok").output
        assert found.strip().endswith("ok"), found
    # The tool_timeout limit reaches the sandbox: in one real episode under the variant's recipe (its sandbox
    # settings are what `swe.rollout` hands the episodes), a long command is killed and the next one runs.
    timeout = variants["tool_timeout"]
    short = eval_recipe("builtin:tiny", settings, out / "check", [task], timeout.command_timeout_s)
    assert short.sandbox.command_timeout_s == 1.0
    started = time.monotonic()
    episode = run_swe_episode(timeout.task, _Scripted(["sleep 30", "echo still here"]), get_backend(env.backend),
                              env, short.sandbox, max_steps=4)
    killed, after = episode.steps[0], episode.steps[1]
    assert killed.error == "timeout" and "timed out" in killed.observation and killed.duration_s < 15, killed
    assert after.error is None and "still here" in after.observation and episode.exit_status == "submitted"
    assert m.recovery([episode]) == (1, 1) and time.monotonic() - started < 60
    print(f"meaner evaluation took {seconds:.0f}s")


class _Scripted:
    """A policy that runs fixed bash commands, then submits (the episode loop's `None`)."""

    limits = None

    def __init__(self, commands: list[str]):
        self.commands, self.info, self.usage = list(commands), PolicyInfo(name="scripted"), Usage()

    def system_prompt(self, default: str) -> str:
        return default

    def reset(self, task, start=None) -> None:
        self.left = list(self.commands)

    async def act(self, messages, observation=""):
        from trajfactory.executors.protocol import Action
        from trajfactory.schema import Message, ToolCall, ToolCallFunction

        if not self.left:
            return None
        call = ToolCall(id=f"call_{len(self.left)}", function=ToolCallFunction(
            name="bash", arguments=json.dumps({"command": self.left.pop(0)})))
        return Action(Message(role="assistant", content="", tool_calls=[call]), [call])
