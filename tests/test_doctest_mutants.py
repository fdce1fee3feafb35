"""Mutants of doctests (`executors/doctest_mutants.py`): a copy of a failing doctest in a module of its own beside
the doctest's module, taking that module's names, with a line added to what its last compared example expects. Run
here by pytest itself (`--doctest-modules`) on a package written for the test: the copy fails wherever the original
passes, under the option flags that loosen the comparison too, and one that cannot be made is none."""

from __future__ import annotations

import doctest
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from trajfactory.executors.doctest_mutants import doctest_mutant, doctest_parts, mutated_docstring

from gaming_patches import refused_by_mutants
from mining import LIMITS, mine

RNG = secrets.SystemRandom()

MODULE = '''"""Quotients.

>>> _half(9)
4
"""

_SCALE = 2


def _half(n):
    """The half of `n`, rounded down, by a private helper's name.

    >>> _half(7)
    3
    >>> print(list(range(_SCALE * 20)))  # doctest: +ELLIPSIS
    [0, 1, ...]
    >>> print("a   b")  # doctest: +NORMALIZE_WHITESPACE
    a b
    """
    return n // _SCALE


def quiet():
    """Prints nothing.

    >>> quiet()
    >>> x = 1
    """


def raising():
    """An exception last: the example before it is changed.

    >>> 1 + 1
    2
    >>> int("x")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: anything
    >>> unreachable()  # doctest: +SKIP
    3
    """


def only_raises():
    """
    >>> int("x")
    Traceback (most recent call last):
    ValueError: invalid literal for int() with base 10: 'x'
    """


def loosely_raises():
    """Only the exception's name is compared.

    >>> import json
    >>> json.loads("{")  # doctest: +IGNORE_EXCEPTION_DETAIL, +ELLIPSIS
    Traceback (most recent call last):
    json.decoder.JSONDecodeError: ...
    """


class Box:
    """A box.

    >>> Box().size()
    1
    """

    def size(self):
        """
        >>> Box().size() + _SCALE
        3
        """
        return 1
'''


@pytest.mark.parametrize("test_id,parts", [
    ("src/humanize/time.py::humanize.time._quotient_and_remainder",
     ("src/humanize/time.py", "humanize.time", ["_quotient_and_remainder"])),
    ("pkg/__init__.py::pkg.Box.size", ("pkg/__init__.py", "pkg", ["Box", "size"])),
    ("pkg/mod.py::pkg.mod", ("pkg/mod.py", "pkg.mod", [])),
    ("mod.py::mod.mod", ("mod.py", "mod", ["mod"])),  # a function named as its module
    ("tests/test_x.py::test_y", None),  # a test function
    ("tests/test_x.py::TestX::test_y", None),
    ("README.rst::README.rst", None),
    ("pkg/mod.py::pkg.mod.f[1]", None),
])
def test_a_doctest_is_told_by_its_id(test_id, parts):
    assert doctest_parts(test_id) == parts


def _run(folder: Path, ids: list[str]) -> dict[str, str]:
    """pytest with `--doctest-modules` on `ids` in `folder`: id -> passed / failed (as its -rA summary says)."""
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--doctest-modules", "-rA", "-q",
                          *ids], cwd=folder, capture_output=True, text=True, timeout=120)
    out = {}
    for line in run.stdout.splitlines():
        word, _, test = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR"):
            out[test.split(" - ")[0]] = word.lower()
    return out


@pytest.mark.parametrize("name", ["pkg.mod", "pkg.mod._half", "pkg.mod.quiet", "pkg.mod.raising", "pkg.mod.Box",
                                  "pkg.mod.Box.size", "pkg.mod.only_raises", "pkg.mod.loosely_raises"])
