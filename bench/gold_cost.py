"""What proving the gold patches of a validation's tasks costs (`validate_throughput.py --gold K`).

The pipeline proves every task's gold patch before it keeps the task (`swe.prove_gold`), against the FAIL_TO_PASS
tests and the PASS_TO_PASS tests the bug's change reached (`Validation.reached`, `verifiers.tests.gold_checks`). It
proves them in batches of up to 64 by one warm test worker in a warm sandbox (`swe_env.verify_gold_batch`), as
validation tests candidates, each test once per batch in the first proof that wants it (the proofs share their
runs; `--gold-unshared` measures them apart too). Before, each proof reset a warm sandbox and started pytest (`swe_env.verify_gold`, the fifth
session's way); before that, each started a fresh sandbox and ran every check. This proves every task the factory's
way and the first K tasks the one-by-one way too, and counts the sandboxes' CPU (their cgroups) and this process's.
"""

from __future__ import annotations

from trajfactory.executors.swe_env import verify_gold, verify_gold_batch
from trajfactory.pipelines.swe import GOLD_BATCH
from trajfactory.settings import ValidationConfig
from trajfactory.synthesizers.swe import stage

from validate_report import host_cpu  # noqa: E402  (bench/)

BATCH = GOLD_BATCH * ValidationConfig().batch_size
"""Tasks per worker at most, as the pipeline cuts them with one sandbox (`swe.gold_batches`)."""


def _one_by_one(backend, env, limits, tasks, timeout: float) -> tuple[list, float]:
    """(verdicts, CPU seconds) of the one-by-one way: one warm sandbox, reset and a pytest start per task."""
    h = host_cpu()
    with backend.start(env, limits) as sb:
        verdicts = [verify_gold(sb, task, timeout=timeout) for task in tasks]
    return verdicts, sb.cpu_s + host_cpu() - h


def _same(a, b) -> bool:
    return a.passed == b.passed and a.evidence.FAIL_TO_PASS == b.evidence.FAIL_TO_PASS \
        and a.evidence.PASS_TO_PASS == b.evidence.PASS_TO_PASS


def _batched(backend, env, limits, tasks, timeout: float, share: bool) -> tuple[list, list, float]:
    """(verdicts, costs, CPU seconds) of the factory's way: batches in one warm sandbox, reset per batch."""
    h = host_cpu()
    with backend.start(env, limits) as warm:  # as the pipeline's pool hands it out: each batch resets it first
        costs: list = []
        verdicts = [v for i in range(0, len(tasks), BATCH)
                    for v in verify_gold_batch(warm, tasks[i:i + BATCH], timeout=timeout, costs=costs, share=share)]
    return verdicts, costs, warm.cpu_s + host_cpu() - h


def gold_proofs(backend, env, source, candidates, validations, limits, *, whole: int, timeout: float,
                unshared: bool = False) -> dict:
    """Prove the tasks of these validations (as `stage.tasks_from` makes them) the factory's way, in one warm sandbox;
    the first `whole` also one by one, and with `unshared` all of them again in batches whose proofs do not share
    their runs. Returns the figures `print_gold` shows."""
    tasks = stage.tasks_from(source, env, candidates, validations)
    out = {"tasks": len(tasks), "passed": 0, "cpu": 0.0, "tests": 0, "whole": 0, "whole_cpu": 0.0,
           "whole_tests": 0, "whole_passed": 0, "agree": 0}
    verdicts, costs, out["cpu"] = _batched(backend, env, limits, tasks, timeout, share=True)
    items = [st for _, stats in costs for st in stats]
    out.update(batches=len(costs), hot=sum(info.hot_items - info.hot_refused for info, _ in costs),
               session_cpu=sum(info.hot_cpu + info.startup_cpu for info, _ in costs),
               child_cpu=sum(st.get("child", 0.0) for st in items),
               durations=sum(st.get("durations", 0.0) for st in items),
               apply_restore_cpu=sum(st.get("apply", 0.0) + st.get("restore", 0.0) for st in items))
    out["passed"] = sum(v.passed for v in verdicts)
    out["tests"] = sum(len(v.evidence.FAIL_TO_PASS) + len(v.evidence.PASS_TO_PASS) for v in verdicts)
    if whole:
        old, cpu = _one_by_one(backend, env, limits, tasks[:whole], timeout)
        out.update(whole=len(old), whole_cpu=cpu, whole_passed=sum(v.passed for v in old),
                   whole_tests=sum(len(v.evidence.FAIL_TO_PASS) + len(v.evidence.PASS_TO_PASS) for v in old),
                   agree=sum(_same(v, o) for v, o in zip(verdicts, old)))
    if unshared:
        apart, costs, cpu = _batched(backend, env, limits, tasks, timeout, share=False)
        out["unshared"] = {"cpu": cpu, "passed": sum(v.passed for v in apart),
                           "agree": sum(_same(v, o) for v, o in zip(verdicts, apart)),
                           "durations": sum(st.get("durations", 0.0) for _, stats in costs for st in stats)}
    return out


