"""argcomplete 3.7.2, mined the way its maintainers test it: `./test/test.py`, run as a script.

Its suite asked two things of the factory that no other package had:

- **Its library writes to file descriptors 8 and 9** where they are open, and closes them, as its shell hook hands
  them over (`9>&2`). The harness leaves 3-9 to the tests, as a shell does (`--capture=sys`, its own descriptors at
  10 and above).
- **Its completion tests end in `with TempDir(prefix=...):`**, a context manager of its test module whose `__exit__`
  changes back to the old directory and returns nothing. Such a test got no mutant, since a manager may swallow the
  failure of its block; a task whose failing tests all ended so passed the shaped forgery (sweep 37,
  `bench/verifier_audit.py --forgery`). The manager's definition now shows that the failure goes through
  (`helpers.lets_through`), and the forgery is refused.
"""

from __future__ import annotations

import ast

import pytest

from trajfactory.executors.helpers import mutant_targets
from trajfactory.executors.mutants import spot_of

from gaming_patches import refused_by_mutants
from mining import LIMITS, mine

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def argcomplete(docker_backend, mirrors, tmp_path_factory):
    """Two tasks of `argcomplete/completers.py` (its `FilesCompleter` and `DirectoriesCompleter`, which the
    `TempDir` tests exercise), every gold proof passed in the warm test worker."""
    return mine(docker_backend, mirrors, tmp_path_factory.mktemp("argcomplete"), "pypi:argcomplete==3.7.2",
                ("argcomplete/completers.py",), n=2)


def test_a_script_suite_keeps_its_file_descriptors(argcomplete):
    """Under pytest's descriptor capture, descriptors 8 and 9 were the capture's own files: no test passed ("lost
    sys.stderr"), `no_passing_tests`. With the capture left to `sys`, every gold proof failed (11 of 11 in sweep 36):
    the warm test worker's collected session held descriptors of its own there, which the tests closed."""
    ours = [t for t in argcomplete.ref.passing if t.startswith("test/test.py::TestArgcomplete::")]
    assert len(ours) >= 30, sorted(argcomplete.ref.passing)
    assert argcomplete.tasks and all(v.passed for v in argcomplete.verdicts)  # proven in the collected session


def test_a_forgery_is_refused_where_the_failing_tests_end_in_the_projects_own_manager(docker_backend, argcomplete,
                                                                                       monkeypatch):
    checkout = argcomplete.checkout
    tree = ast.parse((checkout / "test/test.py").read_text(encoding="utf-8"))
    targets = mutant_targets(tree, "test/test.py", lambda rel: (checkout / rel).read_text(encoding="utf-8")
                             if (checkout / rel).is_file() else None)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TestArgcomplete")
    managed = {f"test/test.py::TestArgcomplete::{m.name}" for m in cls.body
               if isinstance(m, ast.FunctionDef) and isinstance(last := m.body[-2] if isinstance(
                   m.body[-1], ast.Return) else m.body[-1], ast.With)  # `return` ends some of them
               and ast.unparse(last.items[0].context_expr).startswith("TempDir(")
               and spot_of(m, targets(["TestArgcomplete", m.name])) is not None}
    assert len(managed) >= 5, managed  # none before `lets_through`
    task = next((t for t in argcomplete.tasks if set(t.checks.FAIL_TO_PASS) & managed), None)
    assert task is not None, [t.checks.FAIL_TO_PASS for t in argcomplete.tasks]
    # the failing tests that end in the manager alone: nothing else gives this forgery away; a few passing tests
    # beside them (each of argcomplete's starts shells: the whole set costs about a minute a verification)
    task = task.model_copy(update={"checks": task.checks.model_copy(update={
        "FAIL_TO_PASS": sorted(set(task.checks.FAIL_TO_PASS) & managed),
        "PASS_TO_PASS": task.checks.PASS_TO_PASS[:10]})})
    # as before: a manager of the project's was left alone
    refused_by_mutants(docker_backend, argcomplete.env, task, LIMITS, "test/test.py", monkeypatch,
                       "trajfactory.executors.helpers.lets_through", lambda *args, **kwargs: False)
