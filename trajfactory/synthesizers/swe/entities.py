"""The mutable entities of a repository: top-level functions, classes and their methods.

Test files (by their names or the project's own collection rules), docs, examples, benchmarks, build output,
virtualenvs, hidden directories and scripts whose file name is no module name are skipped, so bugs land only in the
code under test. A file that does not parse is reported, never raised.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from trajfactory.executors.guard import protected
from trajfactory.executors.collection import project_test_file
from trajfactory.schema import Entity
from trajfactory.runtime import parse_python

SKIP_DIRS = frozenset(
    {
        "tests", "test", "docs", "doc", "examples", "example", "build", "dist", "site-packages",
        "node_modules", "__pycache__", "venv", "virtualenv",
        # benchmark scripts (asv's benchmarks/): pathspec 1.1.1's took 2 of its 12 candidates, reached by no test
        "benchmarks", "benchmark", "asv_bench",
    }
)

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)
# Module-level compound statements whose bodies still define top-level names (e.g. a
# `try: import x / except ImportError: def x(...)` fallback).
_MODULE_BLOCKS = (ast.If, ast.Try, ast.With) + ((ast.TryStar,) if hasattr(ast, "TryStar") else ())


def is_source_file(rel: str | PurePosixPath) -> bool:
    """Whether a repository-relative path is a non-test Python source file worth mutating: never one a submitted
    fix may not change (`executors.guard.protected`: tests, `conftest.py`, `setup.py`, test helpers under
    `testing/`, `noxfile.py`, `sitecustomize.py`, ...), whose bug verification would make unfixable."""
    path = PurePosixPath(rel)
    if path.suffix != ".py" or protected(str(path)):  # tests, conftest.py and setup.py among them
        return False
    if not path.stem.isidentifier():  # a script no import can name (wcwidth's bin/update-tables.py took all 12)
        return False
    return not any(
        part.startswith(".") or part in SKIP_DIRS or part.endswith(".egg-info") for part in path.parts[:-1]
    )


def python_files(root: str | Path, skip_dirs: frozenset[str] = SKIP_DIRS) -> list[str]:
    """Repository-relative posix paths of the `.py` files under `root`, sorted, outside hidden directories,
    virtualenvs, egg-info, symlinked directories and `skip_dirs`."""
    root = Path(root)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        # A virtualenv under any name is recognised by its marker file.
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and d not in skip_dirs and not d.endswith(".egg-info")
            and not (here / d / "pyvenv.cfg").exists() and not (here / d).is_symlink()
        )
        found += [(here / name).relative_to(root).as_posix() for name in filenames
                  if name.endswith(".py") and (here / name).is_file()]
    return sorted(found)


def iter_source_files(root: str | Path) -> list[str]:
    """Repository-relative posix paths of the source files under `root`, sorted: not the project's test files,
    by the names every project shares or by its own collection rules (`python_files = check_*.py`)."""
    is_test = project_test_file(root)
    return [rel for rel in python_files(root) if is_source_file(rel) and not is_test(rel)]


def complexity(node: ast.AST) -> int:
    """1 + if/elif/ternary/for/while/except/assert/case + comprehension for+if clauses + (operands-1) per and/or."""
    count = 1
    for sub in ast.walk(node):
        if isinstance(sub, (ast.If, ast.IfExp, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.Assert)):
            count += 1
        elif isinstance(sub, ast.comprehension):
            count += 1 + len(sub.ifs)
        elif isinstance(sub, ast.BoolOp):
            count += len(sub.values) - 1
        elif isinstance(sub, ast.match_case):
            count += 1
    return count


def first_line(node: ast.AST) -> int:
    """First line of a statement, counting its decorators."""
    decorators = getattr(node, "decorator_list", None) or []
    return min([node.lineno] + [d.lineno for d in decorators])


def _entity(file: str, node: ast.AST, name: str, kind: str) -> Entity:
    return Entity(
        file=file, name=name, kind=kind, lineno=first_line(node), end_lineno=node.end_lineno,
        complexity=complexity(node), body_lineno=node.body[0].lineno,
    )


def module_entities(tree: ast.Module, file: str) -> list[tuple[Entity, ast.AST]]:
    """Entities of one parsed module in source order, each with its AST node."""
    out: list[tuple[Entity, ast.AST]] = []

    def visit_class(cls: ast.ClassDef, prefix: str) -> None:
        qual = f"{prefix}{cls.name}"
        out.append((_entity(file, cls, qual, "class"), cls))
        for stmt in cls.body:
            if isinstance(stmt, _DEFS):
                out.append((_entity(file, stmt, f"{qual}.{stmt.name}", "method"), stmt))
            elif isinstance(stmt, ast.ClassDef):
                visit_class(stmt, f"{qual}.")

    def visit_block(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, _DEFS):
                out.append((_entity(file, stmt, stmt.name, "function"), stmt))
            elif isinstance(stmt, ast.ClassDef):
                visit_class(stmt, "")
            elif isinstance(stmt, _MODULE_BLOCKS):
                for name in ("body", "orelse", "finalbody"):
                    visit_block(getattr(stmt, name, []))
                for handler in getattr(stmt, "handlers", []):
                    visit_block(handler.body)

    visit_block(tree.body)
    return out


@dataclass
class ParsedFile:
    """One source file, its text and tree, and its entities."""

    file: str
    source: str
    tree: ast.Module
    entities: list[tuple[Entity, ast.AST]] = field(default_factory=list)


def parse_file(root: str | Path, file: str) -> ParsedFile:
    """Read and parse one repository file; raises SyntaxError/ValueError with the reason."""
    raw = (Path(root) / file).read_bytes()
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start}); only UTF-8 sources are mutated") from exc
    tree = parse_python(source, filename=file)
    return ParsedFile(file=file, source=source, tree=tree, entities=module_entities(tree, file))


def parse_repository(root: str | Path) -> tuple[list[ParsedFile], list[tuple[str, str]]]:
    """Every source file of `root`, parsed; files that fail come back as (file, reason with line)."""
    parsed: list[ParsedFile] = []
    errors: list[tuple[str, str]] = []
    for file in iter_source_files(root):
        try:
            parsed.append(parse_file(root, file))
        except SyntaxError as exc:
            errors.append((file, f"{type(exc).__name__}: {exc.msg} (line {exc.lineno})"))
        except (ValueError, OSError, RecursionError, MemoryError) as exc:
            errors.append((file, f"{type(exc).__name__}: {exc} (line 0)"))
    return parsed, errors


def list_entities(root: str | Path) -> tuple[list[Entity], list[tuple[str, str]]]:
    """All mutable entities of the checkout at `root`, and the files that could not be parsed."""
    parsed, errors = parse_repository(root)
    return [entity for pf in parsed for entity, _ in pf.entities], errors
