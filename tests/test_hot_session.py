"""The batch worker's collected session (`executors/batch_worker_hot.py`): which patches it may test by swapping
function code into one collected pytest session, and that its results are a fresh session's.

The worker runs here as it does in a sandbox (a real pytest, a real git checkout), on a small package written for
the purpose: a plain function, a decorated one (the decorator's wrapper is what the module's name holds), a
method, a nested closure, a module table and a test module."""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trajfactory.executors import batch_worker_hot as hot
from trajfactory.executors.batchrun import WORKER_FILES
from trajfactory.executors.testrun import HARNESS_FILES, PLUGIN, parse_results

PACKAGE = '''\
import functools


def deco(f):
    @functools.wraps(f)
    def wrapper(*a):
        return f(*a)
    return wrapper


def add(a, b):
    return a + b


@deco
def mul(a, b):
    return a * b


def counter(start):
    def step(n):
        return start + n
    return step


class K:
    def twice(self, x):
        return add(x, x)


TABLE = {"x": 1}
'''

TESTS = '''\
from pkg import K, TABLE, add, counter, mul


def test_add():
    assert add(1, 2) == 3


def test_mul():
    assert mul(2, 3) == 6


def test_twice():
    assert K().twice(2) == 4


def test_counter():
    assert counter(1)(2) == 3


def test_table():
    assert TABLE["x"] == 1
'''


def _compile(src: str):
    return compile(src, "/x/pkg.py", "exec", dont_inherit=True)


def _pairs(new: str):
    return [(o.co_name, must) for o, _, must in hot.code_pairs(_compile(PACKAGE), _compile(new))]


def test_a_changed_function_body_is_a_swap_and_what_moved_below_it_follows():
    same_length = PACKAGE.replace("return a + b", "return a - b")
    assert _pairs(same_length) == [("add", True)]
    longer = PACKAGE.replace("return a + b", "if a:\n        return a - b\n    return a + b")
    # everything defined below moved down: its code is swapped where live (tracebacks), never required
    assert ("add", True) in _pairs(longer)
    assert ("mul", False) in _pairs(longer) and ("twice", False) in _pairs(longer)


def test_a_nested_function_and_a_method_are_swaps():
    assert _pairs(PACKAGE.replace("return start + n", "return start - n")) == [("counter", True), ("step", False)]
    assert _pairs(PACKAGE.replace("return add(x, x)", "return add(x, 1)")) == [("twice", True)]
    # the decorator's wrapper: its live copies (one per decorated function) are swapped too
    assert ("wrapper", False) in _pairs(PACKAGE.replace("return f(*a)", "return f(*a) + 1"))


@pytest.mark.parametrize("new, why", [
    (PACKAGE.replace('TABLE = {"x": 1}', 'TABLE = {"x": 2}'), "module"),                   # a module constant
    (PACKAGE.replace("@deco\ndef mul", "def mul"), "module"),                              # a decorator removed
    (PACKAGE.replace("def add(a, b):", "def add(a, b=1):"), "module"),                     # a default value
    (PACKAGE.replace("def add(a, b):", "def add(a: int, b):"), "module"),                  # an annotation
    (PACKAGE.replace("class K:\n", "class K:\n    limit = 3\n"), "class"),                 # a class attribute
    (PACKAGE + "\n\ndef extra():\n    pass\n", "module"),                                  # a function added
    (PACKAGE.replace("return start + n", "return n"), "closure"),                          # a closure's variables
])
def test_a_change_a_swap_could_miss_is_refused(new, why):
    with pytest.raises(hot.Refused) as err:
        hot.code_pairs(_compile(PACKAGE), _compile(new))
    assert why in str(err.value)


def test_changed_paths_refuse_created_and_deleted_files():
    assert hot.changed_paths("--- a/pkg/a.py\n+++ b/pkg/a.py\n@@ -1 +1 @@\n-x\n+y\n") == ["pkg/a.py"]
    with pytest.raises(hot.Refused):
        hot.changed_paths("--- /dev/null\n+++ b/pkg/new.py\n@@ -0,0 +1 @@\n+x\n")
    with pytest.raises(hot.Refused):
        hot.changed_paths("--- a/pkg/a.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n")


def _diff(path: str, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{path}", f"b/{path}"))


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    root = tmp_path_factory.mktemp("hot")
    repo, scratch = root / "repo", root / "scratch"
    (repo / "pkg").mkdir(parents=True)
    (repo / "tests").mkdir()
    scratch.mkdir()
    (repo / "pkg" / "__init__.py").write_text(PACKAGE)
    (repo / "tests" / "test_pkg.py").write_text(TESTS)
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "clean"], check=True)
    for name, text in HARNESS_FILES.items():
        (scratch / name).write_text(text)
    for name, source in WORKER_FILES.items():
        (scratch / name).write_text(source)
    return repo, scratch


