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

import secrets
import shlex
from dataclasses import dataclass, field

from trajfactory.executors.base import Sandbox, SandboxError, apply_patch
from trajfactory.executors.canaries import Canaries
from trajfactory.executors.doctest_mutants import doctest_parts, write_doctest_mutants
from trajfactory.executors.guard import protected, suite_files
from trajfactory.executors.helpers import mutant_targets
from trajfactory.executors.mutants import spot_of
from trajfactory.executors.testrun import run_tests
from trajfactory.executors.twin_source import find_test, rebound, twin_source
from trajfactory.runtime import parse_python

MAX_TWINS = 8
"""Twins per run at most: each runs a failing test once more, and a few already catch a forgery by name."""

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
    node = find_test(tree, names) if tree is not None and len(names) <= 2 else None
    return node is not None and not rebound(tree, names, node) and spot_of(node, targets(names)) is not None


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
