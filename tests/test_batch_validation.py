"""The batch path (one warm test worker per batch, `executors/batchrun.py`) against the one-candidate path, on the
bundled textkit repository and a real PyPI package, and what one item can do to a batch (crash, hang, loop,
exhaust memory, leave processes behind, kill the worker)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from trajfactory.executors.batchrun import BatchItem, run_batch
from trajfactory.executors.pool import SandboxPool
from trajfactory.pipelines.swe import validation_batches
from trajfactory.schema import Source
from trajfactory.settings import Recipe, RepoSpec, SandboxConfig, SynthesisConfig, ValidationConfig
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.validate import validate_batch, validate_batch_detailed, validate_candidate

pytestmark = pytest.mark.docker
LIMITS = SandboxConfig(memory="512m", cpus=1, pids=256, command_timeout_s=120)


def _same(a, b) -> tuple:
    """What must agree between the two paths (not the timings in `duration_s` and pytest's summary line)."""
    return (a.candidate_id, a.status, a.FAIL_TO_PASS, a.PASS_TO_PASS, a.selection, a.tests_run) == \
        (b.candidate_id, b.status, b.FAIL_TO_PASS, b.PASS_TO_PASS, b.selection, b.tests_run)


def _prepare(backend, tmp_path, uri: str, candidates: int, seed: int = 0):
    source = harvest_repo(uri, tmp_path / "mirrors")
    assert isinstance(source, Source), source
    env = stage.build_environment(backend, source)
    assert not hasattr(env, "reason"), env
    found, _ = stage.synthesize(source, SynthesisConfig(max_candidates_per_repo=candidates, seed=seed), tmp_path / "co")
    ref = stage.reference(backend, env, source, ValidationConfig(), LIMITS)
    assert not hasattr(ref, "reason"), ref
    return env, found, ref


@pytest.fixture(scope="module")
def textkit(docker_backend, tmp_path_factory):
    return _prepare(docker_backend, tmp_path_factory.mktemp("textkit"), "builtin:textkit", 24)


@pytest.mark.parametrize("selection", ["coverage", "full"])
def test_batch_results_are_the_one_candidate_results_on_textkit(docker_backend, textkit, selection):
    env, candidates, ref = textkit
    with docker_backend.start(env, LIMITS) as sandbox:
        one = [validate_candidate(sandbox, c, ref, selection=selection) for c in candidates]
        batched = validate_batch(sandbox, candidates, ref, selection=selection)
        again = validate_batch(sandbox, candidates, ref, selection=selection)  # a worker that preloads
        clean = sandbox.execute("git status --porcelain --ignored")
    assert [v.status for v in one].count("valid") >= 3
    assert all(_same(a, b) and _same(a, c) for a, b, c in zip(one, batched, again)), \
        [(a.candidate_id, a.status, b.status, c.status) for a, b, c in zip(one, batched, again) if not _same(a, b)]
    assert clean.output.strip() == ""  # the worker left the checkout as it found it


def test_batch_results_are_the_one_candidate_results_on_a_real_package(docker_backend, tmp_path):
    # isodate 0.7.2, seed 0: includes the candidate whose bug sits behind build_date_regexps' cache (29329023d739f9fa)
    env, candidates, ref = _prepare(docker_backend, tmp_path, "pypi:isodate==0.7.2", 30)
    with docker_backend.start(env, LIMITS) as sandbox:
        one = [validate_candidate(sandbox, c, ref) for c in candidates]
        detailed = validate_batch_detailed(sandbox, candidates, ref)
        fresh = validate_batch(sandbox, candidates, ref, hot=False)  # a pytest session per candidate
        full = validate_batch(sandbox, candidates, ref, selection="full")
        # a bug that loops forever in a function the tests reach: its CPU limit stops it, in seconds
        reached = next(c for c, v in zip(candidates, one) if v.status == "valid" and c.scope == "function"
                       and c.entity.body_lineno)
        looping = validate_batch(sandbox, [_stuck(sandbox, reached, "isodate"), reached], ref)
    assert looping[0].status == "timeout" and "CPU seconds" in looping[0].detail, looping[0]
    assert _same(looping[1], one[candidates.index(reached)])  # the next item of the batch is judged as ever
    batched = detailed.validations
    assert [_same(a, b) for a, b in zip(one, batched)] == [True] * len(one)
    assert [_same(a, b) for a, b in zip(one, fresh)] == [True] * len(one)
    # most candidates change a function body no test ran at import: tested in the worker's collected session
    info = detailed.info
    assert info.hot_items >= 10 and info.hot_refused <= info.hot_items // 2, (info.hot_items, info.hot_refused,
                                                                               info.notes)
    # the audit: coverage-selected results agree with the whole suite's, the F2P sets included
    for v, w in zip(batched, full):
        assert (v.status == "valid") == (w.status == "valid"), v.candidate_id
        if v.status == "valid":
            assert v.FAIL_TO_PASS == w.FAIL_TO_PASS, v.candidate_id
    assert "29329023d739f9fa" in {c.candidate_id for c in candidates}


