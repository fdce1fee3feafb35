"""Shared fixtures: the real Docker engine with the local base image, and an isolated Prefect home."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BAD_REPOS = Path(__file__).parent / "fixtures" / "bad_repos"
DEMO_REPO = ROOT / "trajfactory" / "data" / "repos" / "textkit"

# The fixture repositories are inputs (one of them fork-bombs): only ever run inside a sandbox.
collect_ignore = ["fixtures"]

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# The session's own label on the sandboxes of `docker_backend`: with `pytest -n`, other workers' sandboxes share the
# engine, and a leak check must count only this process's.
SESSION_LABEL = {"trajfactory.tests": str(os.getpid())}


def _trajfactory_containers() -> set[str]:
    try:
        import docker

        client = docker.from_env()
        wanted = ["trajfactory=1", *(f"{k}={v}" for k, v in SESSION_LABEL.items())]
        return {c.id for c in client.containers.list(all=True, ignore_removed=True, filters={"label": wanted})}
    except Exception:  # no engine yet: the docker_backend fixture says so
        return set()


def pytest_sessionstart(session):
    # containers a killed earlier session left behind are not this session's leak
    session.config.stash[_BEFORE] = _trajfactory_containers()


_BEFORE = pytest.StashKey[set]()

# Session fixtures too costly to make once per worker: with `pytest -n N --dist loadscope` (scripts/test.sh), the
# modules that name one of them run together on one worker. Every other module runs whole on one worker.
SHARED_ONCE = ("model_flow_run", "undisturbed_textkit", "web_version")


def module_groups() -> dict[str, str]:
    """Test module -> its unit of work: the module itself, or one unit for every module that names a fixture of
    SHARED_ONCE (read from the sources: the scheduler runs before any test is collected)."""
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        text = path.read_text()
        for name in SHARED_ONCE:
            if re.search(rf"\b{name}\b", text):
                parent[root(path.stem)] = root(name)
    return {path.stem: root(path.stem) for path in Path(__file__).parent.glob("test_*.py")}


# Each test module's seconds in the last whole-suite run on this machine (setup, call and teardown of all its tests),
# beside the factory's other caches. The scheduler hands out the longest units first, so the workers finish together:
# xdist's own order (most tests first) leaves the few-test modules that start whole factory runs to the end, where one
# worker runs them while the other waits. With no record yet, xdist's order stands.
DURATIONS = Path(os.environ.get("TRAJFACTORY_CACHE") or Path.home() / ".cache" / "trajfactory") / "test-durations.json"


def known_durations() -> dict[str, float]:
    try:
        data = json.loads(DURATIONS.read_text())
        return {str(module): float(seconds) for module, seconds in data.items()}
    except (OSError, ValueError, TypeError, AttributeError):  # none yet, or unreadable: no order of our own
        return {}


def _module(nodeid: str) -> str:
    return Path(nodeid.split("::", 1)[0]).stem


def longest_first(units: dict[str, list[str]], known: dict[str, float]) -> list[str]:
    """The scopes (unit -> its test ids), longest expected time first: a unit's time is the sum of its modules' last
    times; a module with none yet counts its tests at the mean seconds per test of the modules known."""
    if not known:
        return list(units)
    tests: dict[str, int] = {}
    for ids in units.values():
        for nodeid in ids:
            tests[_module(nodeid)] = tests.get(_module(nodeid), 0) + 1
    seen = [m for m in tests if m in known]
    mean = sum(known[m] for m in seen) / max(1, sum(tests[m] for m in seen))

    def expected(ids: list[str]) -> float:
        return sum(known.get(m, mean * tests[m]) for m in {_module(nodeid) for nodeid in ids})

    return sorted(units, key=lambda unit: -expected(units[unit]))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` with module_groups() as the scopes (xdist's own loadscope splits by module or class), handed
    out longest first (`longest_first`)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    groups = module_groups()
    known = known_durations()

    class ModuleGroups(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return groups.get(_module(nodeid), _module(nodeid))

        def _assign_work_unit(self, node) -> None:
            if not self.ordered:  # the whole queue is there at the first assignment
                self.ordered = True
                for unit in longest_first({u: list(ids) for u, ids in self.workqueue.items()}, known):
                    self.workqueue.move_to_end(unit)
            super()._assign_work_unit(node)

    _SPENT.clear()
    _SPENT["recording"] = {}  # this controller records the modules' times
    return ModuleGroups(config, log)


_SPENT: dict[str, dict[str, float]] = {}
"""`recording`: each module's seconds so far, on the controller of a `--dist loadscope` session only."""


