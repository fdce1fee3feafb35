"""Mutants of doctests: a must-fail copy of a failing doctest, in a module of its own beside the doctest's.

A task whose failing tests are doctests (humanize 4.17's `src/humanize/time.py::humanize.time._quotient_and_remainder`)
had no mutant (`mutants.py` copies test functions of test files): the forgery that passes every failure but the
canaries' (told by their shape) passed its verification. A doctest lives in a library module, which the patch may
change, so its copy cannot go into that module as a test's goes into its test file (`twins.py`). It goes into a new
module beside it (`src/humanize/regression.py`), which runs in the doctest module's namespace: it takes every name of
that module, as the patch left it, at import (`globals().update(vars(import_module("humanize.time")))`), and defines
one function (or class, or method, as the original is) whose docstring is the original's, with one line added to
the output that an example expects. pytest collects it as it collects the original (`--doctest-modules`), under an
id of the same shape (`src/humanize/regression.py::humanize.regression._basic`).

The example changed is the last one that ran in a passing original and whose output is compared as text: not one
marked `+SKIP`, nor one that expects an exception (whose message `IGNORE_EXCEPTION_DETAIL` may leave uncompared);
where every example that runs expects an exception, the last one's exception name gets letters added.
Where the original passed, that example printed what it expected; under `ELLIPSIS` or `NORMALIZE_WHITESPACE` alike,
that output does not end in a line of eight random letters, so the copy fails wherever the original passed. A copy
that could not be made (a docstring the module does not hold as written, a nested class) is none; one that passes
under the task's own fix too is excused there (`twins.name_bound`), as any mutant is.
"""

from __future__ import annotations

import ast
import doctest
import posixpath
import re
import secrets
import shlex
from typing import Callable

from trajfactory.executors.base import Sandbox, SandboxError
from trajfactory.executors.canaries import CANARY_WORDS
from trajfactory.runtime import parse_python

_LETTERS = "abcdefghjkmnpqrstuvwxyz"
_STEMS = ("roundtrip", "empty_input", "none_values", "large_values", "boundaries", "idempotent", "edge_cases",
          "regression", "round_trips", "sorted_input", "mixed_input", "long_input")
"""The copy's module names: none of them a module of the standard library or a common package, which a module of
that name in a folder on `sys.path` (a project's top-level modules) would hide."""


def doctest_parts(test_id: str) -> tuple[str, str, list[str]] | None:
    """(its file, its module's dotted name, the path of names in the module) of a doctest's id
    (`src/pkg/mod.py::pkg.mod.Cls.meth` -> (`src/pkg/mod.py`, `pkg.mod`, `["Cls", "meth"]`)); None for any other."""
    path, _, name = test_id.partition("::")
    if not path.endswith(".py") or not name or "::" in name or "[" in name:
        return None
    dirs = posixpath.normpath(path)[:-3].split("/")
    if dirs[-1] == "__init__":
        dirs = dirs[:-1]
    parts = name.split(".")
    # the module's name: the longest start of the name that ends the file's path
    for k in range(min(len(parts), len(dirs)), 0, -1):
        if parts[:k] == dirs[len(dirs) - k:]:
            return path, ".".join(parts[:k]), parts[k:]
    return None


def _node(tree: ast.Module, names: list[str]) -> ast.AST | None:
    """The module, class or function `names` leads to in `tree` (at most a method of a top-level class)."""
    node: ast.AST = tree
    if len(names) > 2:
        return None
    for name in names:
        found = [n for n in getattr(node, "body", []) if isinstance(n, (ast.ClassDef, ast.FunctionDef,
                                                                         ast.AsyncFunctionDef)) and n.name == name]
        if not found or (node is not tree and not isinstance(node, ast.ClassDef)):
            return None
        node = found[-1]
    return node


