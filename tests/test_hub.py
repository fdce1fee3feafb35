"""`trajfactory dataset push`: dataset versions to a Hub repo, one commit and one tag per version.

The Hub cannot be reached from here, so `tests/hub_server.py` serves the Hub's HTTP protocol on loopback; the push
runs the real `trajfactory` command (the real `huggingface_hub` client) in a subprocess, and the reads run the real
`datasets.load_dataset` in another, both pointed at the server with `HF_ENDPOINT`. The server counts what reached
it: LFS objects whose bytes were PUT, the operations of every commit, the paths of every preupload call.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hub_server import HubServer
from test_store import card_for, make_task, make_tables
from trajfactory.cli import app
from trajfactory.datasets.hub import hub_card
from trajfactory.datasets.store import DatasetStore
from trajfactory.schema import Quarantine

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_" + secrets.token_hex(16)  # random per run, so finding it anywhere means it leaked
BOB_TOKEN = "hf_" + secrets.token_hex(16)
REPO = "alice/inflection-swe"


@pytest.fixture
def hub(tmp_path: Path):
    with HubServer(tmp_path / "hub-storage", {TOKEN: "alice", BOB_TOKEN: "bob"}) as server:
        yield server


@pytest.fixture
def outputs() -> list[str]:
    """Everything the commands printed (stdout and stderr), to look for the token in."""
    return []


def hub_env(hub: HubServer, tmp_path: Path, token: str | None = TOKEN, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0",
               HF_HUB_DISABLE_XET="1",  # the stand-in speaks LFS, not Xet
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(REPO_ROOT), **extra)
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def push(hub: HubServer, tmp_path: Path, outputs: list[str], *args: str, token: str | None = TOKEN,
         **extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "trajfactory.cli", "dataset", "push", *args], cwd=tmp_path,
                          env=hub_env(hub, tmp_path, token, **extra), capture_output=True, text=True, timeout=120)
    outputs += [proc.stdout, proc.stderr]
    return proc


LOAD = """
import json, sys
import datasets
out = []
for revision, table in json.loads(sys.argv[1]):
    ds = datasets.load_dataset(sys.argv[2], table, revision=revision, split="train")
    out.append(json.dumps(ds.with_format("arrow")[:].to_pylist(), default=str, sort_keys=True))
