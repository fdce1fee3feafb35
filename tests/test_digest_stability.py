"""Content digests are stable: blind to what differs between two runs that made the same data (timings, addresses,
temp dirs, pids, loopback ports in observation text), and changed by any real change of content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trajfactory.datasets.normalize import digest_form, normalize_text
from trajfactory.datasets.store import DatasetStore
from trajfactory.schema import (
    Checks,
    Entity,
    Evidence,
    Final,
    Gold,
    Message,
    Policy,
    Provenance,
    Quarantine,
    Step,
    SweEnvironment,
    Task,
    ToolCall,
    ToolCallFunction,
    Trajectory,
    Validation,
    Verdict,
)

PATCH = "--- a/pkg/core.py\n+++ b/pkg/core.py\n@@ -1 +1 @@\n-x != 1\n+x == 1\n"
F2P = ["tests/test_core.py::test_fix"]


def run_output(n: int) -> dict[str, str]:
    """What one run's sandbox printed; `n` picks the run (its timings, addresses, temp dirs, pids, ports)."""
    return {
        "pytest": (f"F.\n=== FAILURES ===\nE  assert None == 'x'\n"
                   f"E   +  where None = <function f at 0x7f{n:02d}a4010c20>()\n"
                   f"tmp_path = PosixPath('/tmp/pytest-of-root/pytest-{n}/test_fix0')\n"
                   f"{0.1 * n:.2f}s call     tests/test_core.py::test_fix\n"
                   f"1 failed, 1 passed in {0.03 * n:.2f}s"),
        "script": (f"<MagicMock name='open' id='1402{n:05d}'> wrote /tmp/tmp{n:03d}k_x9a/out.txt; "
                   f"worker pid {4700 + n} served http://127.0.0.1:{40000 + n}/login in {n}.5 seconds"),
        "error": f"RuntimeError: <pkg.Thing object at 0x55d1{n:08x}>",
    }


def tables(n: int = 1, patch: str = PATCH, f2p: list[str] = F2P, word: str = "failed") -> dict[str, list[dict]]:
    out = run_output(n)
    pytest_out = out["pytest"].replace("1 failed", f"1 {word}")
    task = Task(
        task_id="task0001", instance_id="pkg__fix__0001", instruction="f() returns None for 'x'.",
        environment=SweEnvironment(repo="pkg", base_commit="a" * 40, image_name="trajfactory/pkg:a1"),
        bug_patch="--- bug\n", checks=Checks(FAIL_TO_PASS=f2p, PASS_TO_PASS=["tests/test_core.py::test_ok"]),
        gold=Gold(patch=patch), difficulty="easy", family="change_operator",
        entity=Entity(file="pkg/core.py", name="f", kind="function", lineno=1, end_lineno=2, complexity=1),
        validation=Validation(candidate_id="c1", status="valid", FAIL_TO_PASS=f2p, tests_run=2, duration_s=0.1 * n,
                              detail=f"1 failed, 1 passed in {0.03 * n:.2f}s"),
        provenance=Provenance(source_uri="builtin:pkg", source_id="s1", commit="a" * 40, synthesizer="swe.procedural",
                              synthesizer_version="1"),
    )
    call = ToolCall(id="call_0", function=ToolCallFunction(name="bash", arguments=json.dumps({"command": "pytest"})))
    traj = Trajectory(
        trajectory_id="traj0001", task_id=task.task_id, policy=Policy(name="oracle"),
        messages=[Message(role="system", content="You are a software engineer."),
                  Message(role="user", content=task.instruction),
                  Message(role="assistant", tool_calls=[call]),
                  Message(role="tool", content=pytest_out, tool_call_id="call_0", name="bash"),
                  Message(role="user", content=f"URL: http://127.0.0.1:{40000 + n}/login")],
        tools=[], final=Final(patch=patch), exit_status="submitted", duration_s=n,
        steps=[Step(index=0, tool="bash", arguments={"command": "pytest"}, observation=pytest_out, exit_code=1,
                    duration_s=0.2 * n),
               Step(index=1, tool="bash", arguments={"command": "python run.py"}, observation=out["script"],
                    error=out["error"], exit_code=0)],
    )
    verdict = Verdict(verdict_id="v0001", task_id=task.task_id, trajectory_id=traj.trajectory_id, verifier="tests",
                      verifier_version="1", passed=True, score=1.0, duration_s=n,
                      evidence=Evidence(detail=f"2 passed in {0.02 * n:.2f}s"))
    quarantine = Quarantine(item_id="c9", item_kind="candidate", stage="validate", reason="error",
                            detail=out["error"], uri=f"http://127.0.0.1:{40000 + n}/docs")
    return {"tasks": [task.to_row()], "trajectories": [traj.to_row()], "verdicts": [verdict.to_row()],
            "quarantine": [quarantine.to_row()]}


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(tmp_path / "ds")


