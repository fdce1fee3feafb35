"""Docker sandboxes against the real engine: image cache, isolation, limits, reset, cleanup."""

from __future__ import annotations

import contextlib
import io
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path

import docker
import pytest

from trajfactory.executors.base import EnvironmentBuildError, InfrastructureError
from sandbox_contract import pytest_deprecations_stay_warnings, reads_are_capped

from trajfactory.settings import SandboxConfig
from trajfactory.executors.docker import DockerBackend, cleanup_leftover_containers, engine_available
from sandbox_helpers import FORK_BOMB, NET_PROBE, make_repo

pytestmark = pytest.mark.docker

@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    if not engine_available():
        pytest.fail("no Docker engine answers; scripts/setup.sh starts dockerd")
    # a label of this module's own, so leftover cleanup never touches other runs' sandboxes
    return DockerBackend(cache_root=tmp_path_factory.mktemp("cache"), labels={"trajfactory.test": uuid.uuid4().hex})


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def env(backend, repo):
    return backend.build(str(repo), "tests/tinypkg", "main")


@pytest.fixture
def sandbox(backend, env):
    with backend.start(env, SandboxConfig(pids=128, memory="512m", command_timeout_s=60)) as sandbox:
        yield sandbox


def test_build_reuses_image(backend, env, repo):
    client = docker.from_env()
    client.images.remove(env.name, force=True)  # force one real build in every run
    t0 = time.monotonic()
    rebuilt = backend.build(str(repo), "tests/tinypkg", "main")
    built_s = time.monotonic() - t0
    image_id = client.images.get(rebuilt.name).id
    t0 = time.monotonic()
    again = backend.build(str(repo), "tests/tinypkg", "main")
    reuse_s = time.monotonic() - t0
    assert again == rebuilt == env
    assert client.images.get(again.name).id == image_id
    assert reuse_s < 3 and reuse_s < built_s, (built_s, reuse_s)
    assert env.name.startswith("trajfactory/repo-tests-tinypkg:") and len(env.commit) == 40


def test_repo_tests_pass_inside(sandbox, env):
    result = sandbox.execute("python -m pytest -q")
    assert result.exit_code == 0 and "1 passed" in result.output, result.output
    assert sandbox.execute("git rev-parse HEAD").output.strip() == env.commit
    assert sandbox.execute("git log --oneline | wc -l").output.strip() == "1"


def test_no_network(sandbox):
    result = sandbox.execute(NET_PROBE)
    assert result.exit_code != 0 and "OSError" in result.output, result.output


def test_timeout_kills_and_reset_recovers(sandbox):
    container = sandbox.container_id
    result = sandbox.execute("sleep 1000", timeout=2)
    assert result.timed_out and result.exit_code in (124, 137)
    assert result.duration_s < 10
    assert sandbox.dirty
    sandbox.reset()
    assert sandbox.container_id != container  # a runaway command gets a fresh container
    assert sandbox.execute("echo ok").output == "ok\n"


def test_fork_bomb_is_contained(sandbox):
    t0 = time.monotonic()
    result = sandbox.execute(FORK_BOMB, timeout=5)
    assert result.timed_out or result.exit_code != 0
    assert time.monotonic() - t0 < 30
    sandbox.reset()
    result = sandbox.execute("cat /sys/fs/cgroup/pids/pids.max; python -m pytest -q")
    assert result.exit_code == 0 and result.output.startswith("128\n"), result.output


def test_host_is_not_writable(sandbox, tmp_path):
    target = tmp_path / "pwned"
    result = sandbox.execute(f"touch {target}; mkdir -p {tmp_path} && touch {target}; ls -d {tmp_path}")
    assert result.exit_code == 0  # the path exists only in the container's own filesystem
    assert not target.exists()
    assert sandbox.execute("test -e /var/run/docker.sock").exit_code != 0


def test_reset_restores_checkout_in_same_container(sandbox, env):
    module, test = sandbox.execute("git ls-files '*.py' | grep -v test | head -1; git ls-files '*test*.py' | head -1"
                                   ).output.split()
    original = sandbox.read_file(module)
    container = sandbox.container_id
    sandbox.write_file(module, "broken = True\n")
    sandbox.write_file("new/dir/notes.txt", "x")
    sandbox.execute(f"echo more >> {test}; git add -A; git commit -qm change; sleep 500 >/dev/null 2>&1 &")
    assert sandbox.read_file("new/dir/notes.txt") == b"x"
    t0 = time.monotonic()
    sandbox.reset()
    assert time.monotonic() - t0 < 2
    assert sandbox.container_id == container
    assert sandbox.read_file(module) == original
    assert sandbox.execute("git status --porcelain --ignored").output == ""
    assert sandbox.execute("git rev-parse HEAD").output.strip() == env.commit
    assert "sleep 500" not in sandbox.execute("cat /proc/[0-9]*/cmdline | tr '\\0' ' '").output
    with pytest.raises(FileNotFoundError):
        sandbox.read_file("new/dir/notes.txt")


