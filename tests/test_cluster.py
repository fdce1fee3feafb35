"""Scale-out on a real local Ray cluster: a head and a worker node in their own processes, each with its own Docker
engine (a second and third `dockerd`), sandbox images shared through a real registry (Debian's docker-registry). The
factory runs end to end through the CLI with a `cluster:` section; its sandbox work must land on both nodes' engines,
and each node must have pulled the image the machine's engine built (same image id: nothing rebuilt)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
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


@pytest.fixture(scope="module")
def factory_run(cluster, tmp_path_factory):
    """The factory run through the CLI once on the cluster (the model rollouts below reuse its tasks and images)."""
    tmp = tmp_path_factory.mktemp("factory")
    recipe = _with_cluster(cli_runs.recipe(tmp, candidates=4, concurrency=2, batch_size=2, reference_runs=1), cluster)
    since = int(time.time()) - 1
    proc = cli_runs.cli(tmp, "run", str(recipe))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return SimpleNamespace(tmp=tmp, recipe=recipe, since=since, until=int(time.time()) + 1)


def _started(host: str, since: int, until: int) -> list[dict]:
    """The containers started on a node's engine between `since` and `until` (its events)."""
    client = docker.DockerClient(base_url=host, timeout=60)
    return list(client.events(since=since, until=until, decode=True, filters={"type": "container", "event": "start"}))


def test_factory_runs_its_sandboxes_on_every_node_with_images_from_the_registry(cluster, docker_backend, factory_run):
    tmp_path = factory_run.tmp
    store = DatasetStore(tmp_path / "datasets" / "swe")
    tasks, verdicts = store.read_rows("v1", "tasks"), store.read_rows("v1", "verdicts")
    assert tasks and all(v["passed"] for v in verdicts if v["subject"] == "trajectory")
    tag = tasks[0]["image_name"]
    [run] = recorded_runs(tmp_path / "work")
    run_id = run["run_id"]
    built = docker_backend.client.images.get(tag)  # the machine's engine built it (the flow's own machine)
    assert registry_digest(tag, cluster.registry)  # and pushed it
    for name, host in cluster.hosts.items():
        client = docker.DockerClient(base_url=host, timeout=60)
        pulled = client.images.get(tag)
        assert pulled.id == built.id, f"node {name} has another image under {tag}: rebuilt, not pulled"
        assert any(d.startswith(f"{cluster.registry}/") for d in pulled.attrs["RepoDigests"]), pulled.attrs
        started = _started(host, factory_run.since, factory_run.until)
        assert started, f"no sandbox ran on node {name}'s engine"
        assert {e["Actor"]["Attributes"]["image"] for e in started} == {tag}
        assert {e["Actor"]["Attributes"].get("trajfactory.run") for e in started} == {run_id}  # the flow's run
        assert not client.containers.list(all=True, ignore_removed=True, filters={"label": "trajfactory=1"})  # each sandbox was removed