def _new_test(path: str, body: str) -> str:
    lines = body.strip("\n").splitlines()
    return f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{len(lines)} @@\n" + "".join(f"+{line}\n" for line in lines)


def _item(key: str, body: str, timeout: float = 60) -> BatchItem:
    path = f"tests/test_zz_{key}.py"
    return BatchItem(key, _new_test(path, body), [f"{path}::test_it"], timeout)


def test_one_item_crashing_hanging_or_exhausting_memory_is_that_items_result(docker_backend, textkit):
    env, _, _ = textkit
    items = [
        _item("ok", "def test_it():\n    assert 1 + 1 == 2"),
        _item("crash", "import os\n\ndef test_it():\n    os._exit(3)"),
        _item("hang", "import time\n\ndef test_it():\n    time.sleep(600)", timeout=3),
        _item("oom", "def test_it():\n    blocks = []\n    while True:\n        blocks.append(bytearray(64 << 20))"),
        _item("orphan", "import subprocess\n\ndef test_it():\n"
                        "    subprocess.Popen(['sleep', '1000'], start_new_session=True)"),
        BatchItem("bad", "--- a/nowhere.py\n+++ b/nowhere.py\n@@ -1 +1 @@\n-x\n+y\n", ["tests/x.py::t"], 60),
        _item("fails", "def test_it():\n    assert 1 + 1 == 3"),
        # a write to a closed pipe raises in `python -m pytest` (Python ignores SIGPIPE); it once killed the child
        _item("pipe", "import os\n\ndef test_it():\n    r, w = os.pipe()\n    os.close(r)\n    try:\n"
                      "        os.write(w, b'x')\n    except BrokenPipeError:\n        pass"),
    ]
    with docker_backend.start(env, LIMITS) as sandbox:
        results, info = run_batch(sandbox, items)
        left = sandbox.execute("cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^sleep$'; "
                               "git status --porcelain --ignored")
    by = {r.key: r for r in results}
    assert info.workers == 1, info.notes  # no item took the worker down
    assert by["ok"].run.finished and by["ok"].run.outcomes == {"tests/test_zz_ok.py::test_it": "passed"}
    assert not by["crash"].run.finished and by["crash"].run.exit_code == 3
    assert by["hang"].run.timed_out and not by["hang"].run.finished
    assert not by["oom"].run.finished and by["oom"].run.exit_code == 137
    assert by["orphan"].run.outcomes == {"tests/test_zz_orphan.py::test_it": "passed"}
    assert by["bad"].run is None and "nowhere.py" in by["bad"].patch_error
    assert by["fails"].run.outcomes == {"tests/test_zz_fails.py::test_it": "failed"}
    assert by["pipe"].run.finished and by["pipe"].run.outcomes == {"tests/test_zz_pipe.py::test_it": "passed"}
    count, _, status = left.output.partition("\n")
    assert count.strip() == "1" and status.strip() == ""  # only the container's own keeper sleeps; checkout clean


def test_an_item_that_kills_the_worker_costs_only_itself(docker_backend, textkit):
    env, _, _ = textkit
    items = [
        _item("first", "def test_it():\n    pass"),
        _item("killer", "import os, signal\n\ndef test_it():\n    os.kill(os.getppid(), signal.SIGKILL)"),
        _item("after", "def test_it():\n    pass"),
    ]
    with docker_backend.start(env, LIMITS) as sandbox:
        results, info = run_batch(sandbox, items)
    by = {r.key: r for r in results}
    assert info.workers == 2
    assert by["first"].run.outcomes == {"tests/test_zz_first.py::test_it": "passed"}
    assert not by["killer"].run.finished
    assert by["after"].run.outcomes == {"tests/test_zz_after.py::test_it": "passed"}


