"""Kill-and-resume soak: a run `kill -9`ed (its whole process group) at ten seeded-random points spread over the
run's duration, then once just after it published its version (held there: `HoldingProxy`), and started again with
the same command each time, ends with the dataset an undisturbed run makes (the same content digest) as one intact
version, and no sandbox container of the killed runs left behind. The recipe mines a real PyPI package (inflection
0.5.1, its own test suite), and every attempt talks to one lasting Prefect server (`trajfactory server start`'s, on
its own PostgreSQL) started once for the test, instead of starting a throwaway one of its own. About 12 runs: ~4
minutes on 2 cores."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

import cli_runs
from trajfactory.datasets.store import DatasetStore
from trajfactory.executors.docker import LABEL, RUN_LABEL
from trajfactory.executors.runs import LIVE_DIR, recorded_runs

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(2400)]

SEED = 13
KILLS = 10


PACKAGE = "pypi:inflection==0.5.1"


@pytest.fixture
def prefect_api(tmp_path):
    """The API of a lasting Prefect server for every run of the test; stopped, and its database removed, after."""
    from trajfactory.server import prefect_server
    from trajfactory.server.postgres import PostgresCluster

    state = prefect_server.start(tmp_path / "server")
    yield state["api_url"]
    prefect_server.stop(tmp_path / "server")
    PostgresCluster(Path(state["postgres_data"])).remove()  # as root it lives outside tmp_path


def _argv(tmp: Path) -> list[str]:
    return [*cli_runs.CLI, "run", str(cli_runs.recipe(tmp, [PACKAGE], name="soak", candidates=4, reference_runs=1))]


def _env(tmp: Path, api: str) -> dict:
    return {**cli_runs.env(tmp), "PREFECT_API_URL": api}


WORK_STARTS = "harvest: 0/"
"""The first progress line of a run: its startup (imports, the work dir's lock, the flow run) is over."""


class HoldingProxy:
    """A TCP proxy in front of the Prefect API that forwards every byte both ways until a request to `hold` comes:
    that request is never forwarded (its connection hangs open) and `held` is set. A run's first artifact (its
    yields, `flows/runner.publish_yields`) comes after it published its version and before it ends, so a run held
    there is stopped at the commit point however busy the machine is, and killed there, not after its end."""

    def __init__(self, api: str, hold: bytes = b"POST /api/artifacts/"):
        url = urlparse(api)
        self.target, self.hold, self.held = (url.hostname, url.port), hold, threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}{url.path}"
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, scan: bool) -> None:
        tail = b""
        try:
            while data := src.recv(65536):
                if scan:
                    if self.hold in tail + data:
                        self.held.set()
                        return  # neither forwarded nor closed: the request waits for an answer that never comes
                    tail = (tail + data)[-len(self.hold):]
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        for sock in [self.server, *self.sockets]:
            sock.close()


