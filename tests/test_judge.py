"""The model judge: a strict JSON verdict on a trajectory (its task, actions, final state, a screenshot), abstentions
when the answer is unusable, the server's failure raised rather than kept, and its agreement with the tests."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from openai_stub import Stub
from test_lm_synthesis import BUG_PATCH, TEST_OUTPUT, TINY, VALIDATION
from trajfactory.models.client import ModelClient, ModelError
from trajfactory.schema import (
    Checks, Entity, Evidence, Final, Gold, Message, Policy, Provenance, Step, SweEnvironment, Task, Trajectory, Verdict,
)
from trajfactory.synthesizers.swe.tasks import reverse_patch
from trajfactory.verifiers import judge


def _task() -> Task:
    entity = Entity(file="src/textkit/stats.py", name="merge_ranges", kind="function", lineno=76, end_lineno=87,
                    complexity=5)
    return Task(
        task_id="t1", instance_id="textkit__lm_rewrite__t1", instruction="Some tests of `textkit` fail. Fix them.",
        environment=SweEnvironment(repo="textkit", base_commit="0" * 40, image_name="img"),
        bug_patch=BUG_PATCH, checks=Checks(FAIL_TO_PASS=VALIDATION.FAIL_TO_PASS),
        gold=Gold(patch=reverse_patch(BUG_PATCH)),
        difficulty="easy", family="lm_rewrite", entity=entity, validation=VALIDATION,
        provenance=Provenance(source_uri="builtin:textkit", source_id="s", commit="0" * 40,
                              synthesizer="swe.lm_rewrite", synthesizer_version="1"),
    )


def _trajectory(tid: str = "r1") -> Trajectory:
    steps = [
        Step(index=0, tool="bash", arguments={"command": "python -m pytest -q"}, observation=TEST_OUTPUT, exit_code=1),
        Step(index=1, tool="edit", arguments={"path": "src/textkit/stats.py"}, observation="x" * 5000, exit_code=0),
        Step(index=2, tool="submit", arguments={}, observation="submitted", exit_code=0),
    ]
    return Trajectory(trajectory_id=tid, task_id="t1", policy=Policy(name="oracle"),
                      messages=[Message(role="user", content="fix")], tools=[], steps=steps,
                      final=Final(patch=reverse_patch(BUG_PATCH)), exit_status="submitted")


def _judge(server: Stub, **kw) -> Verdict:
    return asyncio.run(judge.judge_trajectory(server.client(), _task(), _trajectory(), **kw))


def test_judge_valid_json_is_a_verdict(stub):
    server = stub(lambda body: json.dumps({"passed": True, "confidence": 0.8, "rationale": "Tests pass now."}))
    v = _judge(server)
    assert v.passed and v.verifier == "judge" and v.score == pytest.approx(0.8)
    detail = json.loads(v.evidence.detail)
    assert detail["status"] == "verdict" and detail["rationale"] == "Tests pass now." and detail["confidence"] == 0.8
    assert not judge.is_abstention(v)
    body = server.bodies[0]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == judge.VERDICT_JSON_SCHEMA
    prompt = body["messages"][-1]["content"]
    assert "python -m pytest -q" in prompt and "characters cut" in prompt  # history, observations truncated
    assert "-        if merged and start <= merged[-1][1]:" in prompt  # the final patch


@pytest.mark.parametrize("answer", [
    '{"passed": "yes", "confidence": 0.9, "rationale": "ok"}',
    '{"passed": true, "confidence": "high", "rationale": "ok"}',
    '{"passed": true, "confidence": 1.5, "rationale": "ok"}',
    '{"passed": true, "confidence": true, "rationale": "ok"}',
    '{"passed": true, "confidence": 0.9}',
    '{"passed": true, "confidence": 0.9, "rationale": "ok", "extra": 1}',
    '[true, 0.9, "ok"]',
    'The agent passed. {"passed": true, "confidence": 0.9, "rationale": "ok"}',
    "",
])
def test_judge_schema_violations_abstain(stub, answer):
    v = _judge(stub(lambda body: answer))
    assert not v.passed and v.score == 0.0 and judge.is_abstention(v)
    detail = json.loads(v.evidence.detail)
    assert detail["status"] == "abstain" and detail["raw_head"] == answer[:300] and detail["why"]


def test_judge_sends_the_screenshot_as_image_url(stub, tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
    (tmp_path / "final.png").write_bytes(png)
    server = stub(lambda body: '{"passed": false, "confidence": 0.7, "rationale": "Page unchanged."}')
    v = _judge(server, image=tmp_path / "final.png")
    assert not v.passed and not judge.is_abstention(v) and v.score == pytest.approx(0.3)
    content = server.bodies[0]["messages"][-1]["content"]
    assert [part["type"] for part in content] == ["text", "image_url"]
    expected = "data:image/png;base64," + base64.b64encode(png).decode()
    assert content[1]["image_url"]["url"] == judge.image_data_uri(png) == expected


def test_judge_falls_back_to_prompt_only_when_response_format_is_refused(stub):
    def reply(body):
        if "response_format" in body:
            return 400, "response_format is not supported"
        return '{"passed": true, "confidence": 0.6, "rationale": "Fixed."}'

    server = stub(reply)
    v = _judge(server)
    assert v.passed and len(server.bodies) == 2
    assert json.loads(v.evidence.detail)["response_format"].startswith("none (server refused json_schema")


def test_judge_model_error_abstains_but_a_server_failure_is_raised(stub):
    v = _judge(stub(lambda body: (400, "this model cannot judge")))
    assert not v.passed and judge.is_abstention(v) and "model error" in json.loads(v.evidence.detail)["why"]
    # the server's failure (after the client's retries) is no verdict to keep: the step fails and is retried
    with pytest.raises(ModelError) as failed:
        _judge(stub(lambda body: (500, "boom")))
    assert failed.value.infrastructure


@pytest.mark.vllm
def test_tiny_model_judge_abstains_and_structured_output_is_accepted(vllm_server):
    client = ModelClient(vllm_server.base_url, "tiny")
    free = asyncio.run(judge.judge_trajectory(client, _task(), _trajectory(), structured="none", sampling=TINY,
                                             max_observation_chars=150))
    assert judge.is_abstention(free) and not free.passed and free.score == 0.0
    # vLLM 0.32 takes response_format json_schema (structured outputs): the answer starts as the schema says.
    forced = asyncio.run(judge.judge_trajectory(client, _task(), _trajectory(), sampling=TINY,
                                               max_observation_chars=150))
    assert [r.status for r in client.requests] == [200, 200]
    detail = json.loads(forced.evidence.detail)
    assert detail["response_format"] == "json_schema"
    if judge.is_abstention(forced):
        assert not forced.passed and detail["raw_head"].lstrip().startswith("{")
    else:  # noise that completed the schema is a parsed verdict, with its confidence recorded
        assert 0.0 <= detail["confidence"] <= 1.0


def _verdict(tid: str, verifier: str, passed: bool, abstain: bool = False) -> Verdict:
    detail = json.dumps({"status": "abstain" if abstain else "verdict"})
    return Verdict(verdict_id=f"{verifier}-{tid}", task_id="t", trajectory_id=tid, verifier=verifier,
                   verifier_version="1", passed=passed and not abstain, score=0.0, evidence=Evidence(detail=detail))


def test_agreement_and_kappa_on_a_labeled_set():
    # (judge, label): 4 TP, 2 FP, 1 FN, 3 TN, and 2 abstentions (one on each label).
    pairs = [(True, True)] * 4 + [(True, False)] * 2 + [(False, True)] + [(False, False)] * 3
    judged = [_verdict(f"r{i}", "judge", j) for i, (j, _) in enumerate(pairs)]
    labels = [_verdict(f"r{i}", "tests", lab) for i, (_, lab) in enumerate(pairs)]
    judged += [_verdict("a1", "judge", False, abstain=True), _verdict("a2", "judge", False, abstain=True),
               _verdict("x", "judge", True)]  # x has no label
    labels += [_verdict("a1", "tests", True), _verdict("a2", "tests", False)]
    report = judge.agreement(judged, labels)
    assert report["confusion"] == {"tp": 4, "fp": 2, "fn": 1, "tn": 3, "abstain_pos": 1, "abstain_neg": 1}
    assert (report["n"], report["answered"], report["abstained"], report["unlabeled"]) == (12, 10, 2, 1)
    assert report["agreement"] == pytest.approx(0.7)
    # p_o = 0.7, p_e = (6*5 + 4*5) / 100 = 0.5, kappa = 0.2 / 0.5.
    assert report["kappa"] == pytest.approx(0.4)
    assert report["abstention_rate"] == pytest.approx(2 / 12)
    assert report["agreement_abstain_as_fail"] == pytest.approx(8 / 12)
    assert judge.cohen_kappa(3, 0, 0, 0) is None and judge.cohen_kappa(2, 0, 0, 2) == pytest.approx(1.0)
