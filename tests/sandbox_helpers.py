"""A tiny git repository and probe commands shared by the docker and local sandbox tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

FORK_BOMB = "python3 -c 'import os\nwhile True:\n try: os.fork()\n except OSError: pass'"
NET_PROBE = "python3 -c 'import socket; s = socket.socket(); s.settimeout(3); s.connect((\"1.1.1.1\", 53))'"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z"}


def make_repo(root: Path, dependencies: str = '["six"]') -> Path:
    """A tiny src-layout package with one test; fixed dates give the same commit id on every run."""
    (root / "src/tinypkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "tinypkg"\nversion = "0.1.0"\ndependencies = {dependencies}\n')
    (root / "src/tinypkg/__init__.py").write_text("import six\n\n\ndef add(a, b):\n    return a + b\n")
    (root / "tests/test_add.py").write_text("from tinypkg import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n")
    return commit_all(root)


def commit_all(root: Path) -> Path:
    """`root` as a git repository of one commit (fixed dates: the same commit id on every run)."""
    env = {**os.environ, **GIT_ENV}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    return root


def fresh_backend(kind: str, cache_root: Path):
    """A `docker` backend with a label of its own, or a `local` one, caching under `cache_root` (a module's
    parametrized fixture builds its fixture project on both)."""
    import uuid

    import pytest

    from trajfactory.executors.docker import DockerBackend, engine_available
    from trajfactory.executors.local import LocalBackend

    if kind == "local":
        return LocalBackend(cache_root=cache_root)
    if not engine_available():
        pytest.fail("no Docker engine answers; scripts/setup.sh starts dockerd")
    return DockerBackend(cache_root=cache_root, labels={"trajfactory.test": uuid.uuid4().hex})
