"""`trajfactory view`: the page in the real Chromium over a realistic version; labels saved as a new version."""

from __future__ import annotations

import hashlib
import json
import struct
import urllib.error
import urllib.request
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from trajfactory.datasets.reviews import accepted_ids, latest_labels, make_review, rejected_ids
from trajfactory.datasets.store import DatasetStore
from trajfactory.datasets.viewer import ViewerError, check_loopback, serve_viewer
from trajfactory.executors.browser import BrowserConfig
from trajfactory.schema import (
    Checks, Entity, Evidence, Final, Gold, Message, Policy, Provenance, Quarantine, ScreenshotRow, Step, SweEnvironment,
    Task, ToolCall, ToolCallFunction, Trajectory, Usage, Validation, Verdict, WebEnvironment, WebProvenance, WebTask,
    WebTaskSpec, WebVerification,
)
from trajfactory.schema import TestOutcome as Outcome  # aliased so pytest does not collect it
from trajfactory.schema.swe import SWE_SYSTEM_PROMPT, SWE_TOOLS

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


# ---------------------------------------------------------------- a realistic version


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG (solid colour), so the page's <img> has something to decode."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def swe_task(i: int, family: str, old: str, new: str) -> Task:
    fix = f"--- a/textkit/core.py\n+++ b/textkit/core.py\n@@ -10,3 +10,3 @@ def slug_{i}(text):\n     words = text.split()\n-    {new}\n+    {old}\n     return out\n"
    bug = fix.replace(f"-    {new}\n+    {old}", f"-    {old}\n+    {new}")
    f2p = [f"tests/test_core.py::test_slug_{i}"]
    return Task(
        task_id=f"task{i:04d}", instance_id=f"textkit__{family}__{i:04d}",
        instruction=f"slug_{i}('Hello World') returns the wrong text; tests/test_core.py::test_slug_{i} fails.",
        environment=SweEnvironment(repo="textkit", base_commit="b" * 40, image_name="trajfactory/textkit:b1"),
        bug_patch=bug, checks=Checks(FAIL_TO_PASS=f2p, PASS_TO_PASS=["tests/test_core.py::test_ok"], p2p_method="full-suite"),
        gold=Gold(patch=fix), difficulty="easy", family=family,
        entity=Entity(file="textkit/core.py", name=f"slug_{i}", kind="function", lineno=9, end_lineno=14, complexity=4),
        validation=Validation(candidate_id=f"cand{i}", status="valid", FAIL_TO_PASS=f2p, tests_run=3),
        provenance=Provenance(source_uri="builtin:textkit", source_id="src1", license="MIT", commit="b" * 40,
                              synthesizer="swe.procedural", synthesizer_version="1", params={"seed": i}))


def swe_trajectory(task: Task, n: int, policy: Policy, observation: str = "1 failed, 2 passed") -> Trajectory:
    old_line = task.gold.patch.split("\n-    ")[1].split("\n")[0]
    new_line = task.gold.patch.split("\n+    ")[1].split("\n")[0]
    calls = [ToolCall(id=f"call_{n}_0", function=ToolCallFunction(name="bash", arguments=json.dumps({"command": "python -m pytest -x -q"}))),
             ToolCall(id=f"call_{n}_1", function=ToolCallFunction(name="edit", arguments=json.dumps(
                 {"path": "textkit/core.py", "old_str": f"    {old_line}\n", "new_str": f"    {new_line}\n"})))]
    return Trajectory(
        trajectory_id=f"traj{n:04d}", task_id=task.task_id, policy=policy, sample=0,
        messages=[Message(role="system", content=SWE_SYSTEM_PROMPT), Message(role="user", content=task.instruction),
                  Message(role="assistant", content="Let me run the failing test first.", tool_calls=[calls[0]]),
                  Message(role="tool", content=observation, tool_call_id=calls[0].id, name="bash"),
                  Message(role="assistant", content=None, tool_calls=[calls[1]]),
                  Message(role="tool", content="edited textkit/core.py", tool_call_id=calls[1].id, name="edit")],
        tools=SWE_TOOLS,
        steps=[Step(index=0, tool="bash", arguments={"command": "python -m pytest -x -q"}, observation=observation, exit_code=1, started_at=T0),
               Step(index=1, tool="edit", arguments=json.loads(calls[1].function.arguments), observation="edited", exit_code=0, started_at=T0)],
        final=Final(patch=task.gold.patch), usage=Usage(prompt_tokens=900, completion_tokens=80, model_calls=3),
        exit_status="submitted", created_at=T0)


