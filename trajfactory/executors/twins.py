"""The fourth layer of the guard (`guard.py` holds the first three): what the failing tests' own file holds for one
verification run, so that a forgery aimed at those tests alone shows.

The canaries of `guard.write_canaries` live in a file of their own. A patch that forges outcomes by reaching into the
test machinery through what Python does not audit (a module's attributes, `sys.modules`) and aims only at the
failing tests leaves them alone: by the tests' file, or by their names, which a policy saw fail in its episode. So
before the buggy state is committed, the failing tests' file gets:

- **twins:** a failing test's definition copied as it is, decorators and all, at the end of the file under another
  name (`test_roundtrip` for `test_parse_dates`; a method's copy put on its own class): the
  same test at another place, under a name that shares nothing with the original. With a real fix both pass; a
  forgery keyed on the test's name, its line or its code object passes the original and not its twin, and the run
  is refused. The twins run after every other test of the run (`run_tests(last=)`): what a twin leaves behind
  reaches none of the project's tests (mccabe 0.7.0's `test_trivial` leaves a class attribute at 1, which the
  tests after it in its class set back to 0 and `RegressionTests` asserts is 0: its twin, run at the end of its
  class, failed a real fix).
- **mutants** (`mutants.py`): a failing test's copy with its last assertion turned against it, which must fail
  wherever the original passes: a forgery that tells the canaries by their shape and passes every other failure
  passes the mutant beside its original, and the run is refused.
- **canaries** at the end of the file, a class and plain functions (`canaries.py`), must-pass and must-fail tests:
  a forgery keyed on the file passes their must-fail tests too.

Both are committed with the buggy state, so git holds them as part of the project's file; the file keeps its
modification time, and no line of it moves. A test the file does not define where its id says (inherited from a
mixin, made in a loop, under an `if`, in a nested class) gets no twin; a file Python cannot parse gets neither, and
nor does a library module whose doctests fail (the patch may change it): such a doctest gets its mutant in a new
module beside it (`doctest_mutants.py`), committed with the buggy state too (`Twins.files`).

A test bound to its own name (a snapshot or cassette named after it) fails as a twin under any fix. `name_bound`
tries such a twin (and a mutant that passed) once more under the task's own fix, without the submitted patch; a
twin that fails there too (a mutant that passes there too) is excused, and only that one.
"""

from __future__ import annotations

import ast
import re
import secrets
import shlex
from dataclasses import dataclass, field
from typing import Callable

from trajfactory.executors.base import Sandbox, SandboxError, apply_patch
from trajfactory.executors.canaries import CANARY_WORDS, Canaries, canary_tests
from trajfactory.executors.doctest_mutants import doctest_parts, write_doctest_mutants
from trajfactory.executors.guard import protected, suite_files
from trajfactory.executors.helpers import mutant_targets
from trajfactory.executors.mutants import Spot, mutate, spot_of
from trajfactory.executors.testrun import run_tests
from trajfactory.runtime import parse_python

MAX_TWINS = 8
"""Twins per run at most: each runs a failing test once more, and a few already catch a forgery by name."""

_WORDS = CANARY_WORDS + ("basic", "simple", "regression", "edge_case", "mixed", "single", "many", "invalid", "valid",
                        "round_trip", "identity", "symmetry", "limits", "zero", "one_item", "sorted_input",
                        "reversed_input", "long_input")
"""Plain test words, the canaries' and more: a twin's or canary function's name (`test_<word>`), a canary class's
(`Test<Word>`)."""


@dataclass
class Twins:
    """What `write_twins` added to the failing tests' files for one run."""

    pairs: dict[str, str] = field(default_factory=dict)
    """original test id -> its twin's id"""
    canaries: list[Canaries] = field(default_factory=list)
    """the canaries of each file"""
    mutants: dict[str, str] = field(default_factory=dict)
    """original test id -> its mutant's id (`mutants.py`, `doctest_mutants.py`): a copy that must fail wherever the
    original passes"""
    files: list[str] = field(default_factory=list)
    """the new files written (a doctest's mutant's module), committed with the buggy state"""

    @property
    def ids(self) -> list[str]:
        return list(self.pairs.values()) + list(self.mutants.values()) + [t for c in self.canaries for t in c.ids]

    def told_apart(self, outcomes: dict[str, str]) -> list[str]:
        """The originals that passed while their twins did not."""
        return [test for test, twin in self.pairs.items()
                if outcomes.get(test) == "passed" and outcomes.get(twin) != "passed"]

    def mutants_passed(self, outcomes: dict[str, str]) -> list[str]:
        """The originals that passed while their mutants passed too."""
        return [test for test, mutant in self.mutants.items()
                if outcomes.get(test) == "passed" and outcomes.get(mutant) == "passed"]

    def broken(self, outcomes: dict[str, str], excused: tuple[str, ...] | list[str] = (),
               loose: tuple[str, ...] | list[str] = ()) -> list[str]:
        """A twin that did not pass beside an original that passed (save the twins of `excused` tests, which fail
        under the task's own fix too: `name_bound`), a mutant that passed beside an original that passed (save those
        of `loose` tests, which pass under the task's own fix too), and canaries without the outcome they must
        have."""
        bad = [f"twin test {self.pairs[test]} (a copy of {test} under another name) was "
               f"{outcomes.get(self.pairs[test], 'missing')} while {test} passed: the outcomes were told apart by the "
               "test's name or place, not by what it checks" for test in self.told_apart(outcomes)
               if test not in excused]
        bad += [f"mutant test {self.mutants[test]} (a copy of {test} with its last assertion turned against it) passed "
                f"while {test} passed: no run of the code passes both" for test in self.mutants_passed(outcomes)
                if test not in loose]
        return bad + [f"canary test {b}" for c in self.canaries for b in c.broken(outcomes)]


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


