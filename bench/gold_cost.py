"""What proving the gold patches of a validation's tasks costs (`validate_throughput.py --gold K`).

The pipeline proves every task's gold patch before it keeps the task (`swe.prove_gold`). It now proves it in a warm
sandbox of the validation's pool, against the FAIL_TO_PASS tests and the PASS_TO_PASS tests the bug's change
reached (`Validation.reached`, `verifiers.tests.gold_checks`). Before, it started a fresh sandbox per task and ran
every check, for a coverage-selected task the whole passing suite. This proves every task the factory's way and the
first K tasks the old way too, and counts the sandboxes' CPU (their cgroups) and this process's.
"""

from __future__ import annotations

from trajfactory.executors.swe_env import verify_gold
from trajfactory.synthesizers.swe import stage

from validate_report import host_cpu  # noqa: E402  (bench/)


def _fresh(backend, env, limits, task, timeout: float) -> tuple[bool, float, int]:
    """(passed, CPU seconds, tests run) of the old way's proof: a fresh sandbox, every check."""
    every = task.model_copy(update={"validation": task.validation.model_copy(update={"reached": []})})
    h = host_cpu()
    with backend.start(env, limits) as sb:
        verdict = verify_gold(sb, every, timeout=timeout)
    ran = len(verdict.evidence.FAIL_TO_PASS) + len(verdict.evidence.PASS_TO_PASS)
    return verdict.passed, sb.cpu_s + host_cpu() - h, ran


def gold_proofs(backend, env, source, candidates, validations, limits, *, whole: int, timeout: float) -> dict:
    """Prove the tasks of these validations (as `stage.tasks_from` makes them) the factory's way, in one warm sandbox;
    the first `whole` also the old way. Returns the figures `print_gold` shows."""
    tasks = stage.tasks_from(source, env, candidates, validations)
    out = {"tasks": len(tasks), "passed": 0, "cpu": 0.0, "tests": 0, "whole": 0, "whole_cpu": 0.0,
           "whole_tests": 0, "whole_passed": 0, "agree": 0}
    h = host_cpu()
    with backend.start(env, limits) as warm:  # as the pipeline's pool hands it out: each proof resets it first
        verdicts = [verify_gold(warm, task, timeout=timeout) for task in tasks]
    out["cpu"] = warm.cpu_s + host_cpu() - h
    out["passed"] = sum(v.passed for v in verdicts)
    out["tests"] = sum(len(v.evidence.FAIL_TO_PASS) + len(v.evidence.PASS_TO_PASS) for v in verdicts)
    for task, verdict in list(zip(tasks, verdicts))[:whole]:
        passed, cpu, ran = _fresh(backend, env, limits, task, timeout)
        out["whole"] += 1
        out["whole_cpu"] += cpu
        out["whole_tests"] += ran
        out["whole_passed"] += passed
        out["agree"] += passed == verdict.passed
    return out


def print_gold(report: dict) -> None:
    """The gold proofs' table, and each repository's whole cost per task: reference runs + validation (mode d) +
    gold proofs, against SWE-smith's way (mode a: its reference run and its validation; it proves no gold patch)."""
    rows = [(name, rep) for name, rep in report["repos"].items() if rep.get("gold")]
    if not rows:
        return
    print("\n| repo | tasks | gold proofs passed | CPU s | CPU s / task | tests / task | old way: tasks | "
          "CPU s / task | tests / task | same verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rep in rows:
        g, n = rep["gold"], max(1, rep["gold"]["tasks"])
        w = max(1, g["whole"])
        print(f"| {name} | {g['tasks']} | {g['passed']} | {g['cpu']:.1f} | {g['cpu'] / n:.2f} | "
              f"{g['tests'] / n:.0f} | {g['whole']} | {g['whole_cpu'] / w:.2f} | {g['whole_tests'] / w:.0f} | "
              f"{g['agree']}/{g['whole']} |")
    print("\n| repo | reference CPU s | validation CPU s (d) | gold CPU s | tasks | CPU s / task | gold the old way "
          "(est.) CPU s / task |")
    print("|---|---|---|---|---|---|---|")
    for name, rep in rows:
        g, d = rep["gold"], rep["modes"].get("d")
        if d is None or not g["passed"]:
            continue
        ref = rep["reference_cpu"]
        est_whole = g["whole_cpu"] / max(1, g["whole"]) * g["tasks"]  # every task proved the old way
        print(f"| {name} | {ref:.1f} | {d['cpu']:.1f} | {g['cpu']:.1f} | {g['passed']} | "
              f"{(ref + d['cpu'] + g['cpu']) / g['passed']:.2f} | {(ref + d['cpu'] + est_whole) / g['passed']:.2f} |")