def verdict(traj: Trajectory, passed: bool, verifier: str = "tests", detail: str = "") -> Verdict:
    tests = [Outcome(test=f"tests/test_core.py::test_{traj.task_id}", outcome="passed" if passed else "failed")]
    return Verdict(verdict_id=f"{verifier}-{traj.trajectory_id}", task_id=traj.task_id, trajectory_id=traj.trajectory_id,
                   verifier=verifier, verifier_version="1", passed=passed, score=float(passed),
                   evidence=Evidence(FAIL_TO_PASS=tests if verifier == "tests" else [], detail=detail), created_at=T0)


def build_tables() -> dict[str, list[dict]]:
    oracle, model = Policy(name="oracle"), Policy(name="model", model="tiny", params={"temperature": 0.7})
    tasks = [swe_task(0, "change_operator", "out = a + b", "out = a - b"),
             swe_task(1, "change_operator", "if n > 0:", "if n >= 0:"),
             swe_task(2, "remove_loop", "for w in words: out.append(w)", "pass")]
    trajs = [swe_trajectory(tasks[0], 0, oracle), swe_trajectory(tasks[1], 1, oracle),
             swe_trajectory(tasks[2], 2, oracle), swe_trajectory(tasks[0], 3, model, observation=EVIL),
             swe_trajectory(tasks[2], 4, model)]
    verdicts = [verdict(trajs[0], True), verdict(trajs[1], True), verdict(trajs[2], True), verdict(trajs[3], False),
                verdict(trajs[3], True, "judge", '{"status": "verdict"}')]  # traj0004: no verdict of record

    shot = png(64, 40, (40, 120, 220))
    sha = hashlib.sha256(shot).hexdigest()
    web = WebTask(task_id="web0001", instruction="Add the blue mug to the cart.",
                  environment=WebEnvironment(app="shop", seed=1, start_path="/"),
                  spec=WebTaskSpec(target_site="shop", task_description="Add a mug to the cart",
                                   steps=["Click 'Blue mug'.", "Click 'Add to cart'."], expected_outcome="The cart holds a blue mug."),
                  gold=["click('12')", "click('31')"], difficulty="easy",
                  provenance=WebProvenance(tutorial_id="tut1", tutorial_uri="builtin:docs/shop/cart.html",
                                           synthesizer="web.spec", synthesizer_version="1"))
    call = ToolCall(id="action", function=ToolCallFunction(name="click", arguments=json.dumps({"bid": "12"})))
    web_traj = Trajectory(
        trajectory_id="webtraj01", task_id=web.task_id, policy=Policy(name="tutorial-replay"),
        messages=[Message(role="user", content=web.instruction),
                  Message(role="user", content="URL: http://127.0.0.1:9/\nAccessibility tree:\n[12] link 'Blue mug'"),
                  Message(role="assistant", content="click('12')", tool_calls=[call])],
        tools=[], steps=[Step(index=0, tool="click", arguments={"bid": "12", "screenshot": sha},
                              observation="[31] button 'Add to cart'", started_at=T0)],
        final=Final(), exit_status="submitted", created_at=T0)
    return {
        "tasks": [t.to_row() for t in tasks],
        "web_tasks": [web.to_row()],
        "trajectories": [t.to_row() for t in [*trajs, web_traj]],
        "verdicts": [v.to_row() for v in verdicts] + [verdict(web_traj, True, "state", "2 of 2 state checks hold").to_row()],
        "screenshots": [ScreenshotRow.of(shot).to_row()],
        "web_verification": [WebVerification(trajectory_id="webtraj01", task_id="web0001", policy="tutorial-replay",
                                             verified=True, verified_by="state", state_passed=True,
                                             reason="state checks passed").to_row()],
        "quarantine": [Quarantine(item_id="cand9", item_kind="candidate", stage="validate", reason="no_fail_to_pass",
                                  created_at=T0).to_row()],
    }


@pytest.fixture
def dataset(tmp_path: Path) -> DatasetStore:
    store = DatasetStore(tmp_path / "datasets" / "textkit-swe")
    store.write_version(build_tables(), lineage={"recipe_hash": "r1"}, parent=None, card="# textkit-swe\n")
    return store


