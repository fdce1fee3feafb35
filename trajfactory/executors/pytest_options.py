"""The options of a project's own pytest configuration that a maintainer's run depends on and the harness can
live with (an allowlist), handed to the sandbox as `TRAJFACTORY_ADDOPTS`.
"""

from __future__ import annotations

import configparser
import fnmatch
import logging
import os
import posixpath
import re
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
    kept += collection_options(repo)  # none where the project configures pytest
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


# ---------------------------------------------------------------------------- suites their maintainers run with unittest

_COMMAND_FILES = ("tox.ini", "Makefile", "makefile", "GNUmakefile", "noxfile.py")
_UNITTEST = re.compile(r"(?:-m\s*unittest|\bunittest2?\s+discover)\b([^\n;&|`)]*)")
_PYTEST = re.compile(r"(?<![\w.-])(?:py\.test|pytest)(?![\w-])")


def _commands(repo: Path) -> list[tuple[str, str]]:
    """(file, text) of what the project's own tooling runs: tox's commands, make and nox files, CI workflows."""
    found: list[tuple[str, str]] = []
    for name in _COMMAND_FILES:
        path = repo / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if name == "tox.ini":
            cfg = configparser.ConfigParser(interpolation=None, strict=False)
            try:
                cfg.read_string(text)
            except configparser.Error:
                continue
            text = "\n".join(cfg.get(s, "commands", fallback="") for s in cfg.sections() if s.startswith("testenv"))
        found.append((name, text))
    workflows = repo / ".github" / "workflows"
    for path in sorted(workflows.glob("*.y*ml")) if workflows.is_dir() else []:
        try:
            runs = re.findall(r"^\s*(?:-\s*)?run:\s*(.*(?:\n\s{6,}.*)*)", path.read_text(errors="replace"), re.M)
        except OSError:
            continue
        found.append((f".github/workflows/{path.name}", "\n".join(runs)))
    return found


def unittest_options(repo_dir: str | Path) -> list[str]:
    """How pytest collects what `python -m unittest` collects, for a project whose maintainers run their suite
    with unittest (its tox commands, make or nox file or CI workflow say `-m unittest`, none says pytest) and that
    has no pytest configuration: only `unittest.TestCase` classes (`python_classes` and `python_functions` empty:
    a plain function or class named like a test is no test to unittest), from files matching unittest's pattern
    (`test*.py`, or the command's `-p`), under its start directory (`testpaths`). markdown 3.11.3 imports
    `unittest.TestSuite` into a test module for its `load_tests`, and another module sets `simplefilter("error")`
    at import: pytest's own warning that it cannot collect `TestSuite` became an error and the whole suite failed
    collection. jsonpointer keeps its tests in `tests.py`, which pytest's default pattern does not match."""
    repo = Path(repo_dir)
    commands = _commands(repo)
    if pytest_config(repo)[0] is not None or any(_PYTEST.search(text) for _, text in commands):
        return []
    for name, text in commands:
        if not (match := _UNITTEST.search(text)):
            continue
        try:
            args = shlex.split(match.group(1).replace("{toxinidir}/", "").replace("{toxinidir}", "."))
        except ValueError:
            args = []
        if args[:1] == ["discover"]:
            args = args[1:]
        start, pattern, names, i = ".", "test*.py", [], 0
        positional: list[str] = []
        while i < len(args):
            arg = args[i]
            if arg in ("-s", "--start-directory", "-p", "--pattern", "-t", "--top-level-directory", "-k") and \
                    i + 1 < len(args):
                if arg in ("-s", "--start-directory"):
                    start = args[i + 1]
                elif arg in ("-p", "--pattern"):
                    pattern = args[i + 1]
                i += 2
                continue
            if not arg.startswith("-"):
                positional.append(arg)
            i += 1
        for arg in positional:  # discover's START [PATTERN [TOP]], or test modules and packages by name
            as_path = arg.replace(".", "/") if not arg.endswith(".py") else arg
            if (repo / arg).is_dir() and not names:
                start = arg
            elif (repo / f"{as_path}.py").is_file() or (repo / as_path).is_file():
                names.append(as_path if as_path.endswith(".py") else f"{as_path}.py")
            elif (repo / as_path).is_dir():
                names.append(as_path)
            elif "*" in arg:
                pattern = arg
        options = ["-o", "python_classes=", "-o", "python_functions="]
        files = [n for n in names if n.endswith(".py")]
        options += ["-o", "python_files=" + " ".join(dict.fromkeys([pattern, *(Path(f).name for f in files)]))]
        paths = [n.rstrip("/") for n in names] or ([start.rstrip("/")] if start.strip("./") else [])
        if paths:
            options += ["-o", "testpaths=" + " ".join(paths)]
        return options
    return []


