"""A repository's wheelhouse is chosen for the sandbox's Python, not the host's (`executors/wheelhouse.py`).

The host's Python (3.11.7 on the project machines) is newer than the base image's (3.11.2). A release whose
`Requires-Python` admits the first and not the second was downloaded, and the image's install refused it: soupsieve
2.7 was quarantined `install_failed` because its test requirement beautifulsoup4 pulled soupsieve 2.10
(`>=3.11.5`). Here a find-links folder holds made-up distributions, so what pip can choose is known.
"""

from __future__ import annotations

import os
import platform
import zipfile
from pathlib import Path

import pytest

from pypi_index_server import sdist
from trajfactory.executors.base import EnvironmentBuildError
from trajfactory.executors.wheelhouse import build_wheelhouse, requires_python

HOST = platform.python_version()
OLDER = ".".join(HOST.split(".")[:2]) + ".0"
"""A sandbox Python older than the host's, of the same minor version (3.11.0 beside 3.11.7)."""


def _wheel(folder: Path, name: str, version: str, requires: str, depends: tuple[str, ...] = ()) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    meta = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Python: {requires}\n"
            + "".join(f"Requires-Dist: {d}\n" for d in depends))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}.py", f"VERSION = {version!r}\n")
        zf.writestr(f"{info}/METADATA", meta)
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def _sdist_only(folder: Path, name: str, version: str) -> None:
    (tree := folder / f".{name}-tree").mkdir()
    (folder / f"{name}-{version}.tar.gz").write_bytes(sdist(name, version, tree, {
        "pyproject.toml": f'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
                          f'[project]\nname = "{name}"\nversion = "{version}"\n[tool.setuptools]\npy-modules = ["{name}"]\n',
        f"{name}.py": "X = 1\n",
    }))


@pytest.fixture
def links(tmp_path, monkeypatch) -> Path:
    assert HOST != OLDER, f"the host's Python {HOST} must have a micro version above 0 for this test"
    folder = tmp_path / "links"
    folder.mkdir()
    # tfwh-dep: its newest release admits the host's Python only; the one before admits both
    _wheel(folder, "tfwh_dep", "1.0", ">=3.8")
    _wheel(folder, "tfwh_dep", "2.0", f">={HOST}")
    _wheel(folder, "tfwh_uses", "1.0", ">=3.8", depends=("tfwh_dep",))  # pulls tfwh-dep the way bs4 pulls soupsieve
    _wheel(folder, "tfwh_newonly", "3.0", f">={HOST}")  # no release for the older Python at all
    _sdist_only(folder, "tfwh_src", "1.0")  # no wheel: pip cannot choose for another Python among its files
    monkeypatch.setenv("PIP_FIND_LINKS", f"{folder} {os.environ.get('PIP_FIND_LINKS', '')}".strip())
    return folder


def _repo(root: Path, deps: list[str]) -> Path:
    root.mkdir()
    (root / "pyproject.toml").write_text(f'[project]\nname = "tfwh-project"\ndependencies = {deps!r}\n'.replace("'", '"'))
    return root


def _versions(house: Path, name: str) -> list[str]:
    return sorted(w.name.split("-")[1] for w in house.glob(f"{name}-*.whl"))


@pytest.mark.parametrize("deps", [["tfwh_uses"], ["tfwh_uses", "tfwh_src"]], ids=["wheels", "an-sdist-among-them"])
def test_the_wheelhouse_holds_releases_the_sandboxs_python_installs(tmp_path, links, deps):
    repo = _repo(tmp_path / "repo", deps)
    house, _ = build_wheelhouse(repo, tmp_path / "cache", python_version=OLDER)
    assert _versions(house, "tfwh_dep") == ["1.0"], sorted(p.name for p in house.iterdir())
    assert _versions(house, "tfwh_uses") == ["1.0"]
    if "tfwh_src" in deps:
        assert _versions(house, "tfwh_src") == ["1.0"]  # built into a wheel on the host, as before
    # for the host's own Python (the local backend's sandboxes), the newest release is the one to have
    host_house, _ = build_wheelhouse(repo, tmp_path / "cache", python_version=None)
    assert host_house != house and _versions(host_house, "tfwh_dep") == ["2.0"]
    assert requires_python(next(host_house.glob("tfwh_dep-*.whl"))) == f">={HOST}"


def test_a_requirement_with_no_release_for_the_sandboxs_python_is_install_failed_naming_it(tmp_path, links):
    repo = _repo(tmp_path / "repo", ["tfwh_newonly", "tfwh_src"])
    with pytest.raises(EnvironmentBuildError) as err:
        build_wheelhouse(repo, tmp_path / "cache", python_version=OLDER)
    assert err.value.reason == "install_failed"
    assert "tfwh_newonly-3.0" in err.value.detail and f"requires Python >={HOST}" in err.value.detail, err.value.detail
    assert f"the sandbox has Python {OLDER}" in err.value.detail
    assert not any((tmp_path / "cache" / "wheelhouse").iterdir())  # no half-made wheelhouse is left to be reused


def test_what_an_older_sandbox_python_needs_that_the_hosts_markers_left_out(tmp_path):
    """pip evaluates markers for the Python it runs on: resolved on the host for a 3.9 sandbox, coverage[toml] came
    without `tomli; python_full_version <= "3.11.0a6"`, and setuptools-scm without `typing-extensions;
    python_version < "3.11"`; and a wheel built for the host only (wcwidth 0.9.4's `cp310-abi3`) came too."""
    from trajfactory.executors.wheel_fit import missing_for, tags_fit

    house = tmp_path / "house"
    house.mkdir()
    _wheel(house, "tfwh_cov", "7.0", ">=3.8",
           depends=('tfwh_tomli; python_full_version <= "3.11.0a6" and extra == "toml"', 'tfwh_never; extra == "other"'))
    _wheel(house, "tfwh_cli", "1.0", ">=3.8", depends=("tfwh_cov[toml]>=7", 'tfwh_te>=4; python_version < "3.11"'))
    assert missing_for(house, ["tfwh_cli"], "3.9.2") == ["tfwh_te>=4", "tfwh_tomli"]
    assert missing_for(house, ["tfwh_cli"], "3.13.5") == []  # neither marker holds there
    assert missing_for(house, ['tfwh_cli; python_version >= "3.12"'], "3.9.2") == []  # nor does the top one's
    _wheel(house, "tfwh_te", "3.0", ">=3.8")  # the host's resolution chose an older one: not what 3.9 asks for
    assert missing_for(house, ["tfwh_cli"], "3.9.2") == ["tfwh_te>=4", "tfwh_tomli"]
    _wheel(house, "tfwh_te", "4.0", ">=3.8")
    assert missing_for(house, ["tfwh_cli"], "3.9.2") == ["tfwh_tomli"]
    for name, target, fits in [("w-1-cp310-abi3-manylinux2014_x86_64.whl", "3.9.2", False),
                               ("w-1-cp310-abi3-manylinux2014_x86_64.whl", "3.13.5", True),
                               ("w-1-cp311-cp311-manylinux2014_x86_64.whl", "3.13.5", False),
                               ("w-1-py3-none-any.whl", "3.9.2", True), ("w-1-py2-none-any.whl", "3.9.2", False),
                               ("w-1-py2.py3-none-any.whl", "3.13.5", True), ("w-1-py312-none-any.whl", "3.11.2", False)]:
        assert tags_fit(name, target) is fits, (name, target)
