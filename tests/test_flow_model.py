"""The recipe-driven flow with a model: LM rewrites, model-written statements, model rollouts and the model
judge, end to end through the CLI against the session's real CPU vLLM server (the tiny random-weight
model: its text is noise) and real Docker sandboxes; then a run that serves its own model and crashes."""

from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

from model_flow import MAX_TASKS, SAMPLES, _cli
from trajfactory.datasets.yields import pass_at_k

pytestmark = [pytest.mark.docker, pytest.mark.vllm, pytest.mark.slow]

MODEL_STAGES = ("lm-rewrite", "statement", "model-rollout", "judge")


@pytest.fixture
def run(model_flow_run):
    return model_flow_run


def test_model_trajectories_sit_beside_oracle_ones(run):
    rows = run.store.read_rows("v1", "trajectories")
    tasks = run.store.read_rows("v1", "tasks")
    by_policy = Counter(r["policy"]["name"] for r in rows)
    assert by_policy["oracle"] == len(tasks) and by_policy["model"] == SAMPLES * min(MAX_TASKS, len(tasks))
    model = [r for r in rows if r["policy"]["name"] == "model"]
    # the first MAX_TASKS tasks by id, each with SAMPLES samples, each sample with its own seed
    assert {r["task_id"] for r in model} == set(sorted(t["task_id"] for t in tasks)[:MAX_TASKS])
    per_task = Counter(r["task_id"] for r in model)
    assert set(per_task.values()) == {SAMPLES}
    seeds = {(r["task_id"], json.loads(r["policy"]["params"])["seed"]) for r in model}
    assert len(seeds) == len(model)
    for r in model:
        assert r["policy"]["model"] == "tiny" and r["usage"]["model_calls"] > 0 and r["usage"]["prompt_tokens"] > 0
        assert r["messages"][0]["role"] == "system" and len(r["steps"]) <= 2


def test_model_usage_and_cost_are_recorded_and_reported(run):
    summary_rows = {r["stage"]: r for r in _usage_rows(run.tmp / "work")}
    assert {"lm_rewrite", "statements", "rollout", "judge"} <= set(summary_rows)
    for stage, row in summary_rows.items():
        assert row["requests"] > 0 and row["prompt_tokens"] > 0 and row["completion_tokens"] > 0, stage
        assert row["cost_usd"] > 0, stage  # the recipe prices the GPU hour
    out = run.first.stdout
    assert "model usage (tiny):" in out and "estimated cost $" in out
    card = (run.tmp / "datasets" / "swe" / "v1" / "README.md").read_text()
    assert "### model_usage" in card and "### judge_agreement" in card and "### by_policy" in card


def _usage_rows(work: Path) -> list[dict]:
    rows: dict[str, dict] = {}
    for stage in ("synthesize", "rollout", "verify"):
        for line in (work / "records" / f"model-usage-{stage}.jsonl").read_text().splitlines():
            u = json.loads(line)
            row = rows.setdefault(u["stage"], {k: 0 for k in ("requests", "prompt_tokens", "completion_tokens",
                                                             "cost_usd")} | {"stage": u["stage"]})
            for k in ("requests", "prompt_tokens", "completion_tokens", "cost_usd"):
                row[k] += u[k]
    return list(rows.values())


def test_every_trajectory_is_judged_and_tests_stay_the_verdict_of_record(run):
    trajectories = run.store.read_rows("v1", "trajectories")
    verdicts = run.store.read_rows("v1", "verdicts")
    judged = [v for v in verdicts if v["verifier"] == "judge"]
    tests = [v for v in verdicts if v["verifier"] == "tests" and v["subject"] == "trajectory"]
    ids = sorted(t["trajectory_id"] for t in trajectories)
    assert sorted(v["trajectory_id"] for v in judged) == ids == sorted(v["trajectory_id"] for v in tests)
    for v in judged:
        detail = json.loads(v["evidence"]["detail"])
        assert detail["status"] in ("abstain", "verdict")
        if detail["status"] == "abstain":
            assert not v["passed"] and v["score"] == 0.0  # garbage is never a pass
    # the oracle's trajectories pass the tests; the noise model's never do
    policy = {t["trajectory_id"]: t["policy"]["name"] for t in trajectories}
    assert all(v["passed"] == (policy[v["trajectory_id"]] == "oracle") for v in tests)
    agreement_rows = [r for r in _summary(run)["judge_agreement"]]
    assert agreement_rows[0]["n"] == len(trajectories)
    assert agreement_rows[0]["answered"] + agreement_rows[0]["abstained"] == len(trajectories)
    assert "judge vs tests: agreement" in run.first.stdout


