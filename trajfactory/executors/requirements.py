"""A repository's dependencies, read from its packaging files (both backends): `find_requirements` (runtime and
test dependencies; what building the project itself needs is in `build_requirements.py`). `wheelhouse.py` downloads
them and installs the project.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import logging
import re
import tomllib
from pathlib import Path
from typing import Callable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version


from .images import ALWAYS_REQUIRED, TEST_EXTRAS
from trajfactory.runtime import parse_python

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- requirements


def clean_requirements(reqs, project: str | None = None, extras_of=None) -> list[str]:
    """Valid PEP 508 strings; a requirement on the project itself expands to its named extras."""
    out: list[str] = []
    for raw in reqs or []:
        if not isinstance(raw, str):
            continue
        try:
            req = Requirement(raw.strip())
        except InvalidRequirement:
            log.warning("skipping unparseable requirement %r", raw)
            continue
        if req.url:
            log.warning("skipping direct-reference requirement %r (no network in the build)", raw)
            continue
        if project and canonicalize_name(req.name) == canonicalize_name(project):
            for extra in sorted(req.extras):
                out += extras_of(extra) if extras_of else []
            continue
        out.append(str(req))
    return out


def _poetry_bounds(op: str, version: str) -> str | None:
    """Poetry's caret / tilde constraint as PEP 440 bounds: `^7.2.0` is `>=7.2.0,<8.0.0`, `~1.2` is `>=1.2,<1.3`."""
    try:
        release = list(Version(version).release)
    except InvalidVersion:
        return None
    if op == "^":  # the first non-zero component may not change (the last given one when all are zero)
        i = next((n for n, part in enumerate(release) if part), len(release) - 1)
    else:  # tilde: the minor version may not change (the major one when only a major is given)
        i = min(1, len(release) - 1)
    upper = [*release[:i], release[i] + 1]
    return f">={version},<{'.'.join(map(str, upper + [0] * max(0, len(release) - len(upper))))}"


def _poetry_spec(name: str, spec) -> str | None:
    """A simple poetry constraint as PEP 508 (caret and tilde keep their upper bound: `^7.2` excludes 8)."""
    if isinstance(spec, dict):
        if not isinstance(spec.get("version"), str) or spec.get("optional"):
            return None  # path / git / url / optional dependencies are not simple
        spec = spec["version"]
    if not isinstance(spec, str) or name.lower() == "python":
        return None
    spec = spec.strip()
    if spec in ("", "*") or "||" in spec:  # an alternative of ranges has no PEP 440 spelling: take any version
        return name
    parts = []
    for part in (p.strip() for p in spec.split(",")):
        if part[:1] in "^~" and part[1:2] != "=":
            bounds = _poetry_bounds(part[0], part[1:].strip())
            if bounds is None:
                return name
            parts.append(bounds)
        else:
            parts.append(part if part[:1] in "<>=!~" else f"=={part}")
    return name + ",".join(parts)


def _from_pyproject(path: Path, extras: tuple[str, ...] = TEST_EXTRAS) -> list[str]:
    data = tomllib.loads(path.read_text())
    project = data.get("project", {})
    name = project.get("name")
    optional = project.get("optional-dependencies", {}) or {}
    seen: set[str] = set()

    def extras_of(extra: str) -> list[str]:
        if extra in seen:
            return []
        seen.add(extra)
        return clean_requirements(optional.get(extra, []), name, extras_of)

    reqs = clean_requirements(project.get("dependencies", []), name, extras_of)
    for extra in extras:
        reqs += extras_of(extra)
    groups = data.get("dependency-groups", {}) or {}
    for group in TEST_EXTRAS:
        reqs += clean_requirements(groups.get(group, []), name)
    poetry = data.get("tool", {}).get("poetry", {})
    tables = [poetry.get("dependencies", {}), poetry.get("dev-dependencies", {})]
    tables += [poetry.get("group", {}).get(g, {}).get("dependencies", {}) for g in TEST_EXTRAS]
    for table in tables:
        for dep, spec in (table or {}).items():
            reqs += clean_requirements([_poetry_spec(dep, spec)], poetry.get("name"))
    return reqs


def _from_setup_cfg(path: Path, extras: tuple[str, ...] = TEST_EXTRAS) -> list[str]:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(path.read_text())
    reqs = cfg.get("options", "install_requires", fallback="").splitlines()
    reqs += cfg.get("options", "tests_require", fallback="").splitlines()
    for extra in extras:
        reqs += cfg.get("options.extras_require", extra, fallback="").splitlines()
    return clean_requirements([r.split("#")[0] for r in reqs if r.strip()], cfg.get("metadata", "name", fallback=None))


