"""`trajfactory eval` on web tasks: the web scores as pure functions of hand-made trajectories and state verdicts, the
held-out web tasks of a version, and one real evaluation (the tiny model served by vLLM, its episodes in real
Chromium against the real bundled shop, verdicts by the tasks' state checks) on a web version the factory's own web
pipeline builds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from trajfactory.schema import (Evidence, Final, Step, Trajectory, Usage, Verdict, WebEnvironment, WebProvenance,
                                WebTask, WebTaskSpec)
from trajfactory.schema import Policy as PolicyInfo
from trajfactory.settings.training import EvalSettings
from trajfactory.training import eval_metrics
from trajfactory.training.eval_web import (WEB_DEFINITIONS, held_out_web_tasks, is_web_version, web_scores,
                                           web_task_from_row)
from trajfactory.training.evaluate import EvalError, table_rows, write_report

# ---------------------------------------------------------------- hand-made records


def _task(task_id: str, feasible: bool = True, split: str = "test", checks: bool = True) -> WebTask:
    from trajfactory.schema import StatePredicate

    return WebTask(task_id=task_id, instruction=f"do {task_id}", environment=WebEnvironment(app="shop", seed=3),
                   spec=WebTaskSpec(task_description=f"do {task_id}", steps=["Click 'Sign in'."]), feasible=feasible,
                   checks=[StatePredicate(table="orders", where={"status": "new"}, text_contains=["Lantern"])]
                   if checks else [], gold=["click('3')"],
                   provenance=WebProvenance(tutorial_id="t", tutorial_uri="file:///t.md", synthesizer="rules",
                                            synthesizer_version="1"), split=split)


def _step(tool: str, error: str | None = None, **arguments) -> Step:
    return Step(index=0, tool=tool, error=error, arguments=arguments)


def _traj(tid: str, task: str, steps: list[Step], status: str, tokens: tuple[int, int]) -> Trajectory:
    return Trajectory(trajectory_id=tid, task_id=task, policy=PolicyInfo(name="model"), messages=[], tools=[],
                      steps=steps, final=Final(), exit_status=status,
                      usage=Usage(prompt_tokens=tokens[0], completion_tokens=tokens[1], model_calls=len(steps),
                                  cost_usd=0.001 * len(steps)))


def _verdict(tid: str, task: str, passed: bool, verifier: str = "state") -> Verdict:
    return Verdict(verdict_id=f"{verifier}-{tid}", task_id=task, trajectory_id=tid, verifier=verifier,
                   verifier_version="1", passed=passed, score=float(passed), evidence=Evidence())


def _episodes() -> tuple[list[WebTask], list[Trajectory], list[Verdict]]:
    """A feasible task `f` and its infeasible twin `i`, two episodes each."""
    tasks = [_task("f"), _task("i", feasible=False)]
    trajectories = [
        _traj("f0", "f", [_step("click", bid="12"), _step("fill", bid="7", value="x"), _step("send_msg_to_user")],
              "submitted", (100, 10)),
        # a malformed reply, recovered; then wrongly reported infeasible
        _traj("f1", "f", [_step("", "no_action"), _step("click", bid="3"), _step("report_infeasible")],
              "infeasible", (200, 20)),
        _traj("i0", "i", [_step("report_infeasible")], "infeasible", (50, 5)),
        # an action that does not parse, then one the page refuses, then a model-server failure (not the policy's)
        _traj("i1", "i", [_step("invalid_action", "unknown action"), _step("click", "no element with bid 99"),
                          _step("", "model_error")], "step_limit", (50, 5)),
    ]
    verdicts = [_verdict("f0", "f", True), _verdict("f1", "f", False), _verdict("i0", "i", True),
                _verdict("i1", "i", True, verifier="judge")]  # i1: no state verdict; a judge's pass does not count
    return tasks, trajectories, verdicts


# ---------------------------------------------------------------- the web scores


def test_web_scores_of_hand_made_episodes():
    s = web_scores(*_episodes(), k=2)
    ts = s["task_success"]
    # f: [pass, fail], i: [pass, no state verdict = fail]; pass@2 of each task: 1 - C(1,2)/C(2,2) = 1
    assert (ts["tasks"], ts["episodes"], ts["passed"], ts["k"]) == (2, 4, 2, 2)
    assert ts["pass@1"] == pytest.approx(0.5) and ts["pass@k"] == pytest.approx(1.0)
    assert ts["pass@1_ci95"] == pytest.approx(list(eval_metrics.wilson(2, 4)))
    assert (ts["feasible_passed"], ts["infeasible_passed"]) == (1, 1)
    tc = s["tool_correctness"]
    # 10 steps, 9 actions (model_error is the server's); invalid: no_action and invalid_action
    assert (tc["actions"], tc["valid_actions"], tc["malformed_replies"], tc["invalid_actions"]) == (9, 7, 1, 1)
    assert tc["valid_action_rate"] == pytest.approx(7 / 9) and tc["mean_steps"] == pytest.approx(2.5)
    assert tc["failed_on_page"] == 1
    assert tc["actions_by_name"] == {"click": 3, "fill": 1, "report_infeasible": 2, "send_msg_to_user": 1}
    assert s["infeasible_handling"] == {"infeasible_episodes": 2, "reported_on_infeasible": 1,
                                        "infeasible_reported_rate": 0.5, "feasible_episodes": 2,
                                        "reported_on_feasible": 1, "false_infeasible_rate": 0.5}
    # f1: no_action -> click (valid, no error): recovered; i1: invalid_action -> click refused: not recovered
    assert s["recovery"] == {"opportunities": 2, "recovered": 1, "recovery_rate": 0.5}
    assert s["usage"]["total_tokens"] == 440 and s["usage"]["tokens_per_episode"] == 110
    assert s["usage"]["model_calls"] == 10 and s["usage"]["cost_usd"] == pytest.approx(0.01)
    assert s["episodes"]["exit_status"] == {"infeasible": 2, "step_limit": 1, "submitted": 1}


def test_no_episodes_of_a_kind_give_no_rate():
    tasks, trajectories, verdicts = _episodes()
    s = web_scores(tasks[:1], trajectories[:2], verdicts[:2], k=1)
    assert s["infeasible_handling"]["infeasible_episodes"] == 0
    assert s["infeasible_handling"]["infeasible_reported_rate"] is None
    assert s["infeasible_handling"]["false_infeasible_rate"] == 0.5 and s["task_success"]["pass@1"] == 0.5


def test_web_report_table_shows_the_web_scores(tmp_path):
    from PIL import Image

    s = web_scores(*_episodes(), k=2)
    report = {"kind": "web", "data": {"dataset": "web", "version": "v1", "split": "test", "tasks_evaluated": 2},
              "settings": {"samples": 2}, "definitions": WEB_DEFINITIONS,
              "models": {"model": {"spec": "m", "scores": s}, "baseline": {"spec": "b", "scores": s}}}
    rows = {r[0]: r[1:] for r in table_rows(report)}
    assert list(rows) == ["pass@1", "pass@2", "valid-action rate", "mean steps", "infeasible reported",
                          "false infeasible", "recovery", "tokens / episode", "cost (USD)"]
    lo, hi = eval_metrics.wilson(2, 4)
    assert rows["pass@1"][0] == f"50.0% [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert rows["valid-action rate"] == ["77.8%", "77.8%"] and rows["mean steps"] == ["2.5", "2.5"]
    assert rows["infeasible reported"] == ["50.0%", "50.0%"] and rows["false infeasible"] == ["50.0%", "50.0%"]
    assert rows["tokens / episode"] == ["110.0", "110.0"]
    assert all(key in WEB_DEFINITIONS for key in ("infeasible_reported_rate", "false_infeasible_rate",
                                                  "valid_action_rate", "recovery_rate", "pass@k"))
    files = write_report(report, tmp_path / "out")
    assert json.loads(Path(files["report"]).read_text())["kind"] == "web"
    with Image.open(files["chart"]) as img:
        assert img.format == "PNG"


# ---------------------------------------------------------------- held-out web tasks of a version


def test_held_out_web_tasks_of_a_written_version(tmp_path):
    from trajfactory.datasets.publish import write_dataset

    tasks = [_task("b", split="test"), _task("a", feasible=False, split="test"), _task("c", split="train"),
             _task("d", split="test", checks=False)]
    write_dataset(tmp_path, "web", {"web_tasks": tasks}, {}, {})
    data = str(tmp_path / "web")
    assert is_web_version(data) and not is_web_version(tmp_path / "nowhere")
    got, source = held_out_web_tasks(f"{data}@v1", "test")
    assert [t.task_id for t in got] == ["a", "b"] and got[0] == tasks[1]  # task-id order; rows rebuild the records
    assert (source["kind"], source["tasks_in_split"], source["unchecked_in_split"], source["infeasible_evaluated"]) \
        == ("web", 2, 1, 1)
    assert [t.task_id for t in held_out_web_tasks(data, "all", max_tasks=1)[0]] == ["a"]
    assert web_task_from_row(tasks[2].to_row()) == tasks[2]
    with pytest.raises(EvalError, match=r"--data .*web@v1 --split validation: no web tasks with state checks in "
                                        r"split 'validation' of version v1 \(web tasks per split: \{'test': 3, "
                                        r"'train': 1\}"):
        held_out_web_tasks(data, "validation")
    with pytest.raises(EvalError, match="--split nope: not a split"):
        held_out_web_tasks(data, "nope")
    with pytest.raises(EvalError, match="--data .*@v7: no version v7"):
        held_out_web_tasks(f"{data}@v7", "test")


def test_bad_web_evaluations_are_named_before_any_model_starts(tmp_path):
    from trajfactory.datasets.publish import write_dataset
    from trajfactory.pipelines.eval_cli import eval_command
    from trajfactory.pipelines.evaluate_web import evaluate_web

    write_dataset(tmp_path, "web", {"web_tasks": [_task("a", split="test")]}, {}, {})
    data = f"{tmp_path / 'web'}@v1"
    with pytest.raises(EvalError, match="--k 3: pass@k needs at least k samples"):
        evaluate_web(data, "builtin:tiny", None, "test", EvalSettings(samples=2, k=3), tmp_path / "out")
    with pytest.raises(EvalError, match="--meaner/--perturb refuse: perturbed variants are SWE tasks' only"):
        evaluate_web(data, "builtin:tiny", None, "test", EvalSettings(perturbations=["refuse"]), tmp_path / "out")
    with pytest.raises(EvalError, match="--baseline /nowhere"):
        evaluate_web(data, "builtin:tiny", "/nowhere", "test", EvalSettings(), tmp_path / "out")
    # the CLI picks the web evaluation from the version's tables
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("other")(lambda: None)
    bad = CliRunner().invoke(app, ["eval", "--model", "builtin:tiny", "--data", data, "--split", "train",
                                   "--out", str(tmp_path / "cli")], env={"COLUMNS": "300"})
    assert bad.exit_code == 2 and "no web tasks with state checks in split 'train'" in bad.output, bad.output


# ---------------------------------------------------------------- a real evaluation

STEPS = 2


@pytest.mark.browser
def test_the_held_out_split_of_a_web_version_is_by_site(web_version):
    """`eval --split test` on a web version takes whole sites: no app of its tasks has a task in another split."""
    by_split = {split: held_out_web_tasks(f"{web_version}@v1", split)[0] for split in ("train", "test")}
    apps = {split: {t.environment.app for t in tasks} for split, tasks in by_split.items()}
    every = held_out_web_tasks(f"{web_version}@v1", "all")[0]
    assert apps["test"] and apps["train"] and not apps["test"] & apps["train"]
    assert {t.split for t in every if t.environment.app in apps["test"]} == {"test"}


@pytest.fixture(scope="module")
def evaluation(web_version, tmp_path_factory):
    """`trajfactory eval` (the CLI command) of the tiny model beside itself on the version's test split."""
    from trajfactory.pipelines.eval_cli import eval_command

    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("other")(lambda: None)  # two commands: `eval` is invoked by name, as when mounted
    out = tmp_path_factory.mktemp("eval") / "out"
    started = time.monotonic()
    result = CliRunner().invoke(app, ["eval", "--model", "builtin:tiny", "--baseline", "builtin:tiny", "--data",
                                      f"{web_version}@v1", "--split", "test", "--samples", "1", "--max-steps",
                                      str(STEPS), "--max-tokens", "16", "--max-observation-chars", "300",
                                      "--concurrency", "2", "--out", str(out)],
                                env={"COLUMNS": "200"})
    return result, out, time.monotonic() - started


