"""Process-level helpers every layer may use: running a coroutine from sync code, parsing Python from any thread, an
HTTP server on loopback, and the daemons the factory starts (a node's Docker engine, the registry, a Ray node, the
Prefect server): start one detached with its log, wait until it answers, and stop it."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Coroutine, Sequence, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also from a thread whose event loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="run-sync") as ex:
        return ex.submit(asyncio.run, coro).result()


_PARSING = threading.Lock()


def parse_python(source: str | bytes, filename: str = "<unknown>", mode: str = "exec") -> ast.AST:
    """`ast.parse`, one thread at a time. CPython 3.11's AST constructor keeps its recursion depth in state the
    threads share, so two parses at once in threads (the factory verifies, synthesizes and browses in threads) fail
    now and then with `SystemError: AST constructor recursion depth mismatch` (CPython gh-106905)."""
    with _PARSING:
        return ast.parse(source, filename=filename, mode=mode)


class LoopbackServer:
    """A threading HTTP server on a loopback port, serving from a daemon thread until `close()`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], name: str, host: str = "127.0.0.1", port: int = 0):
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.host, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{name}-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """`http://HOST:PORT` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- daemons


class DaemonFailed(RuntimeError):
    """A daemon exited or did not answer in time; `why` says which and `tail` is the end of its log."""

    def __init__(self, why: str, tail: str):
        super().__init__(f"{why}; its log ends:\n{tail}")
        self.why, self.tail = why, tail


def start_daemon(cmd: Sequence[str], log: Path, ready: Callable[[], bool], *, timeout: float, interval: float = 0.3,
                 env: dict[str, str] | None = None, tail_chars: int = 2000) -> subprocess.Popen:
    """Start `cmd` in a session of its own (so a stop reaches its children), its output appended to `log`, and wait
    until `ready()`. A daemon that exits first or is not ready after `timeout` seconds has its process group killed
    and raises DaemonFailed; the caller removes what else it set up and says what failed."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {proc.returncode}" if proc.poll() is not None else f"did not answer in {timeout:.0f} s"
            kill_group(proc.pid)
            raise DaemonFailed(why, Path(log).read_text(errors="replace")[-tail_chars:])
        time.sleep(interval)
    return proc


def pid_alive(pid) -> bool:
    """Whether process `pid` of this host exists (False for no pid at all)."""
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def pid_in(pidfile: Path) -> int | None:
    """The pid written in `pidfile` when that process still runs, else None."""
    try:
        pid = int(Path(pidfile).read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def wait_gone(pid: int, timeout: float = 10) -> bool:
    """Wait until process `pid` has ended (reaping it when it is this process's child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def kill_group(pid: int) -> None:
    """SIGKILL the process group `pid` leads (a daemon started by `start_daemon`), and reap it."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    wait_gone(pid, 10)


def stop_daemon(pid: int, timeout: float = 30, group: bool = False) -> None:
    """SIGTERM process `pid` (its whole group with `group`), wait up to `timeout` seconds, then SIGKILL its group."""
    try:
        (os.killpg if group else os.kill)(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not wait_gone(pid, timeout):
        kill_group(pid)