_EXCEPTION_NAME = re.compile(r"([A-Za-z_][\w.]*)(?=:|\s*$)")
"""The exception's name at the start of an expected traceback's message (`ValueError: bad`, `pkg.Error`)."""


def mutated_docstring(doc: str, rng: secrets.SystemRandom) -> str | None:
    """`doc` with a line of random letters added to what its last compared example expects, or, where every example
    that runs expects an exception, with letters added to the name of the last one expected (`ValueErrorqzk: bad`:
    doctest compares the name under `IGNORE_EXCEPTION_DETAIL` too, and under `ELLIPSIS` the name is no `...`);
    None where it has no such example."""
    try:
        pieces = doctest.DocTestParser().parse(doc)
    except ValueError:  # a malformed example: doctest reports it, and the original did not pass
        return None
    examples = [p for p in pieces if isinstance(p, doctest.Example) and not p.options.get(doctest.SKIP)]
    target = next((e for e in reversed(examples) if e.exc_msg is None), None)
    # else the last one that expects an exception named at the start of its message: the name gets letters added
    raised = next((e for e in reversed(examples) if e.exc_msg is not None and e.want.endswith(e.exc_msg) and
                   _EXCEPTION_NAME.match(e.exc_msg)), None) if target is None else None
    if target is None and raised is None:
        return None
    letters = "".join(rng.choice(_LETTERS) for _ in range(8))
    out = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
            continue
        pad = " " * piece.indent
        source = piece.source.rstrip("\n").split("\n")
        out += [f"{pad}>>> {source[0]}\n", *(f"{pad}... {line}\n" for line in source[1:])]
        want = piece.want + (letters + "\n" if piece is target else "")
        if piece is raised:
            name = _EXCEPTION_NAME.match(piece.exc_msg).group(1)
            want = piece.want[:len(piece.want) - len(piece.exc_msg)] + name + letters[:3] + piece.exc_msg[len(name):]
        out += [f"{pad}{line}\n" if line else "\n" for line in want.rstrip("\n").split("\n")] if want else []
    return "".join(out)


def mutant_module(source: str, module: str, names: list[str], function: str, owner: str,
                  rng: secrets.SystemRandom) -> str | None:
    """The text of the copy's module: `module`'s names, then the doctest at `names` of its `source` under the name
    `function` (in a class `owner` where the original is a method); None where no copy can be made."""
    try:
        tree = parse_python(source)
    except (SyntaxError, ValueError):
        return None
    node = _node(tree, names)
    doc = ast.get_docstring(node, clean=False) if node is not None else None
    changed = mutated_docstring(doc, rng) if doc else None
    if changed is None:
        return None
    take = ("import importlib as _importlib\n\n"
            "try:\n"
            f"    globals().update({{_k: _v for _k, _v in vars(_importlib.import_module({module!r})).items()\n"
            "                      if not _k.startswith('__')})\n"
            "except Exception:  # noqa: BLE001 - the patched code may not import; the copy fails all the same\n"
            "    pass\n\n\n")
    if not names:
        return f"{changed!r}\n\n{take}"
    if isinstance(node, ast.ClassDef):
        return f"{take}class {function}:\n    {changed!r}\n"
    if len(names) == 2:
        return f"{take}class {owner}:\n    def {function}(self):\n        {changed!r}\n"
    return f"{take}def {function}():\n    {changed!r}\n"


def _is_class(source: str, names: list[str]) -> bool:
    try:
        return isinstance(_node(parse_python(source), names), ast.ClassDef)
    except (SyntaxError, ValueError):
        return False


