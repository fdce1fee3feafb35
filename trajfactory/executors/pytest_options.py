"""The options of a project's own pytest configuration that a maintainer's run depends on and the harness can
live with (an allowlist), handed to the sandbox as `TRAJFACTORY_ADDOPTS`.
"""

from __future__ import annotations

import configparser
import logging
import shlex
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path

from packaging.utils import canonicalize_name



log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- the project's pytest options

PYTEST_CONFIG_FILES = (
    "pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg",
)
"""The files pytest reads its configuration from, in its own order of precedence (pytest >= 9 adds the TOML ones);
in one directory, the first that holds a pytest section wins, as `locate_config` decides."""


def pytest_config(repo_dir: str | Path) -> tuple[str | None, dict]:
    """The pytest configuration a maintainer's `python -m pytest` at the checkout's root reads: (file, options)."""
    repo = Path(repo_dir)
    for name in PYTEST_CONFIG_FILES:
        path = repo / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".toml"):
                data = tomllib.loads(path.read_text())
                if name != "pyproject.toml":
                    return name, dict(data.get("pytest", {}))  # a dedicated file is the config even when empty
                tool = data.get("tool", {}).get("pytest", {})
                if "ini_options" in tool:
                    return name, dict(tool["ini_options"])
                if tool:
                    return name, dict(tool)
                continue
            cfg = configparser.ConfigParser(interpolation=None, strict=False)
            cfg.read_string(path.read_text())
        except (OSError, ValueError, configparser.Error, tomllib.TOMLDecodeError) as exc:
            log.warning("cannot read the pytest configuration in %s: %s", path, exc)
            continue
        section = {"setup.cfg": "tool:pytest"}.get(name, "pytest")
        if cfg.has_section(section):
            return name, dict(cfg.items(section))
        if name in ("pytest.ini", ".pytest.ini"):
            return name, {}
    return None, {}


