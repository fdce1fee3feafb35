"""The recipe's `sandbox:` section: which backend runs the SWE sandboxes, how many at once, and their limits.

Backends take it as it is (`backend.start(env, SandboxConfig(...))`), so the recipe and the sandboxes share one class.
"""

from __future__ import annotations

import sys
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from trajfactory.settings.agents import Section


class SandboxConfig(Section):
    backend: Literal["auto", "docker", "local"] = "auto"
    """`docker` (a container per sandbox), `local` (a bubblewrap namespace), or `auto` (docker when an engine answers)."""
    python: Optional[Literal["3.9", "3.11", "3.13"]] = None
    """The Python the sandboxes run, for projects that need another than the default: `3.11` (Debian bookworm's, the
    default), `3.13` (Debian trixie's: networkx 3.7 needs 3.12) or `3.9` (Debian bullseye's: html5lib 1.1 pins a
    pytest 5, which runs on no later Python). `pypi:NAME@latest:N` takes the newest releases that support it. Docker
    backend only: the local backend runs this machine's Python and refuses another."""
    concurrency: int = Field(2, ge=1)
    """Sandboxes in use at once across the flow."""
    memory: str = "2g"
    """Memory limit of one sandbox (docker syntax: `512m`, `2g`)."""
    disk: str = Field("1g", pattern=r"^[1-9][0-9]*[kmgKMG]?$")
    """What one sandbox may write, in each of its writable directories (/repo, /tmp, /var/tmp, /root, /run; the rest
    of a Docker sandbox is read-only). Docker sandboxes keep them in memory (tmpfs), so writes count against `memory`
    too; a write past the cap fails with "No space left on device". The checkout itself counts against /repo's cap."""
    cpus: float = Field(1.0, gt=0)
    """CPU quota of one sandbox, in cores."""
    pids: int = Field(256, ge=16)
    """Processes and threads one sandbox may hold at once (a fork bomb stops here)."""
    command_timeout_s: float = Field(120, gt=0)
    """Limit of one command; a command past it is killed and reported as timed out."""
    output_limit: int = Field(100_000, ge=1_000)
    """Bytes of one command's output kept (its head and tail)."""

    @field_validator("python", mode="before")
    @classmethod
    def _version_as_text(cls, value):
        # YAML reads `python: 3.13` as a number
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _python_runs_here(self) -> "SandboxConfig":
        host = f"{sys.version_info.major}.{sys.version_info.minor}"
        if self.backend == "local" and self.python and self.python != host:
            raise ValueError(f"sandbox.python {self.python!r} needs backend: docker; the local backend runs this "
                             f"machine's Python {host}")
        return self
