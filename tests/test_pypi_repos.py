"""Real PyPI packages with their own test suites, through harvest → validate → gold proof (forged gold patches among
the real ones are refused); the reference run's line probes select what coverage selects; and a suite that turns
every warning into an error (python-dateutil) mined under a newer pytest than its maintainers'."""

from __future__ import annotations

import subprocess

import pytest

from forged_gold import assert_refused, forged
from trajfactory.settings import SynthesisConfig, ValidationConfig
from trajfactory.settings import SandboxConfig
from trajfactory.synthesizers.swe.stage import build_environment
from trajfactory.executors.pool import SandboxPool
from trajfactory.schema import ReferenceRun, Source
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.selection_lines import probe_plan
from trajfactory.synthesizers.swe.validate import select_tests, validate_batch
from trajfactory.executors.swe_env import verify_gold, verify_gold_batch
from trajfactory.datasets.swebench import INSTANCES, REPOS, evaluate, export_instances, load_instances, load_predictions

pytestmark = pytest.mark.docker
LIMITS = SandboxConfig(memory="1g", cpus=1, pids=256, command_timeout_s=120)


@pytest.mark.parametrize("uri", ["pypi:inflection==0.5.1", "pypi:isodate==0.7.2"])
def test_real_package_yields_proven_tasks(docker_backend, tmp_path, uri):
    source = harvest_repo(uri, tmp_path / "mirrors")
    assert isinstance(source, Source), source
    assert source.kind == "pypi" and source.license
    env = build_environment(docker_backend, source)
    assert not hasattr(env, "reason"), env
    candidates, _ = stage.synthesize(source, SynthesisConfig(max_candidates_per_repo=12, seed=1), tmp_path / "co")
    assert candidates
    ref = stage.reference(docker_backend, env, source, ValidationConfig(), LIMITS)
    assert isinstance(ref, ReferenceRun), ref
    assert len(ref.passing) > 10
    # the pipeline's default record, line probes of only the lines the selections read, selects the same tests as
    # coverage of every file
    probes = stage.reference(docker_backend, env, source, ValidationConfig(), LIMITS, probe=probe_plan(candidates))
    assert probes.tests == ref.tests and probes.probed
    assert [select_tests(c, probes, "coverage") for c in candidates] == \
        [select_tests(c, ref, "coverage") for c in candidates]
    with SandboxPool(docker_backend, env, size=1, limits=LIMITS) as pool:
        validations = [stage.validate(pool, c, ref, ValidationConfig()) for c in candidates]
    tasks = stage.tasks_from(source, env, candidates, validations)
    assert tasks, [(v.status, v.detail) for v in validations]
    with docker_backend.start(env, LIMITS) as sandbox:
        verdict = verify_gold(sandbox, tasks[0])
        # the pipeline's proof: every task in one warm test worker, with gold patches forged to game it among them
        fakes = forged(tasks[0])
        batch = verify_gold_batch(sandbox, tasks[:1] + fakes + tasks[1:])
    assert verdict.passed, verdict.evidence
    assert_refused(batch[1:1 + len(fakes)])
    if "isodate" in uri:  # its .gitignore hides *.pyc: the file the forged gold left is found all the same
        assert "!! forged_gold_cache.pyc" in batch[1 + len(fakes) - 1].evidence.detail
    batch = batch[:1] + batch[1 + len(fakes):]
    assert [v.task_id for v in batch] == [t.task_id for t in tasks]
    assert all(v.passed for v in batch), [v.evidence.detail for v in batch if not v.passed]
    assert (batch[0].evidence.FAIL_TO_PASS, batch[0].evidence.PASS_TO_PASS) == \
        (verdict.evidence.FAIL_TO_PASS, verdict.evidence.PASS_TO_PASS)
    check_swebench_export(docker_backend, source, [t.to_row() for t in tasks[:3]], tmp_path / "export")