@pytest.fixture(scope="module")
def browser():
    cfg = BrowserConfig()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=cfg.executable_path, args=cfg.args, headless=cfg.headless)
        yield b
        b.close()


LISTED_JS = "() => JSON.stringify([...document.querySelectorAll('#list li')].map(e => e.dataset.id).sort())"


def listed(page) -> list[str]:
    return json.loads(page.evaluate(LISTED_JS))


def choose(page, name: str, value: str, expected: list[str]) -> None:
    """Pick a filter value and wait for the list to show exactly `expected` (a wrong list times out, then fails)."""
    page.select_option(f"#filters select[name={name}]", value)
    try:
        page.wait_for_function(f"(want) => ({LISTED_JS})() === want", arg=json.dumps(sorted(expected), separators=(",", ":")), timeout=5_000)
    finally:
        assert listed(page) == sorted(expected), f"{name}={value!r}"
    expect(page.locator("#count")).to_have_text(f"{len(expected)} trajector{'y' if len(expected) == 1 else 'ies'}")


# ---------------------------------------------------------------- the page


@pytest.mark.browser
def test_browse_filter_review_and_save(dataset: DatasetStore, browser, tmp_path: Path):
    before = {t: dataset.read_rows("v1", t) for t in dataset.data_files("v1")}
    with serve_viewer(dataset.root, "v1", reviewer="ana") as viewer:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(viewer.url)
        expect(page.locator("#count")).to_have_text("6 trajectories")
        assert listed(page) == ["traj0000", "traj0001", "traj0002", "traj0003", "traj0004", "webtraj01"]
        assert page.locator("#split-filter").is_hidden()  # no task of this version has a split
        page.screenshot(path=str(tmp_path / "list.png"))

        choose(page, "verdict", "failed", ["traj0003"])
        choose(page, "verdict", "none", ["traj0004"])  # a judge verdict is not the verdict of record
        choose(page, "verdict", "passed", ["traj0000", "traj0001", "traj0002", "webtraj01"])
        choose(page, "family", "change_operator", ["traj0000", "traj0001"])
        choose(page, "verdict", "", ["traj0000", "traj0001", "traj0003"])
        choose(page, "family", "", ["traj0000", "traj0001", "traj0002", "traj0003", "traj0004", "webtraj01"])
        choose(page, "site", "shop", ["webtraj01"])
        choose(page, "site", "", ["traj0000", "traj0001", "traj0002", "traj0003", "traj0004", "webtraj01"])
        choose(page, "policy", "model", ["traj0003", "traj0004"])
        choose(page, "policy", "", ["traj0000", "traj0001", "traj0002", "traj0003", "traj0004", "webtraj01"])

        # a SWE trajectory: messages, a tool call's arguments, the diffs with +/- lines marked
        page.click("#list li[data-id=traj0003] button")
        detail = page.locator("#detail")
        expect(detail.locator("h2")).to_have_text("traj0003")
        expect(detail.locator(".msg")).to_have_count(6)
        expect(detail.locator(".msg.system .content")).to_have_text(SWE_SYSTEM_PROMPT)
        edit_call = detail.locator(".call", has_text="edit(...)")
        expect(edit_call.locator("dt")).to_have_text(["path", "old_str", "new_str"])
        assert edit_call.locator("dd").nth(1).text_content() == "    out = a - b\n"  # exactly, whitespace kept
        expect(detail.locator(".call", has_text="bash(...)").locator("dd")).to_have_text("python -m pytest -x -q")
        # model-written markup is text: shown verbatim, never run
        assert detail.locator(".msg.tool .content").first.text_content() == EVIL
        assert page.evaluate("window.__pwned") is None and detail.locator("script, img[src=x]").count() == 0
        final = detail.locator("pre.diff").first
        expect(final.locator(".add")).to_have_text(["+    out = a + b"])
        expect(final.locator(".del")).to_have_text(["-    out = a - b"])
        expect(detail.locator("pre.diff")).to_have_count(3)  # final, gold, bug patch
        expect(detail.locator("table.verdicts")).to_contain_text("tests 1")
        expect(detail.locator("table.verdicts")).to_contain_text("judge 1")
        page.screenshot(path=str(tmp_path / "swe.png"), full_page=True)

        # a web trajectory: its step's screenshot really loads
        page.click("#list li[data-id=webtraj01] button")
        img = detail.locator(".step img")
        expect(img).to_have_count(1)
        page.wait_for_function("() => { const i = document.querySelector('.step img'); return i && i.complete; }")
        assert img.evaluate("i => i.naturalWidth") == 64
        expect(detail).to_contain_text("Add the blue mug to the cart.")
        expect(detail.locator("table.verdicts")).to_contain_text("verification (state)")
        page.screenshot(path=str(tmp_path / "web.png"), full_page=True)

        # accept one, reject another (changing one's mind first), then save
        page.click("#list li[data-id=traj0000] button")
        expect(detail.locator("h2")).to_have_text("traj0000")
        page.fill("#note", "clean fix, runs the test first")
        page.click("#accept")
        expect(page.locator("#current-review")).to_have_text("accept (unsaved)")
        page.click("#list li[data-id=traj0003] button")
        expect(detail.locator("h2")).to_have_text("traj0003")
        page.fill("#note", "first thought it fine")
        page.click("#accept")
        expect(page.locator("#current-review")).to_have_text("accept (unsaved)")
        page.fill("#note", "edits the wrong line; tests <fail>")
        page.click("#reject")
        expect(page.locator("#current-review")).to_have_text("reject (unsaved)")
        expect(page.locator("#save")).to_have_text("Save reviews (2)")
        choose(page, "review", "reject", ["traj0003"])
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
        page.click("#save")
        expect(page.locator("#status")).to_contain_text("saved 2 labels as v2 (parent v1)")
        expect(page.locator("#version")).to_contain_text("v2 (parent: v1")
        expect(page.locator("#current-review")).to_have_text("reject (saved in this version)")
        expect(page.locator("#save")).to_be_disabled()
        page.screenshot(path=str(tmp_path / "saved.png"), full_page=True)
        assert errors == []
        page.close()

    # on disk: v2, parent v1, exactly the two labels, every other table unchanged
    assert dataset.versions() == ["v1", "v2"] and dataset.verify("v2") == []
    manifest = dataset.manifest("v2")
    assert manifest["parent"] == "v1" and manifest["lineage"]["reviewed_version"] == "v1"
    assert manifest["lineage"]["recipe_hash"] == "r1" and manifest["lineage"]["reviewers"] == ["ana"]
    reviews = dataset.read_rows("v2", "reviews")
    assert sorted((r["trajectory_id"], r["task_id"], r["label"], r["note"], r["reviewer"], r["reviewed_version"])
                  for r in reviews) == [("traj0000", "task0000", "accept", "clean fix, runs the test first", "ana", "v1"),
                                        ("traj0003", "task0000", "reject", "edits the wrong line; tests <fail>", "ana", "v1")]
    assert set(manifest["tables"]) == set(before) | {"reviews"}
    for table, rows in before.items():
        assert dataset.read_rows("v2", table) == rows, table
    assert accepted_ids(reviews) == {"traj0000"} and rejected_ids(reviews) == {"traj0003"}
    card = (dataset.root / "v2" / "README.md").read_text()
    assert "Review labels on `v1`: 1 trajectories accepted and 1 rejected by ana" in card
    assert "config_name: reviews" in card


