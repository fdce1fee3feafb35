"""The Docker sandbox's escape battery on real third-party material: the cases of `test_sandbox_docker.py` run again
in the environment of a real PyPI package (inflection 0.5.1, with its own test suite) instead of the tiny generated
package; and that real suite, patched to misbehave (its conftest forking daemons, growing the harness's result file,
filling the disk), is contained and quarantined with the true reason. A suite that fork-bombs or hangs is
`suite_timeout` whatever the package (`test_quarantine.py`); the battery's fork bomb runs here in the real image."""

from __future__ import annotations

import shutil
import uuid

import docker
import pytest

from test_sandbox_docker import (
    test_disk_is_capped_and_nothing_else_is_writable,
    test_escape_battery_memory_secrets_and_daemons,
    test_file_api_matches_shell,
    test_fork_bomb_is_contained,
    test_host_is_not_writable,
    test_leftover_cleanup_and_vanished_container,
    test_no_network,
    test_output_is_truncated,
    test_reads_out_of_the_sandbox_are_capped,
    test_reset_replaces_a_sandbox_whose_git_settings_were_changed,
    test_reset_restores_checkout_in_same_container,
    test_reset_restores_the_whole_sandbox_not_only_the_checkout,
    test_timeout_kills_and_reset_recovers,
)
from trajfactory.executors.base import EnvironmentHandle
from trajfactory.executors.docker import DockerBackend, engine_available
from trajfactory.executors.images import ensure_base_image
from trajfactory.schema import Quarantine, Source
from trajfactory.settings import SandboxConfig, ValidationConfig
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.stage import build_environment

pytestmark = pytest.mark.docker

PACKAGE = "pypi:inflection==0.5.1"
BATTERY = (test_no_network, test_timeout_kills_and_reset_recovers, test_fork_bomb_is_contained,
           test_host_is_not_writable, test_reset_restores_checkout_in_same_container, test_file_api_matches_shell,
           test_output_is_truncated, test_leftover_cleanup_and_vanished_container,
           test_reads_out_of_the_sandbox_are_capped, test_disk_is_capped_and_nothing_else_is_writable,
           test_reset_restores_the_whole_sandbox_not_only_the_checkout,
           test_reset_replaces_a_sandbox_whose_git_settings_were_changed,
           test_escape_battery_memory_secrets_and_daemons)
"""The escape cases imported above: pytest collects them here too, where they get this module's fixtures."""


@pytest.fixture(scope="module")
def backend():
    if not engine_available():
        pytest.fail("no Docker engine answers; scripts/setup.sh starts dockerd")
    ensure_base_image()
    # the default image cache (a second run reuses the package's image); a label of this module's own, so the
    # leftover cleanup never touches other runs' sandboxes
    return DockerBackend(labels={"trajfactory.test": uuid.uuid4().hex})


@pytest.fixture(scope="module")
def source(mirrors) -> Source:
    harvested = harvest_repo(PACKAGE, mirrors)
    assert isinstance(harvested, Source), harvested
    return harvested


@pytest.fixture(scope="module")
def env(backend, source) -> EnvironmentHandle:
    built = build_environment(backend, source)
    assert isinstance(built, EnvironmentHandle), built
    return built


@pytest.fixture
def sandbox(backend, env):
    with backend.start(env, SandboxConfig(pids=128, memory="512m", command_timeout_s=60)) as sandbox:
        yield sandbox


def test_the_real_suite_passes_inside(sandbox, env):
    result = sandbox.execute("python -m pytest -q")
    assert result.exit_code == 0 and " passed" in result.output, result.output
    assert int(result.output.rsplit(" passed", 1)[0].split()[-1]) > 100  # inflection's own suite, not a stand-in
    assert sandbox.execute("git rev-parse HEAD").output.strip() == env.commit


# What inflection's test suite is patched with: a conftest.py that misbehaves in each of these ways.
DAEMONS = '''
import os


def _survivors():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open("/proc/%s/cmdline" % pid, "rb").read() == b"sleep\\x0086399\\x00":
                found.append(pid)
        except OSError:
            pass
    return found


if _survivors():
    raise RuntimeError("a daemon of an earlier session survived")
if os.fork() == 0:  # a double-forked, session-leading daemon holding pytest's output open, outliving the session
    os.setsid()
    if os.fork():
        os._exit(0)
    os.execvp("sleep", ["sleep", "86399"])
'''
RESULT_BOMB = '''
import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _grow_the_harness_record():
    # 80 MiB into the file the harness records outcomes in (its path is in the environment)
    with open(os.environ["TRAJFACTORY_RESULTS"], "a") as fh:
        for _ in range(80):
            fh.write("x" * 2**20)
'''
DISK_BOMB = '''
import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _fill_the_disk():
    for where in ("/tmp", os.getcwd(), os.path.expanduser("~")):
        with open(os.path.join(where, "filler.bin"), "wb") as fh:
            while True:
                fh.write(b"\\0" * 2**20)
'''
LIMITS = SandboxConfig(memory="512m", cpus=1, pids=64, command_timeout_s=60)


def _patched(backend, source: Source, tmp_path, conftest: str) -> tuple[Source, EnvironmentHandle]:
    """inflection's own checkout with `conftest` added: a source (harvested from the tree) and an image of its own."""
    repo = shutil.copytree(stage.checkout(source, tmp_path / "co"), tmp_path / "inflection")
    (repo / "conftest.py").write_text(conftest)
    patched = harvest_repo(str(repo), tmp_path / "mirrors")
    assert isinstance(patched, Source), patched
    built = build_environment(backend, patched)
    assert isinstance(built, EnvironmentHandle), built
    return patched, built


def _containers(backend) -> list[str]:
    wanted = [f"{k}={v}" for k, v in backend.labels.items()]
    return [c.name for c in docker.from_env().containers.list(all=True, ignore_removed=True, filters={"label": wanted})]


def test_a_real_suite_forking_daemons_is_contained(backend, source, tmp_path):
    """The daemons its conftest leaves behind do not reach the next run in the sandbox: both reference runs pass."""
    patched, built = _patched(backend, source, tmp_path, DAEMONS)
    with backend.start(built, LIMITS) as sandbox:  # the daemon is real: a second session without a reset sees it
        assert sandbox.execute("python -m pytest -q").exit_code == 0
        again = sandbox.execute("python -m pytest -q")
        assert again.exit_code != 0 and "a daemon of an earlier session survived" in again.output, again.output
        sandbox.reset()
        assert sandbox.execute("python -m pytest -q").exit_code == 0
    ref = stage.reference(backend, built, patched, ValidationConfig(reference_runs=2, suite_timeout_s=60), LIMITS)
    assert not isinstance(ref, Quarantine), ref.detail
    assert len(ref.passing) > 100 and not ref.excluded, ref.excluded
    assert _containers(backend) == []


@pytest.mark.parametrize("conftest, reason, says", [
    (RESULT_BOMB, "results_unreadable", "over the read limit"),
    (DISK_BOMB, "disk_full", "MiB into the sandbox's writable directories"),
], ids=["result_bomb", "disk_bomb"])
def test_a_real_suite_patched_to_misbehave_is_quarantined_with_its_reason(backend, source, tmp_path, conftest,
                                                                          reason, says):
    patched, built = _patched(backend, source, tmp_path, conftest)
    result = stage.reference(backend, built, patched, ValidationConfig(reference_runs=1, suite_timeout_s=20), LIMITS)
    assert isinstance(result, Quarantine), result
    assert result.reason == reason and says in result.detail, result.detail
    assert result.uri == patched.uri
    assert _containers(backend) == []  # the runaway's sandbox is removed
