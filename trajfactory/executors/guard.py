"""What a submitted patch may change before the tests decide its verdict, and the checks that it did not game them.

A verdict must come from the task's tests, not from anything the patch can reach. Three layers:

1. **Protected files are reverted.** The patch's changes to tests (`tests/`, `test_*.py`, `*_test.py`),
   `conftest.py`, the test and build configuration (`pytest.ini`, `tox.ini`, `setup.cfg`, `pyproject.toml`,
   `setup.py`, `noxfile.py`, `.coveragerc`), interpreter start-up hooks (`sitecustomize.py`, `usercustomize.py`,
   `*.pth`) and compiled code Python would import in place of the source (`*.pyc`, `__pycache__/`, extension
   modules: an unchecked hash-based `.pyc` is loaded whatever the source says) are dropped before it is applied,
   and named in the evidence: a fix that only works through them fails.
2. **Tampering is refused.** After the patch is applied, every changed Python file is compared with its clean
   version: code that reaches into the test machinery (`pytest`/`_pytest`, `unittest` assertions, `sys.modules`,
   `builtins`, the interpreter's objects: `gc` listings, frames, a function's `__globals__`, `ctypes`) or ends the
   process early (`sys.exit`, `os._exit`, `atexit`, signals) and that the clean file did
   not already have refuses the patch, and so does a new top-level module named like one found outside the checkout
   (a `json.py` at the top of the checkout is imported in place of the standard library's, by the harness too) or
   like the factory's own (`trajfactory_harness.py` at the top would be loaded as the plugin that records outcomes).
3. **Canary tests run in the same session** (`canaries.py`). A test module the patch cannot predict (a name chosen at
   random, beside the task's tests, committed with the buggy state so git holds it like the project's own tests)
   imports the changed modules and holds tests that must pass and tests that must fail, alike in shape; a run in
   which a must-fail canary passes, or a must-pass one does not, was tampered with, whatever the other outcomes say.
4. **The failing tests' own file** gets twins of those tests and canaries (`twins.py`): a forgery aimed at
   them alone, by their file or their names, shows there.
"""

from __future__ import annotations

import json
import posixpath
import re

from trajfactory.executors.base import Sandbox

_PROTECTED_NAMES = {"conftest.py", "pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml", "setup.py", "noxfile.py",
                    ".coveragerc", "sitecustomize.py", "usercustomize.py", ".pytest.ini", "pytest.toml"}