def test_latest_label_wins_and_reviews_carry_forward(dataset: DatasetStore):
    t = T0
    rows = [make_review("a", "t", "accept", created_at=t + timedelta(minutes=2)).to_row(),
            make_review("a", "t", "reject", created_at=t).to_row(),  # older, listed later: loses
            make_review("b", "t", "accept", created_at=t).to_row(),
            make_review("b", "t", "reject", created_at=t).to_row()]  # same time: the later row wins
    assert accepted_ids(rows) == {"a"} and rejected_ids(rows) == {"b"}
    assert latest_labels([]) == {}
    with pytest.raises(ValueError, match="label must be one of"):
        make_review("a", "t", "maybe")

    from trajfactory.datasets.reviews import write_reviews

    write_reviews(dataset, "v1", [make_review("traj0001", "task0001", "accept", created_at=t)])
    v3 = write_reviews(dataset, "v2", [make_review("traj0001", "task0001", "reject", "on second look",
                                                   created_at=t + timedelta(hours=1))])
    carried = dataset.read_rows(v3, "reviews")
    assert len(carried) == 2 and v3.manifest["parent"] == "v2"
    assert rejected_ids(carried) == {"traj0001"} and accepted_ids(carried) == set()
    with pytest.raises(ValueError, match="no reviews to write"):
        write_reviews(dataset, "v1", [])


