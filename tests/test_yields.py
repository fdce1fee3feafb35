"""The yields table's `quarantined` column says why a repository gave fewer tasks than it validated."""

from __future__ import annotations

from trajfactory.datasets.yields import yields
from trajfactory.schema import quarantined


def test_a_repository_quarantined_whole_or_item_by_item_says_why():
    """A repository quarantined whole shows its one reason; one whose items were quarantined one by one shows each
    reason with its count (yarl 1.25.1's six `gold_failed` showed as "validated 6, tasks 0" and nothing else); one
    with nothing quarantined shows nothing."""
    quarantine = [
        quarantined("build", "source", "s1", "install_failed", "setup.py raised", "pypi:broken==1.0"),
        *[quarantined("verify-gold", "task", f"t{i}", "gold_failed", "107 missing", "pypi:yarl==1.25.1")
          for i in range(6)],
        quarantined("synthesize", "source", "yarl:setup.py", "unparseable_file", "line 3", "pypi:yarl==1.25.1"),
    ]
    repositories = {"pypi:broken==1.0": "broken", "pypi:yarl==1.25.1": "yarl", "pypi:six==1.17.0": "six"}
    rows = {r["repository"]: r["quarantined"]
            for r in yields([], [], [], [], [], quarantine=quarantine, repositories=repositories)["by_repository"]}
    assert rows == {"broken": "build: install_failed",
                    "yarl": "synthesize: unparseable_file (1), verify-gold: gold_failed (6)",
                    "six": ""}
