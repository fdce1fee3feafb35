"""What the tests that run the factory's CLI as a real subprocess share: a small recipe on the bundled textkit
repository (or others), the environment (its own Prefect home, this checkout on the path, and the session's shared
Prefect server when a test passes `api`, the `shared_prefect_api` fixture), and the command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT

CLI = [sys.executable, "-m", "trajfactory.cli"]


def recipe(tmp: Path, repos: list[str] | None = None, *, name: str = "test", candidates: int = 14,
           concurrency: int = 1, batch_size: int = 2, reference_runs: int = 2, work_dir: Path | None = None,
           datasets: Path | None = None) -> Path:
    """A recipe file in `tmp`: `repos` (default the bundled textkit), seeded synthesis, small sandboxes."""
    body = {
        "name": name,
        "work_dir": str(work_dir or tmp / "work"),
        "repos": [{"uri": u} for u in repos or ["builtin:textkit"]],
        "synthesis": {"max_candidates_per_repo": candidates, "seed": 3},
        "validation": {"reference_runs": reference_runs, "suite_timeout_s": 60, "batch_size": batch_size},
        "sandbox": {"concurrency": concurrency, "memory": "1g"},
        "dataset": {"name": "swe", "root": str(datasets or tmp / "datasets")},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def undisturbed_recipe(tmp: Path, *, work_dir: Path | None = None, datasets: Path | None = None) -> Path:
    """The recipe of the runs that are disturbed (killed, an engine restart, a full disk) and compared with the
    session's undisturbed run of it (`conftest.undisturbed_textkit`): one name, so their datasets are comparable."""
    return recipe(tmp, name="undisturbed", reference_runs=1, work_dir=work_dir, datasets=datasets)


def env(tmp: Path, api: str | None = None) -> dict:
    """The command's environment; with `api` (a Prefect server's API URL) its flows run on that server instead of a
    throwaway one of their own (which costs a run ~10 s, more on a busy machine)."""
    return {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PYTHONPATH": str(ROOT),
            **({"PREFECT_API_URL": api} if api else {})}


def cli(tmp: Path, *args: str, timeout: float = 1200, api: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env(tmp, api), cwd=tmp, capture_output=True, text=True, timeout=timeout)


def start(tmp: Path, *args: str, api: str | None = None) -> subprocess.Popen:
    """The command in the background, in its own process group (so a test can SIGKILL all of it), output piped."""
    return subprocess.Popen([*CLI, *args], env=env(tmp, api), cwd=tmp, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