def test_noise_in_observations_does_not_change_the_digest(store: DatasetStore):
    first, second = store.write_version(tables(1), lineage={}), store.write_version(tables(7), lineage={"run": 2})
    a, b = store.read_rows(first, "trajectories")[0], store.read_rows(second, "trajectories")[0]
    assert a["steps"][0]["observation"] != b["steps"][0]["observation"]  # the stored text is the real text
    assert "in 0.03s" in a["steps"][0]["observation"] and "0x7f01a4010c20" in a["messages"][3]["content"]
    assert store.content_digest(first) == store.content_digest(second)


@pytest.mark.parametrize("change", [
    {"patch": PATCH.replace("x == 1", "x == 2")},
    {"f2p": [*F2P, "tests/test_core.py::test_other"]},
    {"word": "errored"},
])
def test_a_real_change_changes_the_digest(store: DatasetStore, change: dict):
    base = store.content_digest(store.write_version(tables(1), lineage={}))
    assert store.content_digest(store.write_version(tables(1, **change), lineage={})) != base


def test_the_agents_own_words_are_not_normalized(store: DatasetStore):
    base = tables(1)
    changed = tables(1)
    changed["trajectories"][0]["messages"][2]["content"] = "I think it took 0.03s"
    other = tables(1)
    other["trajectories"][0]["messages"][2]["content"] = "I think it took 0.04s"
    digests = [store.content_digest(store.write_version(t, lineage={})) for t in (base, changed, other)]
    assert len(set(digests)) == 3


def test_normalize_text_rules():
    assert normalize_text("1 failed, 2 passed in 65.43s (0:01:05)") == "1 failed, 2 passed in <T>s (<T>)"
    assert normalize_text("0.12s call     tests/t.py::test_a") == "<T>s call     tests/t.py::test_a"
    assert normalize_text("Ran 3 tests in 0.001s") == "Ran 3 tests in <T>s"
    assert normalize_text("<function f at 0x7fba24010c20>") == "<function f at 0x<ADDR>>"
    assert normalize_text("<Foo at 0xdead>") == "<Foo at 0x<ADDR>>"
    assert normalize_text("/tmp/pytest-of-root/pytest-3/test_a0") == "/tmp/pytest-of-<USER>/pytest-<N>/test_a0"
    assert normalize_text("/tmp/tmpk2j9_x1a/f.py") == "/tmp/tmp<RANDOM>/f.py"
    assert normalize_text("pid 4711, PID=12") == "pid <PID>, PID=<PID>"
    assert normalize_text("http://127.0.0.1:43217/a localhost:8000") == "http://127.0.0.1:<PORT>/a localhost:<PORT>"
    for kept in ("x = 0xFF", "version 1.2.3s", "v1.5s", "/tmp/tmpdirectory", "3 passed", "a timeout of 30s"):
        assert normalize_text(kept) == kept


def test_digest_form_normalizes_only_observation_text():
    row = tables(1)["trajectories"][0]
    form = digest_form("trajectories", row)
    assert "in <T>s" in form["steps"][0]["observation"] and "0x<ADDR>" in form["steps"][1]["error"]
    assert "started_at" not in form["steps"][0] and "duration_s" not in form and "created_at" not in form
    assert form["messages"][3]["content"] == form["steps"][0]["observation"]  # the tool message
    assert form["messages"][4]["content"] == "URL: http://127.0.0.1:<PORT>/login"  # what a web page showed
    assert form["final_patch"] == row["final_patch"] and form["messages"][1] == row["messages"][1]
    task = digest_form("tasks", tables(1)["tasks"][0])
    assert task["validation"]["detail"] == "1 failed, 1 passed in <T>s" and "duration_s" not in task["validation"]


def test_digest_form_drops_clock_measurements_and_port_hashes():
    row = tables(1)["trajectories"][0]
    row["usage"] = {"prompt_tokens": 120, "completion_tokens": 30, "model_calls": 1, "cost_usd": 0.0123}
    assert digest_form("trajectories", row)["usage"] == {"prompt_tokens": 120, "completion_tokens": 30,
                                                         "model_calls": 1}
    # a tutorial of the bundled docs site: its URL holds the docs server's port, its id is a hash of that URL
    web = [{"task_id": "w1",
            "provenance": json.dumps({"tutorial_id": tid, "tutorial_uri": f"http://127.0.0.1:{port}/a"})}
           for tid, port in (("5a77a3757ccd7a05", 43217), ("4e400d3c56902ba3", 40927))]
    assert digest_form("web_tasks", web[0]) == digest_form("web_tasks", web[1]) == {
        "task_id": "w1", "provenance": {"tutorial_uri": "http://127.0.0.1:<PORT>/a"}}