def _summary(run) -> dict:
    """The yields sections as the dataset card's tables, read back from the card's markdown."""
    card = (run.tmp / "datasets" / "swe" / "v1" / "README.md").read_text()
    sections, title, rows, header = {}, None, [], None
    for line in card.splitlines():
        if line.startswith("### "):
            title, rows, header = line[4:], [], None
            sections[title] = rows
        elif title and line.startswith("| ") and header is None:
            header = [c.strip() for c in line.strip("|").split("|")]
        elif title and line.startswith("| ") and header:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.append({k: (json.loads(c) if c[:1].isdigit() or c in ("null", "true", "false") else c)
                         for k, c in zip(header, cells)})
    return sections


def test_per_policy_yields_with_pass_at_k(run):
    rows = {r["policy"]: r for r in _summary(run)["by_policy"]}
    assert rows["oracle"]["pass@1"] == 1.0 and rows["oracle"]["k"] == 1
    assert rows["model"]["k"] == SAMPLES and rows["model"]["trajectories"] == SAMPLES * rows["model"]["tasks"]
    assert rows["model"]["pass@k"] == 0.0 == rows["model"]["verified"]
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5) and pass_at_k(2, 1, 2) == 1.0 and pass_at_k(3, 0, 1) == 0.0


def test_noise_statements_fall_back_to_the_template_with_a_reason(run):
    tasks = run.store.read_rows("v1", "tasks")
    assert tasks
    for t in tasks:
        assert t["statement_source"] in ("template", "lm") and t["statement_detail"]
        if t["statement_source"] == "template":
            reason = t["statement_detail"].split(":", 1)[0]
            assert reason in ("off_topic", "leak", "empty", "model_error", "not_text"), t["statement_detail"]
            assert "fail on the current code" in t["problem_statement"]  # the template's text
        else:  # noise that happened to name the task: it must at least not leak the fix
            assert t["statement_detail"] == "ok"
    # ids are hashes of the bug, not of its text: the same as a template-only run would give
    assert all(t["instance_id"].endswith(t["task_id"][:8]) for t in tasks)


def test_lm_rewrite_replies_are_quarantined_with_reasons_or_validated(run):
    work = run.tmp / "work" / "records"
    candidates = [json.loads(line) for line in (work / "candidates.jsonl").read_text().splitlines()]
    lm = [c for c in candidates if c["family"] == "lm_rewrite"]
    quarantine = [json.loads(line) for line in (work / "quarantine-synthesize.jsonl").read_text().splitlines()]
    rejected = [q for q in quarantine if q["item_kind"] == "candidate" and q["stage"] == "synthesize"]
    assert len(lm) + len(rejected) == 2  # max_entities=2, one sample each: every reply is accounted for
    for q in rejected:
        assert q["reason"] and q["detail"]
    validated = {json.loads(line)["candidate_id"] for line in (work / "validations.jsonl").read_text().splitlines()}
    assert {c["candidate_id"] for c in lm} <= validated  # an LM candidate goes through the same validation
    table = run.store.read_rows("v1", "quarantine")
    assert {q["item_id"] for q in rejected} <= {q["item_id"] for q in table}


def test_no_container_is_left_behind(run, docker_backend):
    assert run.watch.max >= 1  # the watch saw this run's sandboxes
    assert run.watch.alive() == []


def test_a_second_run_redoes_no_model_work(run):
    first = Counter(e["stage"] for e in run.journal_first)
    assert all(first[s] > 0 for s in MODEL_STAGES), first
    assert [e for e in run.journal_second if e["stage"] in MODEL_STAGES + ("validate", "rollout", "verify")] == []
    assert run.store.versions() == ["v1", "v2"]
    assert run.store.content_digest("v2") == run.store.content_digest("v1")
    assert "model usage (tiny):" in run.second.stdout  # the usage of the cached work is still reported


# ---------------------------------------------------------------- a served model stops with its flow


def _processes_with(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue  # it exited while we looked
    return pids


def test_a_served_model_is_stopped_when_a_later_stage_crashes(tiny_model, tmp_path):
    model_dir = tmp_path / f"served-{uuid.uuid4().hex[:8]}"  # its own path: its processes can be found
    shutil.copytree(tiny_model, model_dir)
    blocker = tmp_path / "datasets-is-a-file"
    blocker.write_text("not a directory")
    recipe = {
        "name": "crash", "work_dir": str(tmp_path / "work"),
        "repos": [{"uri": str(tmp_path / "no-such-repo")}],  # quarantined: the stages run with no tasks
        "judge": {"enabled": True},
        "model": {"serve": str(model_dir), "name": "tiny", "max_model_len": 1024},
        "dataset": {"name": "swe", "root": str(blocker)},  # writing the dataset fails: the flow crashes
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = _cli(tmp_path, "run", str(path))
    assert proc.returncode != 0
    log = (tmp_path / "work" / "logs" / "vllm.log").read_text()
    assert "Uvicorn running" in log or "Application startup complete" in log, log[-2000:]  # it did serve
    assert _processes_with(str(model_dir)) == []