def test_the_paths_a_pair_of_patches_names():
    """What the worker looks up where the ignore rules hide it, after a gold patch over its bug."""
    from trajfactory.executors.batch_worker_procs import patch_paths

    git = ("diff --git a/src/pkg/core.py b/src/pkg/core.py\n--- a/src/pkg/core.py\n+++ b/src/pkg/core.py\n"
           "@@ -1 +1 @@\n-x\n+y\ndiff --git a/old.py b/new.py\nsimilarity index 90%\nrename from old.py\n"
           "rename to new.py\ndiff --git a/pkg/cache.pyc b/pkg/cache.pyc\nnew file mode 100644\n"
           "GIT binary patch\nliteral 3\nKcmZ>Y%K!iXH2?tq\n\nliteral 0\nHcmV?d00001\n")
    plain = "--- pkg/a.py\t2024-01-01 10:00:00\n+++ pkg/a.py\t2024-01-01 10:00:01\n@@ -1 +1 @@\n-x\n+y\n"
    assert patch_paths(git, plain, "") == ["new.py", "old.py", "pkg/a.py", "pkg/cache.pyc", "src/pkg/core.py"]
    assert patch_paths("--- /dev/null\n+++ b/made.py\n@@ -0,0 +1 @@\n+x\n") == ["made.py"]


def test_candidates_are_cut_into_batches_for_every_sandbox(tmp_path):
    recipe = Recipe(work_dir=str(tmp_path), repos=[RepoSpec(uri="builtin:textkit")],
                    sandbox=SandboxConfig(concurrency=2), validation=ValidationConfig(batch_size=4))
    cut = lambda n: [len(c[2]) for c in validation_batches(recipe, None, list(range(n)), None)]  # noqa: E731
    assert cut(0) == [] and cut(1) == [1] and cut(5) == [3, 2] and cut(8) == [4, 4] and cut(10) == [4, 4, 2]


def test_the_batch_step_is_a_cached_step_of_the_flows():
    from trajfactory.flows.tasks import STEPS
    from trajfactory.pipelines import swe

    assert STEPS[swe.validate_batch].name == "validate"


def test_a_pool_sandbox_serves_the_batch_step(docker_backend, textkit, tmp_path):
    from trajfactory.pipelines import swe

    env, candidates, ref = textkit
    recipe = Recipe(work_dir=str(tmp_path), repos=[RepoSpec(uri="builtin:textkit")], sandbox=LIMITS,
                    validation=ValidationConfig(batch_size=5))
    with SandboxPool(docker_backend, env, 1, LIMITS) as pool:
        out = [v for args in validation_batches(recipe, pool, candidates[:8], ref) for v in swe.validate_batch(*args)]
        assert pool.started == 1
    assert [v.candidate_id for v in out] == [c.candidate_id for c in candidates[:8]]


def _stuck(sandbox, candidate, tag: str, body: str = "while True:\n    pass"):
    """`candidate`'s function made to run `body` on entry (by default: loop forever): a bug whose tests never finish."""
    import difflib

    entity = candidate.entity
    path = f"{sandbox.workdir}/{entity.file}"
    lines = sandbox.read_file(path).decode().splitlines(keepends=True)
    first = lines[entity.body_lineno - 1]
    indent = first[:len(first) - len(first.lstrip())]
    patched = lines[:entity.body_lineno - 1] + [f"{indent}{line}\n" for line in body.splitlines()] \
        + lines[entity.body_lineno - 1:]
    patch = "".join(difflib.unified_diff(lines, patched, f"a/{entity.file}", f"b/{entity.file}"))
    return candidate.model_copy(update={"candidate_id": f"stuck-{tag}", "patch": patch,
                                        "changed_lines": [entity.body_lineno]})


