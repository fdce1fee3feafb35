"""The recipe's `sandbox:` section: which backend runs the SWE sandboxes, how many at once, and their limits.

Backends take it as it is (`backend.start(env, SandboxConfig(...))`), so the recipe and the sandboxes share one class.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trajfactory.settings.agents import Section


class SandboxConfig(Section):
    backend: Literal["auto", "docker", "local"] = "auto"
    """`docker` (a container per sandbox), `local` (a bubblewrap namespace), or `auto` (docker when an engine answers)."""
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