def collection_options(repo_dir: str | Path) -> list[str]:
    """The options that make pytest collect what the maintainers' own runner does, for a project with no pytest
    configuration: their unittest command's (`unittest_options`), or the files their pytest command names
    (`command_paths`), or where no file matches pytest's default pattern, the files named as tests are
    (`named_test_files`). Baked into the project's image, so part of its tag."""
    return unittest_options(repo_dir) or command_paths(repo_dir) or named_test_files(repo_dir)


def project_test_file(repo_dir: str | Path) -> Callable[[str], bool]:
    """Whether a repository-relative path holds tests by the project's own collection rules: pytest's
    `python_files` (under `testpaths` where it names them), or what the unittest or pytest command its maintainers
    run collects (`collection_options`). The names every project shares (`test_*.py`, `tests/`) are `guard.protected`'s;
    this is for a suite kept under a name of its own (`python_files = check_*.py`). A catch-all pattern (`*.py`)
    counts only under `testpaths`: alone, it would name the library too."""
    _, ini = pytest_config(repo_dir)
    patterns, paths = _words(ini.get("python_files")), _words(ini.get("testpaths"))
    runner = dict(option.partition("=")[::2] for option in collection_options(repo_dir)[1::2])  # [] with a config
    patterns = runner["python_files"].split() if "python_files" in runner else patterns
    paths = runner["testpaths"].split() if "testpaths" in runner else paths
    roots = [p.strip("/").removeprefix("./") for p in paths if p.strip("./")]

    def is_test(rel: str) -> bool:
        if rel in roots and rel.endswith(".py"):  # a test module named by the command: collected whatever its name
            return True
        under = any(rel.startswith(r + "/") for r in roots)
        for pattern in patterns:
            if fnmatch.fnmatch(rel if "/" in pattern else posixpath.basename(rel), pattern) and \
                    (under or pattern.lstrip("*") not in ("", ".py")):
                return True
        return False
    return is_test


def _words(value: object) -> list[str]:
    """An ini option's words (`python_files = tests.py property_tests.py`), or a TOML list's strings."""
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value] if isinstance(value, list) else []


# ---------------------------------------------------------------------------- suites named on the pytest command line

_DEFAULT_FILES = ("test_*.py", "*_test.py")
_POSARGS = re.compile(r"\{posargs(?::([^}]*))?\}")


def command_paths(repo_dir: str | Path) -> list[str]:
    """`testpaths` for a project with no pytest configuration whose maintainers' pytest command names its tests
    (texttable 1.7.2's tox: `pytest --cov-report=term-missing --cov=texttable tests.py`), where a file it names is
    one pytest's default pattern would not collect: the command's paths, collected as the command collects them."""
    repo = Path(repo_dir)
    if pytest_config(repo)[0] is not None:
        return []
    for _, text in _commands(repo):
        for line in text.splitlines():
            if not (match := _PYTEST.search(line)) or re.search(r"\binstall\b", line[:match.start()]):
                continue  # not `pip install pytest ...`
            rest = re.split(r"\s(?:&&|\|\||;|\|)\s", _POSARGS.sub(lambda m: m.group(1) or "", line[match.end():]))[0]
            try:
                tokens = shlex.split(rest.replace("{toxinidir}/", "").replace("{toxinidir}", "."))
            except ValueError:
                continue
            named = _allowed(tokens, lambda name: True, lambda token: _in_checkout(repo, token), set())[2]
            paths = [t.rstrip("/") for t in named if "::" not in t]
            if any(p.endswith(".py") and not any(fnmatch.fnmatch(posixpath.basename(p), f) for f in _DEFAULT_FILES)
                   for p in paths):
                return ["-o", "testpaths=" + " ".join(dict.fromkeys(paths))]
    return []


_TEST_NAMES = ("test.py", "tests.py", "*_tests.py")
_NOT_SEARCHED = {".git", ".hg", ".tox", ".nox", "node_modules", "build", "dist", "venv", ".venv", "__pycache__"}


def named_test_files(repo_dir: str | Path) -> list[str]:
    """`python_files` for a project with no pytest configuration, no file pytest's default pattern matches, and
    tests kept in files named as tests are (`test.py`, `tests.py`, `*_tests.py`): decorator 5.2.1's README runs
    `python tests/test.py`, whose `unittest.TestCase` classes pytest collects once the file is named to it."""
    repo = Path(repo_dir)
    if pytest_config(repo)[0] is not None:
        return []
    found: set[str] = set()
    for here, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if d not in _NOT_SEARCHED and not d.startswith(".") and not d.endswith(".egg-info")]
        for name in files:
            if any(fnmatch.fnmatch(name, p) for p in _DEFAULT_FILES):
                return []
            if any(fnmatch.fnmatch(name, p) for p in _TEST_NAMES):
                found.add(name)
    return ["-o", "python_files=" + " ".join(sorted(found))] if found else []