def test_a_bug_that_loops_forever_costs_a_multiple_of_its_tests_time_not_the_ceiling(docker_backend, textkit):
    import time

    env, candidates, ref = textkit
    # the reference run timed every test: a candidate's limits scale with its selected tests' time
    assert set(ref.passing) <= set(ref.durations) and ref.overhead_s > 0
    function = next(c for c in candidates if c.scope == "function" and c.entity.body_lineno)
    with docker_backend.start(env, LIMITS) as sandbox:
        loop = _stuck(sandbox, function, "batch")
        # a bug that waits forever uses no CPU: the wall clock's limit stops it
        sleep = _stuck(sandbox, function, "sleep", "import time\ntime.sleep(10 ** 6)")
        started = time.monotonic()
        batched = validate_batch(sandbox, [loop, candidates[0], sleep], ref, timeout=600)
        one = validate_candidate(sandbox, _stuck(sandbox, function, "one"), ref, timeout=600)
        took = time.monotonic() - started
    for v in (batched[0], one):  # the loop burns CPU: its CPU limit (a floor of 2 s) stops it, not the 15 s wall
        assert v.status == "timeout" and v.selection == "coverage", v
        pattern = r"used more than (\d+) CPU seconds \(\d+x the [\d.]+s they took on the clean repository\)"
        assert 2 <= int(re.search(pattern, v.detail)[1]) <= 15, v.detail
    assert batched[2].status == "timeout", batched[2]
    limit = int(re.search(r"did not finish within (\d+)s \(\d+x the", batched[2].detail)[1])
    assert 15 <= limit <= 60, batched[2].detail  # 15 s unless the machine was slow in the reference run
    assert took < 150  # limits of seconds, not 600 s ceilings
    assert batched[1].status != "timeout"  # the next candidate of the batch is judged as ever


def test_a_worker_that_preloads_runs_an_asyncio_suite_as_a_fresh_session_does(docker_backend, mirrors):
    """tenacity 9.2.1's async tests ask sniffio which event loop runs them. The first batch's children imported
    `_asyncio` (the C accelerator) with `asyncio`, and the next worker preloaded the two in name order: `_asyncio`
    first, whose import pulls in `asyncio.tasks` before `_asyncio` itself is registered, so `asyncio.tasks` fell back
    to its pure-Python task registry while tasks registered in the C one. `asyncio.current_task()` was None inside
    `asyncio.run`, sniffio found no async library, and the gold proofs after validation failed (2 tasks lost)."""
    source = harvest_repo("pypi:tenacity==9.2.1", mirrors)
    assert isinstance(source, Source), source
    env = stage.build_environment(docker_backend, source)
    assert not hasattr(env, "reason"), env
    tests = ["tests/test_asyncio.py::TestAsyncio::test_retry",
             "tests/test_asyncio.py::TestContextManager::test_retry_with_result",
             "tests/test_asyncio.py::TestContextManager::test_do_max_attempts"]  # not test_sleeps: it times itself
    with docker_backend.start(env, LIMITS) as sandbox:
        # the later workers preload what the first one's children imported; the last runs them in its collected session
        for batch, hot in enumerate((False, False, True)):
            results, info = run_batch(sandbox, [BatchItem(key=str(batch), patch="", tests=tests, timeout=120, hot=hot)])
            assert info.preloaded == (batch > 0) and info.hot_items == hot, info
            assert results[0].run.outcomes == dict.fromkeys(tests, "passed"), (batch, results[0].run.output)


def test_a_module_a_test_imports_in_its_body_is_not_preloaded(docker_backend, mirrors):
    """wrapt 2.5.2's `test_import_deadlock_3` asserts that `wsgiref` is not imported yet, then imports it from a
    post-import hook. The first batch's child imported it in that test's body, the next workers preloaded it, and
    the test failed there: 2 gold proofs failed. Only the modules a child held when its collection finished (which the
    maintainers' run holds before its first test too) are preloaded now. wrapt's C module `wrapt._wrappers`, built with
    the image since, is held from beside the environment: preloading it imported `wrapt` from the checkout, so the
    preload was refused; a compiled module of the project's own package is not preloaded."""
    source = harvest_repo("pypi:wrapt==2.5.2", mirrors)
    assert isinstance(source, Source), source
    env = stage.build_environment(docker_backend, source)
    assert not hasattr(env, "reason"), env
    tests = ["tests/core/test_post_import_hooks.py::TestPostImportHooks::test_import_deadlock_3",
             "tests/core/test_post_import_hooks.py::TestPostImportHooks::test_loader"]
    with docker_backend.start(env, LIMITS) as sandbox:
        for batch, hot in enumerate((False, False, True)):
            results, info = run_batch(sandbox, [BatchItem(key=str(batch), patch="", tests=tests, timeout=120, hot=hot)])
            assert info.preloaded == (batch > 0) and info.hot_items == hot, info
            assert results[0].run.outcomes == dict.fromkeys(tests, "passed"), (batch, results[0].run.output[-3000:])


