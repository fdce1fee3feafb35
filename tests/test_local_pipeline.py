"""The same stages on the local namespace sandbox (the backend used where no Docker engine answers)."""

from __future__ import annotations

from trajfactory.agents.oracle import OraclePolicy
from trajfactory.settings import SynthesisConfig, ValidationConfig
from trajfactory.settings import SandboxConfig
from trajfactory.synthesizers.swe.stage import build_environment
from trajfactory.executors.local import LocalBackend
from trajfactory.executors.pool import SandboxPool
from trajfactory.schema import ReferenceRun, Source
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.executors.swe_env import run_swe_episode, verify_trajectory

LIMITS = SandboxConfig(memory="1g", cpus=1, pids=256, command_timeout_s=120)


def test_local_backend_runs_validation_rollout_and_verification(tmp_path):
    backend = LocalBackend(cache_root=tmp_path / "cache")
    source = harvest_repo("builtin:textkit", tmp_path / "mirrors")
    assert isinstance(source, Source)
    env = build_environment(backend, source)
    assert env.backend == "local"
    candidates, _ = stage.synthesize(source, SynthesisConfig(max_candidates_per_repo=6), tmp_path / "co")
    ref = stage.reference(backend, env, source, ValidationConfig(), LIMITS)
    assert isinstance(ref, ReferenceRun), ref
    with SandboxPool(backend, env, 1, LIMITS) as pool:
        validations = [stage.validate(pool, c, ref, ValidationConfig()) for c in candidates]
    tasks = stage.tasks_from(source, env, candidates, validations)
    assert tasks, [(v.status, v.detail) for v in validations]
    trajectory = run_swe_episode(tasks[0], OraclePolicy(), backend, env, LIMITS)
    assert trajectory.exit_status == "submitted"
    with backend.start(env, LIMITS) as sandbox:
        verdict = verify_trajectory(sandbox, tasks[0], trajectory)
    assert verdict.passed, verdict.evidence
