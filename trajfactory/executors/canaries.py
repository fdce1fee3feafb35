"""Canary tests: the third layer of the guard (`guard.py`), and the canaries of the fourth (`twins.py`).

A canary group is four tests of one shape, two that must pass and two that must fail (`a + b == want`, `want` off by
a few for the must-fail ones), in a random order, under plain test names: a run in which a must-fail canary passes,
or a must-pass one does not, was tampered with, whatever the other outcomes say.

Each place gets the canaries twice, in two kinds, because no one kind runs in every project:

- **`unittest.TestCase` methods** (`Cls::test_x`): pytest collects them whatever a project's `python_classes` and
  `python_functions` say; but a `TestCase` method cannot take a parametrized fixture, so where a project has a
  parametrized autouse fixture (markupsafe 3.0's conftest runs every test once per escape implementation) every
  one of them errors (`... does not support fixtures`).
- **plain test functions** (`test_x`): they take such a fixture as the project's own tests do, and run once per
  parameter (each variant is judged: `outcome_of`); but a project whose `python_functions` does not match `test_`
  does not collect them.

A kind the project cannot run shows as all four canaries with the same `error` or `missing`: that kind is void,
and the other is judged alone. A run in which both kinds are void is refused, and a must-fail canary that passed, of
either kind, always is: a patch gains nothing by voiding a kind, since what it forges shows in the kind that runs.
"""

from __future__ import annotations

import posixpath
import secrets
import shlex
from dataclasses import dataclass, field

from trajfactory.executors.base import Sandbox, apply_patch
from trajfactory.executors.testrun import run_tests

_CANARY_FILES = ("behaviour", "cases", "regressions", "extra", "usage", "api", "misc", "more", "compat", "edge_cases")
CANARY_WORDS = ("roundtrip", "defaults", "empty_input", "repr", "types", "ordering", "boundaries", "unicode", "copy",
                "equality", "none_values", "large_values", "nested", "whitespace", "negative", "idempotent")


def outcome_of(test: str, outcomes: dict[str, str]) -> str:
    """The outcome of `test` in a run's `outcomes`: its own, or, for a test pytest ran once per parameter (an id
    without the `[...]` its variants have: a parametrized fixture), all its variants' that ran taken together:
    `passed` or `failed`/`error` where they agree, `mixed` where they do not, `skipped` where none ran."""
    if test in outcomes:
        return outcomes[test]
    variants = [o for t, o in outcomes.items() if t.startswith(test + "[")]
    ran = [o for o in variants if o != "skipped"]
    if not variants:
        return "missing"
    if not ran:
        return "skipped"
    if set(ran) == {"passed"}:
        return "passed"
    if set(ran) <= {"failed", "error"}:
        return "error" if "error" in ran else "failed"
    return "mixed"


def _kind(test: str) -> int:
    """A canary's kind: the parts of its id (`path::Cls::test_x`: a method; `path::test_x`: a function)."""
    return test.count("::")


@dataclass
class Canaries:
    """The canary tests written into the checkout for one run (in a file of their own, or at the end of a test file):
    ids of both kinds, told apart by their shape."""

    path: str
    must_pass: list[str] = field(default_factory=list)
    must_fail: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return self.must_pass + self.must_fail

    def without(self, excused: set[str]) -> "Canaries":
        """These canaries but the `excused` ids (`uncollected`)."""
        return Canaries(self.path, [t for t in self.must_pass if t not in excused],
                        [t for t in self.must_fail if t not in excused])

    def broken(self, outcomes: dict[str, str]) -> list[str]:
        """Canaries whose outcome is not the one they must have, in the kinds the project runs (all of them where it
        runs neither); a must-fail canary that passed, in any kind."""
        seen = {t: outcome_of(t, outcomes) for t in self.ids}
        kinds: dict[int, list[str]] = {}
        for test in self.ids:
            kinds.setdefault(_kind(test), []).append(test)
        void = {k for k, tests in kinds.items() if len({seen[t] for t in tests}) == 1
                and seen[tests[0]] in ("error", "missing")}
        judged = set(kinds) - void or set(kinds)
        bad = [f"{t} must pass but was {seen[t]}" for t in self.must_pass
               if _kind(t) in judged and seen[t] != "passed"]
        bad += [f"{t} must fail but was {seen[t]}" for t in self.must_fail
                if _kind(t) in judged and seen[t] not in ("failed", "error")]
        return bad