def _find(tree: ast.Module, path: list[str]) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
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
    out: set[str] = set()
    for stmt in cls.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(stmt.name)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            out |= {a.asname or a.name.split(".")[0] for a in stmt.names}
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            out |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return {n for n in out if not (n.startswith("__") and not n.endswith("__"))}


def _indent(copy: list[str]) -> str:
    """The indentation of a copied definition's first line."""
    return copy[0][:len(copy[0]) - len(copy[0].lstrip())]


def _find_class(tree: ast.Module, name: str) -> ast.ClassDef:
    """The last top-level class of that name (`_find` found a method in it)."""
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
        node = _find(tree, path) if len(path) <= 2 else None  # a nested class's test gets none
        if node is None or tuple(path) in twins:
            continue
        prefix = path[-1].split("_", 1)[0] + "_" if "_" in path[-1] else "test_"
        # a method's twin sorts after every test of its class: a unittest class runs its methods in name order, and
        # a twin run before its original may change what the original finds (wrapt 2.5.2's test_import_deadlock_3
        # leaves wsgiref imported, which it asserts is not)
        last = max((n.name for n in _find_class(tree, path[0]).body if isinstance(n, (ast.FunctionDef,
                    ast.AsyncFunctionDef)) and n.name.startswith(prefix[:4])), default="") if len(path) == 2 else ""
        last = max([last, *(t for made in (twins, mutants, helpers) for p, t in made.items()
                            if p[:-1] == tuple(path[:-1]) and len(p) == 2)])
        start = min([d.lineno for d in node.decorator_list] + [node.lineno])
        at, holder = node.lineno - start, functions if len(path) == 1 else methods.setdefault(path[0], [])
        twin = _taken((names or {}).get(tuple(path), ""), used) or _fresh(prefix, used, rng, unlike=path[-1],
                                                                         after=last)
        holder.append(_renamed(lines[start - 1:node.end_lineno], at, path[-1], twin))
        if len(path) == 2:
            evaluated.setdefault(path[0], set()).update(_evaluated_names(node))
        twins[tuple(path)] = twin
        if (spot := spot_of(node, targets(path) if targets else None)) is not None:
            mutant = _taken((mutant_names or {}).get(tuple(path), ""), used) or _fresh(
                prefix, used, rng, unlike=path[-1], after=max(last, twin) if len(path) == 2 else "")
            if spot.kind == "copy":  # the module's own helper, copied with its assertion turned, called instead
                (where, helper), name = spot.helper, _fresh("_", used, rng)
                (functions if len(where) == 1 else methods.setdefault(where[0], [])).append(_renamed(mutate(
                    lines[helper.lineno - 1:helper.end_lineno], helper.lineno, spot.inner, rng), 0, helper.name, name))
                if len(where) == 2:
                    helpers[(where[0], name)] = name
                    evaluated.setdefault(where[0], set()).update(_evaluated_names(helper))
                spot = Spot("rename", spot.node, name)
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


def _split(test_id: str) -> tuple[str, list[str], str]:
    """`file.py::Cls::test_x[p]` -> (`file.py`, `["Cls", "test_x"]`, `[p]`)."""
    path, _, rest = test_id.partition("::")
    params = rest[rest.index("["):] if "[" in rest else ""
    return path, (rest[:len(rest) - len(params)] if params else rest).split("::"), params


def checkout_text(sandbox: Sandbox, path: str) -> str | None:
    """The checkout's file `path` as text; None where there is none (or it is not UTF-8)."""
    try:
        return sandbox.read_file(path).decode("utf-8")
    except (OSError, UnicodeDecodeError, SandboxError):
        return None


def _mutable(sandbox: Sandbox, test: str, trees: dict[str, tuple]) -> bool:
    """Whether the test `test` of the sandbox's checkout gets a mutant (`mutants.spot_of`); `trees` caches its file."""
    path, names, _ = _split(test)
    if path not in trees:
        source = checkout_text(sandbox, path) if path.endswith(".py") else None
        try:
            tree = parse_python(source) if source is not None else None
        except (SyntaxError, ValueError):
            tree = None
        trees[path] = (tree, mutant_targets(tree, path, lambda other: checkout_text(sandbox, other)) if tree else None)
    tree, targets = trees[path]
    node = _find(tree, names) if tree is not None and len(names) <= 2 else None
    return node is not None and spot_of(node, targets(names)) is not None