print(json.dumps(out))
"""


def load(hub: HubServer, tmp_path: Path, outputs: list[str], repo_id: str, wanted: list[tuple[str | None, str]]) -> list[str]:
    """`datasets.load_dataset(repo_id, table, revision=...)` for each (revision, table), rows as canonical JSON."""
    proc = subprocess.run([sys.executable, "-c", LOAD, json.dumps(wanted), repo_id], cwd=tmp_path,
                          env=hub_env(hub, tmp_path), capture_output=True, text=True, timeout=300)
    outputs += [proc.stdout, proc.stderr]
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def local_rows(store: DatasetStore, version: str, table: str) -> str:
    return json.dumps(store.read_table(version, table).to_pylist(), default=str, sort_keys=True)


def shards(store: DatasetStore, version: str) -> dict[str, dict]:
    return {s["path"]: s for e in store.manifest(version)["tables"].values() for s in e["shards"]}


def leaked_into(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and TOKEN.encode() in p.read_bytes()]


# ---------------------------------------------------------------- the push


def test_push_versions_uploads_only_new_shards_and_loads_by_tag(hub: HubServer, tmp_path: Path, outputs: list[str]):
    store = DatasetStore(tmp_path / "datasets" / "inflection-swe")
    store.write_version(make_tables(3), lineage={"recipe_hash": "abc123"}, card=card_for, shard_rows=2)

    # v1, with huggingface_hub logging every request (HF_DEBUG=1): the token must not show in any line
    proc = push(hub, tmp_path, outputs, str(store.root), REPO, "--version", "v1", HF_DEBUG="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "curl" in proc.stderr  # the client did log its requests
    assert "v1: uploading 7 changed shard(s)" in proc.stdout and "v1: committed" in proc.stdout
    repo = hub.repo(REPO)
    assert not repo.private and set(repo.tags) == {"v1"} and repo.branches == {"main": repo.tags["v1"]}
    assert [c.title for c in repo.history("v1")] == ["inflection-swe v1", "initial commit"]
    v1_shards = shards(store, "v1")
    assert set(repo.files("v1")) == {".gitattributes", "README.md", "manifest.json", *v1_shards}
    assert hub.read(REPO, "manifest.json", "v1") == (store.root / "v1" / "manifest.json").read_bytes()
    for path, shard in v1_shards.items():
        assert repo.files("v1")[path].lfs_sha256 == shard["sha256"]
        assert hub.read(REPO, path, "v1") == (store.root / "v1" / path).read_bytes()
    assert {u["oid"] for u in hub.uploads} == {s["sha256"] for s in v1_shards.values()}

    # v2: the last tasks shard and the quarantine table change, the last verdict is dropped (its shard goes),
    # trajectories do not change
    tables = make_tables(3)
    tables["tasks"][2] = make_task(2, statement="camelize_2('foo_bar') drops the first letter.").to_row()
    tables["quarantine"].append(Quarantine(item_id="cand100", item_kind="candidate", stage="validate",
                                           reason="no_pass_to_pass", detail="every test failed").to_row())
    tables["verdicts"].pop()
    store.write_version(tables, lineage={"recipe_hash": "def456"}, card=card_for, shard_rows=2)
    v2_shards = shards(store, "v2")
    changed = {p for p, s in v2_shards.items() if v1_shards.get(p, {}).get("sha256") != s["sha256"]}
    assert changed == {"tasks/part-00001.parquet", "quarantine/part-00000.parquet"}  # what the test is about
    assert set(v1_shards) - set(v2_shards) == {"verdicts/part-00001.parquet"} and len(v2_shards) == 6

    uploads, commits, preuploads, n_requests = len(hub.uploads), len(hub.commits), len(hub.preuploads), len(hub.requests)
    proc = push(hub, tmp_path, outputs, str(store.root), REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "v1: already on the Hub with the same manifest (tag v1), skipped" in proc.stdout
    assert "v2: uploading 2 changed shard(s) + README.md, manifest.json" in proc.stdout
    assert "4 unchanged shard(s) already on the Hub; 1 to delete" in proc.stdout
    # only the changed shards' bytes reached the server, and only they, the card and the manifest were committed
    assert {(u["oid"], u["bytes"]) for u in hub.uploads[uploads:]} == {(v2_shards[p]["sha256"], v2_shards[p]["bytes"]) for p in changed}
    assert len(hub.uploads) - uploads == 2 and len(hub.commits) - commits == 1
    [commit] = hub.commits[commits:]
    assert sorted((op["op"], op["path"]) for op in commit["ops"]) == sorted(
        [("file", "README.md"), ("file", "manifest.json"), *(("lfsFile", p) for p in changed),
         ("deletedFile", "verdicts/part-00001.parquet")])
    assert [sorted(paths) for paths in hub.preuploads[preuploads:]] == [sorted({"README.md", "manifest.json", *changed})]
    assert not [r for r in hub.requests[n_requests:] if r[2] >= 400 and r != ("POST", "/api/repos/create", 409)]
    assert set(repo.tags) == {"v1", "v2"} and repo.branches == {"main": repo.tags["v2"]}
    assert repo.commits[repo.tags["v2"]].parent == repo.tags["v1"]
    assert set(repo.files("v2")) == {".gitattributes", "README.md", "manifest.json", *v2_shards}
    assert set(repo.files("v1")) == {".gitattributes", "README.md", "manifest.json", *v1_shards}  # a tag never moves

    # the Hub card points each table's config at exactly the version's shards
    readme = hub.read(REPO, "README.md", "v2").decode()
    assert "tasks/part-00001.parquet" in readme and 'revision="v2"' in readme and "jpvanhal/inflection" in readme

    # `datasets` loads each version by its tag, and the default branch is the newest
    loaded = load(hub, tmp_path, outputs, REPO, [("v1", "tasks"), ("v2", "tasks"), (None, "tasks"),
                                                  ("v1", "quarantine"), ("v2", "quarantine"), ("v2", "trajectories"),
                                                  ("v1", "verdicts"), ("v2", "verdicts")])
    assert loaded == [local_rows(store, "v1", "tasks"), local_rows(store, "v2", "tasks"), local_rows(store, "v2", "tasks"),
                      local_rows(store, "v1", "quarantine"), local_rows(store, "v2", "quarantine"),
                      local_rows(store, "v2", "trajectories"), local_rows(store, "v1", "verdicts"),
                      local_rows(store, "v2", "verdicts")]
    assert loaded[0] != loaded[1] and loaded[3] != loaded[4] and len(json.loads(loaded[-1])) == 2
    if hub.cdn_url:  # shards came through the Hub's redirect to its "CDN", which never saw the Authorization header
        assert hub.cdn_requests and not [path for path, with_auth in hub.cdn_requests if with_auth]
    assert "drops the first letter" in loaded[1] and "drops the first letter" not in loaded[0]

    # pushing the same versions again uploads and commits nothing
    uploads, commits, n_requests = len(hub.uploads), len(hub.commits), len(hub.requests)
    proc = push(hub, tmp_path, outputs, str(store.root), REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "v1: already on the Hub" in proc.stdout and "v2: already on the Hub" in proc.stdout
    assert "pushed nothing; already on the Hub: v1, v2" in proc.stdout
    assert len(hub.uploads) == uploads and len(hub.commits) == commits
    assert not [r for r in hub.requests[n_requests:] if r[0] in ("POST", "PUT") and r[1] != "/api/repos/create"
                and "paths-info" not in r[1]]

    # the token is in no output, no file of the dataset, the client's HF_HOME, or the server's storage
    assert outputs and not [o for o in outputs if TOKEN in o]
    assert (tmp_path / "hub-storage" / "access.log").is_file() and list((tmp_path / "hub-storage" / "lfs").iterdir())
    assert leaked_into(tmp_path) == []


def test_private_repo(hub: HubServer, tmp_path: Path, outputs: list[str]):
    store = DatasetStore(tmp_path / "datasets" / "secret-swe")
    store.write_version(make_tables(2), lineage={})  # no card: the push renders one from the manifest
    proc = push(hub, tmp_path, outputs, str(store.root), "alice/secret-swe", "--private")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert hub.repo("alice/secret-swe").private and set(hub.repo("alice/secret-swe").tags) == {"v1"}
    card = hub.read("alice/secret-swe", "README.md", "v1").decode()
    assert "config_name: tasks" in card and "- tasks/part-00000.parquet" in card and "# secret-swe (v1)" in card

    def status(url: str, token: str | None) -> int:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    for path in ("/api/datasets/alice/secret-swe", "/datasets/alice/secret-swe/resolve/v1/README.md"):
        assert status(hub.url + path, TOKEN) == 200
        assert status(hub.url + path, None) == 404 and status(hub.url + path, BOB_TOKEN) == 404  # hidden from others
    assert leaked_into(tmp_path) == [] and not [o for o in outputs if TOKEN in o]


def test_older_version_goes_on_a_side_branch_and_a_changed_tag_is_an_error(hub: HubServer, tmp_path: Path,
                                                                          outputs: list[str]):
    store = DatasetStore(tmp_path / "datasets" / "inflection-swe")
    store.write_version(make_tables(2), lineage={}, card=card_for)
    store.write_version(make_tables(3), lineage={}, card=card_for)
    assert push(hub, tmp_path, outputs, str(store.root), REPO, "--version", "v2").returncode == 0
    repo = hub.repo(REPO)
    v2_commit = repo.tags["v2"]

    proc = push(hub, tmp_path, outputs, str(store.root), REPO)  # v1 is not on the Hub yet, v2 is
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "v1: uploading" in proc.stdout and "on branch trajfactory-push-v1" in proc.stdout
    assert "v2: already on the Hub" in proc.stdout
    assert repo.branches == {"main": v2_commit}  # the default branch keeps the newest version; the side branch is gone
    assert set(repo.files("v1")) == {".gitattributes", "README.md", "manifest.json", *shards(store, "v1")}
    assert hub.read(REPO, "manifest.json", "v1") == (store.root / "v1" / "manifest.json").read_bytes()

    other = DatasetStore(tmp_path / "elsewhere" / "inflection-swe")  # another dataset's v1, same repo
    other.write_version(make_tables(4), lineage={}, card=card_for)
    commits = len(hub.commits)
    proc = push(hub, tmp_path, outputs, str(other.root), REPO)
    assert proc.returncode == 1
    assert f"tag v1 already exists on {REPO} with different content" in proc.stderr and "Traceback" not in proc.stderr
    assert len(hub.commits) == commits and repo.branches == {"main": v2_commit}


def test_hub_card_names_exactly_the_versions_shards():
    def shard(path: str, rows: int = 1) -> dict:
        return {"path": path, "rows": rows, "sha256": "0" * 64, "bytes": 10}

    manifest = {"version": "v3", "parent": "v2", "tables": {
        "tasks": {"rows": 3, "shards": [shard("tasks/part-00000.parquet"), shard("tasks/part-00001.parquet")]},
        "trajectories": {"rows": 3, "splits": {"train": 2, "test": 1},
                         "shards": [shard("trajectories/test-00000.parquet"), shard("trajectories/train-00000.parquet")]},
        "quarantine": {"rows": 0, "shards": [shard("quarantine/part-00000.parquet", 0)]},
    }}
    local = ("---\nlicense: mit\ntags: [x]\nconfigs:\n- config_name: tasks\n  data_files: tasks/*.parquet\n"
             "- config_name: trajectories\n  data_files:\n  - split: train\n    path: trajectories/train-*.parquet\n"
             "  - split: test\n    path: [trajectories/test-*.parquet]\n---\n\n# card\n\n"
             'load_dataset("PATH_OR_REPO", "tasks")\n')
    card = hub_card("ds", manifest, local, "alice/ds")
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "mit" and front["tags"] == ["x"]
    assert front["configs"] == [
        {"config_name": "tasks", "data_files": [{"split": "train", "path": ["tasks/part-00000.parquet",
                                                                            "tasks/part-00001.parquet"]}]},
        {"config_name": "trajectories", "data_files": [{"split": "train", "path": ["trajectories/train-00000.parquet"]},
                                                       {"split": "test", "path": ["trajectories/test-00000.parquet"]}]},
    ]
    assert 'load_dataset("alice/ds", "tasks")' in card and 'revision="v3"' in card and "# card" in card

    # no card: rendered from the manifest (card.render_card), then made explicit the same way
    front = yaml.safe_load(hub_card("ds", manifest, None, "alice/ds").split("---")[1])
    configs = {c["config_name"]: sorted((f["split"], f["path"]) for f in c["data_files"]) for c in front["configs"]}
    assert configs == {"tasks": [("train", ["tasks/part-00000.parquet", "tasks/part-00001.parquet"])],
                       "trajectories": [("test", ["trajectories/test-00000.parquet"]),
                                        ("train", ["trajectories/train-00000.parquet"])]}  # empty quarantine: none
    # a card without configs gets them from the manifest: a table written with a `split` column by shard prefix
    front = yaml.safe_load(hub_card("ds", manifest, "# no front matter\n", "alice/ds").split("---")[1])
    configs = {c["config_name"]: sorted((f["split"], f["path"]) for f in c["data_files"]) for c in front["configs"]}
    assert configs["trajectories"] == [("test", ["trajectories/test-00000.parquet"]),
                                       ("train", ["trajectories/train-00000.parquet"])]
    assert set(configs) == {"tasks", "trajectories"}


# ---------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error_before_any_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = DatasetStore(tmp_path / "datasets" / "inflection-swe")
    store.write_version(make_tables(1), lineage={})
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a request would fail differently
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    def run(*args: str, token: str | None = TOKEN) -> str:
        result = CliRunner().invoke(app, ["dataset", "push", *args], env={"HF_TOKEN": token})
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and TOKEN not in result.output
        return " ".join(result.output.split())  # unwrapped

    out = run(str(tmp_path / "empty"), REPO)
    assert f"{tmp_path / 'empty'} holds no dataset versions (v1, v2, ...)" in out and "DATASET_ROOT/NAME" in out
    assert f"{tmp_path / 'missing'} does not exist" in run(str(tmp_path / "missing"), REPO)
    out = run(str(store.root / "v1"), REPO)
    assert "is one version, not a dataset directory" in out and f"pass its parent, {store.root}, and --version v1" in out
    assert f"{store.root} has no version 'v7'; its versions: v1" in run(str(store.root), REPO, "--version", "v7")
    for bad in ("inflection-swe", "alice/inflection/swe", "alice/", "alice/bad--name"):
        assert f"repo id {bad!r} is not of the form OWNER/NAME" in run(str(store.root), bad)
    out = run(str(store.root), REPO, token=None)
    assert "no Hugging Face token: set the HF_TOKEN environment variable" in out
    assert "HF_TOKEN environment variable" in CliRunner().invoke(app, ["dataset", "push", "--help"]).output


def test_refused_token_is_a_clear_error(hub: HubServer, tmp_path: Path, outputs: list[str]):
    store = DatasetStore(tmp_path / "datasets" / "inflection-swe")
    store.write_version(make_tables(1), lineage={})
    wrong = "hf_" + secrets.token_hex(16)
    proc = push(hub, tmp_path, outputs, str(store.root), REPO, token=wrong)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and wrong not in proc.stdout + proc.stderr
    assert "refused the token in HF_TOKEN" in proc.stderr and "401 Unauthorized" in proc.stderr
    proc = push(hub, tmp_path, outputs, str(store.root), REPO, token=BOB_TOKEN)  # a valid token, not alice's
    assert proc.returncode == 1 and "may not write to alice/inflection-swe (403 Forbidden" in proc.stderr
    assert hub.repos == {} and hub.uploads == []
    assert ("POST", "/api/repos/create", 401) in hub.requests