EDITS = {
    "add": ("pkg/__init__.py", "return a + b", "return a - b", ["test_add", "test_twice"]),
    "mul": ("pkg/__init__.py", "return a * b", "return a ** b", ["test_mul"]),
    "wrapper": ("pkg/__init__.py", "return f(*a)", "return f(*a) + 1", ["test_mul"]),
    "step": ("pkg/__init__.py", "return start + n", "return start - n", ["test_counter", "test_add"]),
    "longer": ("pkg/__init__.py", "    return a * b", "    if a == 2:\n        return 0\n    return a * b",
               ["test_mul", "test_twice"]),
    "table": ("pkg/__init__.py", '"x": 1', '"x": 2', ["test_table"]),
    "test": ("tests/test_pkg.py", "== 3\n", "== 4\n", ["test_add"]),
}


def _run_worker(repo: Path, scratch: Path, hot_items: bool) -> dict[str, dict]:
    items = []
    for i, (key, (path, old, new, tests)) in enumerate(EDITS.items()):
        source = (repo / path).read_text()
        ids = [f"tests/test_pkg.py::{t}" for t in tests]
        items.append({"key": key, "patch": _diff(path, source, source.replace(old, new, 1)), "tests": ids,
                      "args": ["tests/test_pkg.py"], "timeout": 60, "hot": hot_items,
                      "env": {"TRAJFACTORY_RESULTS": f"{scratch}/results-{i}.jsonl",
                              "TRAJFACTORY_SELECT": f"{scratch}/tests-{i}.txt"}})
    spec = scratch / "spec.json"
    out = scratch / f"out-{int(hot_items)}.jsonl"
    out.unlink(missing_ok=True)  # the worker appends
    spec.write_text(json.dumps({"workdir": str(repo), "scratch": str(scratch), "private_dirs": [str(scratch)],
                                "items": items}))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(scratch), "PYTHONDONTWRITEBYTECODE": "1", "PY_COLORS": "0"}
    # the host's pytest-rerunfailures starts a server thread at configure wherever xdist is installed too, and a
    # collected session that started a thread refuses to fork; a sandbox like this one has neither plugin
    proc = subprocess.run([sys.executable, str(scratch / WORKER_NAME), str(spec), str(out), "--", "-p", PLUGIN,
                           "-p", "no:cacheprovider", "-p", "no:rerunfailures", "-q", "--tb=no", f"--rootdir={repo}"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[-1].get("done") is True, records[-1]
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--ignored"], capture_output=True,
                            text=True)
    assert status.stdout.strip() == ""  # restored after every item
    return {"session": next((r["hot_session"] for r in records if "hot_session" in r), None),
            **{r["key"]: r for r in records if "key" in r}}


WORKER_NAME = "trajfactory_batch_worker.py"


def test_the_collected_session_gives_a_fresh_sessions_outcomes_and_refuses_what_it_cannot_swap(checkout):
    repo, scratch = checkout
    fresh = _run_worker(repo, scratch, hot_items=False)
    swapped = _run_worker(repo, scratch, hot_items=True)
    assert fresh["session"] is None and swapped["session"]["items"] == len(EDITS)
    for key in ("add", "mul", "wrapper", "step", "longer"):
        assert swapped[key]["status"] == "ran", swapped[key]
        outcomes = parse_results(swapped[key]["records"])[0]
        assert outcomes == parse_results(fresh[key]["records"])[0], key
        assert swapped[key]["exit_code"] == fresh[key]["exit_code"] == 1, key  # every bug fails a test
        # the child ran only the item's tests, in a session it did not start or collect itself
        assert len(outcomes) == len(EDITS[key][3])
        assert swapped[key]["probe"]["tests"] == len(EDITS[key][3])
    assert parse_results(swapped["step"]["records"])[0]["tests/test_pkg.py::test_add"] == "passed"
    # a module table and a test module: run the plain way, never judged from the collected session
    assert swapped["table"]["status"] == swapped["test"]["status"] == "swap_refused"
    assert "module" in swapped["table"]["detail"] and "rewritten by pytest" in swapped["test"]["detail"]
    assert swapped["session"]["refused"] == 2
    assert fresh["table"]["status"] == "ran" and fresh["table"]["exit_code"] == 1


def test_a_collection_that_starts_a_thread_sends_every_item_the_plain_way(checkout):
    repo, scratch = checkout
    conftest = repo / "tests" / "conftest.py"
    conftest.write_text("import threading, time\n"
                        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "thread"],
                   check=True)
    try:
        swapped = _run_worker(repo, scratch, hot_items=True)
    finally:
        subprocess.run(["git", "-C", str(repo), "reset", "-q", "--hard", "HEAD~1"], check=True)
    assert swapped["session"]["refused"] == len(EDITS)
    assert all(swapped[key]["status"] == "swap_refused" and "thread" in swapped[key]["detail"] for key in EDITS)
