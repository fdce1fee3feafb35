"""Docker sandboxes: one image per repository commit, one warm container per sandbox.

The image is the local base image + the repository's wheelhouse installed with `--no-index` + the
repository at its commit in /repo + the project itself installed from it (its metadata, entry points and
scripts; its code is imported from /repo, see `wheelhouse.INSTALL_PROJECT`) + the options of its own pytest
configuration that the harness keeps (`TRAJFACTORY_ADDOPTS`). A sandbox (`docker_sandbox.py`) is a `sleep infinity`
container with no network, CPU/memory/pids limits, no capabilities and a read-only root; commands run through
`docker exec`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import tarfile
import tempfile
import time
from pathlib import Path

import docker
import docker.errors

from trajfactory.settings import SandboxConfig

from .base import EnvironmentBuildError, EnvironmentHandle, InfrastructureError, env_key
from .docker_sandbox import LABEL, DockerSandbox, _engine_errors, container_cpu_seconds
from .images import BASE_IMAGE, clone_at_commit, default_cache_root, ensure_base_image
from .collection import collection_options, ignore_options, sandbox_addopts
from .registry import current_registry, pull, push, registry_digest
from .build_requirements import installable, src_layout
from .requirements import find_requirements
from .wheelhouse import INSTALL_FAILED, INSTALL_PROJECT, INSTALLED, build_wheelhouse, install_failure, pip_output

log = logging.getLogger(__name__)

BUILDER_VERSION = "4"
"""Bumped whenever what goes into an image changes, so images of an older recipe are rebuilt."""
BUILD_ATTEMPTS = 3
"""Builds of one image in all when the engine, not the Dockerfile, fails (`DockerBackend._build_image`)."""
STEP_FAILED = "returned a non-zero code"
"""How the legacy builder reports a RUN step that exited non-zero: the repository's failure, never retried."""
RUN_LABEL = "trajfactory.run"
"""The label naming the factory run that started a container (`runs.py` sets it for the whole process)."""
_run_labels: dict[str, str] = {}

DOCKERFILE = """\
FROM {base}
COPY wheels /tmp/wheels
RUN PIP_ROOT_USER_ACTION=ignore python3 -m pip install --no-index --no-cache-dir --find-links /tmp/wheels \\
    -r /tmp/wheels/requirements.txt
RUN git config --system user.name trajfactory && git config --system user.email trajfactory@localhost \\
    && git config --system --add safe.directory '*' \\
    && echo {pth} > "$(python3 -c 'import site; print(site.getsitepackages()[0])')/trajfactory_repo.pth"
COPY repo /repo
{env}{install}
ENV TRAJFACTORY_ADDOPTS={addopts}
WORKDIR /repo
"""
# the project itself, from /repo, with its build backend from the wheelhouse (no network in a build)
INSTALL_STEP = """\
COPY install_project.py /tmp/install_project.py
RUN python3 /tmp/install_project.py /repo /tmp/wheels {pth} && rm -rf /tmp/wheels /tmp/install_project.py"""


def dockerfile_quote(value: str) -> str:
    """A Dockerfile ENV value that stays literal: double quotes, with backslash, quote and `$` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _client(timeout: int = 600) -> docker.DockerClient:
    try:
        return docker.from_env(timeout=timeout)
    except docker.errors.DockerException as exc:
        raise InfrastructureError(f"no Docker engine answers: {exc}") from exc


def engine_available() -> bool:
    try:
        return bool(docker.from_env(timeout=5).ping())
    except Exception:
        return False


def cleanup_leftover_containers(labels: dict[str, str] | None = None, client=None) -> int:
    """Remove sandbox containers left behind (label trajfactory=1, plus `labels` to narrow it)."""
    client = client or _client()
    wanted = [f"{LABEL}=1", *(f"{k}={v}" for k, v in (labels or {}).items())]
    with _engine_errors("listing leftover sandbox containers"):
        leftovers = client.containers.list(all=True, ignore_removed=True, filters={"label": wanted})
        for container in leftovers:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)  # v: the tmpfs volumes go too
    if leftovers:
        log.info("removed %d leftover sandbox containers", len(leftovers))
    return len(leftovers)


def set_run_id(run_id: str) -> None:
    """Every sandbox container this process starts from now on carries `trajfactory.run=<run_id>` ('' for none)."""
    _run_labels.clear()
    if run_id:
        _run_labels[RUN_LABEL] = run_id


def current_run_id() -> str:
    """The run this process labels its sandbox containers with ('' for none)."""
    return _run_labels.get(RUN_LABEL, "")


def cleanup_run_containers(run_ids: set[str], client=None) -> int:
    """Remove the sandbox containers of the factory runs `run_ids` (label trajfactory.run), and none of other runs."""
    return sum(cleanup_leftover_containers({RUN_LABEL: run_id}, client) for run_id in sorted(run_ids))


_python_versions: dict[str, str] = {}


def image_python(client, image: str, image_id: str) -> str:
    """The version of an image's `python3` (`3.11.2`), asked once per image id: its wheelhouse is chosen for it."""
    if image_id not in _python_versions:
        out = client.containers.run(image, ["python3", "-c", "import platform; print(platform.python_version())"],
                                    remove=True, network_disabled=True, labels={LABEL: "1", **_run_labels})
        _python_versions[image_id] = out.decode().strip()
    return _python_versions[image_id]


