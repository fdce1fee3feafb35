"""The sandbox's Python, chosen by the recipe (`sandbox.python`): Debian bookworm's 3.11 by default, trixie's 3.13 for
projects whose releases need a newer one (networkx 3.7 and Django 6 need 3.12, Sphinx 9.2 needs 3.13). `@latest` takes
the releases the chosen Python supports, and a real package is mined on 3.13 the way it is on 3.11: its image, its
own suite, the batch worker's verdicts against the one-candidate path and the whole suite's, and the adversarial
battery refused as on 3.11. Bad choices fail naming the setting and the choices."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from gaming_patches import SHAPED
from pypi_index_server import PackageIndex
from test_pypi_latest import NAME, publish
from trajfactory import executors
from trajfactory.executors.images import BASE_IMAGE, BASE_SUITES, base_image_tag, base_suite, ensure_base_image
from trajfactory.pipelines.swe import resolve_repos
from trajfactory.schema import Quarantine, Source
from trajfactory.settings import Recipe, SandboxConfig, SynthesisConfig, ValidationConfig
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.validate import validate_batch, validate_candidate

LIMITS = SandboxConfig(memory="512m", cpus=1, pids=256, command_timeout_s=120)


def test_a_python_no_image_offers_fails_naming_the_choices():
    with pytest.raises(ValidationError, match=r"python[\s\S]*'3\.9', '3\.11' or '3\.13'"):
        SandboxConfig(python="3.12")
    assert [SandboxConfig(python=v).python for v in BASE_SUITES] == list(BASE_SUITES)  # the recipe offers every image
    assert SandboxConfig(python=3.13).python == "3.13"  # YAML's `python: 3.13` is a number
    with pytest.raises(ValidationError, match=r"'3\.1'"):  # `python: 3.10` reads as 3.1: named as it was read
        SandboxConfig(python=3.10)
    offered = r"3\.9 \(Debian bullseye\), 3\.11 \(Debian bookworm\), 3\.13 \(Debian trixie\)"
    with pytest.raises(ValueError, match=r"no sandbox image offers Python '3\.12': use one of " + offered):
        base_image_tag("3.12")
    with pytest.raises(ValueError, match="not a base image this factory builds"):
        base_suite("trajfactory/base:sid-py3")
    assert base_image_tag() == BASE_IMAGE == "trajfactory/base:bookworm-py3"
    assert base_suite(base_image_tag("3.13")) == "trixie"


def test_the_local_backend_refuses_a_python_it_does_not_run():
    from trajfactory.executors.local import host_python

    other = "3.13" if host_python() != "3.13" else "3.11"
    with pytest.raises(ValidationError, match=rf"sandbox\.python '{other}' needs backend: docker; the local backend "
                                              rf"runs this machine's Python {host_python()}"):
        SandboxConfig(backend="local", python=other)
    with pytest.raises(ValueError, match=rf"sandbox\.python '{other}': the local sandbox backend runs this machine's "
                                         rf"Python {host_python()}; another Python needs the docker backend"):
        executors.get_backend("local", other)
    assert SandboxConfig(backend="local", python=host_python()).python == host_python()


def _backend(python: str):
    """The Docker backend whose sandboxes run `python` (its base image built once, then cached)."""
    from trajfactory.executors.docker import DockerBackend, engine_available

    if not engine_available():
        pytest.fail("no Docker engine answers; scripts/setup.sh starts dockerd")
    ensure_base_image(base_image_tag(python))
    return DockerBackend(base_image=base_image_tag(python), labels={"trajfactory.test": uuid.uuid4().hex})


@pytest.fixture(scope="module")
def py313():
    """Sandboxes of Debian trixie's Python 3.13."""
    return _backend("3.13")