def doctest_mutant(test_id: str, read: Callable[[str], str | None], taken: set[str], rng: secrets.SystemRandom,
                   again: str = "") -> tuple[str, str, str] | None:
    """(the copy's file, its text, its test id) for the doctest `test_id` of the checkout (`read`: a file of it by
    its path, None where there is none), in a new module of the doctest's folder whose file name `taken` (the names
    there) does not hold; `again`: the id an earlier run gave the copy, whose names it takes. None where no copy can
    be made (`mutant_module`), or for no doctest."""
    parts = doctest_parts(test_id)
    source = read(parts[0]) if parts is not None else None
    if source is None:
        return None
    path, module, names = parts
    folder = posixpath.dirname(path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    again_parts = doctest_parts(again) if again else None
    if again_parts is not None:
        stem, inner = posixpath.basename(again_parts[0])[:-3], again_parts[2]
        owner, function = (inner[0], inner[1]) if len(inner) == 2 else ("", inner[0] if inner else "")
    else:
        words = rng.sample(CANARY_WORDS, len(CANARY_WORDS))
        private = "_" if posixpath.basename(path).startswith("_") and not path.endswith("__init__.py") else ""
        stem = next((private + w for w in rng.sample(_STEMS, len(_STEMS)) if f"{private}{w}.py" not in taken
                     and private + w not in taken), f"{private}case_{secrets.token_hex(4)}")
        function = ("_" if names and names[-1].startswith("_") else "") + words[0]
        owner = "".join(w.title() for w in words[1].split("_"))
        if names and _is_class(source, names):
            function = "".join(w.title() for w in words[0].split("_"))
    text = mutant_module(source, module, names, function, owner, rng)
    if text is None:
        return None
    dotted = f"{package}.{stem}" if package else stem
    inner = [] if not names else [owner, function] if len(names) == 2 else [function]
    file = posixpath.join(folder, f"{stem}.py")
    return file, text, f"{file}::{'.'.join([dotted, *inner])}"


def write_doctest_mutants(sandbox: Sandbox, tests: list[str], rng: secrets.SystemRandom,
                          named: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The mutants of the doctests `tests` written into the sandbox's checkout, each in a module of its own:
    ({doctest id: its mutant's id}, the new files). `named`: the ids an earlier run gave the copies, which they take
    again (`twins.name_bound`)."""
    made, files = {}, []
    for test in tests:
        folder = posixpath.dirname(test.partition("::")[0]) or "."
        listed = sandbox.execute(f"ls -a {shlex.quote(folder)}", timeout=30)
        copy = doctest_mutant(test, lambda path: _text(sandbox, path), set(listed.output.split()), rng,
                              again=named.get(test, "")) if listed.exit_code == 0 else None
        if copy is None or copy[0] in files:
            continue
        sandbox.write_file(copy[0], copy[1])
        if _imports(sandbox, copy[0], copy[2]):
            files.append(copy[0])
            made[test] = copy[2]
        else:
            sandbox.execute(f"rm -f {shlex.quote(copy[0])}", timeout=30)
    return made, files


def _imports(sandbox: Sandbox, file: str, mutant: str) -> bool:
    """Whether the copy's module imports under the name its id gives, from the folder pytest's default import mode
    puts first on `sys.path` (the nearest one above it that is no package): a module pytest cannot import is a
    collection error, which ends the whole run before any test, the submitted patch's among them. Its `import` of
    the doctest's module may fail (the copy then fails, as it must where nothing passes)."""
    folder = posixpath.dirname(file)
    while folder and sandbox.execute(f"test -f {shlex.quote(posixpath.join(folder, '__init__.py'))}",
                                     timeout=30).exit_code == 0:
        folder = posixpath.dirname(folder)
    name = doctest_parts(mutant)[1]  # the copy's module, as its id names it
    check = f"import importlib, sys; sys.path.insert(0, {folder or '.'!r}); importlib.import_module({name!r})"
    return sandbox.execute(f"PYTHONDONTWRITEBYTECODE=1 python -c {shlex.quote(check)}", timeout=60).exit_code == 0


def _text(sandbox: Sandbox, path: str) -> str | None:
    try:
        return sandbox.read_file(path).decode("utf-8")
    except (OSError, UnicodeDecodeError, SandboxError):
        return None
