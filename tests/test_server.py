"""The lasting server's parts without a Prefect server: a private PostgreSQL cluster, and the errors of `deploy`
and `worker` that name the input and what would be right."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from trajfactory.server.deploy import DeployError, deploy
from trajfactory.server.postgres import DATABASE, PostgresCluster, default_data_dir


def test_private_postgres_cluster_starts_with_its_database_and_stops(tmp_path):
    cluster = PostgresCluster(default_data_dir(tmp_path / "state"))
    try:
        cluster.start()
        assert cluster.running() and cluster.url.endswith(f"@127.0.0.1:{cluster.port}/{DATABASE}")
        cluster.start()  # a running cluster is kept
        cluster.stop()
        assert not cluster.running()
        cluster.start()  # the data dir is reused, the database already there
        assert cluster.running()
    finally:
        cluster.remove()
    assert not cluster.data_dir.exists()


@pytest.mark.parametrize("kwargs, says", [
    ({}, "give exactly one schedule"),
    ({"cron": "* * * * *", "interval_s": 60}, "give exactly one schedule"),
    ({"cron": "every minute"}, "expected five fields"),
])
def test_deploy_names_a_bad_schedule(tmp_path, kwargs, says):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: x\n")
    with pytest.raises(DeployError, match=says):
        deploy("http://127.0.0.1:9/api", recipe, name="x", **kwargs)


def test_deploy_names_a_missing_recipe(tmp_path):
    with pytest.raises(DeployError, match="no such recipe file"):
        deploy("http://127.0.0.1:9/api", tmp_path / "nope.yaml", name="x", cron="* * * * *")


def test_worker_without_a_server_says_how_to_start_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(TRAJFACTORY_SERVER_DIR=str(tmp_path / "none"), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "trajfactory.cli", "worker"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=Path(tmp_path))
    assert proc.returncode == 1 and "trajfactory server start" in proc.stderr