def print_gold(report: dict) -> None:
    """The gold proofs' table, and each repository's whole cost per task: reference runs + validation (mode d) +
    gold proofs, against SWE-smith's way (mode a: its reference run and its validation; it proves no gold patch)."""
    rows = [(name, rep) for name, rep in report["repos"].items() if rep.get("gold")]
    if not rows:
        return
    print("\n| repo | tasks | gold proofs passed | CPU s | CPU s / task | tests / task | one by one: tasks | "
          "CPU s / task | tests / task | same verdict and outcomes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rep in rows:
        g, n = rep["gold"], max(1, rep["gold"]["tasks"])
        w = max(1, g["whole"])
        print(f"| {name} | {g['tasks']} | {g['passed']} | {g['cpu']:.1f} | {g['cpu'] / n:.2f} | "
              f"{g['tests'] / n:.0f} | {g['whole']} | {g['whole_cpu'] / w:.2f} | {g['whole_tests'] / w:.0f} | "
              f"{g['agree']}/{g['whole']} |")
    print("\n| repo | batches | proofs in the collected session | session start + collection CPU s | children CPU s "
          "| tests' own time s | apply + restore CPU s |")
    print("|---|---|---|---|---|---|---|")
    for name, rep in rows:
        g = rep["gold"]
        print(f"| {name} | {g['batches']} | {g['hot']} | {g['session_cpu']:.1f} | {g['child_cpu']:.1f} | "
              f"{g['durations']:.1f} | {g['apply_restore_cpu']:.1f} |")
    apart = [(name, rep["gold"]) for name, rep in rows if rep["gold"].get("unshared")]
    if apart:
        print("\n| repo | tasks | shared runs: CPU s | tests' own time s | proofs apart: CPU s | tests' own time s | "
              "passed (shared / apart) | same verdict and outcomes |")
        print("|---|---|---|---|---|---|---|---|")
        for name, g in apart:
            u = g["unshared"]
            print(f"| {name} | {g['tasks']} | {g['cpu']:.1f} | {g['durations']:.1f} | {u['cpu']:.1f} | "
                  f"{u['durations']:.1f} | {g['passed']} / {u['passed']} | {u['agree']}/{g['tasks']} |")
    print("\n| repo | reference CPU s | validation CPU s (d) | gold CPU s | tasks | CPU s / task | gold one by one "
          "(est.) CPU s / task |")
    print("|---|---|---|---|---|---|---|")
    for name, rep in rows:
        g, d = rep["gold"], rep["modes"].get("d")
        if d is None or not g["passed"]:
            continue
        ref = rep["reference_cpu"]
        est_whole = g["whole_cpu"] / max(1, g["whole"]) * g["tasks"]  # every task proved one by one
        one_by_one = f"{(ref + d['cpu'] + est_whole) / g['passed']:.2f}" if g["whole"] else "-"  # none measured
        print(f"| {name} | {ref:.1f} | {d['cpu']:.1f} | {g['cpu']:.1f} | {g['passed']} | "
              f"{(ref + d['cpu'] + g['cpu']) / g['passed']:.2f} | {one_by_one} |")
