"""The verifier against its own published tasks: does it refuse what it should and nothing else?

For every SWE task of the given dataset versions (their latest, or `NAME@vN`), read back from the published rows as
`eval` and `train grpo` read them, three patches go through the real verifier (`swe_env.run_patch_tests`, Docker):

- **gold**: the task's own fix, as it is (the path on which a mutant that passes is excused, so none refuses it);
- **gold+module**: the same fix plus a harmless new top-level module, so that the patch is not the gold: the path a
  policy's real fix takes, where a twin that failed or a mutant that passed is tried again under the gold
  (`twins.name_bound`) before it refuses;
- **empty**: no change, which must fail and must not be refused (refusals are for tampering);
- with `--forgery`, **forged**: the strongest forgery of the tests' adversarial battery (`tests/gaming_patches.py`,
  "every failure forged but the canaries', told by their shape"): a change to the task's module, made in a sandbox
  as a policy would make it, that rewrites each failing test's record to passed unless the test has the canaries'
  shape. Only a mutant tells it (a mutant of a failing test passes beside its original); it must never pass.

A real fix refused is a false refusal; the table counts them by the layer that refused (`mutant`, `twin`, `canary`)
and shows how many tasks had a mutant at all (a failing test with an assertion to turn, `executors/mutants.py`).

    python bench/verifier_audit.py DATASET_DIR [DATASET_DIR ...] [--per-repo N] [--task ID ...] [--memory 6g]
        [--forgery]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))  # the adversarial battery (--forgery)

from trajfactory.datasets.store import DatasetStore  # noqa: E402
from trajfactory.executors import get_backend  # noqa: E402
from trajfactory.executors.base import EnvironmentHandle  # noqa: E402
from trajfactory.executors.doctest_mutants import doctest_mutant, doctest_parts  # noqa: E402
from trajfactory.executors.guard import module_of  # noqa: E402
from trajfactory.executors.swe_env import run_patch_tests  # noqa: E402
from trajfactory.executors.twins import MAX_TWINS, checkout_text, twin_source  # noqa: E402
from trajfactory.settings import SandboxConfig  # noqa: E402
from trajfactory.training.evaluate import task_from_row  # noqa: E402

MODULE = ("diff --git a/tf_audit_helper.py b/tf_audit_helper.py\nnew file mode 100644\n--- /dev/null\n"
          "+++ b/tf_audit_helper.py\n@@ -0,0 +1 @@\n+VALUE = 1\n")
LIMITS = SandboxConfig(memory="2g", cpus=1, pids=256, command_timeout_s=120)


def _rows(spec: str) -> list[dict]:
    path, _, version = spec.partition("@")
    store = DatasetStore(Path(path))
    version = version or store.latest()
    if version is None:
        raise SystemExit(f"{path}: no dataset version there (give a dataset directory, as `run` writes it)")
    return [r for r in store.read_rows(version, "tasks") if r.get("kind", "swe") == "swe"]


def _has_mutant(sandbox, tests: list[str]) -> bool:
    """Whether one of the first failing tests (as many as get twins) has an assertion a mutant can turn."""
    for test in tests[:MAX_TWINS]:
        path, _, rest = test.partition("::")
        if doctest_parts(test):  # its copy goes into a module of its own (`doctest_mutants.py`)
            if doctest_mutant(test, lambda other: checkout_text(sandbox, other), set(), secrets.SystemRandom()):
                return True
            continue
        try:
            made = twin_source(sandbox.read_file(path).decode("utf-8"), [rest.split("[")[0].split("::")],
                               read=lambda other: checkout_text(sandbox, other), file=path)  # as `write_twins` does
        except (OSError, UnicodeDecodeError):
            continue
        if made and made[3]:
            return True
    return False


def _forgery(backend, env, task, limits, sandbox) -> str:
    """The shaped forgery's patch on `task`, made in `sandbox` from the task's starting state."""
    from gaming_patches import gaming_commands, hack

    failing = sorted({t.split("::")[-1].split("[")[0] for t in task.checks.FAIL_TO_PASS})
    commands = gaming_commands(task.checks.FAIL_TO_PASS[0].split("::", 1)[0], task.entity.file,
                               module_of(task.entity.file), failing)[SHAPED]
    return hack(backend, env, task, limits, commands, sandbox)


SHAPED = "every failure forged but the canaries', told by their shape"


def _layer(refused: list[str]) -> str:
    for word in ("mutant", "twin", "canary"):
        if any(r.startswith(f"{word} test") for r in refused):
            return word
    return "other" if refused else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                 epilog="Each task costs three verification runs in a fresh container of its image.")
    ap.add_argument("datasets", nargs="+", help="dataset directories (ROOT/NAME), each optionally @vN")
    ap.add_argument("--per-repo", type=int, default=0, help="at most this many tasks per repository (0: all)")
    ap.add_argument("--task", action="append", default=[], metavar="TASK_ID",
                    help="only this task (its task_id in the dataset's rows); repeat it for several")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per verification run")
    ap.add_argument("--memory", default=LIMITS.memory,
                    help="the sandbox's memory limit, as the recipe's sandbox.memory that mined the tasks")
    ap.add_argument("--forgery", action="store_true",
                    help="also the shaped forgery of the tests' battery, per task (two more runs): it must never pass")
    args = ap.parse_args()
    limits = LIMITS.model_copy(update={"memory": args.memory})
    backend = get_backend("docker")
    stats: dict[str, dict] = defaultdict(lambda: defaultdict(int) | {"seconds": []})
    rows = [r for spec in args.datasets for r in _rows(spec) if not args.task or r["task_id"] in args.task]
    if args.task and len(rows) < len(set(args.task)):
        missing = sorted(set(args.task) - {r["task_id"] for r in rows})
        raise SystemExit(f"--task: no task {', '.join(missing)} in {', '.join(args.datasets)}")
    seen: dict[str, int] = defaultdict(int)
    for n, row in enumerate(rows, 1):
        repo = str(row["repo"])
        if args.per_repo and seen[repo] >= args.per_repo:
            continue
        seen[repo] += 1
        task = task_from_row(row)
        env = EnvironmentHandle(backend="docker", name=task.environment.image_name, repo=task.environment.repo,
                                commit=task.environment.base_commit)
        s = stats[repo]
        s["tasks"] += 1
        with backend.start(env, limits) as sandbox:
            s["with a mutant"] += _has_mutant(sandbox, task.checks.FAIL_TO_PASS)
            patches = [("gold", task.gold.patch), ("gold+module", task.gold.patch + MODULE), ("empty", "")]
            if args.forgery:
                patches.append(("forged", _forgery(backend, env, task, limits, sandbox)))
            for name, patch in patches:
                passed, evidence, seconds = run_patch_tests(sandbox, task, patch, timeout=args.timeout)
                s["seconds"].append(seconds)
                layer = _layer(evidence.refused)
                if name == "empty":
                    s["empty failed"] += not passed and not evidence.refused
                elif name == "forged":
                    s["forged passed"] += passed
                    s[f"forged refused by {layer}" if layer else "forged failed"] += not passed
                else:
                    s[f"{name} verified"] += passed
                    if layer:
                        s[f"{name} refused by {layer}"] += 1
                if not passed and name not in ("empty", "forged") or passed and name == "forged":
                    print(f"  {repo} {task.task_id} {name}: {evidence.detail[:300]}", file=sys.stderr)
        print(f"[{n}/{len(rows)}] {repo} {task.task_id}", file=sys.stderr, flush=True)
    columns = ["tasks", "with a mutant", "gold verified", "gold+module verified", "empty failed",
               "gold+module refused by mutant", "gold+module refused by twin", "gold+module refused by canary",
               *(["forged passed", "forged refused by mutant", "forged refused by twin", "forged refused by canary",
                  "forged failed"] if args.forgery else []), "median s/run"]
    print("| repository | " + " | ".join(columns) + " |")
    print("|" + "---|" * (len(columns) + 1))
    total: dict[str, int] = defaultdict(int)
    for repo, s in sorted(stats.items()):
        cells = [str(s[c]) for c in columns[:-1]] + [f"{statistics.median(s['seconds']):.1f}"]
        for c in columns[:-1]:
            total[c] += s[c]
        print(f"| {repo} | " + " | ".join(cells) + " |")
    print("| all | " + " | ".join(str(total[c]) for c in columns[:-1]) + " | |")


if __name__ == "__main__":
    main()