def _image_exists(client, tag: str) -> bool:
    with _engine_errors(f"inspecting image {tag}"):
        try:
            client.images.get(tag)
            return True
        except docker.errors.ImageNotFound:
            return False


class DockerBackend:
    """Builds one image per repository commit (cached by content) and opens container sandboxes."""

    name = "docker"

    def __init__(self, cache_root: str | Path | None = None, base_image: str = BASE_IMAGE,
                 labels: dict[str, str] | None = None, client=None):
        self.cache_root = Path(cache_root or default_cache_root())
        self.base_image = base_image
        self.labels = dict(labels or {})
        self.client = client or _client()

    def python_version(self) -> str:
        """The version of the base image's Python, which every sandbox runs (built first if missing)."""
        return image_python(self.client, self.base_image, ensure_base_image(self.base_image, progress=log.info))

    def image_tag(self, repo: str, base_id: str, commit: str, requirements: list[str]) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", repo.lower()).strip("-") or "repo"
        key = "\n".join([base_id, commit, BUILDER_VERSION, *sorted(requirements)])
        return f"trajfactory/repo-{slug}:{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def build(self, source_path: str, repo: str, commit: str, test_requirements: list[str] | None = None,
              ignore_tests: list[str] | None = None, test_env: dict[str, str] | None = None) -> EnvironmentHandle:
        extra, ignore, variables = list(test_requirements or []), list(ignore_tests or []), dict(test_env or {})
        base_id = ensure_base_image(self.base_image, progress=log.info)
        with tempfile.TemporaryDirectory(prefix="trajfactory-build-") as tmp:
            repo_dir = Path(tmp, "repo")
            sha = clone_at_commit(source_path, commit, repo_dir)
            # the collection options of a suite its maintainers' runner collects otherwise than pytest's defaults are
            # baked into the image: they are part of its tag (none for the others, whose tags stay as they were)
            runner = collection_options(repo_dir)
            tag = self.image_tag(repo, base_id, sha,
                                 find_requirements(repo_dir, extra) + runner + ignore_options(ignore)
                                 + env_key(variables))
            python = image_python(self.client, self.base_image, base_id)
            handle = EnvironmentHandle(backend=self.name, name=tag, repo=repo, commit=sha, python=python)
            if self._have_image(tag, share=True):
                return handle
            house, requirements = build_wheelhouse(repo_dir, self.cache_root, python_version=python, extra=extra)
            pth = "/repo/src" if src_layout(repo_dir) else "/repo"
            addopts, dropped = sandbox_addopts(repo_dir, house, ignore)
            if dropped:
                log.info("%s: pytest options of the project that the harness drops: %s", repo, " ".join(dropped))
            if runner:
                log.info("%s: pytest collects what its maintainers' runner does: %s", repo, " ".join(runner))
            install = INSTALL_STEP.format(pth=pth) if installable(repo_dir) else "RUN rm -rf /tmp/wheels"
            env = "".join(f"ENV {name}={dockerfile_quote(value)}\n" for name, value in sorted(variables.items()))
            dockerfile = DOCKERFILE.format(base=self.base_image, pth=pth, install=install, env=env,
                                           addopts=dockerfile_quote(addopts))
            with tempfile.TemporaryFile() as context:
                with tarfile.open(fileobj=context, mode="w") as tar:
                    for name, data in (("Dockerfile", dockerfile), ("install_project.py", INSTALL_PROJECT)):
                        info = tarfile.TarInfo(name)
                        info.size, info.mtime = len(data.encode()), int(time.time())
                        tar.addfile(info, io.BytesIO(data.encode()))
                    tar.add(house, arcname="wheels")
                    tar.add(repo_dir, arcname="repo")
                context.seek(0)
                log.info("building image %s (%s at %s, %d requirements)", tag, repo, sha[:12], len(requirements))
                self._build_image(context, tag, repo)
        if registry := current_registry():  # the other nodes pull it instead of building it again
            push(self.client, tag, registry)
        return handle

    def _have_image(self, tag: str, share: bool = False) -> bool:
        """Whether the engine has `tag`, pulled from the shared registry (`registry.py`) when another node built it;
        with `share`, an image only this engine has is pushed there."""
        registry = current_registry()
        if _image_exists(self.client, tag):
            if share and registry and registry_digest(tag, registry) is None:
                push(self.client, tag, registry)
            log.info("image %s exists; reusing it", tag)
            return True
        return bool(registry) and pull(self.client, tag, registry)

    def _build_image(self, context, tag: str, repo: str) -> None:
        """Builds `tag`; a failure the engine made (not a step of the Dockerfile exiting non-zero: concurrent legacy
        builds on one engine now and then lose a layer another build is committing) is tried again from the same
        context, twice at most, then raised as the repository's build failure with the engine's words."""
        for attempt in range(1, BUILD_ATTEMPTS + 1):
            context.seek(0)
            lines, error = self._build_stream(context, tag)
            if error is None and _image_exists(self.client, tag):
                return
            if (error is not None and STEP_FAILED in error) or attempt == BUILD_ATTEMPTS:
                break
            log.warning("building image %s: the engine failed (%s); trying again (%d of %d)", tag,
                        error or "no image after the build", attempt + 1, BUILD_ATTEMPTS)
            time.sleep(2 * attempt)
        steps = [line for line in lines if line.startswith("Step ")]
        if steps and "install_project" in steps[-1]:
            step_output = "\n".join(lines[len(lines) - lines[::-1].index(steps[-1]):])
            if INSTALL_FAILED in step_output:
                raise EnvironmentBuildError("install_failed", install_failure(step_output, repo))
        reason = "install_failed" if steps and "pip install" in steps[-1] else "build_failed"
        tail = pip_output("\n".join(lines), 25)
        raise EnvironmentBuildError(
            reason,
            f"building the image of {repo} failed at {steps[-1] if steps else 'the start'}:\n{tail}\n"
            "the repository's requirements must install offline from its wheelhouse "
            "(check the failing requirement in the log above)",
        )

    def _build_stream(self, context, tag: str) -> tuple[list[str], str | None]:
        """One build on the engine: its output lines and the error it ended with (None when it reported none)."""
        lines: list[str] = []
        error = None
        with _engine_errors(f"building image {tag}"):
            stream = self.client.api.build(fileobj=context, custom_context=True, tag=tag, network_mode="none",
                                           rm=True, forcerm=True, pull=False, decode=True)
            for chunk in stream:
                text = chunk.get("stream", "")
                lines += text.splitlines()
                if text.startswith("Step ") or text.startswith(INSTALLED):
                    log.info("%s: %s", tag, text.strip())
                if "error" in chunk:
                    error = chunk["error"]
                    lines.append(error)
        return lines, error

    def start(self, env: EnvironmentHandle, limits: SandboxConfig | None = None) -> "DockerSandbox":
        labels = {**_run_labels, **self.labels, "trajfactory.repo": env.repo, "trajfactory.commit": env.commit}
        if current_registry() and not self._have_image(env.name):  # a cluster node that did not build it
            raise InfrastructureError(f"image {env.name} is neither on this node's engine nor in the registry "
                                      f"{current_registry()}; build the environment first")
        return DockerSandbox(self.client, env.name, env.commit, limits or SandboxConfig(), labels)


__all__ = ["LABEL", "RUN_LABEL", "DockerBackend", "DockerSandbox", "cleanup_leftover_containers", "cleanup_run_containers",
           "container_cpu_seconds", "current_run_id", "engine_available", "set_run_id"]
