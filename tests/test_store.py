"""DatasetStore: immutable versions, manifests, atomicity, HF loading, digests, formats."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from trajfactory.datasets.card import render_card
from trajfactory.datasets.formats import SWEBENCH_KEYS, swebench_instances, trl_sft_rows
from trajfactory.datasets.store import DatasetStore
from trajfactory.schema import (
    TABLE_SCHEMAS,
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
    TestOutcome as Outcome,  # aliased so pytest does not try to collect it
    ToolCall,
    ToolCallFunction,
    Trajectory,
    Usage,
    Validation,
    Verdict,
)

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
BASH_TOOL = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Run a shell command in the repository.",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    },
}


# ---------------------------------------------------------------- realistic records


def make_task(i: int, when: datetime = T0, statement: str | None = None) -> Task:
    entity = Entity(file="inflection/__init__.py", name=f"camelize_{i}", kind="function", lineno=10, end_lineno=30, complexity=4)
    return Task(
        task_id=f"task{i:04d}",
        instance_id=f"inflection__change_operator__{i:04d}",
        instruction=statement or f"camelize_{i}('foo_bar') returns 'foo_Bar' instead of 'FooBar'.",
        environment=SweEnvironment(repo="jpvanhal/inflection", base_commit="a" * 40, image_name="trajfactory/inflection:a1"),
        bug_patch=f"--- a/inflection/__init__.py\n+++ b/inflection/__init__.py\n@@ -1 +1 @@\n-x == {i}\n+x != {i}\n",
        checks=Checks(FAIL_TO_PASS=[f"tests/test_x.py::test_camelize_{i}"], PASS_TO_PASS=["tests/test_x.py::test_ok"], p2p_method="full-suite"),
        gold=Gold(patch=f"--- a/inflection/__init__.py\n+++ b/inflection/__init__.py\n@@ -1 +1 @@\n-x != {i}\n+x == {i}\n"),
        difficulty="easy",
        family="change_operator",
        entity=entity,
        validation=Validation(
            candidate_id=f"cand{i}", status="valid", FAIL_TO_PASS=[f"tests/test_x.py::test_camelize_{i}"],
            PASS_TO_PASS=["tests/test_x.py::test_ok"], tests_run=2, duration_s=1.5 + (when - T0).total_seconds(),
        ),
        provenance=Provenance(
            source_uri="https://github.com/jpvanhal/inflection", source_id="src1", license="MIT", commit="a" * 40,
            synthesizer="swe.procedural", synthesizer_version="1", params={"seed": i},
        ),
    )


def make_trajectory(task: Task, i: int, when: datetime = T0) -> Trajectory:
    call = ToolCall(id=f"call_{i}", function=ToolCallFunction(name="bash", arguments=json.dumps({"command": "pytest -x"})))
    return Trajectory(
        trajectory_id=f"traj{i:04d}",
        task_id=task.task_id,
        policy=Policy(name="oracle", params={"temperature": 0.0}),
        messages=[
            Message(role="system", content="You are a software engineer working in /repo."),
            Message(role="user", content=task.instruction),
            Message(role="assistant", content=None, tool_calls=[call]),
            Message(role="tool", content="1 failed, 1 passed", tool_call_id=f"call_{i}", name="bash"),
        ],
        tools=[BASH_TOOL],
        steps=[Step(index=0, tool="bash", arguments={"command": "pytest -x"}, observation="1 failed, 1 passed",
                    exit_code=1, started_at=when, duration_s=0.25 + i)],
        final=Final(patch=task.gold.patch),
        usage=Usage(prompt_tokens=120, completion_tokens=30, model_calls=1),
        exit_status="submitted",
        duration_s=3.0 + (when - T0).total_seconds(),
        created_at=when,
    )


def make_verdict(traj: Trajectory, passed: bool, when: datetime = T0) -> Verdict:
    return Verdict(
        verdict_id=f"verdict-{traj.trajectory_id}",
        task_id=traj.task_id,
        trajectory_id=traj.trajectory_id,
        verifier="tests",
        verifier_version="1",
        passed=passed,
        score=1.0 if passed else 0.0,
        evidence=Evidence(FAIL_TO_PASS=[Outcome(test="tests/test_x.py::test_camelize", outcome="passed" if passed else "failed")]),
        duration_s=2.0 + (when - T0).total_seconds(),
        created_at=when,
    )


def make_tables(n: int = 3, when: datetime = T0) -> dict[str, list[dict]]:
    tasks = [make_task(i, when) for i in range(n)]
    trajs = [make_trajectory(t, i, when) for i, t in enumerate(tasks)]
    return {
        "tasks": [t.to_row() for t in tasks],
        "trajectories": [t.to_row() for t in trajs],
        "verdicts": [make_verdict(t, passed=i != 1, when=when).to_row() for i, t in enumerate(trajs)],
        "quarantine": [Quarantine(item_id="cand99", item_kind="candidate", stage="validate", reason="no_fail_to_pass",
                                  detail="no test failed with the bug applied", created_at=when).to_row()],
    }


def card_for(manifest: dict) -> str:
    return render_card("inflection-swe", manifest, {"per repository": {"jpvanhal/inflection": {"tasks": 3, "passed": 2}},
                                                    "per mutation family": [{"family": "change_operator", "tasks": 3}]})


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(tmp_path / "ds")


@pytest.fixture
def hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`datasets`, imported offline with a throwaway HF_HOME (the env must be set before import)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import datasets

    return datasets


def hidden(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def run_python(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)


# ---------------------------------------------------------------- versions and manifest


def test_versions_manifest_and_read_back(store: DatasetStore):
    v1 = store.write_version(make_tables(), lineage={"recipe_hash": "abc123", "factory_version": "0.1.0"}, card=card_for)
    v2 = store.write_version(make_tables(4), lineage={"recipe_hash": "def456"})
    assert (v1.name, v2.name) == ("v1", "v2")
    assert store.versions() == ["v1", "v2"] and store.latest() == "v2"
    m1, m2 = store.manifest("v1"), store.manifest(v2)
    assert m1["parent"] is None and m2["parent"] == "v1"
    assert m1["lineage"] == {"recipe_hash": "abc123", "factory_version": "0.1.0"} and m1["card"] == "README.md"
    assert m2["card"] is None and not (v2.path / "README.md").exists()
    assert m2["tables"]["tasks"]["rows"] == 4 and m2["tables"]["quarantine"]["rows"] == 1
    for table, entry in m1["tables"].items():
        assert entry["schema"] == TABLE_SCHEMAS[table].to_string(show_schema_metadata=False)
        assert [f["name"] for f in entry["fields"]] == TABLE_SCHEMAS[table].names
        for shard in entry["shards"]:
            path = v1.path / shard["path"]
            assert pq.ParquetFile(path).metadata.num_rows == shard["rows"]
            assert shard["bytes"] == path.stat().st_size
            assert shard["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert path.stat().st_mode & 0o777 == 0o444
        assert store.read_table("v1", table).schema.equals(TABLE_SCHEMAS[table])
    assert (v1.path / "manifest.json").stat().st_mode & 0o777 == 0o444
    rows = store.read_rows("v1", "trajectories")
    assert rows[0]["messages"][2]["tool_calls"][0]["function"]["name"] == "bash"
    assert rows[0]["steps"][0]["started_at"] == T0
    assert store.verify("v1") == [] and store.verify("v2") == []
    assert store.write_version({}, lineage={}, parent=None).manifest["parent"] is None
    with pytest.raises(ValueError, match="no version 'v9'"):
        store.write_version({}, lineage={}, parent="v9")
    with pytest.raises(ValueError, match="no table 'steps'"):
        store.read_table("v1", "steps")


def test_a_tasks_python_round_trips_and_older_rows_read_as_unknown(store: DatasetStore):
    """A task row records the Python its sandboxes ran (`environment.python`); a row written before it was (no such
    key) is stored and read back with it unknown, and still makes a task."""
    from trajfactory.training.evaluate import task_from_row

    known = make_task(1)
    known.environment.python = "3.13.5"
    older = make_task(2).to_row()
    del older["environment"]["python"]
    v = store.write_version({"tasks": [known.to_row(), older]}, lineage={})
    rows = {r["task_id"]: r for r in store.read_rows(v, "tasks")}
    assert rows["task0001"]["environment"]["python"] == "3.13.5"
    assert rows["task0002"]["environment"]["python"] is None
    assert task_from_row(rows["task0001"]).environment.python == "3.13.5"
    assert task_from_row(rows["task0002"]).environment.python is None


def test_verify_detects_tampering(store: DatasetStore):
    v = store.write_version(make_tables(), lineage={})
    shard = Path(store.data_files(v)["tasks"][0])
    shard.chmod(0o644)
    pq.write_table(pq.read_table(shard).slice(0, 1), shard)  # a valid Parquet file, other content
    problems = store.verify(v)
    assert any("tasks/part-00000.parquet" in p and "sha256" in p for p in problems)
    Path(store.data_files(v)["verdicts"][0]).unlink()
    (v.path / "quarantine" / "part-00001.parquet").write_bytes(b"stray")
    problems = store.verify(v)
    assert any("verdicts/part-00000.parquet: missing shard" in p for p in problems)
    assert any("quarantine/part-00001.parquet: shard not in the manifest" in p for p in problems)


def test_shards_split_at_shard_rows_and_empty_table(store: DatasetStore):
    quarantine = [Quarantine(item_id=f"q{i}", item_kind="task", stage="validate", reason="timeout").to_row() for i in range(23)]
    v1 = store.write_version({"quarantine": quarantine, "tasks": []}, lineage={}, shard_rows=10, card=card_for)
    m = v1.manifest
    assert [s["rows"] for s in m["tables"]["quarantine"]["shards"]] == [10, 10, 3]
    assert [s["path"] for s in m["tables"]["quarantine"]["shards"]][-1] == "quarantine/part-00002.parquet"
    assert [s["rows"] for s in m["tables"]["tasks"]["shards"]] == [0]
    empty = store.read_table("v1", "tasks")
    assert empty.num_rows == 0 and empty.schema.equals(TABLE_SCHEMAS["tasks"])
    assert pq.ParquetFile(store.data_files(v1)["tasks"][0]).metadata.num_row_groups == 0
    configs = yaml.safe_load((v1.path / "README.md").read_text().split("---")[1])["configs"]
    assert [c["config_name"] for c in configs] == ["quarantine"]  # an empty split cannot be loaded by `datasets`
    m = store.write_version({"quarantine": iter(quarantine[:20])}, lineage={}, shard_rows=10).manifest
    assert [s["rows"] for s in m["tables"]["quarantine"]["shards"]] == [10, 10]  # no trailing empty shard
    assert [r["item_id"] for r in store.read_rows("v2", "quarantine")] == [f"q{i}" for i in range(20)]


def test_bad_table_and_bad_row_are_clear_errors(store: DatasetStore):
    tables = make_tables()
    with pytest.raises(ValueError, match=r"unknown table 'taskz'; known tables: \[.*'quarantine'.*'tasks'"):
        store.write_version({"taskz": tables["tasks"]}, lineage={})
    bad = [dict(r) for r in tables["trajectories"]]
    bad[1]["sample"] = "zero"
    with pytest.raises(ValueError, match=r"table 'trajectories' row 1 field 'sample'.*expected int64"):
        store.write_version({"tasks": tables["tasks"], "trajectories": bad}, lineage={})
    bad = [dict(r) for r in tables["tasks"]]
    bad[2]["FAIL_TO_PASS"] = 7
    with pytest.raises(ValueError, match=r"table 'tasks' row 2 field 'FAIL_TO_PASS'"):
        store.write_version({"tasks": bad}, lineage={})
    bad[2] = {**tables["tasks"][2], "bogus": 1}
    with pytest.raises(ValueError, match=r"table 'tasks' row 2: field\(s\) \['bogus'\] not in the schema"):
        store.write_version({"tasks": bad}, lineage={})
    assert store.versions() == [] and hidden(store.root) == []  # failed writes leave nothing behind


# ---------------------------------------------------------------- Hugging Face datasets


def test_tables_load_with_hf_datasets(store: DatasetStore, hf, tmp_path: Path):
    v = store.write_version(make_tables(), lineage={"recipe_hash": "abc123"}, card=card_for)
    cache = str(tmp_path / "hf-cache")
    for table, files in store.data_files(v).items():
        ds = hf.load_dataset("parquet", data_files=files, split="train", cache_dir=cache)
        assert len(ds) == v.manifest["tables"][table]["rows"]
    traj = hf.load_dataset(str(v.path), "trajectories", split="train", cache_dir=cache)
    assert traj[0]["messages"][2]["tool_calls"][0]["function"]["name"] == "bash"
    assert traj[0]["messages"][3]["tool_call_id"] == "call_0"
    tasks = hf.load_dataset(str(v.path), "tasks", cache_dir=cache)["train"]
    assert tasks["instance_id"] == [r["instance_id"] for r in make_tables()["tasks"]]
    assert tasks[0]["FAIL_TO_PASS"] == ["tests/test_x.py::test_camelize_0"] and tasks[0]["entity"]["lineno"] == 10

    card = (v.path / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert [c["config_name"] for c in front["configs"]] == list(make_tables())
    assert front["configs"][0]["data_files"][0]["path"] == "tasks/*.parquet" and front["license"] and front["tags"]
    assert "| `trajectories` | 3 | 1 |" in card and "abc123" in card
    assert "jpvanhal/inflection" in card and "change_operator" in card and "v1" in card


# ---------------------------------------------------------------- atomicity and concurrency


def test_killed_writer_leaves_no_version_and_gc_cleans_up(store: DatasetStore, tmp_path: Path):
    store.write_version(make_tables(), lineage={})
    marker = tmp_path / "mid-write"
    child = run_python(f"""
