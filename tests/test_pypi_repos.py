"""Two real PyPI packages with their own test suites, through harvest → validate → gold proof."""

from __future__ import annotations

import pytest

from trajfactory.settings import SynthesisConfig, ValidationConfig
from trajfactory.settings import SandboxConfig
from trajfactory.synthesizers.swe.stage import build_environment
from trajfactory.executors.pool import SandboxPool
from trajfactory.schema import ReferenceRun, Source
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.executors.swe_env import verify_gold

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
    with SandboxPool(docker_backend, env, size=1, limits=LIMITS) as pool:
        validations = [stage.validate(pool, c, ref, ValidationConfig()) for c in candidates]
    tasks = stage.tasks_from(source, env, candidates, validations)
    assert tasks, [(v.status, v.detail) for v in validations]
    with docker_backend.start(env, LIMITS) as sandbox:
        verdict = verify_gold(sandbox, tasks[0])
    assert verdict.passed, verdict.evidence
