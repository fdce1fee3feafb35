"""The layering the code keeps, checked by import-linter with the contracts in pyproject.toml: the real package
keeps them, and a copy of the package with one upward import breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH puts this root's package first, so the copy is checked and not the installed checkout.
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=300)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "trajfactory", root / "trajfactory", ignore=shutil.ignore_patterns("data", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root)
    return root


def test_the_package_keeps_its_layers():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 kept, 0 broken" in out.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    root = _copy(tmp_path)
    assert _lint(root).returncode == 0  # the copy is clean before the change
    core = root / "trajfactory" / "schema" / "core.py"
    core.write_text(core.read_text() + "\nfrom trajfactory.executors import episode  # noqa: E402,F401\n")
    out = _lint(root)
    assert out.returncode != 0
    assert "Layers:" in out.stdout and "BROKEN" in out.stdout
    assert "trajfactory.schema.core -> trajfactory.executors.episode" in out.stdout


def test_siblings_that_import_each_other_break_the_acyclic_contract(tmp_path):
    root = _copy(tmp_path)
    executors = root / "trajfactory" / "executors"
    # episode imports protocol; protocol importing episode back makes a cycle inside one layer
    (executors / "protocol.py").write_text((executors / "protocol.py").read_text()
                                           + "\nfrom trajfactory.executors import episode  # noqa: E402,F401\n")
    out = _lint(root)
    assert out.returncode != 0 and "No cycles are allowed in trajfactory.executors" in out.stdout, out.stdout[-3000:]


def test_importing_the_sources_loads_no_model_client():
    code = ("import sys, trajfactory.sources, trajfactory.sources.tutorials, trajfactory.sources.repos; "
            "loaded = [m for m in ('httpx', 'trajfactory.models.client', 'trajfactory.executors') if m in sys.modules]; "
            "assert not loaded, loaded")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