def test_file_api_matches_shell(sandbox):
    sandbox.execute("mkdir -p /tmp/scratch && echo from-shell > /tmp/scratch/a.txt")
    assert sandbox.read_file("/tmp/scratch/a.txt") == b"from-shell\n"
    sandbox.write_file("/tmp/scratch/deep/b.txt", "from-api")
    assert sandbox.execute("cat /tmp/scratch/deep/b.txt").output == "from-api"
    with pytest.raises(FileNotFoundError):
        sandbox.read_file("/tmp/scratch/missing")


def test_output_is_truncated(backend, env):
    with backend.start(env, SandboxConfig(output_limit=1000)) as sandbox:
        result = sandbox.execute("echo START; head -c 3000000 /dev/zero | tr '\\0' x; echo; echo END")
    assert result.exit_code == 0 and len(result.output) < 1200
    assert result.output.startswith("START") and result.output.rstrip().endswith("END") and "truncated" in result.output


def test_output_a_late_reader_finds_is_kept(sandbox):
    """The engine sends an exec's headers, then its output. A caller late to read the headers (another thread holding
    the GIL, a loaded host) reads both at once, and docker-py's raw socket lost what came with the headers
    (docker/docker-py#3332): in CI a tampering scan's verdict came back as empty output. Here a thread holds the GIL
    a tenth of a second at a time while short commands run."""
    stop = threading.Event()

    def hold():
        while not stop.is_set():
            sum(range(1000))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.1)
    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        outputs = [sandbox.execute(f"echo out-{i}", timeout=30).output.strip() for i in range(6)]
    finally:
        stop.set()
        holder.join()
        sys.setswitchinterval(interval)
    assert outputs == [f"out-{i}" for i in range(6)]


def test_unknown_requirement_is_install_failed(backend, tmp_path):
    repo = make_repo(tmp_path / "bad", '["trajfactory-no-such-requirement-zz"]')
    with pytest.raises(EnvironmentBuildError) as err:
        backend.build(str(repo), "tests/bad", "main")
    assert err.value.reason == "install_failed"
    assert "trajfactory-no-such-requirement-zz" in err.value.detail


def _context(dockerfile: str):
    context = tempfile.TemporaryFile()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile.encode())
        tar.addfile(info, io.BytesIO(dockerfile.encode()))
    return context


def test_an_engine_failure_is_built_again_and_a_failing_step_is_not(backend, env, monkeypatch):
    """The engine's own failure (here: the base is missing on the first try, as when a concurrent build loses a
    layer) is tried again from the same context; a Dockerfile step that exits non-zero is the repository's failure
    at once."""
    client, late = backend.client, f"trajfactory/test-late-base:{uuid.uuid4().hex[:8]}"
    tag = f"trajfactory/test-retry:{uuid.uuid4().hex[:8]}"
    attempts, stream = [], backend._build_stream

    def recorded(context, tag):
        lines, error = stream(context, tag)
        attempts.append(error)
        if len(attempts) == 1:  # the base the first attempt lacked exists for the next one
            client.images.get(env.name).tag(late)
        return lines, error

    monkeypatch.setattr(backend, "_build_stream", recorded)
    try:
        backend._build_image(_context(f"FROM {late}\nRUN echo built > /built\n"), tag, "tests/retry")
        assert len(attempts) == 2 and attempts[0] and attempts[1] is None
        assert client.images.get(tag)
        attempts.clear()
        with pytest.raises(EnvironmentBuildError) as err:
            backend._build_image(_context(f"FROM {late}\nRUN echo broken; exit 3\n"), tag + "x", "tests/retry")
        assert len(attempts) == 1 and err.value.reason == "build_failed"
        assert "returned a non-zero code: 3" in err.value.detail and "RUN echo broken" in err.value.detail
    finally:
        for name in (tag, late):
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(name, force=True)


def test_unknown_commit_is_checkout_failed(backend, repo):
    with pytest.raises(EnvironmentBuildError) as err:
        backend.build(str(repo), "tests/tinypkg", "0" * 40)
    assert err.value.reason == "checkout_failed"


def test_leftover_cleanup_and_vanished_container(backend, env):
    client = docker.from_env()
    sandbox = backend.start(env)
    container = sandbox.container_id
    assert cleanup_leftover_containers(labels=backend.labels) >= 1
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(container)
    with pytest.raises(InfrastructureError):
        sandbox.execute("true")
    sandbox.close()  # closing a vanished sandbox is fine
    assert not client.containers.list(all=True, ignore_removed=True, filters={"label": [f"{k}={v}" for k, v in backend.labels.items()]})


def test_get_backend_prefers_docker():
    from trajfactory.executors import get_backend

    assert get_backend("auto").name == "docker"
    assert get_backend("docker") is get_backend("docker")


