"""The tables `validate_throughput.py` prints from its report (also written with `--json`), and the reading of this
process's CPU that it and `gold_cost.py` count."""

from __future__ import annotations

import resource

PHASES = ("start/stop", "exec", "reset", "apply", "start", "collect", "tests", "pytest", "restore", "host")
"""Where a candidate's CPU goes, in the order the tables show (`validate_throughput.py` says what each holds)."""


def host_cpu() -> float:
    """CPU seconds of this process and its children so far."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def print_tables(report: dict) -> None:
    print(f"\nload average before {' '.join(report['load_before'])}, after {' '.join(report['load_after'])}")
    print("\n| repo | tests | mode | cand. | valid | CPU s | wall s | valid / CPU-min | vs (a) | CPU s / cand. "
          "| x floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, rep in report["repos"].items():
        n = rep["candidates"]
        if not n:
            continue
        floor = rep["floor"] / n
        base = rep["modes"].get("a")
        base_rate = base["valid"] / (base["cpu"] / 60) if base and base["cpu"] else 0.0
        for mode, m in rep["modes"].items():
            rate = m["valid"] / (m["cpu"] / 60) if m["cpu"] else 0.0
            ratio = f"{rate / base_rate:.2f}x" if base_rate else "-"
            xfloor = f"{(m['cpu'] / n) / floor:.0f}x" if floor else "-"
            print(f"| {name} | {rep['passing']} | {m['name']} | {n} | {m['valid']} | {m['cpu']:.1f} | {m['wall']:.1f} "
                  f"| {rate:.1f} | **{ratio}** | {m['cpu'] / n:.3f} | {xfloor} |")
    print("\nWhere a candidate's CPU goes (CPU ms per candidate; floor = the selected tests' own time):\n")
    print("| repo | mode | " + " | ".join(PHASES) + " | total | floor |")
    print("|---|---|" + "---|" * (len(PHASES) + 2))
    for name, rep in report["repos"].items():
        n = rep["candidates"] or 1
        for mode, m in rep["modes"].items():
            cells = " | ".join(f"{1000 * m['phases'][p] / n:.0f}" for p in PHASES)
            print(f"| {name} | {mode} | {cells} | {1000 * m['cpu'] / n:.0f} | {1000 * rep['floor'] / n:.1f} |")
    print("\nBy how mode d selected the tests (CPU s of the candidates of each kind; floor = their tests' own time):\n")
    print("| repo | selection | candidates | a: CPU s | d: CPU s | a / d | floor s | a / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rep in report["repos"].items():
        a, d = rep["modes"].get("a"), rep["modes"].get("d")
        if not (a and d):
            continue
        for kind in ("coverage", "full", "none"):
            ids = [k for k, how in d["selection"].items() if how == kind]
            if not ids:
                continue
            ca, cd = sum(a["per"][k] for k in ids), sum(d["per"][k] for k in ids)
            fl = sum(rep["floors"].get(k, 0.0) for k in ids)
            print(f"| {name} | {kind} | {len(ids)} | {ca:.1f} | {cd:.1f} | {ca / cd:.1f}x | {fl:.1f} | "
                  + (f"{ca / fl:.0f}x |" if fl else "- |"))
    print("\nReference runs (once per repository; the first records coverage):\n")
    for name, rep in report["repos"].items():
        runs = ", ".join(f"{r:.1f}" for r in rep["reference_runs_cpu"])
        print(f"- {name}: {rep['passing']} passing of {rep['tests']} tests; pytest CPU s per run: {runs}; "
              f"container total {rep['reference_cpu']:.1f} s")
    print("\nAudit: every candidate's result against the whole suite's (mode b):\n")
    for name, rep in report["repos"].items():
        for mode, a in rep.get("audit", {}).items():
            print(f"- {name} {mode}: verdict disagreements {a['verdict']}, F2P-set {a['f2p']}, P2P-set {a['p2p']}"
                  + (f"; e.g. {a['examples']}" if a["examples"] else ""))
        if "c_vs_d_differences" in rep:
            print(f"- {name}: c vs d (one-candidate path vs batch path) differences: {rep['c_vs_d_differences']}")
