"""The local namespace sandbox (no Docker engine): environment cache, isolation, limits, reset."""

from __future__ import annotations

import os
import logging
import time
import uuid
from pathlib import Path

import pytest

from trajfactory.executors.base import EnvironmentBuildError, SandboxError
from sandbox_contract import pytest_deprecations_stay_warnings, reads_are_capped

from trajfactory.settings import SandboxConfig
from trajfactory.executors.requirements import find_requirements
from trajfactory.executors.local import LocalBackend
from sandbox_helpers import FORK_BOMB, NET_PROBE, make_repo

@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return LocalBackend(cache_root=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def env(backend, repo):
    return backend.build(str(repo), "tests/tinypkg", "main")


@pytest.fixture
def sandbox(backend, env):
    with backend.start(env, SandboxConfig(pids=128, memory="1g", command_timeout_s=60)) as sandbox:
        yield sandbox


def test_isolation_is_reported(backend):
    assert backend.isolation == "bwrap"  # bubblewrap is installed on this project's machines


def test_a_sandbox_bubblewrap_could_not_set_up_is_tried_again_and_a_command_runs_once(sandbox, caplog):
    """A mount the host removes while bubblewrap builds the sandbox's mounts (a container's overlay on a busy engine)
    failed a command before it started, now and then. bubblewrap reports the exit code of a command it ran on its
    status pipe: a command without one is started again; one that ran is never run twice, whatever it prints or returns. Here the
    setup fails every time: the environment's folder, which every command binds, is moved away for a moment."""
    said = "bwrap: Can't bind mount /oldroot/ on /newroot/: Unable to apply mount flags"
    ran = sandbox.execute(f"echo x >> /tmp/count; echo \"{said}\"; exit 1")
    assert ran.exit_code == 1 and sandbox.execute("wc -l < /tmp/count").output.strip() == "1", ran.output
    away = sandbox.env_dir.with_name(sandbox.env_dir.name + ".away")
    sandbox.env_dir.rename(away)
    try:
        with caplog.at_level(logging.WARNING, logger="trajfactory.executors.local_sandbox"):
            failed = sandbox.execute("true")
    finally:
        away.rename(sandbox.env_dir)
    tries = [r for r in caplog.records if "bubblewrap could not set up the sandbox" in r.getMessage()]
    assert failed.exit_code == 1 and failed.output.startswith("bwrap: ") and len(tries) == 3, (failed, tries)
    assert sandbox.execute("wc -l < /tmp/count").output.strip() == "1"


def test_build_reuses_environment(backend, env, repo):
    t0 = time.monotonic()
    again = backend.build(str(repo), "tests/tinypkg", "main")
    assert again == env and time.monotonic() - t0 < 3
    assert (Path(env.name) / ".complete").exists() and (Path(env.name) / "venv/bin/python").exists()


def test_repo_tests_pass_inside(sandbox, env):
    result = sandbox.execute("python -m pytest -q")
    assert result.exit_code == 0 and "1 passed" in result.output, result.output
    assert sandbox.execute("pwd").output.strip() == sandbox.workdir
    assert sandbox.execute("git rev-parse HEAD").output.strip() == env.commit


def test_no_network(sandbox):
    result = sandbox.execute(NET_PROBE)
    assert result.exit_code != 0 and "OSError" in result.output, result.output


def test_timeout_kills_and_reset_recovers(sandbox):
    t0 = time.monotonic()
    result = sandbox.execute("sleep 1000", timeout=2)
    assert result.timed_out and result.exit_code in (124, 137)
    assert time.monotonic() - t0 < 10 and sandbox.dirty
    sandbox.reset()
    assert not sandbox.dirty and sandbox.execute("echo ok").output == "ok\n"


def test_fork_bomb_is_contained(sandbox):
    t0 = time.monotonic()
    result = sandbox.execute(FORK_BOMB, timeout=5)
    assert result.timed_out or result.exit_code != 0
    assert time.monotonic() - t0 < 30
    sandbox.reset()
    assert sandbox.execute("python -m pytest -q").exit_code == 0


def test_host_is_not_writable(sandbox, env, repo, tmp_path):
    outside = Path("/root") / f".trajfactory-pwned-{uuid.uuid4().hex}"
    targets = [tmp_path / "pwned", outside, repo / "pwned", Path(env.name) / "repo/pwned"]
    try:
        for target in targets:
            sandbox.execute(f"mkdir -p {target.parent}; touch {target}")
            assert not target.exists(), target
    finally:
        outside.unlink(missing_ok=True)
    with pytest.raises(SandboxError):
        sandbox.write_file(str(outside), "x")
    # a read-only mount does not stop connect() on a socket: daemon sockets must not be there at all
    assert sandbox.execute("test -e /var/run/docker.sock || test -e /run/docker.sock").exit_code != 0


def test_reset_restores_checkout(sandbox, env):
    original = sandbox.read_file("src/tinypkg/__init__.py")
    sandbox.write_file("src/tinypkg/__init__.py", "broken = True\n")
    sandbox.write_file("new/dir/notes.txt", "x")
    sandbox.execute("echo more >> tests/test_add.py; git add -A; git commit -qm change")
    assert sandbox.read_file("new/dir/notes.txt") == b"x"
    t0 = time.monotonic()
    sandbox.reset()
    assert time.monotonic() - t0 < 2
    assert sandbox.read_file("src/tinypkg/__init__.py") == original
    assert sandbox.execute("git status --porcelain --ignored").output == ""
    assert sandbox.execute("git rev-parse HEAD").output.strip() == env.commit
    with pytest.raises(FileNotFoundError):
        sandbox.read_file("new/dir/notes.txt")


def test_reset_restores_the_whole_sandbox(sandbox, env):
    sandbox.execute("mkdir -p /tmp/a $HOME/.cache && echo x > /tmp/a/f && echo y > $HOME/.cache/g "
                    "&& mkdir /tmp/locked && touch /tmp/locked/f && chmod 000 /tmp/locked "
                    "&& ln -s /usr /tmp/out && ln -s $HOME/.cache /tmp/in")  # links to dirs, as pytest's basetemp has
    sandbox.reset()
    assert oct(Path("/usr").stat().st_mode & 0o777) == "0o755"  # a link is removed, never its target chmod-ed
    # (bubblewrap makes the mount points of the scratch and environment dirs in /tmp when pytest keeps them there)
    assert not {"a", "locked", "out", "in"} & set(sandbox.execute("ls -A /tmp").output.split())
    assert sandbox.execute("ls -A $HOME").output.split() == [".gitconfig"]
    # git's own settings changed: the checkout is copied afresh rather than trusted to git
    sandbox.execute("git config filter.x.smudge 'touch /tmp/pwned; cat' && echo '* filter=x' > .git/info/attributes")
    sandbox.reset()
    assert "filter" not in sandbox.execute("cat .git/config").output
    assert sandbox.execute("test -e /tmp/pwned").exit_code != 0
    assert sandbox.execute("git rev-parse HEAD").output.strip() == env.commit


def test_tmp_persists_between_commands_and_matches_file_api(sandbox):
    sandbox.execute("mkdir -p /tmp/scratch && echo from-shell > /tmp/scratch/a.txt")
    assert sandbox.read_file("/tmp/scratch/a.txt") == b"from-shell\n"
    sandbox.write_file("/tmp/scratch/b.txt", "from-api")
    assert sandbox.execute("cat /tmp/scratch/b.txt").output == "from-api"
    assert not Path("/tmp/scratch/b.txt").exists()  # the host's /tmp is untouched


def test_unknown_requirement_is_install_failed(backend, tmp_path):
    repo = make_repo(tmp_path / "bad", '["trajfactory-no-such-requirement-zz"]')
    with pytest.raises(EnvironmentBuildError) as err:
        backend.build(str(repo), "tests/bad", "main")
    assert err.value.reason == "install_failed" and "trajfactory-no-such-requirement-zz" in err.value.detail


def test_find_requirements_reads_common_layouts(tmp_path):
    (tmp_path / "setup.cfg").write_text(
        "[metadata]\nname = pkg\n[options]\ninstall_requires =\n    attrs>=20\n    # comment\n"
        "[options.extras_require]\ntest =\n    hypothesis\ndocs =\n    sphinx\n")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "pkg"\ndependencies = ["click"]\n[project.optional-dependencies]\n'
        'dev = ["pkg[testing]"]\ntesting = ["mock"]\n'
        '[tool.poetry.dependencies]\npython = "^3.8"\nrequests = "^2.0"\nlocal = {path = "../x"}\n')
    (tmp_path / "requirements-test.txt").write_text("-e .\n--index-url http://x\ntoml ; python_version<'4'\n")
    (tmp_path / "setup.py").write_text("this is not python (")
    # ecdsa 0.19.2: a file per Python, the 2.6 one pinning a cffi no Python 3 builds
    (tmp_path / "build-requirements.txt").write_text("tox\nhypothesis\n")
    (tmp_path / "build-requirements-2.6.txt").write_text("cffi<1.14\nhypothesis<3\n")
    (tmp_path / "requirements-py27.txt").write_text("mock==2.0.0\n")
    reqs = find_requirements(tmp_path)
    for name in ("attrs>=20", "hypothesis", "click", "mock", "requests<3.0,>=2.0", "pytest", "pytest-cov", "coverage"):
        assert name in reqs, reqs
    assert not any(r.startswith(("cffi", "hypothesis<", "mock=")) for r in reqs), reqs
    assert not any(r.startswith(("sphinx", "pkg", "local", "python")) for r in reqs)
    assert any(r.startswith("toml") for r in reqs)


