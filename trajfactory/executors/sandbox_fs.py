"""The Docker sandbox's file system: a read-only root with size-capped, in-memory writable directories.

A sandbox container's root file system is read-only. What a command may write lives on tmpfs volumes, each capped
at the recipe's `sandbox.disk`:

- `/repo`, the checkout, filled at start from the image's own `/repo` (its archive is read once per image and kept);
- `/tmp`, `/var/tmp`, `/root` (HOME) and `/run`, empty at start.

So a test that writes a 5 GB file gets "No space left on device" at the cap, and the host's disk never moves; what a
sandbox writes also counts against its memory limit (tmpfs pages are charged to the container's memory cgroup). And
since nothing else is writable, a reset restores the *whole* sandbox: the checkout by git (and a replaced container
if git's own settings were tampered with), the other writable directories wiped, their modes restored.
"""

from __future__ import annotations

import collections
import logging
import re
import threading

import docker.errors
from docker.types import Mount, DriverConfig

from .base import SandboxError

log = logging.getLogger(__name__)

WORKDIR = "/repo"
SCRATCH_DIRS = {"/tmp": "1777", "/var/tmp": "1777", "/root": "0700", "/run": "0755"}
"""The writable directories besides the checkout, with their modes; a reset empties them (and /dev/shm)."""
GIT_META = ".git/config .git/info .git/hooks .git/refs/replace .git/objects/info/alternates"
"""What git reads besides the objects and the index: a change here could turn the reset's own git against it."""
_SIZE = re.compile(r"^[1-9]\d*[kmg]?$", re.I)


def check_size(value: str) -> str:
    """A tmpfs size (`512m`, `2g`); anything else is refused with what would be right."""
    if not _SIZE.match(str(value)):
        raise ValueError(f"sandbox disk size {value!r} is not a size; write a number with k, m or g (e.g. 512m, 2g)")
    return str(value).lower()


def _tmpfs(target: str, size: str, mode: str) -> Mount:
    # a tmpfs *volume* (not a --tmpfs mount): the engine's archive API (write_file/read_file) reaches volumes,
    # while it writes --tmpfs mounts' files into the layer underneath them
    options = {"type": "tmpfs", "device": "tmpfs", "o": f"size={size},mode={mode}"}
    return Mount(target=target, source=None, type="volume", driver_config=DriverConfig("local", options))


def mounts(disk: str) -> list[Mount]:
    size = check_size(disk)
    return [_tmpfs(WORKDIR, size, "0755"), *(_tmpfs(d, size, mode) for d, mode in SCRATCH_DIRS.items())]


class _Archives:
    """The image's /repo as a tar, read once per image (a bounded cache, by bytes)."""

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._reading: dict[str, threading.Lock] = {}

    def get(self, client, image: str) -> bytes:
        with self._lock:
            if image in self._items:
                self._items.move_to_end(image)
                return self._items[image]
            reading = self._reading.setdefault(image, threading.Lock())
        with reading:  # one read per image, however many sandboxes start at once
            with self._lock:
                if image in self._items:
                    return self._items[image]
            data = _read_repo(client, image)
            with self._lock:
                self._items[image] = data
                while sum(map(len, self._items.values())) > self.max_bytes and len(self._items) > 1:
                    self._items.popitem(last=False)
                self._reading.pop(image, None)
            return data


def _read_repo(client, image: str) -> bytes:
    holder = client.containers.create(image, ["true"], network_disabled=True)
    try:
        stream, _ = holder.get_archive(f"{WORKDIR}/.")
        return b"".join(stream)
    finally:
        holder.remove(force=True, v=True)


archives = _Archives()


def seed_repo(client, container, image: str, disk: str) -> None:
    """Fill the new container's empty /repo volume with the image's checkout."""
    data = archives.get(client, image)
    try:
        container.put_archive(WORKDIR, data)
    except docker.errors.APIError as exc:
        raise SandboxError(f"cannot copy the checkout of {image} ({len(data) / 2**20:.1f} MiB as a tar) into the "
                           f"sandbox's /repo, capped at sandbox.disk={disk}: {exc.explanation or exc}; "
                           "raise sandbox.disk in the recipe if the repository is larger") from exc


def meta_digest_command() -> str:
    """A shell command printing one digest of git's own settings in /repo (see GIT_META)."""
    return (f"cd {WORKDIR} && find {GIT_META} -type f 2>/dev/null | LC_ALL=C sort | "
            "while read -r f; do printf '%s\\n' \"$f\"; cat \"$f\"; done | md5sum")


def wipe_command() -> str:
    """Empty the scratch directories and /dev/shm, and restore their modes (a reset's shell fragment)."""
    dirs = " ".join([*SCRATCH_DIRS, "/dev/shm"])
    modes = "; ".join(f"chmod {mode} {d}" for d, mode in SCRATCH_DIRS.items())
    # a sandbox's root owns all it wrote, so `chmod` undoes a locked (mode 000) directory before `rm` (no
    # capabilities: root passes no permission check it could not pass as the owner); left-overs fail the reset
    return (f"chmod -R u+rwX {dirs} 2>/dev/null; find {dirs} -mindepth 1 -maxdepth 1 -exec rm -rf {{}} + 2>/dev/null; "
            f"{modes}; [ -z \"$(find {dirs} -mindepth 1 -maxdepth 1 -print -quit)\" ] || exit 96; ")
