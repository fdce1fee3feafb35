"""The recipe's cap of candidates is taken once the reference run has said which code the tests run
(`stage.pick`): a bug in code no test runs fails no test. propcache 0.5.4 keeps its PEP 517 build backend in the
tree (`packaging/pep517_backend/`) and one test imports a module of it; the backend took 10 of its 12 candidates, and
the repository gave 1 task. The fixture has that shape: a tested package, and build helpers a test imports but none
runs, with three times the package's entities."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trajfactory.schema import Source
from trajfactory.settings import SandboxConfig, SynthesisConfig, ValidationConfig
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import procedural, stage
from trajfactory.synthesizers.swe.selection_lines import probe_plan

pytestmark = pytest.mark.docker
FIXTURE = Path(__file__).parent / "fixtures" / "untested_tooling"
LIMITS = SandboxConfig(memory="1g", cpus=1, pids=256, command_timeout_s=120)
CAP = 6


@pytest.fixture(scope="module")
def picked(docker_backend, tmp_path_factory):
    repo = tmp_path_factory.mktemp("shapes") / "shapes"
    shutil.copytree(FIXTURE, repo)
    work = tmp_path_factory.mktemp("work")
    source = harvest_repo(str(repo), work / "mirrors")
    assert isinstance(source, Source), source
    cfg = SynthesisConfig(max_candidates_per_repo=CAP, seed=0)
    pool, bad = stage.synthesize(source, cfg, work / "checkouts", pooled=True)
    assert bad == []
    built = stage.build_environment(docker_backend, source)
    ref = stage.reference(docker_backend, built, source, ValidationConfig(reference_runs=1), LIMITS,
                          cover=stage.coverage_files(pool))
    return dict(cfg=cfg, pool=pool, ref=ref, picked=stage.pick(pool, ref, cfg), source=source, env=built,
                capped=stage.synthesize(source, cfg, work / "checkouts")[0])


def _in_tooling(candidates):
    return [c for c in candidates if c.entity.file.startswith("packaging/")]


def test_the_cap_goes_to_code_the_tests_run(picked):
    pool, ref = picked["pool"], picked["ref"]
    assert ref.passing and "tests/test_tooling.py::test_the_backend_imports" in ref.passing
    # the pool holds both kinds, the untested helpers most
    assert len(_in_tooling(pool)) > len(pool) // 2 and len(pool) > CAP
    # without the reference run the cap is drawn from the pool's seeded order, so the helpers take a share of it
    assert _in_tooling(picked["capped"]), [c.entity.file for c in picked["capped"]]
    # with it, every candidate is in code a test ran, as many as the cap
    chosen = picked["picked"]
    assert len(chosen) == CAP and not _in_tooling(chosen), [c.entity.file for c in chosen]
    assert {c.entity.file for c in chosen} == {"shapes/geometry.py"}


def test_the_cap_is_still_filled_and_balanced_when_tested_code_falls_short(picked):
    """Code no test runs is still drawn from where the tested code gives fewer candidates than the cap, after it;
    and every family the tested code offers keeps its turn."""
    pool, ref = picked["pool"], picked["ref"]
    tested = [c for c in pool if not _in_tooling([c])]
    cfg = picked["cfg"].model_copy(update={"max_candidates_per_repo": len(tested) + 3})
    chosen = stage.pick(pool, ref, cfg)
    assert len(chosen) == len(tested) + 3
    assert chosen[:len(tested)] == procedural.pick(tested, len(tested)) and len(_in_tooling(chosen[len(tested):])) == 3
    families = {c.family for c in tested}
    assert 1 < len(families) <= CAP and {c.family for c in picked["picked"]} == families


def test_a_reference_run_that_recorded_nothing_of_the_pool_leaves_the_seeded_cap(picked):
    ref = picked["ref"].model_copy(update={"coverage": {}})
    assert stage.pick(picked["pool"], ref, picked["cfg"]) == picked["capped"]


def test_line_probes_tell_the_same(picked, docker_backend):
    """With line probes in place of coverage (`validation.recorder: probe`), the probes of the lines the pool's
    selections read tell the same, and a candidate whose lines they did not record counts as run (nothing known)."""
    pool = picked["pool"]
    source, built = picked["source"], picked["env"]
    ref = stage.reference(docker_backend, built, source, ValidationConfig(reference_runs=1), LIMITS,
                          probe=probe_plan(pool))
    assert ref.probed is not None
    assert stage.pick(pool, ref, picked["cfg"]) == picked["picked"]
    unprobed = ref.model_copy(update={"probed": {f: [] for f in ref.probed}})
    assert stage.pick(pool, unprobed, picked["cfg"]) == picked["capped"]
