"""What a patch may change, read from its text alone (no sandbox): protected paths, git's quoted names, what a bug
removed that a fix may put back, and which reaches at run time count against a patch. The battery that runs patches
in real sandboxes is `test_verification_guard.py`."""

from __future__ import annotations

from trajfactory.executors.guard import (added_lines, module_of, paths_of, protected, removed_references,
                                         run_time_reaches, strip_protected, suite_files, unquote)


def test_protected_paths():
    for path in ("tests/test_case.py", "tests/__init__.py", "conftest.py", "src/pkg/conftest.py", "pytest.ini",
                 "tox.ini", "setup.cfg", "pyproject.toml", "setup.py", "sitecustomize.py", "lib/x.pth",
                 "pkg/test_util.py", "pkg/util_test.py", "testing/helpers.py", "pkg/__pycache__/core.cpython-311.pyc",
                 "pkg/core.pyc", "pkg/_speedups.cpython-311-x86_64-linux-gnu.so", "pkg/__pycache__/notes.txt",
                 "tests.py", "test.py", "ext_tests.py", "property_tests.py", "tests.js", "pkg/tests_core.py"):
        assert protected(path), path
    for path in ("src/pkg/core.py", "pkg/__init__.py", "pkg/testament.py", "docs/conf.py", "pkg/contests.py",
                 "pkg/latest.py"):
        assert protected(path) is None, path


def test_strip_protected_keeps_library_changes_of_git_and_plain_diffs():
    patch = ("diff --git a/src/pkg/core.py b/src/pkg/core.py\n--- a/src/pkg/core.py\n+++ b/src/pkg/core.py\n"
             "@@ -1,2 +1,2 @@\n x = 1\n--- removed line that looks like a header\n+++ added one\n"
             "diff --git a/tests/conftest.py b/tests/conftest.py\nnew file mode 100644\n--- /dev/null\n"
             "+++ b/tests/conftest.py\n@@ -0,0 +1 @@\n+import pytest\n")
    kept, dropped = strip_protected(patch)
    assert "removed line that looks like a header" in kept and "conftest" not in kept
    assert dropped == ["tests/conftest.py (test or build configuration)"]
    plain = "--- pkg/a.py\t2024-01-01\n+++ pkg/a.py\t2024-01-01\n@@ -1 +1 @@\n-x\n+y\n" \
            "--- a/tests/test_a.py\n+++ b/tests/test_a.py\n@@ -1 +1 @@\n-x\n+y\n"
    kept, dropped = strip_protected(plain)
    assert kept.startswith("--- pkg/a.py") and "test_a" not in kept and dropped == ["tests/test_a.py (test file)"]
    assert paths_of(plain) == ["pkg/a.py", "tests/test_a.py"]



def test_the_tasks_own_test_files_are_protected_whatever_their_names():
    """A suite under a name of the project's own (`python_files = check_*.py`): the files its test ids name are
    reverted too; a doctest's file (its id names the library module or document it is in) is not."""
    tests = ["pkg/check_core.py::test_parse[a.b-1]", "specs.py::TestCore::test_x", "pkg/core.py::pkg.core.parse",
             "pkg/__init__.py::pkg", "README.rst::README.rst", "src/pkg/util.py::util.helper"]
    assert suite_files(tests) == {"pkg/check_core.py", "specs.py"}
    patch = "".join(f"--- a/{p}\n+++ b/{p}\n@@ -1 +1 @@\n-x\n+y\n" for p in ("pkg/core.py", "pkg/check_core.py"))
    kept, dropped = strip_protected(patch, suite_files(tests))
    assert paths_of(kept) == ["pkg/core.py"] and dropped == ["pkg/check_core.py (test file)"]
    assert strip_protected(patch)[1] == []  # by its name alone, pkg/check_core.py is library code

