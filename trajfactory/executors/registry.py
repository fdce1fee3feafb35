"""Sandbox images shared through a Docker registry, so a node of a cluster never rebuilds an image another built.

    address = start_registry(root, port=5000)   # Debian's `docker-registry`, on loopback, storage under root
    use_registry(address)                       # from now on this process's Docker backend pushes what it builds
                                                # and pulls what it lacks (`docker.py`)

An image `trajfactory/repo-x:KEY` is stored as `ADDRESS/trajfactory/repo-x:KEY`; the key is a content hash of what
goes into it, so the same tag means the same image on every node, and a pulled image keeps its id.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import docker.errors
import httpx

from trajfactory.runtime import DaemonFailed, pid_in, start_daemon, stop_daemon

from .base import InfrastructureError

log = logging.getLogger(__name__)

REGISTRY_BINARY = "docker-registry"
"""Debian's package `docker-registry` (the CNCF distribution registry, 2.8)."""
_MANIFESTS = ", ".join(["application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.oci.image.manifest.v1+json"])
_registry: dict[str, str] = {}

CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: {host}:{port}
"""


def use_registry(address: str | None) -> None:
    """Share this process's sandbox images through the registry at `address` (`HOST:PORT`; None: no registry)."""
    _registry.clear()
    if address:
        _registry["address"] = address


def current_registry() -> str | None:
    return _registry.get("address")


def remote_name(tag: str, address: str) -> tuple[str, str]:
    """`trajfactory/repo-x:KEY` -> (`ADDRESS/trajfactory/repo-x`, `KEY`)."""
    repository, _, key = tag.rpartition(":")
    return f"{address}/{repository}", key


def registry_digest(tag: str, address: str) -> str | None:
    """The manifest digest the registry holds for `tag`, or None when it has no such image."""
    repository, key = remote_name(tag, address)
    url = f"http://{address}/v2/{repository.split('/', 1)[1]}/manifests/{key}"
    try:
        response = httpx.head(url, headers={"Accept": _MANIFESTS}, timeout=30)
    except httpx.HTTPError as exc:
        raise InfrastructureError(f"the image registry {address} does not answer ({exc}); start it with "
                                  "`trajfactory cluster registry`") from exc
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise InfrastructureError(f"the image registry {address} answered {response.status_code} for {url}")
    return response.headers.get("Docker-Content-Digest")


def push(client, tag: str, address: str) -> str:
    """Push the local image `tag` to the registry; returns the registry's manifest digest."""
    repository, key = remote_name(tag, address)
    client.images.get(tag).tag(repository, key)
    try:
        for chunk in client.images.push(repository, key, stream=True, decode=True):
            if "error" in chunk:
                raise InfrastructureError(f"pushing {tag} to {address} failed: {chunk['error']}")
    finally:  # the registry's name was only for the push: the engine keeps the image under its own tag
        try:
            client.images.remove(f"{repository}:{key}", noprune=True)
        except docker.errors.APIError:
            pass
    digest = registry_digest(tag, address)
    log.info("pushed %s to %s (%s)", tag, address, digest)
    return digest or ""


def pull(client, tag: str, address: str) -> bool:
    """Pull `tag` from the registry under its local name; False when the registry does not have it."""
    if registry_digest(tag, address) is None:
        return False
    repository, key = remote_name(tag, address)
    try:
        image = client.images.pull(repository, key)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"pulling {tag} from {address} failed: {exc}") from exc
    image.tag(*tag.rsplit(":", 1))
    log.info("pulled %s from %s (%s)", tag, address, image.id)
    return True


# ---------------------------------------------------------------- the registry process


def registry_answers(address: str) -> bool:
    try:
        return httpx.get(f"http://{address}/v2/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_registry(root: str | Path, port: int = 5000, host: str = "127.0.0.1", timeout: float = 30) -> str:
    """Start Debian's `docker-registry` serving `host:port`, its blobs under `root`; returns `localhost:PORT` (Docker
    trusts a registry on localhost without TLS; other hosts need the engines' `--insecure-registry`). An already
    running registry of `root` is reused."""
    binary = shutil.which(REGISTRY_BINARY)
    if binary is None:
        raise InfrastructureError(f"`{REGISTRY_BINARY}` is not installed: `apt-get install docker-registry` "
                                  "(scripts/setup.sh does it)")
    root = Path(root).resolve()
    address = f"localhost:{port}"
    if registry_pid(root) and registry_answers(address):
        return address
    if registry_answers(address):
        raise InfrastructureError(f"another registry already answers on port {port}; pick another --port")
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yml").write_text(CONFIG.format(storage=root / "storage", host=host, port=port))
    try:
        proc = start_daemon([binary, "serve", str(root / "config.yml")], root / "registry.log",
                            lambda: registry_answers(address), timeout=timeout, interval=0.2)
    except DaemonFailed as exc:
        raise InfrastructureError(f"the registry on port {port} did not start ({exc.why}); its log "
                                  f"({root}/registry.log):\n{exc.tail}") from None
    (root / "registry.pid").write_text(str(proc.pid))
    log.info("registry %s serving %s", address, root / "storage")
    return address


def registry_pid(root: str | Path) -> int | None:
    """The pid of the registry started for `root`, when it still runs."""
    return pid_in(Path(root, "registry.pid"))


def stop_registry(root: str | Path) -> bool:
    """Stop the registry started for `root` (its blobs stay); False when none ran."""
    pid = registry_pid(root)
    if pid is None:
        return False
    stop_daemon(pid, 10)
    Path(root, "registry.pid").unlink(missing_ok=True)
    return True