@pytest.mark.docker
def test_latest_takes_the_releases_the_recipes_python_supports(py313, monkeypatch, tmp_path):
    assert py313.python_version().startswith("3.13.")
    assert executors.get_backend("docker", "3.13").base_image == base_image_tag("3.13")
    with PackageIndex() as index:
        monkeypatch.setenv("PIP_INDEX_URL", index.url)
        publish(index, "1.0", requires_python=">=3.9")
        publish(index, "2.0", requires_python=">=3.12")  # as networkx 3.7 and Django 6 say
        repos = [{"uri": f"pypi:{NAME}@latest:1"}]
        on_313, bad = resolve_repos(Recipe(work_dir=str(tmp_path), repos=repos, sandbox={"python": "3.13"}))
        on_311, _ = resolve_repos(Recipe(work_dir=str(tmp_path), repos=repos, sandbox={"backend": "docker"}))
    assert (on_313, bad, on_311) == ([f"pypi:{NAME}==2.0"], [], [f"pypi:{NAME}==1.0"])


@pytest.mark.docker
def test_a_real_package_is_mined_on_python_313(py313, mirrors, tmp_path):
    """isodate 0.7.2 (its own suite of 280 tests) on 3.13: the image installs the project and its suite passes there;
    the batch worker (its preloads, line probes, swapped code) agrees with the one-candidate path and, for the valid
    ones, with the whole suite; the image is another than 3.11's, so the two never share a cached environment."""
    source = harvest_repo("pypi:isodate==0.7.2", mirrors)
    assert isinstance(source, Source), source
    env = stage.build_environment(py313, source)
    assert not isinstance(env, Quarantine), env
    assert env.name != stage.build_environment(executors.get_backend("docker"), source).name
    candidates, _ = stage.synthesize(source, SynthesisConfig(max_candidates_per_repo=10, seed=0), tmp_path / "co")
    ref = stage.reference(py313, env, source, ValidationConfig(), LIMITS)
    assert not isinstance(ref, Quarantine), ref
    assert len(ref.passing) > 200  # isodate's own suite, run on 3.13
    with py313.start(env, LIMITS) as sandbox:
        ran = sandbox.execute("python --version && python -c 'import isodate, sys; print(isodate.__file__)'")
        one = [validate_candidate(sandbox, c, ref) for c in candidates]
        batched = validate_batch(sandbox, candidates, ref)
        full = validate_batch(sandbox, candidates, ref, selection="full")
    assert ran.output.startswith("Python 3.13.") and "/repo/" in ran.output, ran.output
    valid = [v for v in one if v.status == "valid"]
    assert len(valid) >= 3, [(v.candidate_id, v.status, v.detail) for v in one]
    for a, b, w in zip(one, batched, full):
        assert (a.status, a.FAIL_TO_PASS, a.PASS_TO_PASS) == (b.status, b.FAIL_TO_PASS, b.PASS_TO_PASS), a.candidate_id
        assert (a.status == "valid") == (w.status == "valid"), a.candidate_id
        if a.status == "valid":
            assert a.FAIL_TO_PASS == w.FAIL_TO_PASS, a.candidate_id


@pytest.mark.docker
def test_the_gaming_battery_is_refused_on_python_313(py313, mirrors, tmp_path):
    """Verification on 3.13 is the verification on 3.11: every patch of the adversarial battery (conftest hooks,
    plugins, exits at import, monkeypatched assertions, forged records, the shape forgery, ...) is refused or fails,
    each by the layer that stops it on 3.11 (`test_verification_guard`), on a real isodate task mined on 3.13."""
    import test_verification_guard as guard  # its module, not its tests: they are collected there, not here

    source = harvest_repo("pypi:isodate==0.7.2", mirrors)
    env = stage.build_environment(py313, source)
    candidates, _ = stage.synthesize(source, SynthesisConfig(max_candidates_per_repo=8), tmp_path / "co")
    ref = stage.reference(py313, env, source, ValidationConfig(reference_runs=1), guard.LIMITS)
    with py313.start(env, guard.LIMITS) as sandbox:
        validations = validate_batch(sandbox, candidates, ref)
    tasks = [t for t in stage.tasks_from(source, env, candidates, validations) if t.entity.kind != "class"]
    assert tasks, [(v.status, v.detail) for v in validations]
    # the task row says which Python its verdicts hold for; a handle made from the row keeps it
    assert env.python == py313.python_version() and {t.environment.python for t in tasks} == {env.python}
    guard.test_gold_passes_and_empty_fails_under_the_guard(py313, (tasks[0], env))
    guard.test_every_gaming_patch_is_refused(py313, (tasks[0], env))