def test_paths_git_quotes_are_read_as_the_file_system_names_them():
    """git C-quotes a path with a non-ASCII byte, a quote or a backslash (`"b/d\\303\\251/conftest.py"`), and names a
    renamed file only in its header; a protected file behind either is still dropped."""
    patch = ('diff --git "a/d\\303\\251/conftest.py" "b/d\\303\\251/conftest.py"\nindex 73cdb8b..67c3fdf 100644\n'
             '--- "a/d\\303\\251/conftest.py"\n+++ "b/d\\303\\251/conftest.py"\n@@ -1 +1 @@\n-a=1\n+a=2\n'
             'diff --git "a/we\\"ird b.pth" "b/we\\"ird b.pth"\nnew file mode 100644\nindex 0000000..1a9cc2b\n'
             '--- /dev/null\n+++ "b/we\\"ird b.pth"\t\n@@ -0,0 +1 @@\n+p\n'
             'diff --git "a/tests/t\\303\\251st_a.py" b/pkg/moved.py\nsimilarity index 100%\n'
             'rename from "tests/t\\303\\251st_a.py"\nrename to pkg/moved.py\n'
             'diff --git a/with space.py b/with space.py\n--- a/with space.py\t\n+++ b/with space.py\t\n'
             '@@ -1 +1 @@\n-x\n+y\n')
    assert paths_of(patch) == ["d\u00e9/conftest.py", "pkg/moved.py", "tests/t\u00e9st_a.py", 'we"ird b.pth',
                               "with space.py"]
    kept, dropped = strip_protected(patch)
    assert dropped == ["d\u00e9/conftest.py (test or build configuration)", "tests/t\u00e9st_a.py (test file)",
                       'we"ird b.pth (interpreter start-up hook)']
    assert kept.startswith("diff --git a/with space.py") and kept.count("diff --git") == 1
    assert unquote('"\\303\\251vil.py"') == "\u00e9vil.py" and unquote('"tab\\there"') == "tab\there"
    assert unquote("plain.py") == "plain.py"


def test_reaches_at_run_time_count_only_from_the_lines_a_patch_added():
    patch = ("diff --git a/pkg/core.py b/pkg/core.py\n--- a/pkg/core.py\n+++ b/pkg/core.py\n@@ -1,3 +1,4 @@\n x = 1\n"
             "-y = 2\n+y = 3\n+z = list(objects())\n w = 4\n@@ -10,2 +11,2 @@\n a = 1\n-b = 2\n+b = frames()\n"
             "diff --git a/pkg/new.py b/pkg/new.py\nnew file mode 100644\n--- /dev/null\n+++ b/pkg/new.py\n"
             "@@ -0,0 +1,2 @@\n+import gc\n+gc.get_objects()\n")
    assert added_lines(patch) == {"pkg/core.py": {2: "y = 3", 3: "z = list(objects())", 12: "b = frames()"},
                                  "pkg/new.py": {1: "import gc", 2: "gc.get_objects()"}}
    reach = lambda file, line: {"reach": "the garbage collector's listing", "event": "gc.get_objects",  # noqa: E731
                                "file": file, "line": line}
    found = run_time_reaches([reach("pkg/core.py", 3), reach("pkg/core.py", 4), reach("pkg/new.py", 2),
                              reach("tests/test_core.py", 3)], patch)
    assert found == ["pkg/core.py:3: reached the garbage collector's listing at run time (gc.get_objects): "
                     "z = list(objects())",
                     "pkg/new.py:2: reached the garbage collector's listing at run time (gc.get_objects): "
                     "gc.get_objects()"]
    # a line the bug removed, put back as it was, reaches as the clean code did
    bug = "--- a/pkg/core.py\n+++ b/pkg/core.py\n@@ -1,2 +1,1 @@\n x = 1\n-z = list(objects())\n"
    assert run_time_reaches([reach("pkg/core.py", 3)], patch, bug) == []


def test_module_of():
    assert module_of("src/textkit/case.py") == "textkit.case"
    assert module_of("inflection/__init__.py") == "inflection"
    assert module_of("tests/test_case.py") is None and module_of("README.md") is None


def test_what_a_bug_removed_a_fix_may_put_back():
    bug = ("diff --git a/pkg/loader.py b/pkg/loader.py\n--- a/pkg/loader.py\n+++ b/pkg/loader.py\n"
           "@@ -3,3 +3,2 @@\n     module = load(name)\n-    sys.modules[name] = module\n-    sys.exit(2)\n     return module\n"
           "@@ -9 +8 @@\n-    return sys.modules.get(name)\n+    return None\n")
    assert removed_references(bug) == {"pkg/loader.py": {"the module table": 2, "an early exit": 1}}
    assert removed_references("") == {}
