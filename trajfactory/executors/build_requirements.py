"""What building a repository's project itself needs, read from its packaging files (both backends):
`installable`, `find_build_requirements`, `src_layout`. Its runtime and test dependencies are in
`requirements.py`."""

from __future__ import annotations

import ast
import configparser
import contextlib
import tomllib
from pathlib import Path

from trajfactory.runtime import parse_python

from .requirements import clean_requirements, requirement_name


DEFAULT_BUILD_REQUIRES = ("setuptools>=40.8.0", "wheel")
"""What pip builds a project with when its pyproject.toml names no build system (PEP 517's legacy fallback)."""


def installable(repo_dir: str | Path) -> bool:
    """Whether the repository is a project `pip install .` installs: a setup.py, or a pyproject.toml with a build
    system or a [project] table (a setup.cfg or a pyproject.toml of tool settings alone is no project)."""
    repo = Path(repo_dir)
    if (repo / "setup.py").is_file():
        return True
    try:
        data = tomllib.loads((repo / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return "build-system" in data or "project" in data


def find_build_requirements(repo_dir: str | Path) -> list[str]:
    """What building the project itself needs: `[build-system] requires` (or pip's default) plus `setup_requires`.

    The sandbox reaches no index, so these go into the wheelhouse too; pip's build isolation installs them
    from there. Empty for a repository that is not an installable project.
    """
    repo = Path(repo_dir)
    if not installable(repo):
        return []
    reqs: list[str] = []
    try:
        build = tomllib.loads((repo / "pyproject.toml").read_text()).get("build-system", {})
    except (OSError, tomllib.TOMLDecodeError):
        build = {}
    reqs += clean_requirements(build["requires"]) if isinstance(build.get("requires"), list) else list(DEFAULT_BUILD_REQUIRES)
    if (repo / "setup.cfg").is_file():
        with contextlib.suppress(Exception):
            cfg = configparser.ConfigParser(interpolation=None)
            cfg.read_string((repo / "setup.cfg").read_text())
            reqs += clean_requirements([r.split("#")[0] for r in cfg.get("options", "setup_requires", fallback="").splitlines()
                            if r.strip()])
    if (repo / "setup.py").is_file():
        with contextlib.suppress(Exception):
            tree = parse_python((repo / "setup.py").read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "setup":
                    for kw in node.keywords:
                        if kw.arg == "setup_requires":
                            with contextlib.suppress(ValueError):
                                reqs += clean_requirements(list(ast.literal_eval(kw.value)))
            if _imports(tree, "pkg_resources") and any(requirement_name(r) == "setuptools" for r in reqs):
                reqs.append(SETUPTOOLS_WITH_PKG_RESOURCES)
    return sorted(set(reqs), key=str.lower)


SETUPTOOLS_WITH_PKG_RESOURCES = "setuptools<82"
"""setuptools 82 removed `pkg_resources`; a setup.py that imports it (html5lib 1.1's) builds with an older one, as it
did when it was released (pip's newest setuptools fails it: No module named 'pkg_resources')."""


def _imports(tree: ast.AST, module: str) -> bool:
    """Whether the code imports `module` (or a submodule of it)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == module for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == module and not node.level:
            return True
    return False


def src_layout(repo_dir: str | Path) -> bool:
    """Whether the repository keeps its packages under src/ (the .pth entry points there)."""
    return (Path(repo_dir) / "src").is_dir()