# Options kept from the project's addopts: they change what is collected, how it is imported, or how tests behave,
# and the harness lives with them. Value: whether the option takes a value.
_KEEP = {
    "--import-mode": 1, "--doctest-modules": 0, "--doctest-glob": 1, "--doctest-continue-on-failure": 0,
    "--doctest-ignore-import-errors": 0, "--strict-markers": 0, "--strict-config": 0, "--strict": 0,
    "-W": 1, "--pythonwarnings": 1, "--ignore": 1, "--ignore-glob": 1, "--deselect": 1, "-m": 1, "-k": 1,
    "--confcutdir": 1, "--noconftest": 0, "--runxfail": 0, "--assert": 1, "--pyargs": 0,
    "--continue-on-collection-errors": 0, "--collect-in-virtualenv": 0, "-o": 1, "--override-ini": 1,
    "--log-level": 1, "--log-format": 1, "--log-date-format": 1, "-p": 1,
}
# Options of plugins, kept when the plugin is installed (an option of an absent plugin is a usage error).
_KEEP_WITH_PLUGIN = {
    "--asyncio-mode": ("pytest-asyncio", 1), "--doctest-plus": ("pytest-doctestplus", 0),
    "--doctest-rst": ("pytest-doctestplus", 0), "--hypothesis-profile": ("hypothesis", 1),
    "--hypothesis-seed": ("hypothesis", 1), "--timeout": ("pytest-timeout", 1),
    "--timeout-method": ("pytest-timeout", 1),
    "--timeout_method": ("pytest-timeout", 1), "--benchmark-skip": ("pytest-benchmark", 0),
    "--benchmark-disable": ("pytest-benchmark", 0), "--forked": ("pytest-forked", 0), "--mpl": ("pytest-mpl", 0),
    "--remote-data": ("pytest-remotedata", 1),
}
# Options dropped because they break the harness or per-test outcomes (stop early, run in parallel or again, measure
# coverage, change reporting): only their arity matters, so that a value is not mistaken for a path.
_DROP = {
    "-x": 0, "--exitfirst": 0, "--maxfail": 1, "-n": 1, "--numprocesses": 1, "--dist": 1, "--maxprocesses": 1,
    "--tx": 1, "--rsyncdir": 1, "--looponfail": 0, "-f": 0, "--cov": "?", "--cov-report": 1, "--cov-config": 1,
    "--cov-fail-under": 1, "--cov-context": 1, "--cov-branch": 0, "--cov-append": 0, "--no-cov": 0,
    "--no-cov-on-fail": 0, "--color": 1, "--code-highlight": 1, "--junitxml": 1, "--junit-xml": 1,
    "--junitprefix": 1, "--junit-prefix": 1, "-q": 0, "--quiet": 0, "-v": 0, "--verbose": 0, "--verbosity": 1,
    "-r": 1, "--tb": 1, "--showlocals": 0, "-l": 0, "--full-trace": 0, "--no-header": 0, "--no-summary": 0,
    "--lf": 0, "--last-failed": 0, "--ff": 0, "--failed-first": 0, "--nf": 0, "--new-first": 0, "--sw": 0,
    "--stepwise": 0, "--sw-skip": 0, "--stepwise-skip": 0, "--lfnf": 1, "--last-failed-no-failures": 1,
    "--cache-clear": 0, "--reruns": 1, "--reruns-delay": 1, "--only-rerun": 1, "--rerun-except": 1, "--count": 1,
    "--durations": 1, "--durations-min": 1, "--basetemp": 1, "-s": 0, "--capture": 1, "--show-capture": 1,
    "--disable-warnings": 0, "--disable-pytest-warnings": 0, "--setup-show": 0, "--html": 1, "--css": 1,
    "--self-contained-html": 0, "--json-report": 0, "--json-report-file": 1, "--report-log": 1, "--result-log": 1,
    "--log-file": 1, "--log-file-level": 1, "--log-file-format": 1, "--log-file-date-format": 1, "--log-cli-level": 1,
    "--log-cli-format": 1, "--log-cli-date-format": 1, "-c": 1, "--config-file": 1, "--rootdir": 1,
    "--doctest-report": 1, "--instafail": 0, "--random-order": 0, "--random-order-bucket": 1,
    "--random-order-seed": 1, "-P": 1, "--debug": "?", "--pdb": 0, "--trace": 0, "--benchmark-only": 0,
    "--mypy": 0, "--flake8": 0, "--pylint": 0, "--black": 0, "--isort": 0, "--ruff": 0, "--ruff-format": 0,
}
_BUILTIN_PLUGINS = {"pytester", "doctest", "unittest", "python_path", "warnings", "logging", "faulthandler",
                    "monkeypatch", "tmpdir", "recwarn", "capture", "skipping", "legacypath", "junitxml", "stepwise"}
_SHORT_WITH_VALUE = {"-W", "-m", "-k", "-p", "-o", "-n", "-r", "-c", "-P"}


def _wheel_plugins(house: Path | None) -> tuple[set[str], set[str]]:
    """(canonical distribution names, importable top-level modules and pytest11 entry-point names) in a wheelhouse."""
    dists: set[str] = set()
    names: set[str] = set()
    for wheel in sorted(house.glob("*.whl")) if house else []:
        dists.add(canonicalize_name(wheel.name.split("-")[0]))
        try:
            with zipfile.ZipFile(wheel) as zf:
                for member in zf.namelist():
                    top = member.split("/")[0]
                    if not top.endswith((".dist-info", ".data")):
                        names.add(top.split(".")[0] if "/" not in member else top)
                    elif member.endswith(".dist-info/entry_points.txt"):
                        eps = configparser.ConfigParser(interpolation=None, delimiters=("=",))
                        eps.read_string(zf.read(member).decode("utf-8", "replace"))
                        if eps.has_section("pytest11"):
                            names.update(k.strip() for k in eps.options("pytest11"))
        except (zipfile.BadZipFile, OSError, configparser.Error) as exc:
            log.warning("cannot read %s: %s", wheel.name, exc)
    return dists, names


