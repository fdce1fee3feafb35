"""What a project's maintainers collect as their suite where pytest's defaults would collect something else: the
unittest command, the pytest command naming its files, or the files named as tests are, read from the project's own
tooling (tox, make, nox, CI workflows), and the test files the project's collection rules name. The options are baked
into the project's image, beside its own kept `addopts` (`sandbox_addopts`).
"""

from __future__ import annotations

import configparser
import fnmatch
import os
import posixpath
import re
import shlex
from collections.abc import Callable
from pathlib import Path

from .pytest_options import _allowed, _in_checkout, pytest_addopts, pytest_config


def sandbox_addopts(repo_dir: str | Path, house: str | Path | None = None,
                    ignore: list[str] | tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """What the sandbox's pytest runs with (`TRAJFACTORY_ADDOPTS`), as one string pytest splits itself: the project's
    own `addopts` the factory keeps (`pytest_addopts`), then the collection options of its maintainers' runner
    (`collection_options`, none where the project configures pytest), then the test paths the recipe leaves out
    (`ignore_options`); and the project's options it drops."""
    kept, dropped = pytest_addopts(repo_dir, house)
    return shlex.join(shlex.split(kept) + collection_options(repo_dir) + ignore_options(ignore)), dropped


def ignore_options(paths: list[str] | tuple[str, ...]) -> list[str]:
    """pytest's options for the test paths a recipe's `ignore_tests` leaves out of every run: modules its maintainers
    run only elsewhere (bitarray 3.12.3's `test_free_threading.py` asserts at import that the interpreter has no
    GIL)."""
    return [f"--ignore={p}" for p in paths]


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
    (`command_paths`), or the test script they run (`script_options`), or where no file matches pytest's default
    pattern, the files named as tests are (`named_test_files`). Baked into the project's image, so part of its tag."""
    return unittest_options(repo_dir) or command_paths(repo_dir) or script_options(repo_dir) or \
        named_test_files(repo_dir)


def project_test_file(repo_dir: str | Path) -> Callable[[str], bool]:
    """Whether a repository-relative path holds tests by the project's own collection rules: pytest's
    `python_files` (under `testpaths` where it names them), or what the unittest or pytest command its maintainers
    run collects (`collection_options`). The names every project shares (`test_*.py`, `tests/`) are `guard.protected`'s;
    this is for a suite kept under a name of its own (`python_files = check_*.py`). A catch-all pattern (`*.py`)
    counts only under `testpaths`: alone, it would name the library too."""
    _, ini = pytest_config(repo_dir)
    patterns, paths = _words(ini.get("python_files")), _words(ini.get("testpaths"))
    options = collection_options(repo_dir)  # [] with a config
    runner = dict(value.partition("=")[::2] for flag, value in zip(options, options[1:]) if flag == "-o")
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


_SCRIPT = re.compile(r"(?:^|[\s;&|(])(?:(?:\{envpython\}|\S*python[\d.]*)\s+|coverage\s+run\s+(?:-\S+\s+)*)"
                     r"((?:\./)?(?:\{toxinidir\}/)?[\w./-]+\.py)\b")
_TEST_FOLDER = re.compile(r"(?:^|/)(?:tests?|testing)(?:/|$)")


def script_options(repo_dir: str | Path) -> list[str]:
    """For a project with no pytest configuration whose maintainers run their suite as a Python script in a test
    folder (no pytest or unittest command), what that run collects and finds: the script's folder on `sys.path`, as
    it is for a script (`pythonpath`), and the script itself as the suite (`testpaths`), unless it is the folder's
    `__main__.py`, which runs the folder's test files one by one, each a script; and the process's file descriptors
    left to the tests, as a script leaves them (`--capture=sys`: pytest captures what Python writes, not the
    descriptors). dill 0.4.1's tox runs `dill/tests/__main__.py`, whose test files import each other as top-level
    modules (`import test_mixins`); argcomplete 3.7.2's make runs `coverage run ... ./test/test.py`, beside a
    `test/test_package/test_module.py` that is no test but a package its tests install, and its library writes to
    descriptors 8 and 9 and closes them, which under pytest's descriptor capture closed the capture's own files: no test
    passed ("lost sys.stderr")."""
    repo = Path(repo_dir)
    commands = _commands(repo)
    if pytest_config(repo)[0] is not None or any(_PYTEST.search(t) or _UNITTEST.search(t) for _, t in commands):
        return []
    for _, text in commands:
        for match in _SCRIPT.finditer(text):
            path = posixpath.normpath(match.group(1).replace("{toxinidir}/", "").removeprefix("./"))
            if path.startswith("../") or not (repo / path).is_file() or not _TEST_FOLDER.search(path):
                continue
            folder = posixpath.dirname(path) or "."
            suite = [] if posixpath.basename(path) == "__main__.py" else ["-o", f"testpaths={path}"]
            return ["-o", f"pythonpath={folder}", *suite, "--capture=sys"]
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