def write_twins(sandbox: Sandbox, tests: list[str], limit: int = MAX_TWINS, named: dict[str, str] | None = None,
                mutants_named: dict[str, str] | None = None) -> Twins:
    """Twins of up to `limit` of `tests` (the task's failing tests, in the sandbox's checkout) and canaries in each
    of their files, written before the buggy state is committed; the files keep their modification times."""
    rng = secrets.SystemRandom()
    by_file: dict[str, list[tuple[str, list[str], str]]] = {}
    suite = suite_files(tests)
    trees: dict[str, tuple] = {}
    # those that get a mutant first (in random order among them): a forgery the mutants refuse must meet one
    for test in sorted(rng.sample(tests, len(tests)), key=lambda t: not _mutable(sandbox, t, trees)):
        path, names, params = _split(test)
        # a test file only: a doctest's id names a library module, which the patch may change
        if (protected(path) == "test file" or path in suite) and path.endswith(".py") and \
                sum(len(v) for v in by_file.values()) < limit:
            by_file.setdefault(path, []).append((test, names, params))
    out = Twins()
    for path, wanted in by_file.items():
        try:
            source = sandbox.read_file(path).decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        again = {tuple(_split(t)[1]): _split(twin)[1][-1] for t, twin in (named or {}).items()}
        mutated = {tuple(_split(t)[1]): _split(m)[1][-1] for t, m in (mutants_named or {}).items()}
        made = twin_source(source, [names for _, names, _ in wanted], rng, names=again, mutant_names=mutated,
                           read=lambda other: checkout_text(sandbox, other), file=path)
        if made is None:
            continue
        new, twins, canary, mutants = made
        stamp = "/tmp/trajfactory-twin-stamp"
        sandbox.execute(f"touch -r {shlex.quote(path)} {stamp}", timeout=30)
        sandbox.write_file(path, new)
        sandbox.execute(f"touch -r {stamp} {shlex.quote(path)} && rm -f {stamp}", timeout=30)
        for test, names, params in wanted:
            if twin := twins.get(tuple(names)):
                out.pairs[test] = "::".join([path, *names[:-1], twin]) + params
            if mutant := mutants.get(tuple(names)):
                out.mutants[test] = "::".join([path, *names[:-1], mutant]) + params
        out.canaries.append(Canaries(path=path, must_pass=[f"{path}::{t}" for t in canary.must_pass],
                                     must_fail=[f"{path}::{t}" for t in canary.must_fail]))
    # a doctest's (in a library module, which the patch may change): its mutant in a module of its own beside it
    doctests = [t for t in tests if doctest_parts(t) and t.partition("::")[0] not in suite and
                protected(t.partition("::")[0]) != "test file"]
    copies, out.files = write_doctest_mutants(sandbox, doctests[:max(0, limit - len(out.mutants))], rng,
                                              mutants_named or {})
    out.mutants.update(copies)
    return out


def name_bound(sandbox: Sandbox, bug_patch: str, gold: str, tests: list[str], timeout: float,
               alongside: list[str] | tuple[str, ...] = (), pairs: dict[str, str] | None = None,
               mutants: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Of `tests` (originals that passed under a submitted patch while their twins did not, or while their mutants
    passed too), those whose twins also fail, and those whose mutants also pass, where the task's own fix (`gold`) is
    applied to the buggy state, in `sandbox` reset: (told apart, mutants passed). Such tests depend on their own name
    or place (a snapshot or cassette named after the test, `request.node.name`, or state the tests before it left:
    tzlocal 5.4.5's `test_assert_tz_offset` reads the local zone that later tests of its file cache, so its twin at
    the file's end failed under any fix), which a copy cannot reproduce. `alongside`: the other tests of the
    verification run, run here too, so that each copy runs after what it ran after there; `pairs` and `mutants`: the
    copies of that run, whose names the copies here take (a unittest class runs its methods in name order: wrapt
    2.5.2's `test_import_deadlock_3` leaves `wsgiref` imported, and a twin named after it failed while one named
    before it passed, so a real fix was refused). Their copies then say nothing about the submitted patch; every
    other disagreement stands, since the submitted patch has no part in this run. A run that cannot say (a patch that
    does not apply, a timeout, an unsealed record) clears none."""
    sandbox.reset()
    if apply_patch(sandbox, bug_patch, "/tmp/trajfactory-bug.diff") is not None:
        return [], []
    twins = write_twins(sandbox, tests, limit=len(tests), named={t: pairs[t] for t in tests if t in (pairs or {})},
                        mutants_named={t: mutants[t] for t in tests if t in (mutants or {})})
    if apply_patch(sandbox, gold, "/tmp/trajfactory-gold.diff") is not None:
        return [], []
    run = run_tests(sandbox, [*dict.fromkeys([*alongside, *tests]), *twins.ids], timeout=timeout, last=twins.ids)
    if run.timed_out or run.results_error or not run.sealed:
        return [], []
    return ([test for test in twins.told_apart(run.outcomes) if test in tests],
            [test for test in twins.mutants_passed(run.outcomes) if test in tests])
