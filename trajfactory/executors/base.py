"""The sandbox protocol every executor implements (docker.py, local.py).

A sandbox holds one repository checkout at `workdir` (a git repository whose HEAD is the pinned
commit), runs shell commands with a timeout and no network, and can be reset to a clean state.
Files written under /tmp persist across `execute` calls of one sandbox (tools stage inputs there).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Protocol

from trajfactory.settings import SandboxConfig


class SandboxError(RuntimeError):
    """A sandbox could not do its job (bad input to the sandbox, not an infrastructure fault)."""


class InfrastructureError(RuntimeError):
    """The engine under the sandbox failed (daemon down, container vanished): worth a retry."""


PYTEST_ADDOPTS = "-W default::pytest.PytestDeprecationWarning"
"""Every sandbox's `PYTEST_ADDOPTS` (the harness's runs, an agent's own, verification): pytest's own deprecation
warnings stay warnings. A project's `filterwarnings = error` was written against the pytest of its day, which did
not yet warn; with a newer pytest (python-dateutil 2.9.0 under pytest 9: a generator passed to `parametrize`) the
new warning would be an error at collection and no test would run, where the maintainers' run passed."""

READ_LIMIT = 64 * 2**20
"""The most bytes `read_file` brings out of a sandbox: code in the sandbox can grow any file it can write (a result
file, a report), and the host reads it into memory."""


class FileTooLargeError(OSError):
    """A file in the sandbox is larger than the read limit; it was not read."""

    def __init__(self, path: str, size: int, limit: int):
        super().__init__(f"{path} in the sandbox is {size:,} bytes, over the read limit of {limit:,} bytes; "
                         "it was not read")
        self.path, self.size, self.limit = path, size, limit


class EnvironmentBuildError(SandboxError):
    """A repository's environment could not be built; `reason` is a short quarantine code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class ExecResult:
    exit_code: int
    output: str
    """stdout and stderr together, truncated to the sandbox's output limit."""
    duration_s: float
    timed_out: bool = False


ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
"""Terminal escape sequences (colours, cursor moves, titles): never part of an observation."""


class OutputCollector:
    """Keeps the head and the tail of a command's output within `limit` bytes (memory stays bounded);
    the text it gives has no terminal escape sequences (a project's `--color=yes` included)."""

    def __init__(self, limit: int):
        self.limit = max(limit, 2)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit // 2 - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            del self.tail[: -(self.limit - self.limit // 2)]

    def text(self) -> str:
        dropped = self.total - len(self.head) - len(self.tail)
        if dropped <= 0:
            return ANSI.sub("", (self.head + self.tail).decode(errors="replace"))
        marker = f"\n[... {dropped} bytes of output truncated ...]\n"
        return ANSI.sub("", self.head.decode(errors="replace") + marker + self.tail.decode(errors="replace"))


def apply_patch(sandbox: "Sandbox", patch: str, path: str = "/tmp/trajfactory-patch.diff") -> str | None:
    """Apply a unified diff in the sandbox's checkout (the patch file is removed after); the error text when it does
    not apply, None when it did (an empty patch changes nothing)."""
    if not patch.strip():
        return None
    sandbox.write_file(path, patch if patch.endswith("\n") else patch + "\n")
    res = sandbox.execute(f"git apply --whitespace=nowarn {path}; code=$?; rm -f {path}; exit $code", timeout=60)
    return None if res.exit_code == 0 else res.output.strip() or f"git apply exited {res.exit_code}"


def sandbox_path(workdir: str, path: str) -> str:
    """An absolute path inside the sandbox: `path` as given, or relative to `workdir`."""
    return posixpath.normpath(posixpath.join(workdir, path))


class Sandbox(Protocol):
    workdir: str

    def execute(self, command: str, timeout: float | None = None) -> ExecResult:
        """Run `command` with bash in `workdir`; a timeout kills it and sets `timed_out`."""
        ...

    def write_file(self, path: str, content: str | bytes) -> None:
        """Write a file inside the sandbox (absolute, or relative to `workdir`)."""
        ...

    def read_file(self, path: str, max_bytes: int = READ_LIMIT) -> bytes:
        """A file's bytes; `FileTooLargeError` (an OSError) when it holds more than `max_bytes`."""
        ...

    def reset(self) -> None:
        """Return the checkout to the pinned commit; restarts the sandbox if a command ran away."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> "Sandbox": ...

    def __exit__(self, *exc) -> None: ...


@dataclass
class EnvironmentHandle:
    """A built environment for one repository: what `start()` needs to open sandboxes."""

    backend: str
    """`docker` or `local`."""
    name: str
    """Image name (docker) or environment directory (local)."""
    repo: str
    commit: str
    python: str = ""
    """The Python version its sandboxes run (`3.13.5`); empty where it is not known (a handle made from a task
    row)."""


def env_key(variables: dict[str, str]) -> list[str]:
    """The words a recipe's `test_env` adds to an environment's key: none without one, so the keys of the others stay
    as they were."""
    return [f"env:{name}={value}" for name, value in sorted(variables.items())]


class Backend(Protocol):
    """Builds one environment per repository (cached by content) and opens sandboxes on it."""

    name: str

    def build(self, source_path: str, repo: str, commit: str, test_requirements: list[str] | None = None,
              ignore_tests: list[str] | None = None, test_env: dict[str, str] | None = None) -> EnvironmentHandle:
        """Build (or reuse) the environment: the repository at `commit` plus its test dependencies (those it declares,
        and `test_requirements`, which the recipe adds); `ignore_tests`: test paths every pytest run leaves out;
        `test_env`: variables set for its install and every command of its sandboxes (part of its key).

        Raises EnvironmentBuildError(reason, detail) when the repository cannot be installed.
        """
        ...

    def python_version(self) -> str:
        """The Python version its sandboxes run (`3.11.2`)."""
        ...

    def start(self, env: EnvironmentHandle, limits: SandboxConfig | None = None) -> Sandbox:
        """A fresh sandbox on `env`, under the limits of `limits` (the recipe's `sandbox:` section)."""
        ...