def _start(tmp: Path, argv: list[str], log: Path, api: str) -> subprocess.Popen:
    """The run in its own process group (a kill takes its helpers too, not the shared server), output in `log`."""
    with log.open("w") as out:
        return subprocess.Popen(argv, env=_env(tmp, api), cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait_for(proc: subprocess.Popen, log: Path, text: str, timeout: float = 900) -> float:
    """Wait until the run's log shows `text`; `time.monotonic()` then. Fails if the run ends first."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"the run ended before its log said {text!r}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the run's log did not say {text!r} in {timeout:.0f} s"
        time.sleep(0.05)
    return time.monotonic()


def kill_points(duration: float, startup: float, seed: int = SEED, kills: int = KILLS) -> list[tuple[str, float]]:
    """Where each attempt is killed: one seeded-random point in each tenth of the undisturbed run's `duration`,
    replayed on the resumed runs. A point in the first `startup` seconds (imports, the lock, the flow run,
    before any work) is `("startup", seconds after the attempt's start)`; a later one `("work", seconds after the
    attempt's work started)`: an attempt picks the work up where its predecessor was killed, so it is killed that
    much later than the previous point on the undisturbed run's clock."""
    rng = random.Random(seed)
    points = [rng.uniform(duration * i / kills, duration * (i + 1) / kills) for i in range(kills)]
    out, reached = [], startup
    for point in points:
        if point <= startup:
            out.append(("startup", point))
        else:
            out.append(("work", point - reached))
            reached = point
    return out


def test_kill_and_resume_ten_times_makes_the_undisturbed_dataset(docker_backend, prefect_api, tmp_path):
    clean, soaked = tmp_path / "clean", tmp_path / "soaked"
    clean.mkdir(), soaked.mkdir()
    began = time.monotonic()
    proc = _start(clean, _argv(clean), clean / "run.log", prefect_api)
    startup = _wait_for(proc, clean / "run.log", WORK_STARTS) - began
    assert proc.wait(timeout=1200) == 0, (clean / "run.log").read_text()[-3000:]
    points = kill_points(time.monotonic() - began, startup)

    argv, logs, killed, store = _argv(soaked), [], [], DatasetStore(soaked / "datasets" / "swe")
    completed = False
    for i, (phase, delay) in enumerate(points):
        logs.append(soaked / f"attempt-{i + 1}.log")
        proc = _start(soaked, argv, logs[-1], prefect_api)
        began = time.monotonic() if phase == "startup" else _wait_for(proc, logs[-1], WORK_STARTS)
        try:
            proc.wait(timeout=max(0.0, began + delay - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed.append(f"{delay:.1f} s into its {phase}")
            time.sleep(0.5)  # let the kernel reap what the kill took down before the next attempt takes the lock
            continue
        # it finished before its point: the work left was shorter (a busy machine slowed the undisturbed run more)
        assert proc.returncode == 0, logs[-1].read_text()[-3000:]
        completed = True
        break
    print(f"\nkilled {len(killed)} times: " + ", ".join(killed))
    assert len(killed) >= KILLS - 2, f"only {len(killed)} of the {KILLS} kills came before the run ended"
    if not completed:
        if not store.versions():  # once more just after the version is published (the commit point)
            logs.append(soaked / "attempt-published.log")
            proxy = HoldingProxy(prefect_api)
            try:
                proc = _start(soaked, argv, logs[-1], proxy.url)
                deadline = time.monotonic() + 900
                while not proxy.held.wait(0.2):
                    assert proc.poll() is None, f"the run ended unheld:\n{logs[-1].read_text()[-3000:]}"
                    assert time.monotonic() < deadline, "the run did not reach its yields artifact in 900 s"
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            finally:
                proxy.close()
            assert "published v1 at" in logs[-1].read_text(), logs[-1].read_text()[-3000:]
            assert list((soaked / "work" / LIVE_DIR).iterdir()), "the held run's publishing note is gone"
        finished = subprocess.run(argv, env=_env(soaked, prefect_api), cwd=soaked, capture_output=True, text=True,
                                  timeout=1200)
        assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
        # the killed run had published v1: its resume takes v1 rather than write the same data again as v2
        assert "v1 was published by the run this one resumes" in finished.stderr, finished.stderr[-3000:]

    # every run was a flow run of the one shared server: the undisturbed one and the one that finished the soak
    completed_runs = httpx.post(f"{prefect_api}/flow_runs/count", timeout=30,
                                json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}).json()
    assert completed_runs >= 2, completed_runs
    runs = [r["run_id"] for r in recorded_runs(soaked / "work")]
    assert len(runs) >= 2, runs  # attempts killed before they took the work dir left no record
    left = docker_backend.client.containers.list(all=True, ignore_removed=True, filters={"label": f"{LABEL}=1"})
    assert [c.name for c in left if c.labels.get(RUN_LABEL) in runs] == []
    clean_store = DatasetStore(clean / "datasets" / "swe")
    assert store.versions() == ["v1"] and store.verify("v1") == []
    assert store.content_digest("v1") == clean_store.content_digest("v1")
    rows = store.manifest("v1")["tables"]["trajectories"]["rows"]
    assert rows == clean_store.manifest("v1")["tables"]["trajectories"]["rows"] > 0
