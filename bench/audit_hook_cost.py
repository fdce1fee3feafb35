"""What the harness's audit hook costs a verification run: a real package's whole suite under the factory's pytest
plugin, sealed (the audit hook on, as `run_tests` runs verification) against unsealed (no hook, as the reference run
and validation run), alternating, on the host in the factory's own environment.

    python bench/audit_hook_cost.py --repo pypi:more-itertools==11.2.1 --repeats 5

CPU is the pytest process's (user + system, the children's times). The suite runs from the harvested checkout with
the checkout first on `sys.path`, as `python -m pytest` puts it in a sandbox.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trajfactory.executors.testrun import HARNESS_FILES, PLUGIN, parse_reaches, parse_results  # noqa: E402
from trajfactory.sources import harvest_repo  # noqa: E402


def _run(checkout: Path, work: Path, sealed: bool) -> tuple[float, str]:
    results = work / "results.jsonl"
    results.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{work}:{checkout}", "TRAJFACTORY_RESULTS": str(results)}
    if sealed:
        (work / "seal.key").write_bytes(os.urandom(32))
        env["TRAJFACTORY_SEAL"] = str(work / "seal.key")
    before = os.times()
    subprocess.run([sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", "-q", "--no-header",
                    f"--rootdir={checkout}"], cwd=checkout, env=env, capture_output=True)
    after = os.times()
    cpu = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    return cpu, results.read_text() if results.exists() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default="pypi:more-itertools==11.2.1", help="a repository the factory can harvest")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each kind, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = harvest_repo(args.repo, work / "mirrors")
        if not hasattr(source, "path"):
            sys.exit(f"{args.repo}: could not be harvested: {source}")
        for name, text in HARNESS_FILES.items():
            (work / name).write_text(text)
        times: dict[bool, list[float]] = {False: [], True: []}
        records: dict[bool, str] = {}
        for i in range(args.repeats):
            for sealed in (False, True):
                cpu, records[sealed] = _run(Path(source.path), work, sealed)
                times[sealed].append(cpu)
                print(f"run {i + 1}/{args.repeats} {'sealed' if sealed else 'unsealed'}: {cpu:.2f} CPU s",
                      file=sys.stderr)
    same = parse_results(records[False])[0] == parse_results(records[True])[0]
    print(f"| {args.repo} | CPU s, median of {args.repeats} | min | max | tests | reaches recorded |")
    print("|---|---|---|---|---|---|")
    for sealed, name in ((False, "unsealed (no audit hook)"), (True, "sealed (audit hook)")):
        t = times[sealed]
        print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} | "
              f"{len(parse_results(records[sealed])[0])} | {len(parse_reaches(records[sealed]))} |")
    print(f"same outcomes: {same}")


if __name__ == "__main__":
    main()