def _literal_items(node: ast.expr) -> list:
    """The literal items of a list or tuple display, each on its own: an item the file computes (sqlglot 30's
    `f"sqlglotc=={version}"`) is left out, not the whole list; [] for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # one requirement, as setuptools allows
        return [node.value]
    if not isinstance(node, (ast.List, ast.Tuple)):
        return []
    out = []
    for item in node.elts:
        with contextlib.suppress(ValueError, TypeError, SyntaxError):
            out.append(ast.literal_eval(item))
    return out


def _from_setup_py(path: Path, extras: tuple[str, ...] = TEST_EXTRAS) -> list[str]:
    """The literal items of the install_requires / tests_require / extras_require keywords of a setup() call (one
    that is computed is left out: the others stay)."""
    reqs: list[str] = []
    for node in ast.walk(parse_python(path.read_text())):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "setup"):
            continue
        for kw in node.keywords:
            if kw.arg in ("install_requires", "tests_require"):
                reqs += clean_requirements(_literal_items(kw.value))
            elif kw.arg == "extras_require" and isinstance(kw.value, ast.Dict):
                for key, value in zip(kw.value.keys, kw.value.values):
                    if isinstance(key, ast.Constant) and key.value in extras:
                        reqs += clean_requirements(_literal_items(value))
    return reqs


def _from_requirements_txt(path: Path, repo: Path, depth: int = 0) -> list[str]:
    reqs: list[str] = []
    for line in path.read_text().splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith(("-r ", "--requirement ")) and depth < 3:
            included = (path.parent / line.split(None, 1)[1]).resolve()
            if included.is_file() and included.is_relative_to(repo.resolve()):
                reqs += _from_requirements_txt(included, repo, depth + 1)
        elif line and not line.startswith(("#", "-", ".", "/")) and "://" not in line:
            reqs += clean_requirements([line])
    return reqs


_FACTORED = re.compile(r"^([A-Za-z0-9_.!,-]+):\s+(.*)$")


def _factored(value: str) -> list[tuple[str, str]]:
    """tox's lines, each with its factor condition (`unit-!py315t: matplotlib`), '' where it has none."""
    out = []
    for line in value.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            match = _FACTORED.match(line)
            out.append((match.group(1), match.group(2).strip()) if match else ("", line))
    return out


def _holds(condition: str, factors: set[str]) -> bool:
    """Whether a tox condition holds for an environment with `factors` (`a,b-c`: a, or b and c; `!x`: not x)."""
    return not condition or any(
        all((f[1:] not in factors) if f.startswith("!") else (f in factors) for f in alt.split("-") if f)
        for alt in condition.split(","))


def _from_tox_ini(path: Path, repo: Path) -> tuple[list[str], tuple[str, ...], list[Path]]:
    """The `deps` and `extras` of tox's `[testenv]` that hold for the factors of its pytest command, the way the
    maintainers' `tox` installs the suite's environment (pyparsing: `commands = unit: pytest tests ...` takes
    `extras = unit: diagrams`, whose `railroad` its tests import), and the requirements files those deps name."""
    cfg = configparser.ConfigParser(interpolation=None, strict=False)
    cfg.read_string(path.read_text())
    if not cfg.has_section("testenv"):
        return [], (), []
    env = cfg["testenv"]
    runs = [cond for cond, command in _factored(env.get("commands", "")) if re.search(r"\bpy\.?test\b", command)]
    if not runs:
        return [], (), []
    factors = {f for cond in runs for alt in cond.split(",") for f in alt.split("-") if f and not f.startswith("!")}
    deps: list[str] = []
    named: list[Path] = []
    for cond, dep in _factored(env.get("deps", "")):
        dep = dep.replace("{toxinidir}/", "")
        if not _holds(cond, factors) or "{" in dep:
            continue
        if dep.startswith(("-r", "--requirement")):
            included = (repo / dep.removeprefix("--requirement").removeprefix("-r").strip().lstrip("=")).resolve()
            if included.is_file() and included.is_relative_to(repo.resolve()):
                deps += _from_requirements_txt(included, repo)
                named.append(included)
        elif not dep.startswith(("-", ".", "/")):
            deps += clean_requirements([dep])
    extras = tuple(e.strip() for cond, value in _factored(env.get("extras", "")) if _holds(cond, factors)
                   for e in value.split(",") if e.strip())
    return deps, extras, named


