"""Mutants on real suites: how many of a package's tests get one, and does any pass where its original passes?

Every test of each package's test files (`test_*.py`, `*_test.py`) that has an assertion to turn
(`executors/mutants.py`) gets its twin and its mutant in its own file, as the verifier writes them for a task's
failing tests. The whole suite then runs once through the harness in the package's own sandbox (its image, Docker)
on the unchanged code: the code of a fix that passes everything. A mutant that passed beside its passing original
is *loose*: on a task, the verifier would excuse it only after a second run under the task's own fix
(`twins.name_bound`), and it would catch no forgery. The table shows, per package, the tests, those with a mutant,
and per kind of mutant (`constant`, `negate`, `opposite`, `raises`, `call`, `wrap`, `repeat`, `add`, `all`, and
`copy`: a changed copy of the test's own helper, `mutants._copied`) how many ran beside a passing original and how
many of those were loose; `loop`, `with` and `try` count those whose assertion ends a loop's or a `with` block's
body or sits in a clause of a `try` statement (`mutants._tried`), `helper` those that end in a call to a helper
of the project whose definition shows what it compares (`executors/helpers.py`), and `counted` those whose assertion
ends a loop over what the test built, counted in the copy (`mutants.Spot.guards`). The doctests that passed in that
run (where the project runs its modules' doctests) then each get their copy in a module of its own beside their
module (`doctest` mutants, `executors/doctest_mutants.py`), and run once more beside them; `tests` counts them too.

    python bench/mutant_audit.py pypi:tabulate==0.10.0 pypi:boltons==25.0.0 [--timeout S]
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trajfactory.executors import get_backend  # noqa: E402
from trajfactory.executors.base import EnvironmentHandle  # noqa: E402
from trajfactory.executors.doctest_mutants import doctest_parts  # noqa: E402
from trajfactory.executors.guard import protected  # noqa: E402
from trajfactory.executors.helpers import mutant_targets  # noqa: E402
from trajfactory.executors.mutants import Spot, module_tests, spot_of  # noqa: E402
from trajfactory.executors.testrun import run_tests  # noqa: E402
from trajfactory.executors.twins import write_twins  # noqa: E402
from trajfactory.schema import Source  # noqa: E402
from trajfactory.settings import SandboxConfig  # noqa: E402
from trajfactory.sources import harvest_repo  # noqa: E402
from trajfactory.synthesizers.swe import stage  # noqa: E402

LIMITS = SandboxConfig(memory="2g", cpus=1, pids=256, command_timeout_s=120)
KINDS = ("constant", "negate", "opposite", "raises", "call", "wrap", "repeat", "add", "all", "copy", "loop", "with",
         "try", "helper", "counted", "doctest")


def _read(checkout: Path, rel: str) -> str | None:
    """A file of the checkout as text, None where there is none (as `twins.write_twins` reads the sandbox's)."""
    try:
        return (checkout / rel).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


class Unusable(Exception):
    """A package that cannot be audited (not found, its image not built): its row says why, the others go on."""


def audit(backend, uri: str, work: Path, timeout: float, limits: SandboxConfig = LIMITS) -> Counter:
    """The counts of one package (`KINDS` made, `KIND ran` beside a passing original, `KIND loose`)."""
    source = harvest_repo(uri, work / "mirrors")
    if not isinstance(source, Source):
        raise Unusable(f"{source.reason}: {source.detail}")
    env = stage.build_environment(backend, source)
    if not isinstance(env, EnvironmentHandle):
        raise Unusable(f"{env.reason}: {env.detail}")
    checkout = stage.checkout(source, work / "co")
    files = sorted(p.relative_to(checkout).as_posix() for pattern in ("test_*.py", "*_test.py")
                   for p in checkout.rglob(pattern) if not {"build", ".tox", "site-packages"} & set(p.parts))
    count: Counter = Counter()
    spots: dict[str, tuple[Spot, ast.FunctionDef]] = {}  # test id (file::[Cls::]name) -> where its mutant changes it
    helped: set[str] = set()  # the tests whose mutant changes a call to a helper, read from its definition
    for path in files:
        try:
            tree = ast.parse((checkout / path).read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        tests = module_tests(tree)
        count["tests"] += len(tests)
        targets = mutant_targets(tree, path, lambda rel: _read(checkout, rel))
        for names, node in tests:
            spot = spot_of(node, targets(names))
            if spot is not None:
                spots["::".join([path, *names])] = (spot, node)
                helped.update(["::".join([path, *names])] if spot_of(node) is None else [])
    made: dict[str, tuple[str, list[str]]] = {}  # original -> (its mutant's id, its kinds)
    with backend.start(env, limits) as sandbox:
        # as the verifier writes them for a task's failing tests, for every test that can have one
        for test, mutant in write_twins(sandbox, list(spots), limit=len(spots)).mutants.items():
            spot, node = spots[test]
            kinds, last = [spot.kind], node.body[-1]
            while isinstance(last, (ast.For, ast.With)) and last is not spot.node:
                kinds.append("loop" if isinstance(last, ast.For) else "with")
                last = last.body[-1]
            tried = any(isinstance(n, ast.Try) and any(m is spot.node for m in ast.walk(n)) for n in ast.walk(node))
            counted = spot.guards or spot.inner is not None and spot.inner.guards  # a loop over what it built
            kinds = list(dict.fromkeys(kinds + (["try"] if tried else []) + (["helper"] if test in helped else [])
                                       + (["counted"] if counted else [])))
            count.update(kinds)
            made[test] = (mutant, kinds)
        print(f"{uri}: {len(made)} mutants in {len(files)} files; running the suite", file=sys.stderr, flush=True)
        run = run_tests(sandbox, timeout=timeout)
        if run.timed_out or run.results_error or not run.sealed:
            raise Unusable(f"the suite did not finish with a sealed record: {run.results_error or run.exit_code}")
        # the doctests that passed, each copied into a module of its own beside its module, run with their copies
        doctests = sorted(t for t, outcome in run.outcomes.items() if outcome == "passed" and doctest_parts(t)
                          and protected(t.partition("::")[0]) != "test file")
        copies = write_twins(sandbox, doctests, limit=len(doctests)).mutants if doctests else {}
        print(f"{uri}: {len(copies)} mutants of {len(doctests)} passing doctests; running them", file=sys.stderr,
              flush=True)
        again = run_tests(sandbox, doctests + list(copies.values()), timeout=timeout, last=list(copies.values())) \
            if copies else None
    count["tests"] += len(doctests)
    for test, mutant in copies.items():
        count["doctest"] += 1
        if again.outcomes.get(test) == "passed":
            count["doctest ran"] += 1
            count["doctest loose"] += again.outcomes.get(mutant) == "passed"
            if again.outcomes.get(mutant) == "passed":
                print(f"  loose: {test}", file=sys.stderr)
    for test, outcome in run.outcomes.items():
        base, bracket, params = test.partition("[")
        if outcome != "passed" or base not in made:
            continue
        mutant, kinds = made[base]
        loose = run.outcomes.get(mutant + bracket + params) == "passed"
        for kind in kinds:
            count[f"{kind} ran"] += 1
            count[f"{kind} loose"] += loose
            if loose:
                print(f"  loose: {test}", file=sys.stderr)
    count["with a mutant"] = len(made) + len(copies)
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                 epilog="Each package costs an image build (cached) and one run of its whole suite.")
    ap.add_argument("uris", nargs="+", help="sources as a recipe names them (pypi:NAME==VERSION, a git URL, a path)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds for each suite's run")
    ap.add_argument("--memory", default=LIMITS.memory,
                    help="the sandbox's memory limit, as a recipe's sandbox.memory (sqlglot's suite needs about 4g)")
    args = ap.parse_args()
    limits = LIMITS.model_copy(update={"memory": args.memory})
    backend = get_backend("docker")
    columns = ["tests", "with a mutant"] + [f"{k} ran / loose" for k in KINDS]
    print("| package | " + " | ".join(columns) + " |")
    print("|" + "---|" * (len(columns) + 1))
    with tempfile.TemporaryDirectory(prefix="tf-mutants-") as tmp:
        for uri in args.uris:
            try:
                c = audit(backend, uri, Path(tmp), args.timeout, limits)
            except Unusable as exc:
                print(f"| {uri} | not audited: {exc} |", flush=True)
                continue
            cells = [str(c["tests"]), str(c["with a mutant"])] + [f"{c[k + ' ran']} / {c[k + ' loose']}" for k in KINDS]
            print(f"| {uri} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
