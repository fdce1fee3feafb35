"""Run INSIDE a sandbox after a coverage run: the per-test coverage as a compact map, written to argv[1].

    COVERAGE_FILE=/tmp/trajfactory/.coverage python coverage_map.py /tmp/trajfactory/coverage-map.json

`coverage json --show-contexts` writes every test id in full for every line it ran: for a large suite
(networkx, ~5,000 tests) that is ~300 MB of JSON, more than the host reads out of a sandbox. This writes the same
line -> contexts data (coverage's own `CoverageData.contexts_by_lineno`, which `coverage json` reports) with each
context named once and referred to by its index:

    {"contexts": ["", "tests/test_a.py::test_x|run", ...], "files": {"pkg/mod.py": {"12": [0, 1], ...}, ...}}

File names are relative to the working directory (the checkout), as `coverage json` writes them. It runs on the
sandbox's own Python and coverage (>= 5.0), so it keeps to syntax old interpreters read.
"""

import json
import os
import sys


def main(out):
    from coverage import CoverageData

    data = CoverageData(basename=os.environ.get("COVERAGE_FILE", ".coverage"))
    data.read()
    root = os.getcwd()
    contexts = sorted(data.measured_contexts())
    index = dict((context, i) for i, context in enumerate(contexts))
    files = {}
    for path in sorted(data.measured_files()):
        rel = os.path.relpath(path, root)
        if rel.startswith(".." + os.sep):
            continue  # outside the checkout
        lines = {}
        for lineno, names in data.contexts_by_lineno(path).items():
            if names:
                lines[str(lineno)] = sorted(index[name] for name in names)
        if lines:
            files[rel] = lines
    with open(out, "w") as f:
        json.dump({"contexts": contexts, "files": files}, f, separators=(",", ":"))


if __name__ == "__main__":
    main(sys.argv[1])