def test_the_copy_fails_where_the_original_passes(tmp_path, name):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text(MODULE)
    test = f"pkg/mod.py::{name}"
    made = doctest_mutant(test, lambda p: (tmp_path / p).read_text() if (tmp_path / p).is_file() else None,
                          {"mod.py", "__init__.py"}, RNG)
    assert made is not None
    file, text, mutant = made
    assert file.startswith("pkg/") and mutant.startswith(f"{file}::pkg.{Path(file).stem}")
    assert len(mutant.split("::")[1].split(".")) == len(name.split("."))  # the same shape of id
    (tmp_path / file).write_text(text)
    assert _run(tmp_path, [test, mutant]) == {test: "passed", mutant: "failed"}
    # under the same names again (`twins.name_bound`), the same copy's id
    again = doctest_mutant(test, lambda p: (tmp_path / p).read_text() if (tmp_path / p).is_file() else None,
                           set(), RNG, again=mutant)
    assert again is not None and again[:1] + again[2:] == (file, mutant)


def test_no_copy_where_no_example_runs_and_which_example_changes():
    assert mutated_docstring("No examples.", RNG) is None
    assert mutated_docstring(">>> f()  # doctest: +SKIP\n1\n", RNG) is None
    # the changed example is the last one compared as text, here the one before the exception
    changed = doctest.DocTestParser().get_examples(mutated_docstring(_docs()["raising"], RNG))
    assert changed[0].want.startswith("2\n") and changed[0].want != "2\n" and changed[1].exc_msg == "ValueError: anything\n"
    # where every example that runs expects an exception, the last one's name gets letters
    raised = doctest.DocTestParser().get_examples(mutated_docstring(_docs()["only_raises"], RNG))[-1]
    assert raised.exc_msg.startswith("ValueError") and raised.exc_msg.endswith(": invalid literal for int() with "
                                                                              "base 10: 'x'\n")
    assert raised.exc_msg.split(":")[0] != "ValueError" and len(raised.exc_msg.split(":")[0]) == len("ValueError") + 3
    assert doctest_mutant("pkg/mod.py::pkg.mod.missing", lambda p: MODULE, set(), RNG) is None
    assert doctest_mutant("pkg/mod.py::pkg.mod.quiet", lambda p: None, set(), RNG) is None


def test_the_copys_module_name_is_not_taken():
    taken = {f"{w}.py" for w in ("roundtrip", "empty_input", "none_values", "large_values", "boundaries",
                                 "idempotent", "edge_cases", "regression", "round_trips", "sorted_input")}
    for _ in range(10):
        file, _, _ = doctest_mutant("pkg/mod.py::pkg.mod.quiet", lambda p: MODULE, taken, RNG)
        assert Path(file).name not in taken and Path(file).stem not in sys.stdlib_module_names


def _docs() -> dict[str, str]:
    scope: dict = {}
    exec(compile(MODULE, "<mod>", "exec"), scope)
    return {k: v.__doc__ for k, v in scope.items() if callable(v) and getattr(v, "__doc__", None)}


@pytest.mark.docker
def test_a_forgery_is_refused_where_the_failing_tests_are_doctests(docker_backend, mirrors, tmp_path, monkeypatch):
    """humanize 4.17.0 runs its modules' doctests (`--doctest-modules`). A task of `src/humanize/time.py` whose
    failing tests are its doctests alone: the shaped forgery passed verification (sweep 35's
    `_quotient_and_remainder` task), and is refused with the doctests' mutants. The task's own fix still passes."""
    mined = mine(docker_backend, mirrors, tmp_path, "pypi:humanize==4.17.0", ("src/humanize/time.py",), n=3)
    doctests = {t for task in mined.tasks for t in task.checks.FAIL_TO_PASS if doctest_parts(t)}
    copied = {t for t in doctests if doctest_mutant(t, lambda p: (mined.checkout / p).read_text(encoding="utf-8")
                                                    if (mined.checkout / p).is_file() else None, set(), RNG)}
    task = next((t for t in mined.tasks if set(t.checks.FAIL_TO_PASS) & copied), None)
    assert task is not None, [t.checks.FAIL_TO_PASS for t in mined.tasks]
    task = task.model_copy(update={"checks": task.checks.model_copy(update={
        "FAIL_TO_PASS": sorted(set(task.checks.FAIL_TO_PASS) & copied)})})
    # as before: no doctest had a mutant
    refused_by_mutants(docker_backend, mined.env, task, LIMITS, task.entity.file, monkeypatch,
                       "trajfactory.executors.twins.doctest_parts", lambda test: None)