def test_find_requirements_reads_what_tox_installs_for_the_pytest_command(tmp_path):
    """pyparsing 3.3.3's tox.ini: `commands = unit: pytest tests ...` and `doctest: sphinx-build ...`; the `unit`
    environment takes the `diagrams` extra (`railroad`, which its tests import) and its factor-conditional deps."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "pyparsing"\ndependencies = []\n[project.optional-dependencies]\n'
        'diagrams = ["railroad-diagrams", "jinja2"]\nextra = ["never-installed"]\n')
    (tmp_path / "requirements-unit.txt").write_text("")
    # wcwidth 0.9.4: pins of a code generator's and a wheel builder's tools beside the suite's own file
    (tmp_path / "requirements-update.txt").write_text("certifi==2026.10.23\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "deps.txt").write_text("hypothesis\n")
    (tmp_path / "tox.ini").write_text(
        "[tox]\nenvlist = py39-unit,py{310,311}-{unit,doctest}\n\n[testenv]\ndeps =\n    unit: pytest\n"
        "    unit-!py315t: matplotlib; implementation_name != 'pypy'\n    py315t: free-threaded-only\n"
        "    doctest: sphinx-only-for-docs\n    -r{toxinidir}/tests/deps.txt\n    {[base]deps}\n"
        "    lint: pytest-ruff\n    pytest-mypy\n"
        "extras = unit: diagrams\ncommands =\n    unit: pytest tests examples/tiny/tests {posargs}\n"
        "    doctest: sphinx-build -b doctest docs docs/_build/doctest\n")
    reqs = find_requirements(tmp_path)
    for name in ("railroad-diagrams", "jinja2", "hypothesis", "pytest"):
        assert name in reqs, reqs
    assert any(r.startswith("matplotlib;") for r in reqs), reqs
    # another factor's deps, an extra tox does not name, and pytest plugins that make lint results into tests: not
    assert not any(r.startswith(("free-threaded", "sphinx", "never", "pytest-ruff", "pytest-mypy")) for r in reqs)
    # tox's pytest command names its requirements file: the other requirements files are not the suite's
    assert not any(r.startswith("certifi") for r in reqs), reqs
    # no pytest command in [testenv] (a lint-only tox.ini): nothing of it is taken
    (tmp_path / "tox.ini").write_text("[testenv]\ndeps = flake8-only\ncommands = flake8 src\n")
    assert not any(r.startswith("lintdep") for r in find_requirements(tmp_path))
    assert "railroad-diagrams" not in find_requirements(tmp_path)
    assert "certifi==2026.10.23" in find_requirements(tmp_path)  # no file named by tox: every requirements file


def test_a_requirements_file_whose_pins_the_project_excludes_is_left_out(tmp_path):
    """parsy 2.2: `tests/requirements-tests.txt` pins `pytest==7.1.1`, `pytest-cov==4.0.0` and `coverage==6.3.2`,
    which its `[dependency-groups]` (`pytest>=8.3.4`, `pytest-cov>=6.0.0`) have left behind; pip could install no
    set that held both (`install_failed`). The stale file is left out whole; one that agrees is kept."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "parsy"\ndependencies = []\n[dependency-groups]\n'
        'dev = ["pytest>=8.3.4", "pytest-cov>=6.0.0", "pre-commit-uv>=4.1.4", "tox-uv>=1.20.1"]\n')
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "requirements-tests.txt").write_text("pytest==7.1.1\npytest-cov==4.0.0\ncoverage==6.3.2\n")
    (tmp_path / "requirements-dev.txt").write_text("hypothesis==6.100.0\npytest-cov==6.1.0\n")
    reqs = find_requirements(tmp_path)
    assert "pytest>=8.3.4" in reqs and "pytest-cov>=6.0.0" in reqs, reqs
    assert "hypothesis==6.100.0" in reqs and "pytest-cov==6.1.0" in reqs, reqs  # agrees with the project: kept
    assert not any(r.startswith(("pytest==", "pytest-cov==4", "coverage==", "pre-commit", "tox")) for r in reqs), reqs
    # without the project's own pins the file is all there is: kept
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "parsy"\ndependencies = []\n')
    assert "pytest==7.1.1" in find_requirements(tmp_path)


