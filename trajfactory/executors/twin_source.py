"""The source of a test module with twins, mutants and canaries written into it (`twins.py` says what each is for).

`twin_source` copies each failing test's definition to the end of the file under a fresh name (a method's copy goes
onto its own class, `GRAFT`), adds its mutant where it has an assertion to turn (`mutants.py`), with the changed copy
of the test's own helper that a "copy" mutant calls, and ends the file with the canaries (`canaries.py`). No line of
the file moves.
"""

from __future__ import annotations

import ast
import re
import secrets
from dataclasses import replace
from typing import Callable

from trajfactory.executors.canaries import CANARY_WORDS, Canaries, canary_tests
from trajfactory.executors.helpers import binds, mutant_targets
from trajfactory.executors.mutant_text import mutate
from trajfactory.executors.mutants import spot_of
from trajfactory.runtime import parse_python

_WORDS = CANARY_WORDS + ("basic", "simple", "regression", "edge_case", "mixed", "single", "many", "invalid", "valid",
                        "round_trip", "identity", "symmetry", "limits", "zero", "one_item", "sorted_input",
                        "reversed_input", "long_input")
"""Plain test words, the canaries' and more: a twin's or canary function's name (`test_<word>`), a canary class's
(`Test<Word>`)."""



def _names(tree: ast.AST) -> set[str]:
    """Every name the module defines or uses: a twin, canary class or canary function must collide with none."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.alias):
            out.add(node.asname or node.name.split(".")[0])
    return out


def find_test(tree: ast.Module, path: list[str]) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The definition at `path` (classes, then the function) among the module's top-level statements: the last one
    of that name, as Python keeps it."""
    body, node = tree.body, None
    for i, name in enumerate(path):
        kinds = (ast.FunctionDef, ast.AsyncFunctionDef) if i == len(path) - 1 else (ast.ClassDef,)
        found = [n for n in body if isinstance(n, kinds) and n.name == name]
        if not found:
            return None
        node = found[-1]
        body = getattr(node, "body", [])
    return node


