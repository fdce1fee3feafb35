"""The local sandbox's limits and housekeeping: a pids + memory + cpu cgroup per sandbox, its disk cap (a size-limited
tmpfs under its scratch directory), the sweep of what killed runs left, sizes, and the helpers of its whole-sandbox
reset (a tree a command locked, git's own settings)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from trajfactory.runtime import pid_alive
from trajfactory.settings import SandboxConfig

from .base import SandboxError
from .sandbox_fs import GIT_META

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def size_bytes(size: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)b?", size.strip().lower())
    if not m:
        raise SandboxError(f"memory limit {size!r} is not a size; use e.g. '2g' or '512m'")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def remove_tree(path: Path) -> None:
    """rmtree that also takes what a command locked (a mode-000 directory it made)."""
    if not path.exists():
        return
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            target = os.path.join(root, d)
            if not os.path.islink(target):  # a link's target may lie outside the tree (Linux cannot chmod a link)
                with contextlib.suppress(OSError):
                    os.chmod(target, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def git_meta(repo: Path) -> str:
    """One digest of git's own settings in a checkout (sandbox_fs.GIT_META): what the reset's git would obey."""
    digest = hashlib.sha256()
    for name in GIT_META.split():
        base = repo / name
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base] if base.is_file() else []
        for f in files:
            digest.update(str(f.relative_to(repo)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()


class Cgroup:
    """A pids + memory + cpu cgroup (v1 or v2) for one sandbox; `paths` is empty when the host refuses one."""

    def __init__(self, name: str, limits: SandboxConfig):
        self.paths: list[Path] = []
        v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
        quota = int(limits.cpus * 100_000)
        wanted = {"pids": ("pids.max", str(limits.pids)),
                  "memory": ("memory.max" if v2 else "memory.limit_in_bytes", str(size_bytes(limits.memory))),
                  "cpu": ("cpu.max", f"{quota} 100000") if v2 else ("cpu.cfs_quota_us", str(quota))}
        self.limited: set[str] = set()
        """The controllers whose limit is in force."""
        for controller, (knob, value) in wanted.items():
            path = CGROUP_ROOT / ("" if v2 else controller) / "trajfactory" / name
            try:
                path.mkdir(parents=True, exist_ok=True)
                if v2:  # a v2 child only has the knobs its parents delegate
                    for parent in (CGROUP_ROOT, path.parent):
                        (parent / "cgroup.subtree_control").write_text(f"+{controller}")
                (path / knob).write_text(value)
                self.limited.add(controller)
            except OSError as exc:
                log.debug("no %s cgroup for the local sandbox: %s", controller, exc)
            if path.is_dir() and path not in self.paths:
                self.paths.append(path)

    def wrapper(self) -> list[str]:
        """argv prefix that moves the command into the cgroup before it starts."""
        if not self.paths:
            return []
        joins = "; ".join(f"echo $$ > {p}/cgroup.procs" for p in self.paths)
        return ["sh", "-c", f'{joins}; exec "$@"', "sh"]

    def remove(self) -> None:
        for path in self.paths:
            for _ in range(20):  # the kernel frees a cgroup a moment after its last process exits
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


OWNER = ".owner"
"""In a sandbox's scratch directory: the pid of the process that holds the sandbox."""
YOUNG_S = 60.0
"""A scratch directory without an owner yet, younger than this, is a sandbox being made, not a leftover."""


def cap_disk(scratch: Path, disk: str) -> bool:
    """Mount a tmpfs of `disk` bytes on `scratch`: everything a command can write (the checkout, /tmp, HOME) lives
    there, so a suite that fills it gets "No space left on device" and the host's disk never moves; its pages count
    against the sandbox's memory cgroup, as a container's tmpfs does. False where the host refuses (not root)."""
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes(disk)},mode=0700",
                              "trajfactory-sandbox", str(scratch)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        out = None
        reason = str(exc)
    if out is not None and out.returncode == 0:
        return True
    reason = out.stderr.strip() if out is not None else reason
    log.warning("local sandbox: no disk cap here (mounting a tmpfs of sandbox.disk=%s failed: %s)", disk, reason)
    return False


def own(scratch: Path) -> None:
    (scratch / OWNER).write_text(str(os.getpid()))


def release(scratch: Path) -> None:
    """Unmount the sandbox's disk cap (if any) and remove its scratch directory."""
    if os.path.ismount(scratch):
        subprocess.run(["umount", "-l", str(scratch)], capture_output=True, timeout=60)
    remove_tree(scratch)


def sweep_stale(root: Path) -> list[str]:
    """Release the sandboxes under `root` whose owning process is gone (a run killed with -9): their tmpfs would hold
    memory and their cgroups would stay. Returns the names released."""
    released = []
    for scratch in sorted(root.glob("sbx-*")) if root.is_dir() else []:
        try:
            owner = (scratch / OWNER).read_text().strip()
        except OSError:
            owner = ""
            with contextlib.suppress(OSError):
                if time.time() - scratch.stat().st_mtime < YOUNG_S:
                    continue
        if owner and pid_alive(owner):
            continue
        release(scratch)
        for pattern in (f"trajfactory/{scratch.name}", f"*/trajfactory/{scratch.name}"):  # cgroup v2, v1
            for cgroup in CGROUP_ROOT.glob(pattern):
                with contextlib.suppress(OSError):
                    cgroup.rmdir()
        released.append(scratch.name)
    if released:
        log.info("released %d local sandbox(es) a killed run left: %s", len(released), ", ".join(released))
    return released