def test_get_backend_falls_back_to_local_with_warning(monkeypatch, caplog):
    import trajfactory.executors as executors
    import trajfactory.executors.docker as docker_backend

    monkeypatch.setattr(executors, "_backends", {})
    monkeypatch.setattr(docker_backend, "engine_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="trajfactory.executors"):
        backend = executors.get_backend("auto")
    assert backend.name == "local" and backend.isolation == "bwrap"
    assert "no Docker engine; using local namespace sandbox (isolation: bubblewrap" in caplog.text


def test_reads_out_of_the_sandbox_are_capped(sandbox):
    reads_are_capped(sandbox)


def test_a_newer_pytests_deprecations_never_fail_a_suite_that_errors_on_warnings(sandbox):
    pytest_deprecations_stay_warnings(sandbox)


def test_links_are_read_as_the_sandbox_sees_them(sandbox, tmp_path_factory):
    """A link to an absolute /tmp path is the sandbox's /tmp, not the host's: the file API never reads a host file
    the sandbox cannot see."""
    host_file = Path("/tmp") / f"trajfactory-host-only-{os.getpid()}"
    host_file.write_text("host secret\n")
    try:
        sandbox.execute(f"echo in-sandbox > {host_file} && ln -sf {host_file} /tmp/abs-link && "
                        "mkdir -p /tmp/d && ln -sf /tmp/d /tmp/dir-link && echo deep > /tmp/d/f")
        assert sandbox.read_file("/tmp/abs-link") == sandbox.execute("cat /tmp/abs-link").output.encode()
        assert sandbox.read_file("/tmp/abs-link") == b"in-sandbox\n"
        assert sandbox.read_file("/tmp/dir-link/f") == b"deep\n"  # a link in the middle of the path
        sandbox.execute("ln -sf loop1 /tmp/loop2 && ln -sf loop2 /tmp/loop1")
        with pytest.raises((SandboxError, OSError)):
            sandbox.read_file("/tmp/loop1")
    finally:
        host_file.unlink()


def test_disk_is_capped_and_the_host_keeps_nothing(backend, env):
    with backend.start(env, SandboxConfig(disk="64m", memory="1g", command_timeout_s=60)) as sandbox:
        assert sandbox.disk_capped and os.path.ismount(sandbox.scratch)
        for path in ("big", "/tmp/big", "$HOME/big"):
            result = sandbox.execute(f"dd if=/dev/zero of={path} bs=1M count=200 2>&1; du -m {path}; rm -f {path}")
            assert "No space left on device" in result.output, (path, result.output)
            assert int(result.output.split()[-2]) <= 64, result.output  # du's MiB: the cap held
        for path in ("/big", "/usr/local/big", "/etc/big", "/var/big", "/home/big"):
            result = sandbox.execute(f"echo x > {path}")
            assert result.exit_code != 0 and "Read-only file system" in result.output, (path, result.output)
        assert sandbox.execute("python -m pytest -q").exit_code == 0  # the project still works inside
        scratch = sandbox.scratch
    assert not os.path.ismount(scratch) and not scratch.exists()


KILLED_OWNER = """
import sys, time
from pathlib import Path
from trajfactory.executors.base import EnvironmentHandle
from trajfactory.executors.local import LocalBackend
from trajfactory.settings import SandboxConfig
backend = LocalBackend(cache_root=sys.argv[1])
sandbox = backend.start(EnvironmentHandle(**{k: sys.argv[i + 2] for i, k in enumerate(("backend", "name", "repo", "commit"))}),
                        SandboxConfig(disk="32m"))
sandbox.execute("dd if=/dev/zero of=/tmp/held bs=1M count=16")
print(sandbox.scratch, flush=True)
time.sleep(600)
"""


def test_a_sandbox_whose_run_was_killed_is_released_by_the_next_backend(backend, env):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", KILLED_OWNER, str(backend.cache_root), env.backend, env.name,
                             env.repo, env.commit], stdout=subprocess.PIPE, text=True)
    scratch = Path(proc.stdout.readline().strip())
    assert os.path.ismount(scratch) and (scratch / "tmp" / "held").stat().st_size == 16 * 2**20
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.path.ismount(scratch)  # a kill -9 leaves the tmpfs (and the memory it holds) mounted
    with backend.start(env) as live:  # this backend swept at its first start: the live owner's sandbox is kept
        with LocalBackend(cache_root=backend.cache_root).start(env) as other:
            assert not os.path.ismount(scratch) and not scratch.exists()
            assert os.path.ismount(live.scratch) and other.execute("true").exit_code == 0
        assert live.execute("true").exit_code == 0 and os.path.ismount(live.scratch)