def test_a_module_pytest_marks_for_rewriting_is_not_preloaded(docker_backend, tmp_path):
    """pytest marks the modules of its plugins' distributions for rewriting, hypothesis's `_hypothesis_globals` among
    them. A child whose tests import hypothesis held that module plainly, the next workers preloaded it, and pytest
    warned at their start that it could not rewrite it: yarl 1.25.1 turns warnings into errors, so every run after a
    warm worker's first batch stopped, and all six of its gold proofs failed. The modules pytest marks for rewriting
    are not preloaded."""
    repo = tmp_path / "good_small"
    shutil.copytree(Path(__file__).parent / "fixtures" / "good_small", repo)
    config = repo / "pyproject.toml"
    config.write_text(config.read_text().replace('pythonpath = ["."]', 'pythonpath = ["."]\nfilterwarnings = ["error"]'))
    (repo / "tests" / "test_props.py").write_text(
        "from hypothesis import given, strategies as st\n\nfrom calc import add\n\n\n"
        "@given(st.integers(), st.integers())\ndef test_add_commutes(a, b):\n    assert add(a, b) == add(b, a)\n")
    source = harvest_repo(str(repo), tmp_path / "mirrors")
    assert isinstance(source, Source), source
    env = stage.build_environment(docker_backend, source, test_requirements=["hypothesis"])
    assert not hasattr(env, "reason"), env
    tests = ["tests/test_calc.py::test_add", "tests/test_props.py::test_add_commutes"]
    with docker_backend.start(env, LIMITS) as sandbox:
        for batch, hot in enumerate((False, False, True)):
            results, info = run_batch(sandbox, [BatchItem(key=str(batch), patch="", tests=tests, timeout=120, hot=hot)])
            assert info.preloaded == (batch > 0), info
            assert results[0].run.outcomes == dict.fromkeys(tests, "passed"), (batch, results[0].run.output[-3000:])


PLUGGY_BUG = """\
diff --git a/src/pluggy/_manager.py b/src/pluggy/_manager.py
--- a/src/pluggy/_manager.py
+++ b/src/pluggy/_manager.py
@@ -393,10 +393,6 @@
             _get_marker_opts(found[0], self.project_name + "_spec"),
         )
 
-    def get_plugins(self) -> set[Any]:
-        \"\"\"Return a set of all registered plugin objects.\"\"\"
-        return {x for x in self._name2plugin.values() if x is not None}
-
     def is_registered(self, plugin: _Plugin) -> bool:
         \"\"\"Return whether the plugin is already registered.\"\"\"
         return any(plugin == val for val in self._name2plugin.values())
"""


def test_a_project_pytest_itself_imports_is_tested_afresh(docker_backend, mirrors):
    """pytest imports pluggy before any test, so the children of a warm worker, forked after that import, ran pluggy
    1.7.0's clean code whatever an item's patch said: every one of its 12 candidates passed every test, and it gave
    no task. The worker says so at its start, and the items run afresh, as `run_tests` runs them."""
    source = harvest_repo("pypi:pluggy==1.7.0", mirrors)
    assert isinstance(source, Source), source
    env = stage.build_environment(docker_backend, source)
    assert not hasattr(env, "reason"), env
    tests = ["testing/test_pluginmanager.py::test_pm", "testing/test_pluginmanager.py::test_register"]
    with docker_backend.start(env, LIMITS) as sandbox:
        for batch in range(2):  # the second batch knows it already: no worker starts
            results, info = run_batch(sandbox, [BatchItem(key="bug", patch=PLUGGY_BUG, tests=tests, timeout=120),
                                                BatchItem(key="clean", patch="", tests=tests, timeout=120)])
            assert results[0].run.outcomes == dict.fromkeys(tests, "failed"), results[0].run.output
            assert results[1].run.outcomes == dict.fromkeys(tests, "passed"), results[1].run.output
            assert info.workers == (batch == 0), info
            assert any("pytest imports the project itself (pluggy" in note for note in info.notes) == (batch == 0)
