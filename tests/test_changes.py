"""A version's card says what is new since its parent: new, updated and dropped sources, and new rows by id."""

from __future__ import annotations

from types import SimpleNamespace

from trajfactory.datasets.changes import changes
from trajfactory.datasets.publish import write_dataset
from trajfactory.datasets.resume import begin_publishing, publish_once, published_before_a_kill
from trajfactory.datasets.store import DatasetStore


def _task(task_id: str, repo: str):
    return SimpleNamespace(to_row=lambda: {"task_id": task_id, "kind": "swe", "repo": repo, "instance_id": task_id})


def _write(root, tasks, sources):
    return write_dataset(root, "swe", {"tasks": tasks}, {"sources": sources}, {})


def test_second_version_card_says_what_is_new(tmp_path):
    assert _write(tmp_path, [_task("a", "textkit"), _task("b", "textkit")], {"builtin:textkit": "c1"}) == "v1"
    store = DatasetStore(tmp_path / "swe")
    assert "What is new" not in (store.root / "v1" / "README.md").read_text()

    v2 = _write(tmp_path, [_task("a", "textkit"), _task("b", "textkit"), _task("c", "calc")],
                {"builtin:textkit": "c1", "fixtures/good_small": "c9"})
    assert v2 == "v2" and store.manifest("v2")["parent"] == "v1"
    card = (store.root / "v2" / "README.md").read_text()
    assert "## What is new since v1" in card
    assert "- new sources: `fixtures/good_small`" in card and "- updated sources: none" in card
    assert "| `tasks` | 3 | 1 | 2 | 0 |" in card and "New tasks by repository: calc 1" in card


def test_changes_name_updated_and_dropped_sources(tmp_path):
    _write(tmp_path, [_task("a", "p")], {"pypi:pkg==1.0": "c1", "builtin:textkit": "c1"})
    store = DatasetStore(tmp_path / "swe")
    change = changes(store, "v1", {"tasks": [{"task_id": "b", "repo": "p"}]}, {"sources": {"pypi:pkg==1.0": "c2"}})
    assert change["sources"] == {"new": [], "updated": ["pypi:pkg==1.0"], "dropped": ["builtin:textkit"]}
    assert change["tables"] == [{"table": "tasks", "rows": 1, "new": 1, "kept": 0, "gone": 1}]
    assert changes(store, None, {}, {}) is None


def test_unchanged_version_needs_the_same_recipe_sources_and_factory(tmp_path):
    from trajfactory.datasets.changes import sources_digest, unchanged_version

    same = {"factory_version": "0.1.0", "recipe_hash": "r1", "sources_digest": sources_digest({"a": "c1"})}
    write_dataset(tmp_path, "swe", {"tasks": [_task("a", "x")]}, same, {})
    assert unchanged_version(tmp_path / "swe", dict(same)) == "v1"
    assert unchanged_version(tmp_path / "swe", {**same, "sources_digest": sources_digest({"a": "c2"})}) is None
    assert unchanged_version(tmp_path / "swe", {**same, "recipe_hash": "r2"}) is None
    assert unchanged_version(tmp_path / "empty", same) is None


def test_a_parent_without_recorded_sources_says_so(tmp_path):
    write_dataset(tmp_path, "swe", {"tasks": [_task("a", "x")]}, {}, {})
    _write(tmp_path, [_task("a", "x")], {"builtin:textkit": "c1"})
    card = (tmp_path / "swe" / "v2" / "README.md").read_text()
    assert "- sources: v1 did not record its sources" in card and "| `tasks` | 1 | 0 | 1 | 0 |" in card


def test_a_version_published_by_a_killed_run_is_taken_by_its_resume(tmp_path):
    live, root = tmp_path / "work" / "live-run", tmp_path / "datasets"
    lineage = {"sources": {"builtin:textkit": "c1"}, "recipe_hash": "r1", "factory_version": "1",
               "sources_digest": "d1"}
    assert published_before_a_kill(live, root / "swe", lineage) is None  # no run noted a publication
    begin_publishing(live, root / "swe")
    assert published_before_a_kill(live, root / "swe", lineage) is None  # killed before it published
    assert write_dataset(root, "swe", {"tasks": [_task("a", "textkit")]}, lineage, {}) == "v1"
    assert published_before_a_kill(live, root / "swe", lineage) == "v1"  # killed after it published
    assert published_before_a_kill(live, root / "swe", {**lineage, "recipe_hash": "r2"}) is None  # another recipe
    assert published_before_a_kill(live, tmp_path / "elsewhere" / "swe", lineage) is None  # another dataset
    begin_publishing(live, root / "swe")  # a later run noted v1 as the latest before it wrote
    assert published_before_a_kill(live, root / "swe", lineage) is None


def _web_task(task_id: str):
    return SimpleNamespace(to_row=lambda: {"task_id": task_id, "kind": "web"})


def test_a_web_version_published_by_a_killed_run_is_taken_beside_the_swe_one(tmp_path):
    """A run of both halves notes each dataset apart: killed after both published, its resume takes both versions;
    after a run that ended, the live dir is gone and the next run writes a new version."""
    from trajfactory.executors.runs import LIVE_DIR, hold_work_dir

    work, root = tmp_path / "work", tmp_path / "datasets"
    swe = {"recipe_hash": "r1", "factory_version": "1", "sources_digest": "d1"}
    web = {"recipe_hash": "r1", "factory_version": "1", "sources_digest": "t1"}
    written = []

    def write(name, lineage, row):
        def go():
            written.append(name)
            return write_dataset(root, name, {"web_tasks" if name == "web" else "tasks": [row]}, lineage, {})
        return go

    # the factory flow publishes the web half first, then the SWE half; the kill comes after both
    assert publish_once(work, root / "web", web, write("web", web, _web_task("w"))) == "v1"
    assert publish_once(work, root / "swe", swe, write("swe", swe, _task("a", "textkit"))) == "v1"
    assert written == ["web", "swe"] and len(list((work / LIVE_DIR).iterdir())) == 2  # a note per dataset
    # the resumed run: each half takes its version, neither writes again
    assert publish_once(work, root / "web", web, write("web", web, _web_task("w"))) == "v1"
    assert publish_once(work, root / "swe", swe, write("swe", swe, _task("a", "textkit"))) == "v1"
    assert written == ["web", "swe"]
    # other tutorials make another version, even after a kill
    other = {**web, "sources_digest": "t2"}
    assert publish_once(work, root / "web", other, write("web", other, _web_task("x"))) == "v2"
    # a run that ended leaves no note: the next one writes its own version
    with hold_work_dir(work):
        pass
    assert not (work / LIVE_DIR).exists()
    assert publish_once(work, root / "web", other, write("web", other, _web_task("x"))) == "v3"


def test_web_sources_digest_reads_the_pages_not_their_served_ports():
    from trajfactory.pipelines.web import tutorials_digest
    from trajfactory.schema import Tutorial

    def pages(port: int, text: str) -> tuple[list[Tutorial], dict[str, str]]:
        url = f"http://127.0.0.1:{port}/docs/"
        return [Tutorial(tutorial_id="t", uri=url + "shop.html", text=text)], {url: "builtin:docs"}

    same = "Add a book to the cart"
    assert tutorials_digest(*pages(4001, same)) == tutorials_digest(*pages(5123, same))
    assert tutorials_digest(*pages(4001, "Add a book to the cart")) != tutorials_digest(*pages(4001, "Add two books"))