def requirement_files(repo_dir: str | Path) -> list[Path]:
    repo = Path(repo_dir)
    names = [*repo.glob("requirements*.txt"), *repo.glob("*-requirements*.txt"), *repo.glob("*_requirements*.txt")]
    names += [repo / "requirements" / f"{n}.txt" for n in ("base", "main", "test", "tests", "testing", "dev")]
    # a test suite's own requirements beside it (`pip install -r tests/requirements.txt`, as packaging's nox does)
    for tests in ("tests", "test", "testing"):
        names += [*repo.glob(f"{tests}/requirements*.txt"), *repo.glob(f"{tests}/*-requirements*.txt")]
    # documentation and linting requirements are not needed to run tests and often pin heavy tools; those for a
    # Python 2 (ecdsa 0.19.2's build-requirements-2.6.txt pins a cffi<1.14 that no Python 3 builds, and hypothesis<3)
    return sorted({p for p in names if p.is_file() and not re.search(r"doc|lint|release", p.name)
                   and not _PYTHON2_FILE.search(p.name)})


_PYTHON2_FILE = re.compile(r"(?:^|[-_])(?:py|python)?-?2(?:[._]?[0-9]{1,2})?(?:[-_.][^/]*)?\.txt$")
"""A requirements file named for a Python 2 (`-2.6`, `-py27`, `_py2`)."""


def find_requirements(repo_dir: str | Path, extra: list[str] | None = None) -> list[str]:
    """The repository's runtime + test requirements (best effort), plus pytest, pytest-cov, coverage: its packaging
    files' dependencies and test extras, its requirements files, and what tox's `[testenv]` installs for its pytest
    command (`deps`, and `extras` added to the test extras); and `extra`, the recipe's `test_requirements` for it,
    kept whatever they are (the user named them), each in place of the project's own requirements of the same
    distribution: html5lib 1.1 pins `pytest<6`, which does not run on Python 3.11, and `pytest>=7` in the recipe
    replaces the pin instead of conflicting with it."""
    repo = Path(repo_dir)
    reqs: list[str] = []
    extras = TEST_EXTRAS
    named: list[Path] = []
    if (repo / "tox.ini").is_file():
        try:
            reqs, tox_extras, named = _from_tox_ini(repo / "tox.ini", repo)
            extras = tuple(dict.fromkeys((*TEST_EXTRAS, *tox_extras)))
        except Exception as exc:  # noqa: BLE001 - best effort, like the other files
            log.warning("could not read dependencies from %s: %s", repo / "tox.ini", exc)
    sources: list[tuple[Path, Callable[[Path], list[str]]]] = [
        (repo / "pyproject.toml", lambda p: _from_pyproject(p, extras)),
        (repo / "setup.cfg", lambda p: _from_setup_cfg(p, extras)),
        (repo / "setup.py", lambda p: _from_setup_py(p, extras)),
    ]
    for path, parse in sources:
        if not path.is_file():
            continue
        try:
            reqs += parse(path)
        except Exception as exc:  # a broken setup file must not stop the build: best effort
            log.warning("could not read dependencies from %s: %s", path, exc)
    # the requirements files tox installs for the pytest command are the suite's: the others beside them pin other
    # tools (wcwidth's requirements-update.txt and requirements-wheels.txt pin a certifi the index does not have)
    if not named:
        reqs += _current_files(repo, reqs, requirement_files(repo))
    runtime = _runtime_names(repo)
    reqs = [r for r in reqs if canonicalize_name(Requirement(r).name) in runtime or not _tooling(r)]
    overridden = {requirement_name(r) for r in extra or []} - {""}
    reqs = [r for r in reqs if canonicalize_name(Requirement(r).name) not in overridden]
    reqs += list(extra or [])
    named = {canonicalize_name(Requirement(r).name) for r in reqs}
    reqs += [r for r in ALWAYS_REQUIRED if canonicalize_name(r) not in named]
    if _pins_pytest_5(reqs):
        # pytest-cov 6.2 uses pluggy 1.2's `hookimpl(wrapper=True)`, which pytest 5's pluggy 0.13 lacks, and does not
        # say so in its requirements: pytest 5 crashed loading it (isodate with `pytest<6`, on Python 3.9). A pin of
        # the project's own stays.
        reqs = ["pytest-cov<6" if _unpinned(r, "pytest-cov") else r for r in reqs]
    return sorted(set(reqs), key=str.lower)