_TEST_DIRS = {"test", "tests", "testing"}
_COMPILED = (".pyc", ".pyo", ".so", ".pyd")
COMPILED_SOURCES = (".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".pyx", ".pxd", ".pxi", ".rs", ".f", ".f90")
"""Sources of compiled extension modules, built once with the image (`wheelhouse.INSTALL_PROJECT`), not per patch."""
NOT_REBUILT = "extension source: its module is built once, with the image, so the change would not take effect"
_NAME = r'"(?:[^"\\]|\\.)*"'  # a path git C-quoted: it holds a byte git does not print as it is
_DIFF_FILE = re.compile(rf"^diff --git ({_NAME}|a/.+?) ({_NAME}|b/.+)$")
_MOVED = re.compile(r"^(?:rename|copy) (?:from|to) (.+)$")
_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def protected(path: str) -> str | None:
    """Why a patch may not change `path` (None: it may)."""
    parts = posixpath.normpath(path).split("/")
    name = parts[-1]
    if name in _PROTECTED_NAMES:
        return "test or build configuration" if name not in ("sitecustomize.py", "usercustomize.py") else \
            "interpreter start-up hook"
    if name.endswith(".pth"):
        return "interpreter start-up hook"
    if name.endswith(_COMPILED) or "__pycache__" in parts:
        return "compiled code imported in place of the source"
    # tests.py, ext_tests.py, tests.js: a suite kept in files pytest's defaults do not name (jsonpatch's pytest.ini
    # says `python_files = tests.py property_tests.py`; its tests.js holds the cases ext_tests.py runs)
    if any(p in _TEST_DIRS for p in parts[:-1]) or name.startswith(("test_", "tests_")) or \
            name.split(".")[0] in ("test", "tests") or name.endswith(("_test.py", "_tests.py")):
        return "test file"
    return None


def unquote(name: str) -> str:
    """A path as git writes it, C-quoted where it holds a byte git will not print as it is (`"t\\303\\251st.py"`:
    non-ASCII, a quote, a backslash, a control character), as the file system names it (`tëst.py`)."""
    if len(name) < 2 or name[0] != '"' or name[-1] != '"':
        return name
    body, out, i = name[1:-1], bytearray(), 0
    while i < len(body):
        if body[i] == "\\" and re.match(r"[0-7]{3}", body[i + 1:i + 4]):
            out.append(int(body[i + 1:i + 4], 8) & 0xFF)
            i += 4
        elif body[i] == "\\" and body[i + 1:i + 2] in _ESCAPES:
            out.append(_ESCAPES[body[i + 1]])
            i += 2
        else:
            out += body[i].encode()
            i += 1
    return out.decode("utf-8", "surrogateescape")


def _name(text: str) -> str:
    """The path of a `---`/`+++` line's rest: a C-quoted name whole, a plain one up to its tab (git writes one after a
    name that holds a space; a plain diff, its time stamp)."""
    quoted = re.match(_NAME, text)
    return unquote(quoted.group(0)) if quoted else text.split("\t")[0]


def _sections(patch: str) -> list[tuple[list[str], str]]:
    """(paths the section touches, its text) for each file of a unified diff, `diff --git` style or plain.

    Hunk lines are consumed by the counts of their `@@` header, so a removed line that reads `-- x` is never
    taken for the next file's `---` header.
    """
    sections: list[tuple[set[str], list[str]]] = []
    lines = patch.splitlines(keepends=True)
    old_left = new_left = 0
    git_header = False  # inside a `diff --git` header, before its first hunk
    for i, line in enumerate(lines):
        if line[:1] not in (" ", "-", "+", "\\"):
            old_left = new_left = 0  # a hunk shorter than its header said
        if (old_left > 0 or new_left > 0) and line[:1] in (" ", "-", "+", "\\"):
            tag = line[:1]
            if tag in (" ", "-"):
                old_left -= 1
            if tag in (" ", "+"):
                new_left -= 1
            sections[-1][1].append(line)
            continue
        if line.startswith("diff --git "):
            sections.append((set(), [line]))
            git_header = True
            if (m := _DIFF_FILE.match(line.rstrip("\n"))) is not None:
                sections[-1][0].update(unquote(name)[2:] for name in m.groups())
            continue
        if git_header and (m := _MOVED.match(line.rstrip("\n"))) is not None:
            sections[-1][0].add(unquote(m.group(1)))
        if line.startswith("--- ") and not git_header and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            sections.append((set(), []))
        if not sections:
            sections.append((set(), []))
        if line.startswith(("--- ", "+++ ")):
            name = _name(line[4:].rstrip("\n"))
            if name != "/dev/null":
                sections[-1][0].add(name[2:] if name[:2] in ("a/", "b/") else name)
        elif (m := _HUNK.match(line)) is not None:
            git_header = False
            old_left = int(m.group(2)) if m.group(2) is not None else 1
            new_left = int(m.group(4)) if m.group(4) is not None else 1
        sections[-1][1].append(line)
    return [(sorted(paths), "".join(text)) for paths, text in sections]


def paths_of(patch: str) -> list[str]:
    """Every path a unified diff touches."""
    return sorted({p for paths, _ in _sections(patch) for p in paths})


def suite_files(tests: list[str]) -> set[str]:
    """The files that hold the given tests (`file.py::Cls::test_x`), whatever their names: a suite kept under a
    name of its own (`python_files = check_*.py`) is out of a patch's reach too. Not a doctest's file: its id
    (`pkg/mod.py::pkg.mod.func`, `README.rst::README.rst`) names the library module or document it is in."""
    files = set()
    for test in tests:
        path, _, name = test.partition("::")
        if not path.endswith(".py") or not name:
            continue
        stem = posixpath.splitext(posixpath.basename(path))[0]
        module = posixpath.basename(posixpath.dirname(path)) if stem == "__init__" else stem
        if "::" in name or module not in name.split("[")[0].split("."):
            files.add(posixpath.normpath(path))
    return files


def strip_protected(patch: str, suite: set[str] | frozenset[str] = frozenset()) -> tuple[str, list[str]]:
    """The patch without its changes to protected files, to the files of `suite` (the task's own test files:
    `suite_files`) and to the sources of compiled modules (`NOT_REBUILT`: dropped so that the verdict says the change
    was not tested, rather than test code it did not build), and the `path (why)` of each change dropped."""
    kept, dropped = [], []
    for paths, text in _sections(patch):
        reasons = [f"{p} ({why})" for p in paths
                   if (why := protected(p) or ("test file" if posixpath.normpath(p) in suite else None)
                       or (NOT_REBUILT if p.endswith(COMPILED_SOURCES) else None))]
        if reasons:
            dropped += reasons
        else:
            kept.append(text)
    return "".join(kept), sorted(set(dropped))


# ---------------------------------------------------------------- tampering, in the sandbox

TAMPERING = {
    "the test framework": r"\b_?pytest\b|\bunittest\b|\bdoctest\b",
    "the module table": r"\bsys\.modules\b|\b__import__\s*\(",
    "the builtins": r"\bbuiltins\b|__builtins__",
    "an early exit": r"\bsys\.exit\s*\(|\bos\._exit\s*\(|\batexit\b|\bos\.kill\s*\(",
    # the ways to reach objects code is not handed (the live plugin, pytest's session): the garbage collector's
    # listings, stack frames and a function's globals, the subclass tree, raw memory
    "the interpreter's objects": r"\bget_(?:objects|referrers|referents)\b|_getframe\b|\bcurrentframe\b"
                                 r"|\bf_(?:back|globals|locals)\b|__globals__|__subclasses__|\bctypes\b",
}

# Runs in the sandbox: every changed or new *.py file against its clean version (HEAD), pattern by pattern; and every
# new top-level module (a file in a folder that is not a package, such as the checkout's top, which is first on
# `sys.path`) named like a module found outside the checkout (the standard library, pytest, an installed package),
# which Python would import in its place, even in the harness that records the outcomes.
_SCAN = r'''
import json, os, re, subprocess, sys
from importlib.machinery import PathFinder
patterns = json.loads(sys.argv[1])
allowed = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
here = os.getcwd()
mine = os.path.dirname(os.path.abspath(__file__))  # where this scan was written, first on its own sys.path
outside = [p for p in sys.path if p and os.path.abspath(p) != mine
           and os.path.commonpath([here, os.path.abspath(p)]) != here]
# -z: every path as the file system names it (git C-quotes a non-ASCII one otherwise), a rename's source after it
fields = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all"], capture_output=True,
                        text=True, errors="surrogateescape").stdout.split("\0")
entries, i = [], 0
while i < len(fields):
    line, i = fields[i], i + 1
    if len(line) > 3:
        entries.append((line, line[3:]))
        i += line[0] in "RC"
found = []
for line, path in entries:
    if not path.endswith(".py"):
        continue
    top, name = os.path.split(path[:-len("/__init__.py")] if path.endswith("/__init__.py") else path[:-3])
    if ("?" in line[:2] or "A" in line[:2]) and not os.path.exists(os.path.join(top, "__init__.py")) and (
            name in getattr(sys, "stdlib_module_names", ()) or name in sys.builtin_module_names
            or PathFinder.find_spec(name, outside) is not None):
        found.append(f"{path}: a new top-level module that shadows the module {name!r} found outside the checkout")
    elif ("?" in line[:2] or "A" in line[:2]) and name.startswith("trajfactory"):
        found.append(f"{path}: a new module named like the factory's own modules in the test session ({name!r})")
    if "D" in line[:2]:
        continue  # deleted: nothing of it runs
    try:
        new = open(path, encoding="utf-8", errors="replace").read()
    except OSError as exc:
        found.append(f"{path}: the scan could not read it ({exc})")
        continue
    old = subprocess.run(["git", "show", "HEAD:" + path], capture_output=True, text=True).stdout
    for what, pattern in patterns.items():
        before, after = len(re.findall(pattern, old)), len(re.findall(pattern, new))
        if after > before + allowed.get(path, {}).get(what, 0):
            found.append(f"{path}: {what} ({after - before} new reference(s) to /{pattern}/)")
print(json.dumps(found))
'''


def _removed(text: str) -> list[str]:
    """The lines a diff section removes (without their `-`), its `---` header left out."""
    return [line[1:] for line in text.splitlines()
            if line.startswith("-") and not re.match(r'--- ("?a/|/dev/null)', line)]


def removed_references(bug_patch: str) -> dict[str, dict[str, int]]:
    """Per file and kind of reference (`TAMPERING`): how many the bug's removed lines held. A fix may put those back:
    the buggy file is the scan's baseline, and a bug that deleted `sys.modules[name] = module` would otherwise make
    its own fix look like tampering."""
    allowed: dict[str, dict[str, int]] = {}
    for paths, text in _sections(bug_patch):
        removed = "\n".join(_removed(text))
        for what, pattern in TAMPERING.items():
            if n := len(re.findall(pattern, removed)):
                for path in paths:
                    allowed.setdefault(path, {})[what] = n
    return allowed


def added_lines(patch: str) -> dict[str, dict[int, str]]:
    """Per file the patch leaves, the lines it adds: their numbers in the new file and their text."""
    added: dict[str, dict[int, str]] = {}
    for _, text in _sections(patch):
        path, line, left = None, 0, 0
        for row in text.splitlines():
            if left <= 0 and row.startswith("+++ "):
                name = _name(row[4:])
                path = None if name == "/dev/null" else name[2:] if name[:2] == "b/" else name
            elif left <= 0 and (m := _HUNK.match(row)) is not None:
                line, left = int(m.group(3)), int(m.group(4)) if m.group(4) is not None else 1
            elif left > 0 and row[:1] in (" ", "+"):
                if row[:1] == "+" and path is not None:
                    added.setdefault(path, {})[line] = row[1:]
                line, left = line + 1, left - 1
    return added


def run_time_reaches(reaches: list[dict], patch: str, bug_patch: str = "") -> list[str]:
    """The reaches into the interpreter a sealed run's audit hook saw (`TestRun.reaches`) made from a line `patch`
    added: however the code spelled them (`getattr(gc, "get_" + "objects")`, code run from a string), they are the
    tampering the scan looks for by name. A line the bug removed, put back as it was, may reach as the clean code did."""
    added = added_lines(patch)
    restored = {line.strip() for _, text in _sections(bug_patch) for line in _removed(text)}
    found = []
    for reach in reaches:
        text = added.get(str(reach.get("file")), {}).get(reach.get("line"))
        if text is not None and text.strip() not in restored:
            found.append(f"{reach['file']}:{reach['line']}: reached {reach.get('reach')} at run time "
                         f"({reach.get('event')}): {text.strip()[:120]}")
    return found


def scan_tampering(sandbox: Sandbox, timeout: float = 60, bug_patch: str = "") -> list[str]:
    """Changed Python files that newly reach into the test machinery or exit early (beyond what `bug_patch` removed:
    `removed_references`), and new top-level modules that shadow a module found outside the checkout (empty: none)."""
    sandbox.write_file("/tmp/trajfactory-scan.py", _SCAN)
    allowed = json.dumps(removed_references(bug_patch))
    res = sandbox.execute(f"python3 /tmp/trajfactory-scan.py {_quote(json.dumps(TAMPERING))} {_quote(allowed)}",
                          timeout=timeout)
    try:
        return list(json.loads(res.output.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return [f"the tampering scan did not run (exit {res.exit_code}): {res.output.strip()[-300:]}"]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def module_of(path: str) -> str | None:
    """The importable module of a source file (`src/pkg/mod.py` -> `pkg.mod`), None for a test or non-Python file."""
    if not path.endswith(".py") or protected(path):
        return None
    parts = path[:-3].split("/")
    if parts[0] in ("src", "lib"):
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) if parts and all(p.isidentifier() for p in parts) else None