def check_swebench_export(backend, source: Source, rows: list[dict], out) -> None:
    """The SWE-bench export of real tasks reproduces: the branch holds the bug, the gold patch applies there with
    plain `git apply` and passes through `eval-instances`' path, and an empty patch fails every instance."""
    instances, problems = export_instances(rows, out, backend)
    assert problems == [] and len(instances) == len(rows)
    for inst in instances:
        assert inst["repo"] == source.repo_slug and "/" in inst["repo"]  # owner/name from the package metadata
        assert inst["version"] == source.version and inst["created_at"].startswith(("19", "20"))
        assert inst["base_commit"] != inst["environment_setup_commit"]  # the buggy commit, not the clean one
    # outside any sandbox: a clone of the bundle, each branch is the buggy state the gold patch fixes
    bundle = next((out / REPOS).glob("*.bundle"))
    clone = out / "clone"
    subprocess.run(["git", "clone", "-q", str(bundle), str(clone)], check=True, capture_output=True)
    for inst in instances:
        subprocess.run(["git", "-C", str(clone), "checkout", "-q", "-f", inst["base_commit"]], check=True)
        applied = subprocess.run(["git", "-C", str(clone), "apply", "--check", "-"], input=inst["patch"].encode(),
                                 capture_output=True)
        assert applied.returncode == 0, applied.stderr
    loaded = load_instances(out / INSTANCES)
    assert [i["instance_id"] for i in loaded] == [i["instance_id"] for i in instances]
    gold = evaluate(loaded, load_predictions("gold", loaded), out / REPOS, backend)
    assert [r["resolved"] for r in gold] == [True] * len(rows), gold
    empty = evaluate(loaded, {i["instance_id"]: "" for i in loaded}, out / REPOS, backend)
    assert [r["resolved"] for r in empty] == [False] * len(rows)
    assert all(r["tests_status"]["FAIL_TO_PASS"]["failure"] and r["patch_applied"] for r in empty)


def test_a_suite_that_errors_on_every_warning_is_mined_under_a_newer_pytest(docker_backend, tmp_path):
    """python-dateutil 2.9.0 turns every warning into an error (`setup.cfg`), and pytest 9 warns at collection
    (`PytestRemovedIn10Warning`) about a generator its tests pass to `parametrize`, which its maintainers' pytest did
    not. Sandboxes keep pytest's own deprecations warnings (`PYTEST_ADDOPTS`, `executors/base.py`): the suite
    collects, its tasks are validated and their gold patches proven; with the variable emptied it does not collect."""
    source = harvest_repo("pypi:python-dateutil==2.9.0.post0", tmp_path / "mirrors")
    assert isinstance(source, Source), source
    env = build_environment(docker_backend, source)
    assert not hasattr(env, "reason"), env
    with docker_backend.start(env, LIMITS) as sandbox:
        plain = sandbox.execute("PYTEST_ADDOPTS= python -m pytest -p no:cacheprovider --collect-only -q", timeout=120)
        ours = sandbox.execute("python -m pytest -p no:cacheprovider --collect-only -q", timeout=120)
    assert plain.exit_code == 2 and "PytestRemovedIn10Warning" in plain.output, plain.output[-2000:]
    assert ours.exit_code == 0, ours.output[-2000:]
    candidates, _ = stage.synthesize(source, SynthesisConfig(max_candidates_per_repo=10, seed=1), tmp_path / "co")
    ref = stage.reference(docker_backend, env, source, ValidationConfig(), LIMITS, probe=probe_plan(candidates))
    assert isinstance(ref, ReferenceRun), ref
    assert len(ref.tests) > 2000 and len(ref.passing) > 1900, (len(ref.tests), len(ref.passing))
    with docker_backend.start(env, LIMITS) as sandbox:  # the pipeline's way: one warm test worker, then the proofs
        validations = validate_batch(sandbox, candidates, ref)
        tasks = stage.tasks_from(source, env, candidates, validations)
        assert tasks, [(v.status, v.detail) for v in validations]
        proofs = verify_gold_batch(sandbox, tasks)
    assert all(v.passed for v in proofs), [v.evidence.detail for v in proofs if not v.passed]