def test_model_rollouts_run_on_the_nodes_against_the_model_server(cluster, factory_run, vllm_server, tmp_path):
    """`trajfactory rollout` with the model policy sends chunks of model rollouts to the nodes at once (one per node,
    each with its share of `rollout.model.concurrency`), whose sandboxes run on the node's engine and whose agent
    talks to the real vLLM server; the trajectories come back into the flow's records, journal and verdicts
    (`trajfactory verify`, on the nodes too)."""
    from trajfactory.flows import records
    from trajfactory.pipelines import swe

    work = tmp_path / "work"
    shutil.copytree(factory_run.tmp / "work", work, symlinks=True)  # the factory run's tasks, environments, runs
    body = yaml.safe_load(factory_run.recipe.read_text())
    # two episodes in flight on two nodes: two chunks of one task each, one per node at once
    body["sandbox"]["concurrency"] = 2
    body.update(work_dir=str(work), model={"serve": None, "base_url": vllm_server.base_url, "name": "tiny"},
                rollout={"policies": ["model"], "max_steps": 2,
                         "model": {"samples": 1, "max_tasks": 2, "concurrency": 2,
                                   "agent": {"max_tokens": 24, "actions": "both", "limits": {"max_steps": 2}}}})
    recipe = tmp_path / "model.yaml"
    recipe.write_text(yaml.safe_dump(body))
    since = int(time.time()) - 1
    proc = cli_runs.cli(tmp_path, "rollout", str(recipe))
    until = int(time.time()) + 1
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ran = re.findall(r"model_rollouts ran on node (\w+) ", proc.stderr)
    assert sorted(ran) == sorted(NODES), proc.stderr[-3000:]  # spread: each node ran one chunk
    run_id = recorded_runs(work)[-1]["run_id"]
    for node in set(ran):  # the node's own engine ran the episodes' sandboxes, labelled with the flow's run
        started = _started(cluster.hosts[node], since, until)
        assert started and {e["Actor"]["Attributes"].get("trajfactory.run") for e in started} == {run_id}
    trajectories = records.load(work, swe.Rollouts).trajectories
    assert len(trajectories) == 2 and {t.policy.name for t in trajectories} == {"model"}
    assert all(t.policy.model == "tiny" and t.steps for t in trajectories)  # the model acted in each
    journal = [json.loads(line) for line in (work / "journal.jsonl").read_text().splitlines()]
    assert sum(j["stage"] == "model-rollout" for j in journal) == 2  # keyed and journaled on the flow's machine
    checked = cli_runs.cli(tmp_path, "verify", str(recipe))
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-6000:]
    verdicts = records.load(work, swe.Verification).verdicts
    assert sorted(v.trajectory_id for v in verdicts) == sorted(t.trajectory_id for t in trajectories)


def test_a_model_endpoint_a_node_cannot_reach_is_named_with_the_setting_to_fix(cluster):
    """A node that cannot connect to the model's URL fails the step at once, naming the URL and the setting."""
    from trajfactory.executors.base import InfrastructureError
    from trajfactory.flows.cluster import cluster_session, run_step
    from trajfactory.models.service import ModelEndpoint
    from trajfactory.pipelines import swe
    from trajfactory.settings import ClusterConfig, ModelConfig

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    recipe = Recipe(repos=[{"uri": "builtin:textkit"}])
    external = ModelEndpoint.at(url, "tiny")
    served = ModelEndpoint(base_url=url, settings=ModelConfig(), served=True)
    with cluster_session(ClusterConfig(address=cluster.address)):
        with pytest.raises(InfrastructureError, match=rf"cannot be reached from Ray node (head|worker) \({url}: .*"
                                                      r"set `model.base_url` to a URL the nodes reach"):
            run_step(swe.model_rollouts, (recipe, external, {}, []), {})
        with pytest.raises(InfrastructureError, match=r"set `model.host` to an address of the flow's machine"):
            run_step(swe.model_rollouts, (recipe, served, {}, []), {})


def test_a_node_without_the_model_key_variable_is_named(cluster, monkeypatch):
    """The flow's machine holds the model's key in `model.api_key_env`, a node does not: the step stops at once, naming
    the variable (never its value) and where to set it."""
    from trajfactory.executors.base import InfrastructureError
    from trajfactory.flows.cluster import cluster_session, run_step
    from trajfactory.models.service import ModelEndpoint
    from trajfactory.pipelines import swe
    from trajfactory.settings import ClusterConfig

    monkeypatch.setenv("TRAJFACTORY_TEST_NODE_KEY", "sk-only-here")  # set after the nodes started: they lack it
    recipe = Recipe(repos=[{"uri": "builtin:textkit"}])
    endpoint = ModelEndpoint.at(f"http://{cluster.registry}/v1", "tiny", api_key_env="TRAJFACTORY_TEST_NODE_KEY")
    with cluster_session(ClusterConfig(address=cluster.address)):  # the registry answers: reachable, but no key
        with pytest.raises(InfrastructureError, match=r"read from TRAJFACTORY_TEST_NODE_KEY on the flow's machine, "
                                                      r"but Ray node (head|worker) has no") as failed:
            run_step(swe.model_rollouts, (recipe, endpoint, {}, []), {})
    assert "sk-only-here" not in str(failed.value)