def _current_files(repo: Path, declared: list[str], files: list[Path]) -> list[str]:
    """The requirements of `files`, those the project does not state otherwise: a file with a pin (`==`) that a
    requirement of its packaging files or tox (`declared`) excludes, or that such a requirement's pin is excluded by,
    is left out whole, as out of date. parsy 2.2 ships a `tests/requirements-tests.txt` pinning `pytest==7.1.1` and
    `pytest-cov==4.0.0`, which nothing reads any more, beside the `pytest>=8.3.4` and `pytest-cov>=6.0.0` of its
    `[dependency-groups]`: pip can install no set that holds both."""
    out: list[str] = []
    for path in files:
        try:
            found = _from_requirements_txt(path, repo)
        except Exception as exc:  # noqa: BLE001 - best effort, like the packaging files
            log.warning("could not read dependencies from %s: %s", path, exc)
            continue
        clash = next(((a, b) for a in found for b in declared if _pins_apart(a, b)), None)
        if clash:
            log.info("%s: left out, out of date: its %s excludes the project's %s", path.relative_to(repo), *clash)
            continue
        out += found
    return out


def _pins_apart(a: str, b: str) -> bool:
    """Whether requirements `a` and `b` name the same distribution, neither with a marker, and one pins a version
    (`==V`) the other's specifier excludes."""
    try:
        ra, rb = Requirement(a), Requirement(b)
    except InvalidRequirement:
        return False
    if canonicalize_name(ra.name) != canonicalize_name(rb.name) or ra.marker or rb.marker:
        return False
    for pinned, other in ((ra, rb), (rb, ra)):
        for spec in pinned.specifier:
            if spec.operator == "==" and "*" not in spec.version:
                with contextlib.suppress(InvalidVersion):
                    if not other.specifier.contains(Version(spec.version), prereleases=True):
                        return True
    return False


def _unpinned(requirement: str, name: str) -> bool:
    """Whether `requirement` names the distribution `name` with no version specifier."""
    req = Requirement(requirement)
    return canonicalize_name(req.name) == name and not req.specifier


def _pins_pytest_5(reqs: list[str]) -> bool:
    """Whether a requirement keeps pytest below 6 (html5lib 1.1's `pytest<6,>=5.4.2`)."""
    for r in reqs:
        req = Requirement(r)
        if canonicalize_name(req.name) == "pytest" and req.specifier and not req.specifier.contains("6.0") and \
                req.specifier.contains("5.4.3"):
            return True
    return False


# Documentation, lint, formatting and release tools that `dev` extras, poetry dev groups and tox's extras carry: no
# test run needs them, and their old pins (a Sphinx 4, a pre-commit 2) are what most often fails to install on a
# current Python. pytest plugins that turn linters into test items (`pytest-ruff`, `pytest-mypy`, enabled by
# `pytest-enabler` where installed, as jaraco's projects do in tox) would make lint results tests of a task.
_TOOLING = re.compile(
    r"^(sphinx.*|furo|mkdocs.*|myst-parser|pre-commit(?:-.*)?|black|blacken-docs|flake8.*|ruff|isort|pylint|autopep8|"
    r"yapf|pydocstyle|pycodestyle|doc8|twine|check-manifest|bump2?version|towncrier|commitizen|coveralls|codecov|tox|"
    r"tox-.*|nox|pyroma|readme-renderer|pytest-(?:ruff|mypy|checkdocs|flake8.*|pylint|black|isort|enabler|"
    r"pycodestyle|pydocstyle))$"
)


def _tooling(requirement: str) -> bool:
    return bool(_TOOLING.match(canonicalize_name(Requirement(requirement).name)))


def _runtime_names(repo: Path) -> set[str]:
    """The project's own runtime dependencies (never dropped as tooling: a flake8 plugin needs flake8)."""
    names: set[str] = set()
    with contextlib.suppress(Exception):
        data = tomllib.loads((repo / "pyproject.toml").read_text())
        names |= {Requirement(r).name for r in data.get("project", {}).get("dependencies", []) or []}
        names |= set(data.get("tool", {}).get("poetry", {}).get("dependencies", {}) or {})
    with contextlib.suppress(Exception):
        cfg = configparser.ConfigParser(interpolation=None)
        cfg.read_string((repo / "setup.cfg").read_text())
        names |= {Requirement(r.split("#")[0].strip()).name
                  for r in cfg.get("options", "install_requires", fallback="").splitlines() if r.split("#")[0].strip()}
    with contextlib.suppress(Exception):
        for node in ast.walk(parse_python((repo / "setup.py").read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "setup":
                for kw in node.keywords:
                    if kw.arg == "install_requires":
                        names |= {Requirement(r).name for r in ast.literal_eval(kw.value)}
    return {canonicalize_name(n) for n in names}


def requirement_name(requirement: str) -> str:
    """The canonical name of the distribution `requirement` names; "" for no valid requirement."""
    try:
        return canonicalize_name(Requirement(requirement).name)
    except InvalidRequirement:
        return ""