def test_refusals_and_clear_errors(dataset: DatasetStore, tmp_path: Path):
    for bad in ("0.0.0.0", "192.168.1.10", "example.com", "::"):
        with pytest.raises(ViewerError, match="loopback"):
            serve_viewer(dataset.root, host=bad)
    assert check_loopback("localhost") == "127.0.0.1"
    with pytest.raises(ViewerError, match=r"unknown version 'v7'.*versions: v1"):
        serve_viewer(dataset.root, "v7")
    with pytest.raises(ViewerError, match="no dataset versions here"):
        serve_viewer(tmp_path / "nothing")

    with serve_viewer(dataset.root) as viewer:
        def call(path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
            req = urllib.request.Request(viewer.url.rstrip("/") + path, headers=headers or {},
                                         data=None if body is None else json.dumps(body).encode())
            try:
                with urllib.request.urlopen(req, timeout=10) as res:
                    return res.status, json.loads(res.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        ok = {"X-Trajfactory-Viewer": "1", "Content-Type": "application/json"}
        assert call("/api/trajectories?limit=2&offset=1")[1]["total"] == 6
        assert [r["trajectory_id"] for r in call("/api/trajectories?limit=2&offset=1")[1]["rows"]] == ["traj0001", "traj0002"]
        assert call("/api/trajectory?id=nope") == (400, {"error": "no trajectory 'nope' in v1"})
        assert call("/api/reviews", {"trajectory_id": "traj0000", "label": "accept"})[0] == 403  # no viewer header
        assert call("/api/reviews", {"trajectory_id": "traj0000", "label": "meh"}, ok)[0] == 400
        assert call("/api/save", {}, ok) == (400, {"error": "nothing to save: accept or reject a trajectory first"})
        assert call("/api/info", headers={"Host": "evil.example:80"})[0] == 403  # DNS rebinding
        assert dataset.versions() == ["v1"]


@pytest.mark.browser
def test_split_filter_shows_when_tasks_have_a_split(tmp_path: Path, browser, monkeypatch: pytest.MonkeyPatch):
    import pyarrow as pa

    from trajfactory.schema import TABLE_SCHEMAS

    for table in ("tasks", "web_tasks"):  # a `split` column (the store partitions such tables by split)
        if "split" not in TABLE_SCHEMAS[table].names:
            monkeypatch.setitem(TABLE_SCHEMAS, table, TABLE_SCHEMAS[table].append(pa.field("split", pa.string())))
    tables = build_tables()
    for i, row in enumerate(tables["tasks"]):
        row["split"] = "test" if i == 2 else "train"
    tables["web_tasks"][0]["split"] = "test"
    store = DatasetStore(tmp_path / "split-ds")
    store.write_version(tables, lineage={}, parent=None)
    with serve_viewer(store.root) as viewer:
        page = browser.new_page()
        page.goto(viewer.url)
        expect(page.locator("#split-filter")).to_be_visible()
        choose(page, "split", "test", ["traj0002", "traj0004", "webtraj01"])
        page.close()


def test_older_schema_is_carried_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import pyarrow as pa

    from trajfactory.datasets.reviews import write_reviews
    from trajfactory.schema import TABLE_SCHEMAS

    current = TABLE_SCHEMAS["verdicts"]
    evidence = current.field("evidence").type
    old = current.set(current.get_field_index("evidence"), pa.field("evidence", pa.struct(
        [evidence.field(n) for n in ("FAIL_TO_PASS", "PASS_TO_PASS", "detail")])))
    tables = build_tables()
    for row in tables["verdicts"]:
        row["evidence"] = {k: row["evidence"][k] for k in ("FAIL_TO_PASS", "PASS_TO_PASS", "detail")}
    store = DatasetStore(tmp_path / "old-ds")
    with monkeypatch.context() as m:  # a version written before `evidence.reverted` / `refused` existed
        m.setitem(TABLE_SCHEMAS, "verdicts", old)
        store.write_version(tables, lineage={}, parent=None)
    v2 = write_reviews(store, "v1", [make_review("traj0000", "task0000", "accept", created_at=T0)])
    assert list(v2.manifest["lineage"]["schema_upgraded"]) == ["verdicts"]
    assert "evidence" in v2.manifest["lineage"]["schema_upgraded"]["verdicts"]
    assert store.read_rows(v2, "tasks") == store.read_rows("v1", "tasks")
    assert len(store.read_rows(v2, "verdicts")) == len(tables["verdicts"])