def test_twins_go_into_the_failing_tests_file_alone_which_keeps_its_time(sandbox):
    """`twins.write_twins` on this backend: the test file gets a twin and canaries and keeps its modification
    time; a doctest's id names a library module, which is left as it is."""
    from trajfactory.executors.twins import write_twins

    files = "tests/test_add.py src/tinypkg/__init__.py"
    before = sandbox.execute(f"stat -c %Y {files} && md5sum {files}").output.split()
    twins = write_twins(sandbox, ["tests/test_add.py::test_add", "src/tinypkg/__init__.py::tinypkg.add"])
    after = sandbox.execute(f"stat -c %Y {files} && md5sum {files}").output.split()
    assert list(twins.pairs) == ["tests/test_add.py::test_add"] and [c.path for c in twins.canaries] == [
        "tests/test_add.py"], twins
    assert after[:2] == before[:2] and after[4:] == before[4:] and after[2] != before[2], (before, after)
    ran = sandbox.execute("python -m pytest -p no:cacheprovider -q -rA " + " ".join(["tests/test_add.py::test_add",
                                                                                        *twins.ids]))
    # the test and its twin pass, its mutant fails, and the canaries, four of each kind
    assert list(twins.mutants) == ["tests/test_add.py::test_add"] and "5 failed, 6 passed" in ran.output, ran.output
    outcomes = {line.split()[1]: line.split()[0].lower() for line in ran.output.splitlines()
                if line.startswith(("PASSED ", "FAILED "))}
    assert twins.broken(outcomes) == [], outcomes