def pytest_addopts(repo_dir: str | Path, house: str | Path | None = None) -> tuple[str, list[str]]:
    """The project's own `addopts` that the factory keeps, as one string pytest splits itself, and those it drops.

    An allowlist: options that change collection, imports or behaviour (`--import-mode`, `-p` of a plugin that is
    installed or of the checkout, `--doctest-modules`, `--strict-markers`, `-W`, `--ignore`, `-m`, ...) are kept;
    the ones that break the harness or per-test outcomes (`-x`, `--maxfail`, `-n`, `--cov`, `--junitxml`, `-q`,
    `--tb`, `--lf`, reruns, ...) and anything unknown are dropped, since an option of an uninstalled plugin makes
    pytest exit with a usage error. A bare argument is kept when it is a path of the checkout.
    """
    repo = Path(repo_dir)
    _, options = pytest_config(repo)
    raw = options.get("addopts", "")
    try:
        tokens = list(raw) if isinstance(raw, list) else shlex.split(str(raw))
    except ValueError as exc:
        log.warning("the project's addopts %r do not split (%s); none is kept", raw, exc)
        return "", [str(raw)]
    dists, plugin_names = _wheel_plugins(Path(house) if house else None)
    local = {p.name.split(".")[0] for base in (repo, repo / "src") if base.is_dir() for p in base.iterdir()
             if p.is_dir() or p.suffix == ".py"}

    def plugin_available(name: str) -> bool:
        if name.startswith("no:"):
            return True
        return name in _BUILTIN_PLUGINS or name in plugin_names or name.split(".")[0] in plugin_names | local

    kept, dropped, _ = _allowed(tokens, plugin_available, lambda token: _in_checkout(repo, token), dists)
    return shlex.join(kept), dropped


def _in_checkout(repo: Path, token: str) -> bool:
    """Whether an argument is a path of the checkout (`tests.py`, `tests/test_a.py::test_x`)."""
    return not token.startswith("/") and (repo / token.split("::")[0]).exists()


def _allowed(tokens: list[str], plugin_available: Callable[[str], bool], is_path: Callable[[str], bool],
             dists: set[str]) -> tuple[list[str], list[str], list[str]]:
    """`tokens` (pytest options and arguments) split into those the harness keeps and those it drops, and the bare
    arguments among the kept: the paths of the checkout the command names."""
    kept: list[str] = []
    dropped: list[str] = []
    args: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("-") or token == "-":
            (kept if is_path(token) else dropped).append(token)
            args += [token] if is_path(token) else []
            continue
        if token.startswith("--"):
            name, eq, value = token.partition("=")
        elif token[:2] in _SHORT_WITH_VALUE:
            name, value = token[:2], token[2:]
            eq = "=" if value else ""
        else:  # short flags, possibly combined (`-vx`, `-ra`): `-r` takes the rest as its value
            name, value, eq = token[:2], token[2:], ""
            if value and name not in _SHORT_WITH_VALUE:  # `-vx`: flags only, all of them dropped
                dropped.append(token)
                continue
        arity = _KEEP.get(name)
        keep = arity is not None
        if name in _KEEP_WITH_PLUGIN:
            dist, arity = _KEEP_WITH_PLUGIN[name]
            keep = canonicalize_name(dist) in dists
        known = arity is not None or name in _DROP
        if arity is None:
            arity = _DROP.get(name, 0)
        option = [token]
        if not eq and i < len(tokens):
            following = tokens[i]
            if arity == 1:
                takes = True
            elif arity == "?":  # an optional value (`--cov`, `--cov=src`, `--cov src`) is taken greedily
                takes = not following.startswith("-")
            else:  # a flag; an unknown option's value is told from a path by whether the checkout has the path
                takes = not known and not following.startswith("-") and not is_path(following)
            if takes:
                option.append(following)
                i += 1
        if keep and name == "-p":
            plugin = value if eq else (option[1] if len(option) > 1 else "")
            keep = plugin_available(plugin)
        if keep and name in ("-o", "--override-ini"):
            setting = value if eq else (option[1] if len(option) > 1 else "")
            keep = not setting.startswith("addopts")
        (kept if keep else dropped).extend(option)
    return kept, dropped, args
