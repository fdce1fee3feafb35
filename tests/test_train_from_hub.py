"""`--data hf:OWNER/NAME[@vN]`: a dataset version pulled from the Hub for `train` and `eval`.

The Hub cannot be reached from here, so `tests/hub_server.py` serves its HTTP protocol on loopback; versions are
pushed to it with `push_dataset` and pulled back with the real `huggingface_hub` client (`snapshot_download`). The
server records every request, which shows that a cached version is reused without one. The last test trains with
the real `trajfactory train sft` command on a pulled version of the model flow's dataset.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from hub_server import HubServer
from test_store import card_for, make_tables
from trajfactory.datasets.hub import push_dataset
from trajfactory.datasets.hub_pull import ORIGIN, HubPullError, parse_hub_ref, pull_version
from trajfactory.datasets.store import MANIFEST, DatasetStore
from trajfactory.training.common import TrainError, data_source, open_version
from trajfactory.training.evaluate import EvalError, held_out_tasks

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_" + secrets.token_hex(16)
REPO = "alice/inflection-swe"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub.constants as hf

    # conftest sets HF_HUB_OFFLINE=1 for the whole session; the stand-in speaks LFS, not Xet
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf, "HF_HUB_DISABLE_XET", True)
    with HubServer(tmp_path / "hub-storage", {TOKEN: "alice"}) as server:
        yield server


@pytest.fixture
def local(tmp_path: Path) -> DatasetStore:
    """Two versions of a dataset: v1 with 3 tasks, v2 with 4."""
    store = DatasetStore(tmp_path / "datasets" / "inflection-swe")
    store.write_version(make_tables(3), lineage={"recipe_hash": "abc123"}, card=card_for, shard_rows=2)
    store.write_version(make_tables(4), lineage={"recipe_hash": "abc123"}, card=card_for, shard_rows=2)
    return store


def push(hub: HubServer, store: DatasetStore, repo: str = REPO, **kw) -> None:
    push_dataset(store.root, repo, token=TOKEN, endpoint=hub.url, **kw)


def pull(hub: HubServer, cache: Path, version: str | None = None, repo: str = REPO, token: str | None = TOKEN):
    return pull_version(repo, version, cache, token=token, endpoint=hub.url)


def rows(store: DatasetStore, version: str) -> dict[str, str]:
    tables = store.manifest(version)["tables"]
    return {t: json.dumps(store.read_rows(version, t), default=str, sort_keys=True) for t in tables}


def test_pull_gets_the_pushed_version_and_reuses_the_verified_cache(hub: HubServer, local: DatasetStore,
                                                                    tmp_path: Path):
    push(hub, local)
    cache = tmp_path / "cache"

    root, version = pull(hub, cache)  # no @vN: the newest tag
    assert (root, version) == (cache / "hub" / "alice__inflection-swe", "v2")
    pulled = DatasetStore(root)
    assert (root / "v2" / MANIFEST).read_bytes() == (local.root / "v2" / MANIFEST).read_bytes()
    assert pulled.verify("v2") == [] and rows(pulled, "v2") == rows(local, "v2")
    assert pulled.content_digest("v2") == local.content_digest("v2")
    origin = json.loads((root / "v2" / ORIGIN).read_text())
    assert origin == {"repo_id": REPO, "revision": "v2", "commit": hub.repo(REPO).tags["v2"], "endpoint": hub.url}
    assert not (root / "v2" / ".cache").exists() and not list(root.glob(".pull-*"))

    # a version named and cached: no request at all
    seen = len(hub.requests)
    assert pull(hub, cache, "v2") == (root, "v2")
    assert hub.requests[seen:] == []
    # the newest, cached: only the tags are asked for, nothing is downloaded
    assert pull(hub, cache) == (root, "v2")
    assert [path for _, path, _ in hub.requests[seen:]] == [f"/api/datasets/{REPO}/refs"]

    # an older tag, beside it
    seen = len(hub.requests)
    assert pull(hub, cache, "v1") == (root, "v1")
    assert rows(pulled, "v1") == rows(local, "v1") and pulled.versions() == ["v1", "v2"]
    assert any("/resolve/" in path for _, path, _ in hub.requests[seen:])

    # a cached copy that lost a shard is downloaded again
    shard = next((root / "v1").glob("tasks/*.parquet"))
    shard.unlink()
    assert pull(hub, cache, "v1") == (root, "v1") and shard.is_file() and pulled.verify("v1") == []


def test_unknown_tag_repo_and_bad_references_are_clear_errors(hub: HubServer, local: DatasetStore, tmp_path: Path):
    push(hub, local)
    cache = tmp_path / "cache"
    with pytest.raises(HubPullError, match=f"hf:{REPO}@v9: {REPO} has no tag v9; its version tags: v1, v2"):
        pull(hub, cache, "v9")
    with pytest.raises(HubPullError, match=f"no dataset repo alice/nope on {hub.url}"):
        pull(hub, cache, "v1", repo="alice/nope")
    with pytest.raises(HubPullError, match="not of the form OWNER/NAME"):
        pull(hub, cache, "v1", repo="not a repo")
    with pytest.raises(HubPullError, match="'latest' is not a version tag"):
        pull(hub, cache, "latest")
    with pytest.raises(HubPullError, match="hf:alice: repo id 'alice' is not of the form OWNER/NAME"):
        parse_hub_ref("hf:alice")
    assert parse_hub_ref("hf:alice/x@v3") == ("alice/x", "v3") and parse_hub_ref(str(tmp_path)) is None

    # a private repo without a token: not found, and the message says what to set
    push(hub, local, "alice/private", private=True, version="v1")
    with pytest.raises(HubPullError, match="private and the token in HF_TOKEN is not set"):
        pull(hub, cache, "v1", repo="alice/private", token=None)
    assert pull(hub, cache, "v1", repo="alice/private")[1] == "v1"
    assert not [p for p in cache.rglob(".pull-*")]


def test_a_download_that_does_not_match_its_manifest_is_refused_and_removed(hub: HubServer, local: DatasetStore,
                                                                           tmp_path: Path):
    push(hub, local, version="v1")
    shard = local.manifest("v1")["tables"]["tasks"]["shards"][0]
    stored = hub.storage / "lfs" / shard["sha256"]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the sha256 tells
    stored.write_bytes(bytes(data))

    cache = tmp_path / "cache"
    with pytest.raises(HubPullError, match=rf"hf:{REPO}@v1: the download of {REPO}@v1 does not match its manifest, "
                                           rf"so it was removed: {shard['path']}: sha256"):
        pull(hub, cache, "v1")
    root = cache / "hub" / "alice__inflection-swe"
    assert list(root.iterdir()) == []  # neither v1 nor the partial download


def test_train_and_eval_data_options_take_hub_references(hub: HubServer, local: DatasetStore, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    push(hub, local)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("TRAJFACTORY_CACHE", str(tmp_path / "cache"))

    store, version, read = open_version(f"hf:{REPO}@v1")
    assert store.root == tmp_path / "cache" / "hub" / "alice__inflection-swe" and version == "v1"
    assert json.dumps(read("tasks"), default=str) == json.dumps(local.read_rows("v1", "tasks"), default=str)
    source = data_source(store, version, ["train"])
    assert source["dataset"] == REPO and source["content_digest"] == local.content_digest("v1")
    assert source["hub"] == {"repo_id": REPO, "revision": "v1", "commit": hub.repo(REPO).tags["v1"],
                             "endpoint": hub.url}

    tasks, report_data = held_out_tasks(f"hf:{REPO}", "all")  # the newest: v2's 4 tasks
    assert [t.task_id for t in tasks] == sorted(r["task_id"] for r in local.read_rows("v2", "tasks"))
    assert report_data["version"] == "v2" and report_data["hub"]["revision"] == "v2"

    with pytest.raises(TrainError, match=f"--data hf:{REPO}@v7: {REPO} has no tag v7; its version tags: v1, v2"):
        open_version(f"hf:{REPO}@v7")
    with pytest.raises(EvalError, match="--data hf:alice/nope: no dataset repo alice/nope"):
        held_out_tasks("hf:alice/nope", "test")
    with pytest.raises(TrainError, match="--data .*give DATASET_ROOT/NAME\\[@vN\\] or hf:OWNER/NAME\\[@vN\\]"):
        open_version(tmp_path / "missing")


@pytest.mark.docker
@pytest.mark.vllm
@pytest.mark.slow
def test_cli_trains_sft_on_a_version_pulled_from_the_hub(hub: HubServer, model_flow_run, tiny_model, tmp_path: Path):
    flow = model_flow_run.store
    push(hub, flow, "alice/flow-swe", version="v1")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_DATASETS_OFFLINE="1",
               TRAJFACTORY_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO_ROOT))
    out = tmp_path / "sft"
    proc = subprocess.run([sys.executable, "-m", "trajfactory.cli", "train", "sft", "--data", "hf:alice/flow-swe@v1",
                           "--model", str(tiny_model), "--out", str(out), "--max-steps", "2", "--max-length", "1024"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 2 steps" in proc.stdout and "alice/flow-swe@v1" in proc.stdout
    data = json.loads((out / "metrics.json").read_text())["data"]
    assert data["hub"] == {"repo_id": "alice/flow-swe", "revision": "v1",
                           "commit": hub.repo("alice/flow-swe").tags["v1"], "endpoint": hub.url}
    assert data["version"] == "v1" and data["content_digest"] == flow.content_digest("v1")
    assert data["path"] == str((tmp_path / "cache" / "hub" / "alice__flow-swe").resolve())