@pytest.mark.browser
@pytest.mark.vllm
@pytest.mark.slow
def test_the_tiny_model_evaluated_on_held_out_web_tasks(web_version, evaluation):
    from trajfactory.datasets.store import DatasetStore

    result, out, seconds = evaluation
    assert result.exit_code == 0, result.output
    assert "infeasible reported" in result.output and "valid-action rate" in result.output
    report = json.loads((out / "report.json").read_text())
    rows = DatasetStore(web_version).read_rows("v1", "web_tasks")
    test_tasks = sorted((r for r in rows if r["split"] == "test"), key=lambda r: r["task_id"])
    assert report["kind"] == "web" and report["data"]["split"] == "test" and report["data"]["version"] == "v1"
    assert report["tasks"] == [r["task_id"] for r in test_tasks] and len(test_tasks) == 2
    assert report["infeasible_tasks"] == [r["task_id"] for r in test_tasks if not r["feasible"]]
    assert len(report["infeasible_tasks"]) == 1 and report["definitions"] == WEB_DEFINITIONS
    assert set(report["models"]) == {"model", "baseline"} and "note" in report["models"]["baseline"]
    assert report["settings"]["actions"] == "text"  # the web agent's default when --actions is not given
    assert report["models"]["model"]["agent"]["max_observation_chars"] == 300
    model = report["models"]["model"]
    s, episodes = model["scores"], model["episodes"]
    assert {(e["task_id"], e["sample"]) for e in episodes} == {(t, 0) for t in report["tasks"]}
    assert all(e["verifier"] == "state" and 1 <= e["steps"] <= STEPS for e in episodes), episodes
    ts = s["task_success"]
    assert (ts["tasks"], ts["episodes"], ts["passed"]) == (2, 2, sum(e["passed"] for e in episodes))
    assert s["episodes"]["errored"] == 0, s["episodes"]
    # random weights: a feasible task is never done; an infeasible twin passes only by a report_infeasible ending
    for e in episodes:
        assert e["passed"] == (not e["feasible"] and e["reported_infeasible"]), e
    ih = s["infeasible_handling"]
    assert (ih["infeasible_episodes"], ih["feasible_episodes"]) == (1, 1)
    tc = s["tool_correctness"]
    assert tc["actions"] >= 1 and tc["mean_steps"] == pytest.approx(sum(e["steps"] for e in episodes) / 2)
    assert tc["actions"] == tc["valid_actions"] + tc["malformed_replies"] + tc["invalid_actions"]
    assert s["usage"]["model_calls"] >= 1 and s["usage"]["total_tokens"] > 0
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"web evaluation took {seconds:.0f}s")
