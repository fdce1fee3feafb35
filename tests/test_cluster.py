"""Scale-out on a real local Ray cluster: a head and a worker node in their own processes, each with its own Docker
engine (a second and third `dockerd`), sandbox images shared through a real registry (Debian's docker-registry). The
factory runs end to end through the CLI with a `cluster:` section; its sandbox work must land on both nodes' engines,
and each node must have pulled the image the machine's engine built (same image id: nothing rebuilt)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import docker
import pytest
import yaml

import cli_runs
from conftest import ROOT
from trajfactory.datasets.store import DatasetStore
from trajfactory.executors.registry import registry_answers, registry_digest, start_registry, stop_registry
from trajfactory.executors.runs import recorded_runs
from trajfactory.models.server import free_port
from trajfactory.server.cluster import start_node, stop_node
from trajfactory.settings import Recipe

pytestmark = pytest.mark.docker
NODES = ("head", "worker")


@pytest.fixture(scope="module")
def cluster(docker_backend, tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    env = {"PYTHONPATH": str(ROOT)}  # the nodes' Ray workers import this checkout
    try:
        registry = start_registry(root / "registry", port=free_port())
        head = start_node(root, "head", head=True, port=free_port(), env=env, object_store_mb=100)
        worker = start_node(root, "worker", address=head["address"], env=env, object_store_mb=100)
        yield SimpleNamespace(registry=registry, address=head["address"],
                              hosts={"head": head["docker_host"], "worker": worker["docker_host"]})
    finally:  # everything goes, even when a start failed half-way (the nodes at once: each takes seconds)
        with ThreadPoolExecutor(len(NODES)) as threads:
            list(threads.map(lambda name: stop_node(root, name, remove_engine=True), NODES))
        stop_registry(root / "registry")


def _with_cluster(recipe: Path, cluster) -> Path:
    body = yaml.safe_load(recipe.read_text())
    body["cluster"] = {"address": cluster.address, "registry": cluster.registry}
    body["dataset"]["exports"] = []  # the exports do not touch the cluster (tests/test_exports.py has them)
    recipe.write_text(yaml.safe_dump(body))
    return recipe


def test_factory_runs_its_sandboxes_on_every_node_with_images_from_the_registry(cluster, docker_backend, tmp_path):
    recipe = _with_cluster(cli_runs.recipe(tmp_path, candidates=4, concurrency=2, batch_size=2,
                                                   reference_runs=1), cluster)
    since = int(time.time()) - 1
    proc = cli_runs.cli(tmp_path, "run", str(recipe))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    store = DatasetStore(tmp_path / "datasets" / "swe")
    tasks, verdicts = store.read_rows("v1", "tasks"), store.read_rows("v1", "verdicts")
    assert tasks and all(v["passed"] for v in verdicts if v["subject"] == "trajectory")
    tag = tasks[0]["image_name"]
    [run] = recorded_runs(tmp_path / "work")
    run_id = run["run_id"]
    built = docker_backend.client.images.get(tag)  # the machine's engine built it (the flow's own machine)
    assert registry_digest(tag, cluster.registry)  # and pushed it
    until = int(time.time()) + 1
    for name, host in cluster.hosts.items():
        client = docker.DockerClient(base_url=host, timeout=60)
        pulled = client.images.get(tag)
        assert pulled.id == built.id, f"node {name} has another image under {tag}: rebuilt, not pulled"
        assert any(d.startswith(f"{cluster.registry}/") for d in pulled.attrs["RepoDigests"]), pulled.attrs
        started = [e for e in client.events(since=since, until=until, decode=True,
                                            filters={"type": "container", "event": "start"})]
        assert started, f"no sandbox ran on node {name}'s engine"
        assert {e["Actor"]["Attributes"]["image"] for e in started} == {tag}
        assert {e["Actor"]["Attributes"].get("trajfactory.run") for e in started} == {run_id}  # the flow's run
        assert not client.containers.list(all=True, filters={"label": "trajfactory=1"})  # each sandbox was removed


def test_cluster_section_names_what_is_wrong():
    with pytest.raises(ValueError, match="cluster address 'head' is not"):
        Recipe(repos=[{"uri": "builtin:textkit"}], cluster={"address": "head"})
    with pytest.raises(ValueError, match="registry 'http://r:5000' is not `HOST:PORT`"):
        Recipe(repos=[{"uri": "builtin:textkit"}], cluster={"registry": "http://r:5000"})
    assert Recipe(repos=[{"uri": "builtin:textkit"}], cluster={"address": "10.0.0.1:6379"}).digest() == \
        Recipe(repos=[{"uri": "builtin:textkit"}]).digest()  # where it runs does not change the data


def test_a_cluster_that_does_not_answer_is_named_at_once():
    from trajfactory.executors.base import InfrastructureError
    from trajfactory.flows.cluster import cluster_session
    from trajfactory.settings import ClusterConfig

    port = free_port()  # nothing listens there
    with pytest.raises(InfrastructureError, match=f"no Ray cluster answers at cluster.address '127.0.0.1:{port}'"):
        with cluster_session(ClusterConfig(address=f"127.0.0.1:{port}")):
            pass


def test_registry_command_starts_reuses_and_stops_the_registry(tmp_path):
    port = free_port()
    first = cli_runs.cli(tmp_path, "cluster", "registry", "--port", str(port), "--dir", str(tmp_path / "c"))
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"registry localhost:{port}" in first.stdout and registry_answers(f"localhost:{port}")
        again = cli_runs.cli(tmp_path, "cluster", "registry", "--port", str(port), "--dir", str(tmp_path / "c"))
        assert again.returncode == 0 and first.stdout == again.stdout  # the running one, reused
        status = cli_runs.cli(tmp_path, "cluster", "status", "--dir", str(tmp_path / "c"))
        assert "registry: pid" in status.stdout and "no nodes" in status.stdout
    finally:
        stopped = cli_runs.cli(tmp_path, "cluster", "registry", "--stop", "--dir", str(tmp_path / "c"))
    assert stopped.stdout.strip() == "stopped" and not registry_answers(f"localhost:{port}")


def test_node_commands_start_a_node_on_its_own_engine_and_stop_it(tmp_path):
    where, port = str(tmp_path / "c"), free_port()
    try:
        up = cli_runs.cli(tmp_path, "cluster", "start-node", "solo", "--head", "--port", str(port), "--dir", where)
        assert up.returncode == 0, up.stdout + up.stderr
        host = f"unix://{tmp_path / 'c' / 'nodes' / 'solo' / 'engine' / 'docker.sock'}"
        assert f"engine {host}" in up.stdout
        assert docker.DockerClient(base_url=host, timeout=30).info()["DockerRootDir"].startswith(where)
        status = cli_runs.cli(tmp_path, "cluster", "status", "--dir", where)
        assert "solo: head pid" in status.stdout and f"cluster 127.0.0.1:{port}" in status.stdout
        twice = cli_runs.cli(tmp_path, "cluster", "start-node", "solo", "--head", "--dir", where)
        assert twice.returncode == 1 and "node solo already runs" in twice.stderr
    finally:
        down = cli_runs.cli(tmp_path, "cluster", "stop-node", "solo", "--remove-engine", "--dir", where)
    assert down.stdout.strip() == "stopped"
    assert cli_runs.cli(tmp_path, "cluster", "status", "--dir", where).stdout.startswith("registry: not started")
    assert not (tmp_path / "c" / "nodes" / "solo" / "engine").exists()