def pytest_runtest_logreport(report):
    """On the controller of a `--dist loadscope` session (the whole suite, scripts/test.sh): each module's seconds."""
    if (spent := _SPENT.get("recording")) is not None:
        spent[_module(report.nodeid)] = spent.get(_module(report.nodeid), 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    """A whole-suite session that ran to its end (passed or with failures) records its modules' times for the next."""
    spent = _SPENT.get("recording")
    if not spent or exitstatus not in (0, 1):
        return
    merged = {**known_durations(), **{m: round(s, 1) for m, s in spent.items()}}
    try:
        DURATIONS.parent.mkdir(parents=True, exist_ok=True)
        partial = DURATIONS.with_name(f"{DURATIONS.name}.{os.getpid()}")
        partial.write_text(json.dumps(dict(sorted(merged.items())), indent=1))
        partial.replace(DURATIONS)
    except OSError:  # an order for the next run only: never a reason to fail this one
        pass


@pytest.fixture
def containers_left(request):
    """The sandbox containers this test session's `docker_backend` created and did not remove."""
    before = request.config.stash.get(_BEFORE, set())
    return lambda: sorted(_trajfactory_containers() - before)


@pytest.fixture(scope="session")
def docker_backend():
    from trajfactory.executors.docker import DockerBackend, engine_available
    from trajfactory.executors.images import ensure_base_image

    if not engine_available():
        pytest.fail("no Docker engine answers; scripts/setup.sh starts dockerd")
    ensure_base_image()
    return DockerBackend(labels=SESSION_LABEL)


@pytest.fixture(scope="session")
def mirrors(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mirrors")


@pytest.fixture(scope="session")
def shared_prefect_api(tmp_path_factory):
    """The API URL of one lasting Prefect server (`trajfactory server start`'s, on its own PostgreSQL) that the factory
    runs a test starts as subprocesses share (`cli_runs.env(tmp, api)`), instead of each run starting a throwaway one
    of its own (~10 s a run, more on a busy machine). Started by the first test that asks for it; stopped, and its
    database removed, at the end of the session. test_flow's end-to-end test keeps the default throwaway server."""
    from trajfactory.server import prefect_server
    from trajfactory.server.postgres import PostgresCluster

    state_dir = tmp_path_factory.mktemp("prefect-server")
    state = prefect_server.start(state_dir)
    yield state["api_url"]
    prefect_server.stop(state_dir)
    PostgresCluster(Path(state["postgres_data"])).remove()  # as root it lives outside the temp dirs


@pytest.fixture(scope="session")
def undisturbed_textkit(docker_backend, shared_prefect_api, tmp_path_factory):
    """The dataset store an undisturbed run of `cli_runs.undisturbed_recipe` makes (the bundled textkit, 14
    candidates, one sandbox, batches of 2, one reference run): what a run of the same recipe that was killed and
    resumed, or rode out an engine restart, must end with. Run once, by the first test that asks."""
    import cli_runs
    from trajfactory.datasets.store import DatasetStore

    # scripts/test.sh runs the suite as two pytest sessions (the parallel one, then the `exclusive` tests) of the
    # same checkout, and hands both one folder, TRAJFACTORY_TEST_SHARE: the second reads the first one's run.
    share = os.environ.get("TRAJFACTORY_TEST_SHARE")
    kept = Path(share) / "undisturbed-swe" if share else None
    if kept is not None and kept.is_dir():
        store = DatasetStore(kept)
        assert store.versions() == ["v1"] and store.verify("v1") == []
        return store
    tmp = tmp_path_factory.mktemp("undisturbed")
    proc = cli_runs.cli(tmp, "run", str(cli_runs.undisturbed_recipe(tmp)), api=shared_prefect_api)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    store = DatasetStore(tmp / "datasets" / "swe")
    assert store.versions() == ["v1"] and store.verify("v1") == []
    if kept is not None:  # whole or not at all: copied beside, then renamed
        partial = kept.with_name(kept.name + ".partial")
        shutil.copytree(store.root, partial)
        partial.rename(kept)
    return store


@pytest.fixture
def prefect_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "prefect-home"
    monkeypatch.setenv("PREFECT_HOME", str(home))
    return home


def copy_fixture(name: str, dest: Path) -> Path:
    target = dest / name
    shutil.copytree(BAD_REPOS / name, target)
    return target


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The factory's own tiny Qwen2 model (random weights, tokenizer trained on the factory corpus)."""
    from trajfactory.models.tiny import init_tiny_model

    return init_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def _vllm_session_server(tiny_model, tmp_path_factory):
    """One real CPU vLLM server serving the tiny model, shared by every test of the session."""
    import subprocess

    from trajfactory.models.server import CPU_VENV_PYTHON, SETUP_SCRIPT, VLLMServer

    if not CPU_VENV_PYTHON.exists():
        subprocess.run(["bash", str(SETUP_SCRIPT)], check=True)
    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with VLLMServer(tiny_model, name="tiny", log_path=log_path) as server:
        yield server


@pytest.fixture(scope="module")
def vllm_server(_vllm_session_server):
    """The session's vLLM server, started again for a module if an earlier module stopped it (a stop test does)."""
    return _vllm_session_server.start()


from model_flow import model_flow_run  # noqa: E402,F401 — the session's model flow run (several modules read it)


from openai_stub import Stub  # noqa: E402


@pytest.fixture
def stub():
    """`stub(reply)` starts a scripted OpenAI server (`openai_stub.Stub`); all of a test's stop with it."""
    made: list[Stub] = []

    def make(reply):
        made.append(Stub(reply))
        return made[-1]

    yield make
    for s in made:
        s.close()


def write_tutorials(dest: Path) -> Path:
    """One small how-to per bundled app (shop, forum, tracker) under `dest/APP/howto.md`."""
    from test_web_tasks import FORUM, SHOP, TRACKER

    for app, text in {"shop": SHOP, "forum": "How to start a discussion\n" + FORUM, "tracker": TRACKER}.items():
        title, body = text.split("\n", 1)
        (dest / app).mkdir(parents=True)
        (dest / app / "howto.md").write_text(f"# {title}\n\n{body.strip()}\n")
    return dest


@pytest.fixture(scope="session")
def web_version(tmp_path_factory) -> Path:
    """A small real web version from the factory's web pipeline (tutorials -> checked tasks with infeasible twins ->
    replayed trajectories -> splits by site): the test split is one site's feasible task and its infeasible twin.
    Shared by the web evaluation and web GRPO tests."""
    from trajfactory.pipelines import web
    from trajfactory.pipelines.runner import LocalRunner
    from trajfactory.settings import Recipe

    root = tmp_path_factory.mktemp("webdata")
    write_tutorials(root / "tutorials")
    recipe = Recipe.model_validate({"name": "web-eval-test", "work_dir": str(root / "work"),
                                    "dataset": {"root": str(root / "datasets")},
                                    "web": {"tutorials": [str(root / "tutorials")], "infeasible_share": 1.0,
                                            "browsers": 2, "dataset_name": "web"}})
    out = web.run(recipe, LocalRunner())
    assert out["version"] == "v1"
    return root / "datasets" / "web"
