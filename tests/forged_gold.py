"""Gold patches forged to game a gold proof, for the tests that prove gold patches in one warm test worker."""

from __future__ import annotations

import re

FORCE_PASS = """diff --git a/conftest.py b/conftest.py
new file mode 100644
--- /dev/null
+++ b/conftest.py
@@ -0,0 +1,3 @@
+def pytest_runtest_logreport(report):
+    report.outcome = "passed"
+    report.longrepr = None
"""
NEW_TEST = """diff --git a/test_forged_gold.py b/test_forged_gold.py
new file mode 100644
--- /dev/null
+++ b/test_forged_gold.py
@@ -0,0 +1,2 @@
+def test_forged():
+    pass
"""
# bytecode, where a project's ignore rules (`*.pyc`) hide it from a plain `git status`
IGNORED = """diff --git a/forged_gold_cache.pyc b/forged_gold_cache.pyc
new file mode 100644
--- /dev/null
+++ b/forged_gold_cache.pyc
@@ -0,0 +1 @@
+not bytecode, but where Python would look for it
"""


def forged(task) -> list:
    """Copies of `task` whose gold patch also forces every outcome to "passed", also adds a test, is not a diff, is
    the bug patch again (it undoes nothing), or also adds a file the ignore rules hide."""

    def gold(task_id: str, patch: str):
        return task.model_copy(update={"task_id": task_id, "gold": task.gold.model_copy(update={"patch": patch})})

    return [gold("forged-conftest", task.gold.patch + FORCE_PASS), gold("forged-new-test", task.gold.patch + NEW_TEST),
            gold("forged-garbage", "not a diff\n"), gold("forged-again", task.bug_patch),
            gold("forged-ignored", task.gold.patch + IGNORED)]


def assert_refused(verdicts) -> None:
    """Every forged proof failed, with the reason the worker gives (a left change is named by its path)."""
    conftest, new_test, garbage, again, ignored = verdicts
    for verdict, path in ((conftest, "conftest.py"), (new_test, "test_forged_gold.py")):
        detail = verdict.evidence.detail
        assert not verdict.passed, verdict.evidence
        # the change it leaves is named, or (a project with its own root conftest.py) the new file does not apply
        assert ("not its commit again" in detail and path in detail) or "second patch does not apply" in detail, detail
    assert not garbage.passed and "the second patch does not apply" in garbage.evidence.detail, garbage.evidence
    assert not again.passed, again.evidence  # the bug applied twice: it does not apply, or leaves the bug's change
    assert "second patch does not apply" in again.evidence.detail or "not its commit again" in again.evidence.detail
    # shown as untracked (??), or (a project whose .gitignore has `*.pyc`, as isodate's has) as ignored (!!)
    assert not ignored.passed and "not its commit again" in ignored.evidence.detail, ignored.evidence
    assert re.search(r"(\?\?|!!) forged_gold_cache\.pyc", ignored.evidence.detail), ignored.evidence