@pytest.fixture(scope="module")
def py39():
    """Sandboxes of Debian bullseye's Python 3.9, the last that pytest 5 runs on."""
    return _backend("3.9")


@pytest.mark.docker
def test_a_suite_pinned_to_pytest_5_is_mined_and_verified_on_python_39(py39, mirrors, tmp_path):
    """html5lib 1.1 pins `pytest<6` (its conftest builds nodes the way only pytest 5 lets it), and pytest 5 runs on no
    Python after 3.9: on 3.11 it was `pytest_error`. On 3.9 its suite runs through the factory's own command (the
    harness accepts pytest 6's `--no-header` there) and tasks are mined from it (`bench/RESULTS.md`: its 33,000 tests
    take minutes). Here isodate 0.7.2 with the recipe's `test_requirements: ["pytest<6"]` stands for it: the image
    on Debian bullseye (pip 20.3, whose `sysconfig` names no site directory that exists), pytest 5.4 in it, the batch
    worker's verdicts equal to the one-candidate path's, and a task's gold patch verified, its empty patch failed and
    every patch of the adversarial battery refused, under pytest 5 (one of them by other layers than on 3.11)."""
    import test_verification_guard as guard

    source = harvest_repo("pypi:isodate==0.7.2", mirrors)
    assert isinstance(source, Source), source
    env = stage.build_environment(py39, source, ["pytest<6"])
    assert not isinstance(env, Quarantine), env
    candidates, _ = stage.synthesize(source, SynthesisConfig(max_candidates_per_repo=8, seed=0), tmp_path / "co")
    ref = stage.reference(py39, env, source, ValidationConfig(reference_runs=1), LIMITS)
    assert not isinstance(ref, Quarantine), ref
    assert len(ref.passing) > 200
    with py39.start(env, LIMITS) as sandbox:
        ran = sandbox.execute("python --version && python -m pytest --version")
        one = [validate_candidate(sandbox, c, ref) for c in candidates]
        batched = validate_batch(sandbox, candidates, ref)
    assert "Python 3.9." in ran.output and "pytest version 5." in ran.output, ran.output
    assert [(v.status, v.FAIL_TO_PASS, v.PASS_TO_PASS) for v in one] == \
        [(v.status, v.FAIL_TO_PASS, v.PASS_TO_PASS) for v in batched]
    tasks = [t for t in stage.tasks_from(source, env, candidates, batched) if t.entity.kind != "class"]
    assert len(tasks) >= 2, [(v.status, v.detail) for v in batched]
    assert tasks[0].environment.python.startswith("3.9.")
    guard.test_gold_passes_and_empty_fails_under_the_guard(py39, (tasks[0], env))
    results = guard.battery_results(py39, (tasks[0], env))  # none verified, each stopped
    # Python 3.9 raises no audit event for the garbage collector's listing (3.10 does), so the harness's audit hook
    # cannot see the forgery that lists it, aimed past the scan at the failing tests' file: the canary class in that
    # file and the failing tests' mutants refuse it instead
    aimed = results["the failing tests' records forged in place past the scan, the canaries left alone"][1]
    assert aimed.refused and all(r.startswith(("canary test ", "mutant test ")) for r in aimed.refused), aimed
    shaped = results[SHAPED][1]
    assert shaped.refused and all(r.startswith("mutant test ") for r in shaped.refused), shaped