def test_a_ray_client_address_drives_the_cluster(tmp_path):
    """`cluster.address: ray://HOST:PORT` (Ray Client, for a flow outside the cluster's network; `ray[client]`) drives
    the cluster's nodes: work runs there, and a step's error comes back as itself."""
    from trajfactory.executors.base import InfrastructureError
    from trajfactory.flows.cluster import cluster_session, remove_on_nodes, run_step
    from trajfactory.models.service import ModelEndpoint
    from trajfactory.pipelines import swe
    from trajfactory.settings import ClusterConfig

    # a head of its own with a Ray Client server (on the machine's engine: nothing runs a sandbox here)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        head = start_node(tmp_path, "client-head", head=True, port=free_port(), client_port=free_port(),
                          own_engine=False, env=env, object_store_mb=100)
        assert head["client_address"].startswith("ray://127.0.0.1:")
        recipe = Recipe(repos=[{"uri": "builtin:textkit"}], cluster={"address": head["client_address"]})
        with cluster_session(recipe.cluster):
            assert remove_on_nodes({"no-such-run"}) == {"client-head": 0}  # a task ran on the node, via the client
            with pytest.raises(InfrastructureError, match="cannot be reached from Ray node client-head"):
                endpoint = ModelEndpoint.at(f"http://127.0.0.1:{free_port()}/v1", "tiny")
                run_step(swe.model_rollouts, (recipe, endpoint, {}, []), {})
    finally:
        stop_node(tmp_path, "client-head")
    address = f"ray://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(InfrastructureError, match=f"no Ray cluster answers at cluster.address '{address}'"):
        with cluster_session(ClusterConfig(address=address)):
            pass


def test_a_served_model_listens_where_the_cluster_nodes_reach_it(tiny_model):
    """Without a cluster a served model stays on loopback; with one, its URL names this machine's address on the route
    to the head (or `model.host`), and a non-loopback host makes vLLM listen on every interface."""
    from trajfactory.models.server import VLLMServer
    from trajfactory.models.service import address_toward, served_host
    from trajfactory.settings import ClusterConfig, ModelConfig

    assert served_host(ModelConfig()) == "127.0.0.1"
    assert served_host(ModelConfig(), ClusterConfig(address="127.0.0.1:6379")) == "127.0.0.1"  # the nodes are here
    outward = address_toward("192.0.2.200:6379")  # a head on another machine: the address this one has toward it
    assert served_host(ModelConfig(), ClusterConfig(address="192.0.2.200:6379")) == outward
    assert served_host(ModelConfig(host="10.0.0.5"), ClusterConfig(address="192.0.2.200:6379")) == "10.0.0.5"
    here, there = VLLMServer(tiny_model, port=8123), VLLMServer(tiny_model, port=8123, host="10.0.0.5")
    assert here.command()[here.command().index("--host") + 1] == "127.0.0.1"
    assert there.command()[there.command().index("--host") + 1] == "0.0.0.0"
    assert there.base_url == "http://10.0.0.5:8123/v1"
    with pytest.raises(ValueError, match=r"model.host 'http://h' is not a host name or IP address"):
        ModelConfig(host="http://h")