def canary_tests(rng: secrets.SystemRandom, names: list[str], methods: bool) -> tuple[str, list[str], list[str]]:
    """Four canary tests named `names` (`test_x`), in a random order: their source (methods of a `unittest.TestCase`,
    indented, or module-level functions of a module that imports `unittest`), and the names of the two that must pass
    and the two that must fail. Each pair holds one `assertEqual` and one plain `assert`, so a tampered assertion of
    either kind shows."""
    must_pass, must_fail = names[:2], names[2:4]
    style = dict(zip(must_pass, rng.sample((True, False), 2))) | dict(zip(must_fail, rng.sample((True, False), 2)))
    indent, own, equal = ("    ", "self", "self.assertEqual") if methods else ("", "", "unittest.TestCase().assertEqual")
    body = ""
    for test in sorted(names[:4], key=lambda _: rng.random()):
        a, b, off = rng.randint(2, 999), rng.randint(2, 999), rng.randint(1, 9)
        want = a + b + (off if test in must_fail else 0)
        check = f"{equal}({a} + {b}, {want})" if style[test] else f"assert {a} + {b} == {want}"
        body += f"\n{indent}def {test}({own}):\n{indent}    {check}\n" + ("" if methods else "\n")
    return body, must_pass, must_fail


def write_canaries(sandbox: Sandbox, modules: list[str], beside: str = "") -> Canaries:
    """A canary module importing `modules` (the patched code), written beside the test file `beside` (the checkout's
    root without one), that nothing in the sandbox can tell from the project's own tests: a name like theirs found
    nowhere in the checkout (`test_<module>_<word>.py`), their file's modification time, plain test names, and must-pass
    and must-fail tests of the same shape in a random order, a `unittest.TestCase` class and plain functions. The
    caller commits it with the buggy state, so git sees it as one more of the project's files. Pytest collects a file
    named on its command line whatever the project's `python_files` say."""
    rng = secrets.SystemRandom()
    folder = posixpath.dirname(beside)
    stem = (modules[0].rsplit(".", 1)[-1] if modules else "").strip("_") or "core"
    names = [f"test_{stem}_{word}.py" for word in rng.sample(_CANARY_FILES, len(_CANARY_FILES))]
    names.append(f"test_{stem}_{secrets.token_hex(4)}.py")
    free = sandbox.execute("for n in " + " ".join(names) + "; do "
                           '[ -z "$(git ls-files -co -- "$n" "*/$n")" ] && echo "$n" && break; done', timeout=60)
    name = free.output.strip().splitlines()[-1] if free.output.strip() else names[-1]
    path = posixpath.join(folder, name)
    cls = "Test" + "".join(p.title() for p in name[len("test_"):-len(".py")].split("_"))
    imports = "".join(f"\n    importlib.import_module({m!r})" for m in modules) or "\n    pass"
    words = [f"test_{w}" for w in rng.sample(CANARY_WORDS, 8)]
    methods, method_pass, method_fail = canary_tests(rng, words[:4], methods=True)
    functions, function_pass, function_fail = canary_tests(rng, words[4:], methods=False)
    parts = [f"class {cls}(unittest.TestCase):{methods}".strip(), functions.strip()]
    source = f'''import importlib
import unittest

try:{imports}
except Exception:  # noqa: BLE001 - the patched code may not import; the canaries run all the same
    pass


''' + "\n\n\n".join(rng.sample(parts, 2)) + "\n"
    sandbox.write_file(path, source)
    if beside:
        sandbox.execute(f"touch -r {shlex.quote(beside)} {shlex.quote(path)}", timeout=30)
    return Canaries(path=path, must_pass=[f"{path}::{cls}::{t}" for t in method_pass] +
                    [f"{path}::{t}" for t in function_pass],
                    must_fail=[f"{path}::{cls}::{t}" for t in method_fail] + [f"{path}::{t}" for t in function_fail])


def uncollected(sandbox: Sandbox, bug_patch: str, silent: list[Canaries], timeout: float) -> set[str]:
    """Of the canaries in `silent` (sets none of whose tests ran under a submitted patch), the ids that the buggy
    state collects no test for either, in `sandbox` reset, with the same canary files: the project collects such a
    file otherwise than pytest's defaults (PyYAML 6.0.4's `tests/legacy_tests/conftest.py` makes its own items of the
    data files, and no plain test there is ever collected), so they say nothing about the patch. The submitted patch
    has no part in this run; a canary it silenced that the buggy state collects stays broken. A run that cannot say
    (a bug patch that does not apply, a timeout, an unreadable record) excuses none."""
    files = {c.path: sandbox.read_file(c.path) for c in silent}
    sandbox.reset()
    if apply_patch(sandbox, bug_patch, "/tmp/trajfactory-bug.diff") is not None:
        return set()
    for path, data in files.items():
        sandbox.write_file(path, data)
    ids = [t for c in silent for t in c.ids]
    run = run_tests(sandbox, ids, timeout=timeout, collect_only=True)
    if run.timed_out or run.results_error:
        return set()
    return {t for t in ids if run.outcomes.get(t) == "missing"}