def _evaluated_names(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """The names a definition evaluates where it stands: its decorators, its defaults and its annotations."""
    args = node.args
    parts = [*node.decorator_list, *args.defaults, *(d for d in args.kw_defaults if d is not None), node.returns,
             *(a.annotation for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
               if a is not None)]
    return {n.id for part in parts if part is not None for n in ast.walk(part)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _class_names(cls: ast.ClassDef) -> set[str]:
    """The names a class body binds (attributes, methods, nested classes, imports), but private ones (`__x`, which
    Python mangles)."""
    out = set().union(*(binds(stmt) for stmt in cls.body))
    return {n for n in out if not (n.startswith("__") and not n.endswith("__"))}


def rebound(tree: ast.Module, path: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether a name that the test's decorators, defaults or annotations evaluate is bound again after it, in its
    class's body or at the module's top level. Its copies, written at the module's end, evaluate the later value:
    python-dateutil 2.9.0's `test_isoparser.py` binds `DATETIMES` anew before each test it parametrizes, so a copy
    of `test_ymd_h` ran other cases under the same ids, and its mutant passed beside the original. Such a test gets
    no mutant."""
    names = _evaluated_names(node)
    scopes = [_find_class(tree, path[0]).body, tree.body] if len(path) == 2 else [tree.body]
    return bool(names) and any(stmt.lineno > node.end_lineno and names & binds(stmt)
                               for body in scopes for stmt in body)


def _indent(copy: list[str]) -> str:
    """The indentation of a copied definition's first line."""
    return copy[0][:len(copy[0]) - len(copy[0].lstrip())]


def _find_class(tree: ast.Module, name: str) -> ast.ClassDef:
    """The last top-level class of that name (`find_test` found a method in it)."""
    return [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name][-1]


def _fresh(prefix: str, used: set[str], rng: secrets.SystemRandom, title: bool = False, unlike: str = "",
           after: str = "") -> str:
    """A name the module does not use: `prefix` and a plain word (`test_roundtrip`) that shares no word with
    `unlike`; with `title`, the word in title case (`TestRoundTrip`); with `after`, one that sorts after it (a
    unittest class runs its methods in name order: `after` + a word where no plain word sorts after it)."""
    avoid = set(unlike.lower().split("_"))
    words = [w for w in rng.sample(_WORDS, len(_WORDS)) if not avoid & set(w.split("_"))]
    names = [prefix + ("".join(w.title() for w in word.split("_")) if title else word) for word in words]
    if after:
        names = [n for n in names if n > after] or [f"{after}_{w}" for w in words]
    name = next((n for n in names if n not in used), f"{prefix}{'Case' if title else 'case_'}{secrets.token_hex(4)}")
    used.add(name)
    return name


def _taken(name: str, used: set[str]) -> str:
    """`name` (one an earlier run gave), now taken, where the module does not use it yet; else ""."""
    if name and name not in used:
        used.add(name)
        return name
    return ""


def _renamed(copy: list[str], at: int, old: str, new: str) -> list[str]:
    """A copied definition whose `def` line (`copy[at]`) names `new` in place of `old`."""
    copy[at] = re.sub(rf"\bdef(\s+){re.escape(old)}\b", rf"def\g<1>{new}", copy[at], count=1)
    return copy


GRAFT = """for {name} in ({names},):
    {value} = vars({cls})[{name}]
    {func} = getattr({value}, "__func__", {value})
    while {func} is not None:
        if "__class__" in getattr(getattr({func}, "__code__", None), "co_freevars", ()):
            {func}.__closure__[{func}.__code__.co_freevars.index("__class__")].cell_contents = {held}
        {func} = getattr({func}, "__wrapped__", None)
    setattr({held}, {name}, {value})
{cls} = {held}
del {held}, {name}, {value}, {func}
"""
"""The twins of a class's methods, written in a subclass under the class's name (so that they compile as the
originals do: private names, `super()`), go onto the class itself, and the module's name is the class again: a suite
that sets a class attribute through the module's name (pyparsing's `Test02_WithoutPackrat.suite_context = ...`, read
by its subclasses) still sets it on the class its tests read it from. `super()` in a copy is bound to the class."""


def twin_source(source: str, tests: list[list[str]], rng: secrets.SystemRandom | None = None,
                names: dict[tuple[str, ...], str] | None = None, mutant_names: dict[tuple[str, ...], str] | None = None,
                read: Callable[[str], str | None] | None = None, file: str = "",
                ) -> tuple[str, dict[tuple[str, ...], str], Canaries, dict[tuple[str, ...], str]] | None:
    """`source` (a test module) with twins of the tests at `tests` (`["test_x"]` or `["TestCls", "test_x"]`),
    mutants of those that have an assertion to change (`mutants.py`), and canaries of both kinds: (new source,
    {path: twin name}, the canaries as `Canaries` whose ids are `Cls::test_x` and `test_y`, {path: mutant name}).
    None when the source does not parse.

    Everything is added at the end, so no line of the file moves (a test may check a line number of its own file): a
    function's twin is a copy of its definition; a method's twin is compiled in a subclass under the class's own
    name (`class TestX(TestX):`) and then put on the class itself (`GRAFT`), so pytest collects the same ids and the
    twin beside them, and the copy's `super()` and private names work as in the original. `names`: the twins' names
    where they must be those of an earlier run (a unittest class runs its methods in the order of their names), and
    `mutant_names` the mutants'. `read` (a file of the checkout by its path, None where there is none) and `file`
    (this module's path) let a mutant change a test that ends in a helper of the project (`helpers.py`)."""
    rng = rng or secrets.SystemRandom()
    try:
        tree = parse_python(source)
    except (SyntaxError, ValueError):
        return None
    targets = mutant_targets(tree, file, read) if read is not None else None
    used, lines = _names(tree), source.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    functions, methods, twins, evaluated, mutants, helpers = [], {}, {}, {}, {}, {}
    for path in tests:
        node = find_test(tree, path) if len(path) <= 2 else None  # a nested class's test gets none
        if node is None or tuple(path) in twins:
            continue
        prefix = path[-1].split("_", 1)[0] + "_" if "_" in path[-1] else "test_"
        # a method's twin sorts after every test of its class: a unittest class runs its methods in name order, and
        # a twin run before its original may change what the original finds (wrapt 2.5.2's test_import_deadlock_3
        # leaves wsgiref imported, which it asserts is not)
        last = max((n.name for n in _find_class(tree, path[0]).body if isinstance(n, (ast.FunctionDef,
                    ast.AsyncFunctionDef)) and n.name.startswith(prefix[:4])), default="") if len(path) == 2 else ""
        last = max([last, *(t for made in (twins, mutants) for p, t in made.items()
                            if p[:-1] == tuple(path[:-1]) and len(p) == 2)])
        start = min([d.lineno for d in node.decorator_list] + [node.lineno])
        at, holder = node.lineno - start, functions if len(path) == 1 else methods.setdefault(path[0], [])
        twin = _taken((names or {}).get(tuple(path), ""), used) or _fresh(prefix, used, rng, unlike=path[-1],
                                                                         after=last)
        holder.append(_renamed(lines[start - 1:node.end_lineno], at, path[-1], twin))
        if len(path) == 2:
            evaluated.setdefault(path[0], set()).update(_evaluated_names(node))
        twins[tuple(path)] = twin
        if not rebound(tree, path, node) and (spot := spot_of(node, targets(path) if targets else None)):
            mutant = _taken((mutant_names or {}).get(tuple(path), ""), used) or _fresh(
                prefix, used, rng, unlike=path[-1], after=max(last, twin) if len(path) == 2 else "")
            if spot.kind == "copy":  # the module's own helper, copied with its assertion turned, called instead
                (where, helper), name = spot.helper, _fresh("_", used, rng)
                (functions if len(where) == 1 else methods.setdefault(where[0], [])).append(_renamed(mutate(
                    lines[helper.lineno - 1:helper.end_lineno], helper.lineno, spot.inner, rng), 0, helper.name, name))
                if len(where) == 2:
                    helpers[(where[0], name)] = name
                    evaluated.setdefault(where[0], set()).update(_evaluated_names(helper))
                spot = replace(spot, kind="rename", text=name)
            holder.append(_renamed(mutate(lines[start - 1:node.end_lineno], start, spot, rng), at, path[-1], mutant))
            mutants[tuple(path)] = mutant
    for copy in functions:
        lines += ["\n", "\n", *copy]
    for cls, copies in methods.items():
        held, name, value, func = (_fresh("_", used, rng) for _ in range(4))
        lines += ["\n", "\n", f"{held} = {cls}\n", "\n", "\n", f"class {cls}({cls}):\n"]
        # what the copies' decorators and defaults name of the class's own body (hpack's `@given(sets(keys))` reads
        # the class attribute `keys`): a class body sees its own names only, not its base's
        indent = _indent(methods[cls][0])
        lines += [f"{indent}{n} = {held}.{n}\n" for n in sorted(evaluated.get(cls, set()) & _class_names(
            _find_class(tree, cls)))]
        for i, copy in enumerate(copies):
            lines += (["\n"] if i else []) + copy
        names = ", ".join(repr(made[(cls, n)]) for made in (twins, mutants, helpers)
                          for n in [p[1] for p in made if len(p) == 2 and p[0] == cls])
        lines += ["\n", "\n", GRAFT.format(held=held, cls=cls, name=name, value=value, func=func, names=names)]
    cls = _fresh("Test", used, rng, title=True)
    in_class, method_pass, method_fail = canary_tests(rng, [f"test_{w}" for w in rng.sample(CANARY_WORDS, 4)], True)
    functions, function_pass, function_fail = canary_tests(rng, [_fresh("test_", used, rng) for _ in range(4)], False)
    lines += ["\n", "\n", "import unittest\n"]
    for part in rng.sample([f"class {cls}(unittest.TestCase):{in_class}", functions.strip() + "\n"], 2):
        lines += ["\n", "\n", part]
    canary = Canaries(path="", must_pass=[f"{cls}::{t}" for t in method_pass] + function_pass,
                      must_fail=[f"{cls}::{t}" for t in method_fail] + function_fail)
    new = "".join(lines)
    try:
        parse_python(new)
    except SyntaxError:  # a copy that does not stand on its own (its indentation mixed with the class's): none
        return None
    return new, twins, canary, mutants