@pytest.mark.browser
def test_web_episodes_run_on_the_nodes_and_their_screenshots_come_back(cluster, vllm_server, tmp_path):
    """The gold replays, replay and model rollouts and the judgements of `trajfactory web` run as Ray tasks, each
    episode with the node's own Chromium and site, the model agent and judge against the real vLLM server: the flow
    logs the node of each; the screenshots taken there come back into the version, and each judge on a node read the
    final screenshot the flow's store sent along."""
    from test_web_flow import _tutorials, web_recipe

    config = web_recipe(tmp_path, {"tutorials": [str(_tutorials(tmp_path / "tutorials"))], "max_tasks_per_site": 1,
                                   "infeasible_share": 0.0, "browsers": 2, "dataset_name": "web",
                                   "policies": ["replay", "model"], "model_max_tasks": 1, "judge": True,
                                   "agent": {"max_tokens": 16, "max_observation_chars": 300, "history_turns": 2,
                                             "limits": {"max_steps": 2}},
                                   "judge_settings": {"max_tokens": 40, "max_page_chars": 200}},
                        cluster={"address": cluster.address},
                        model={"serve": None, "base_url": vllm_server.base_url, "name": "tiny"})
    (tmp_path / "web.yaml").write_text(yaml.safe_dump(config))
    proc = cli_runs.cli(tmp_path, "web", str(tmp_path / "web.yaml"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    store = DatasetStore(tmp_path / "datasets" / "web")
    assert store.verify("v1") == []
    trajectories = store.read_rows("v1", "trajectories")
    verdicts = store.read_rows("v1", "verdicts")
    assert trajectories and sum(v["passed"] for v in verdicts) >= 3  # a replay verified per site
    ran = re.findall(r"(establish|replay_rollout|model_rollout|judge) ran on node (\w+) ", proc.stderr)
    model = [tr for tr in trajectories if tr["policy"]["name"] == "model"]
    assert len(model) == 1 and sum(step == "model_rollout" for step, _ in ran) == 1
    assert sum(step == "replay_rollout" for step, _ in ran) == len(trajectories) - 1  # every episode ran on a node
    assert sum(step == "judge" for step, _ in ran) == len(trajectories)  # and every judgement
    judged = {v["trajectory_id"]: json.loads(v["evidence"]["detail"]) for v in verdicts if v["verifier"] == "judge"}
    shown = [tr["trajectory_id"] for tr in trajectories
             if any(json.loads(step["arguments"]).get("screenshot") for step in tr["steps"])]
    assert len(judged) == len(trajectories) and shown
    assert all("image_dropped" in judged[t] for t in shown)  # the node had the screenshot (the tiny model refused it)
    assert sum(step == "establish" for step, _ in ran) >= len(store.read_rows("v1", "web_tasks"))  # and the failed
    assert {node for _, node in ran} == set(NODES), ran  # spread over both
    # the screenshots were taken on the nodes and handed back: every one a step references is in the version
    referenced = {json.loads(step["arguments"]).get("screenshot") for tr in trajectories for step in tr["steps"]}
    assert referenced - {None} and referenced - {None} <= {s["sha256"] for s in store.read_rows("v1", "screenshots")}
    assert not [q for q in store.read_rows("v1", "quarantine") if q["reason"] == "screenshot_missing"]


def test_a_resumed_run_removes_what_its_killed_predecessor_left_on_a_node_engine(cluster, docker_backend, tmp_path):
    """Sandboxes a killed run left running on a node's engine go when a run of its work dir next joins the cluster,
    or by `trajfactory sandbox cleanup --run ID --cluster ADDRESS`; other runs' stay."""
    from trajfactory.executors.images import BASE_IMAGE
    from trajfactory.executors.registry import pull, push
    from trajfactory.executors.runs import hold_work_dir
    from trajfactory.flows.cluster import cluster_session
    from trajfactory.settings import ClusterConfig

    node = docker.DockerClient(base_url=cluster.hosts["worker"], timeout=60)
    image = next((t for i in node.images.list() for t in i.tags), None)  # an image the first test pulled
    if image is None:
        push(docker_backend.client, BASE_IMAGE, cluster.registry)
        assert pull(node, BASE_IMAGE, cluster.registry)
        image = BASE_IMAGE
    work = tmp_path / "work"
    with hold_work_dir(work) as killed:  # a run of the work dir; what it left on the node, started by hand:
        pass

    def left(run_id: str):
        return node.containers.run(image, ["sleep", "infinity"], detach=True, network_mode="none",
                                   labels={"trajfactory": "1", "trajfactory.run": run_id})

    ours, other, third = left(killed.run_id), left("another-run"), left("a-third-run")
    try:
        def running() -> set[str]:
            return {c.id for c in node.containers.list(all=True, ignore_removed=True, filters={"label": "trajfactory=1"})}

        with hold_work_dir(work), cluster_session(ClusterConfig(address=cluster.address), work):
            assert ours.id not in running() and {other.id, third.id} <= running()
        proc = cli_runs.cli(tmp_path, "sandbox", "cleanup", "--run", "another-run", "--cluster", cluster.address)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "node worker: removed 1 containers of run another-run" in proc.stdout
        assert "node head: removed 0 containers of run another-run" in proc.stdout
        assert other.id not in running() and third.id in running()
    finally:
        for c in (ours, other, third):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)


def test_cluster_section_names_what_is_wrong():
    with pytest.raises(ValueError, match="cluster address 'head' is not"):
        Recipe(repos=[{"uri": "builtin:textkit"}], cluster={"address": "head"})
    with pytest.raises(ValueError, match=r"or its Ray Client `ray://HOST:PORT`"):
        Recipe(repos=[{"uri": "builtin:textkit"}], cluster={"address": "http://h:10001"})
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
