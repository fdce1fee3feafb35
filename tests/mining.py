"""Mining a real package the way the pipeline does, for the tests: harvest, image, synthesis, reference run,
validation, tasks and their gold proofs (`mine`), with every step's result checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trajfactory.executors.base import EnvironmentHandle
from trajfactory.executors.pool import SandboxPool
from trajfactory.executors.swe_env import verify_gold, verify_gold_batch
from trajfactory.schema import Candidate, ReferenceRun, Source, Task, Validation, Verdict
from trajfactory.settings import SandboxConfig, SynthesisConfig, ValidationConfig
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.stage import build_environment

LIMITS = SandboxConfig(memory="2g", cpus=1, pids=256, command_timeout_s=300)
QUICK = ValidationConfig(reference_runs=1, suite_timeout_s=400, test_timeout_s=300)


@dataclass
class Mined:
    source: Source
    env: EnvironmentHandle
    ref: ReferenceRun
    validations: list[Validation]
    tasks: list[Task]
    verdicts: list[Verdict]
    checkout: Path

    def outcome(self, test: str) -> set[str]:
        """The outcomes the gold proofs recorded for `test` (over every task that checks it)."""
        return {o.outcome for v in self.verdicts for o in [*v.evidence.FAIL_TO_PASS, *v.evidence.PASS_TO_PASS]
                if o.test == test}

    def checked(self) -> set[str]:
        return {t for task in self.tasks for t in [*task.checks.FAIL_TO_PASS, *task.checks.PASS_TO_PASS]}

    def failing(self) -> set[str]:
        return {t for task in self.tasks for t in task.checks.FAIL_TO_PASS}


def pick(candidates: list[Candidate], files: tuple[str, ...], n: int) -> list[Candidate]:
    """`n` function-scope candidates in `files`, one per entity first (round robin over the files)."""
    by_file = {f: [c for c in candidates if c.entity.file == f and c.scope == "function"] for f in files}
    picked: list[Candidate] = []
    seen: set[tuple[str, str]] = set()
    for _ in range(n):
        for f in files:
            fresh = [c for c in by_file[f] if (c.entity.file, c.entity.name) not in seen and c not in picked]
            if fresh and len(picked) < n:
                picked.append(fresh[0])
                seen.add((f, fresh[0].entity.name))
    return picked


def mine(backend, mirrors: Path, tmp_path: Path, uri: str, files: tuple[str, ...], n: int = 4,
         cfg: ValidationConfig = QUICK, every_check: bool = False, single: bool = False,
         ignore_tests: list[str] | None = None, test_env: dict[str, str] | None = None) -> Mined:
    """The package mined with `n` candidates in `files`; every gold proof must pass. `every_check`: the gold proofs
    run every check of each task by its id (as when the reference run could not show that ids round-trip), not only
    the tests the bug's change reached. `single`: each task's gold patch also passes the verifier's own path
    (`verify_gold`: the failing tests' twins and canaries beside them in their file, `executors/twins.py`).
    `ignore_tests`: the recipe's test paths left out of every run; `test_env`: its variables for them."""
    source = harvest_repo(uri, mirrors)
    assert isinstance(source, Source), source
    env = build_environment(backend, source, ignore_tests=ignore_tests, test_env=test_env)
    assert isinstance(env, EnvironmentHandle), env
    found, _ = stage.synthesize(source, SynthesisConfig(max_candidates_per_repo=2000, seed=1), tmp_path / "co")
    candidates = pick(found, files, n)
    assert len(candidates) == n, sorted({c.entity.file for c in found})
    ref = stage.reference(backend, env, source, cfg, LIMITS)
    assert isinstance(ref, ReferenceRun), ref
    # the passing tests were selected again by their ids (collected, or run with `reference_runs: 2`); every id
    # of the package selected its test
    assert ref.by_id and not [t for t, why in ref.excluded.items() if why.startswith("missing")], ref.excluded
    with SandboxPool(backend, env, size=1, limits=LIMITS) as pool:
        validations = [stage.validate(pool, c, ref, cfg) for c in candidates]
    tasks = stage.tasks_from(source, env, candidates, validations)
    assert tasks, [(v.status, v.detail) for v in validations]
    proved = [t.model_copy(update={"validation": t.validation.model_copy(update={"reached": []})})
              for t in tasks] if every_check else tasks
    with backend.start(env, LIMITS) as sandbox:  # as the pipeline proves them: in one warm test worker
        verdicts = verify_gold_batch(sandbox, proved, timeout=cfg.suite_timeout_s)
    # every validated task's gold patch passes its own checks: nothing the harness caused fails a gold proof
    assert [v.evidence for v in verdicts if not v.passed] == []
    if single:
        with backend.start(env, LIMITS) as sandbox:
            alone = [verify_gold(sandbox, task, timeout=cfg.suite_timeout_s) for task in tasks]
        assert [v.evidence for v in alone if not v.passed or v.evidence.refused] == []
    checkout = stage.checkout(source, tmp_path / "co")
    return Mined(source, env, ref, validations, tasks, verdicts, checkout)


def in_sandbox(backend, env: EnvironmentHandle, command: str) -> str:
    with backend.start(env, LIMITS) as sandbox:
        result = sandbox.execute(command, timeout=120)
    assert result.exit_code == 0, result.output
    return result.output