def test_reads_out_of_the_sandbox_are_capped(sandbox):
    reads_are_capped(sandbox)


def test_a_newer_pytests_deprecations_never_fail_a_suite_that_errors_on_warnings(sandbox):
    pytest_deprecations_stay_warnings(sandbox)


def test_disk_is_capped_and_nothing_else_is_writable(backend, env):
    with backend.start(env, SandboxConfig(disk="64m", memory="512m", command_timeout_s=60)) as sandbox:
        for path in ("/repo/big", "/tmp/big", "/root/big", "/var/tmp/big"):
            result = sandbox.execute(f"dd if=/dev/zero of={path} bs=1M count=200 2>&1; rm -f {path}")
            assert "No space left on device" in result.output, (path, result.output)
        for path in ("/big", "/usr/local/big", "/etc/big", "/var/big", "/home/big"):
            result = sandbox.execute(f"echo x > {path}")
            assert result.exit_code != 0 and "Read-only file system" in result.output, (path, result.output)
        # nothing reached the container's layer on the host's disk
        [listed] = docker.from_env().api.containers(filters={"id": sandbox.container_id}, size=True)
        size = listed.get("SizeRw", 0)
        assert size < 2**20, size
        assert sandbox.execute("python -m pytest -q").exit_code == 0  # the project still works inside


def test_reset_restores_the_whole_sandbox_not_only_the_checkout(sandbox):
    container = sandbox.container_id
    sandbox.execute("mkdir -p /tmp/a /root/.cache /var/tmp/b /run/c && echo x > /tmp/a/f && echo y > /root/.cache/g "
                    "&& echo z > /dev/shm/h && mkdir /tmp/locked && touch /tmp/locked/f && chmod 000 /tmp/locked "
                    "&& chmod 777 /root && touch /run/c/pid")
    sandbox.write_file("/var/tmp/b/api.txt", "from the file API")
    sandbox.reset()
    assert sandbox.container_id == container  # restored in place
    listing = sandbox.execute("ls -A /tmp /var/tmp /root /run /dev/shm | grep -v ':$' | grep -v '^$'")
    assert listing.output.strip() == ""
    assert sandbox.execute("stat -c %a /root /tmp").output.split() == ["700", "1777"]


def test_reset_replaces_a_sandbox_whose_git_settings_were_changed(sandbox, env):
    container = sandbox.container_id
    # a smudge filter would run the sandbox's own program during the reset's checkout
    sandbox.execute("git config filter.x.smudge 'touch /tmp/pwned; cat' && echo '* filter=x' > .git/info/attributes")
    sandbox.reset()
    assert sandbox.container_id != container
    assert "filter" not in sandbox.execute("cat .git/config").output
    assert sandbox.execute("test -e /tmp/pwned").exit_code != 0
    assert sandbox.execute("git rev-parse HEAD").output.strip() == env.commit


def test_escape_battery_memory_secrets_and_daemons(backend, env, tmp_path, monkeypatch):
    """What the disk, network, fork-bomb, host-write and output-flood tests above do not cover."""
    monkeypatch.setenv("TRAJFACTORY_API_KEY", "sk-host-secret-do-not-leak")
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host secret")
    with backend.start(env, SandboxConfig(memory="256m", pids=128, command_timeout_s=60)) as sandbox:
        # memory: the bomb is killed by the container's own limit, the sandbox lives on
        bomb = sandbox.execute("python -c \"x = []\nwhile True: x.append(bytearray(2**24))\"")
        assert bomb.exit_code == 137, bomb
        assert sandbox.execute("echo alive").output.strip() == "alive"
        # secrets: neither the host's environment nor its files are there
        assert "sk-host-secret" not in sandbox.execute("env; cat /proc/1/environ").output
        assert sandbox.execute(f"cat {secret}").exit_code != 0
        assert sandbox.execute("ls /root/.ssh /root/.cache/huggingface 2>&1").exit_code != 0
        # daemons: a double-forked, session-leading process does not outlive the reset
        sandbox.execute("setsid sh -c 'nohup sleep 900 >/dev/null 2>&1 &' ; (sleep 901 &) ; true")
        processes = "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"
        assert "sleep 900" in sandbox.execute(processes).output and "sleep 901" in sandbox.execute(processes).output
        sandbox.reset()
        assert "sleep 90" not in sandbox.execute(processes).output


def test_an_engine_that_does_not_answer_is_named_and_no_base_image_is_built(tmp_path, monkeypatch):
    from trajfactory.executors import images

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    before = set(Path("/var/tmp").glob("trajfactory-rootfs-*"))
    with pytest.raises(InfrastructureError, match="Docker engine must be running"):
        images.ensure_base_image(progress=lambda line: pytest.fail(f"a build started: {line}"))
    assert set(Path("/var/tmp").glob("trajfactory-rootfs-*")) == before