import pathlib, time
from trajfactory.datasets.store import DatasetStore
from trajfactory.schema import Quarantine
def rows():
    for i in range(10**6):
        if i == 35:
            pathlib.Path({str(marker)!r}).write_text("3 shards written")
            time.sleep(300)
        yield Quarantine(item_id=f"q{{i}}", item_kind="task", stage="validate", reason="timeout").to_row()
DatasetStore({str(store.root)!r}).write_version({{"quarantine": rows()}}, lineage={{}}, shard_rows=10)
""")
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "writer exited early"
            assert time.monotonic() < deadline, "writer never reached the middle of its write"
            time.sleep(0.05)
        [tmp] = hidden(store.root)
        assert len(list((tmp / "quarantine").glob("*.parquet"))) == 3
        assert store.gc() == [] and tmp.exists()  # a live writer's dir is left alone
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert store.versions() == ["v1"] and store.latest() == "v1"
    assert store.gc() == [tmp] and hidden(store.root) == []
    assert store.write_version(make_tables(), lineage={}).name == "v2"


def test_concurrent_writers_get_distinct_versions(store: DatasetStore, tmp_path: Path):
    go = tmp_path / "go"
    writers = [
        run_python(f"""
import pathlib, time
from trajfactory.datasets.store import DatasetStore
from trajfactory.schema import Quarantine
rows = [Quarantine(item_id=f"w{k}-{{i}}", item_kind="task", stage="s", reason="r").to_row() for i in range(2000)]
while not pathlib.Path({str(go)!r}).exists():
    time.sleep(0.01)
DatasetStore({str(store.root)!r}).write_version({{"quarantine": rows}}, lineage={{"writer": {k}}}, shard_rows=300)
""")
        for k in range(4)
    ]
    time.sleep(1.0)  # let every writer import and wait at the barrier
    go.write_text("go")
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    assert store.versions() == ["v1", "v2", "v3", "v4"] and hidden(store.root) == []
    manifests = [store.manifest(v) for v in store.versions()]
    assert sorted(m["lineage"]["writer"] for m in manifests) == [0, 1, 2, 3]
    assert [m["parent"] for m in manifests] == [None, "v1", "v2", "v3"]
    for m in manifests:
        assert store.verify(m["version"]) == []
        assert {r["item_id"].split("-")[0] for r in store.read_rows(m["version"], "quarantine")} == {f"w{m['lineage']['writer']}"}


# ---------------------------------------------------------------- content digest


def test_content_digest_ignores_timestamps_and_order(store: DatasetStore):
    first = store.write_version(make_tables(), lineage={})
    later = make_tables(when=T0 + timedelta(days=2, seconds=7))
    for rows in later.values():
        random.Random(1).shuffle(rows)
    second = store.write_version(later, lineage={"run": 2})
    assert store.read_rows(first, "trajectories")[0]["created_at"] != store.read_rows(second, "trajectories")[0]["created_at"]
    assert store.content_digest(first) == store.content_digest(second)

    changed = make_tables()
    changed["tasks"][1] = make_task(1, statement="A different problem statement.").to_row()
    assert store.content_digest(store.write_version(changed, lineage={})) != store.content_digest(first)
    dropped = make_tables()
    dropped["verdicts"].pop()
    assert store.content_digest(store.write_version(dropped, lineage={})) != store.content_digest(first)


# ---------------------------------------------------------------- formats


def test_swebench_instances_and_trl_rows(store: DatasetStore):
    v = store.write_version(make_tables(), lineage={})
    instances = swebench_instances(store.read_rows(v, "tasks"))
    assert len(instances) == 3 and all(list(i) == list(SWEBENCH_KEYS) for i in instances)
    first = instances[0]
    assert first["instance_id"] == "inflection__change_operator__0000" and first["repo"] == "jpvanhal/inflection"
    assert json.loads(first["FAIL_TO_PASS"]) == ["tests/test_x.py::test_camelize_0"]
    assert json.loads(first["PASS_TO_PASS"]) == ["tests/test_x.py::test_ok"]
    assert first["test_patch"] == "" and first["hints_text"] == "" and first["environment_setup_commit"] == "a" * 40
    assert first["image_name"] == "trajfactory/inflection:a1" and first["patch"].startswith("--- a/")

    trajectories, verdicts = store.read_rows(v, "trajectories"), store.read_rows(v, "verdicts")
    rows = trl_sft_rows(trajectories, verdicts)
    assert len(rows) == 2 and all(set(r) == {"messages", "tools", "trajectory_id", "task_id", "policy", "split"}
                                  for r in rows)  # traj0001 failed
    assert len(trl_sft_rows(trajectories, verdicts, only_verified=False)) == 3
    messages = rows[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert all(None not in m.values() for m in messages)
    assert "content" not in messages[2] and messages[2]["tool_calls"][0]["function"]["name"] == "bash"
    assert messages[3] == {"role": "tool", "content": "1 failed, 1 passed", "tool_call_id": "call_0", "name": "bash"}
    assert json.loads(rows[0]["tools"]) == [BASH_TOOL]
