"""The SWE synthesis stage as plain library calls: checkout, candidates, reference run, validation,
task assembly. Errors of one item become `Quarantine` records, never exceptions that stop others."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import git

from trajfactory.executors.base import Backend, EnvironmentBuildError, EnvironmentHandle, InfrastructureError
from trajfactory.executors.pool import SandboxPool
from trajfactory.executors.testrun import IMPORT_TIME, IMPORTED_BY
from trajfactory.schema import Candidate, Quarantine, ReferenceRun, Source, Task, Validation, Verdict, quarantined
from trajfactory.settings import SandboxConfig, SynthesisConfig, ValidationConfig
from trajfactory.synthesizers.swe import procedural
from trajfactory.synthesizers.swe.procedural import generate_candidates
from trajfactory.synthesizers.swe.selection_lines import probed_enough
from trajfactory.synthesizers.swe.tasks import make_task
from trajfactory.synthesizers.swe.reference import RepoRejected, reference_run
from trajfactory.synthesizers.swe.validate import validate_candidate

STAGE = "synthesize"


def build_environment(backend: Backend, source: Source, test_requirements: list[str] | None = None,
                      ignore_tests: list[str] | None = None, test_env: dict[str, str] | None = None
                      ) -> EnvironmentHandle | Quarantine:
    """The source's sandbox environment (its image), with `test_requirements` beside the ones the project declares,
    the test paths of `ignore_tests` left out of its runs and the variables of `test_env` set for them; a repository
    that cannot be installed is quarantined."""
    try:
        return backend.build(source.path, source.name, source.commit, test_requirements=test_requirements or [],
                             ignore_tests=ignore_tests or [], test_env=test_env or {})
    except EnvironmentBuildError as exc:
        return quarantined("build", "source", source.source_id, exc.reason, f"{source.uri}: {exc.detail}", source.uri)


def checkout(source: Source, root: str | Path) -> Path:
    """A clean tree of the pinned commit (from `git archive`, so the user's tree is never touched)."""
    dest = Path(root) / f"{source.name}-{source.commit[:12]}"
    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    data = git.Repo(source.path).git.archive(source.commit, format="tar", stdout_as_string=False)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp, filter="data")
    tmp.rename(dest)
    return dest


def synthesize(source: Source, cfg: SynthesisConfig, checkout_root: str | Path, pooled: bool = False
               ) -> tuple[list[Candidate], list[Quarantine]]:
    """Procedural bug candidates for one repository, plus quarantine rows for unparseable files. With `pooled`, the
    pool the recipe's cap is taken from once the reference run is known (`pick`)."""
    tree = checkout(source, checkout_root)
    families = None if cfg.families == "all" else list(cfg.families)
    candidates, unparseable = generate_candidates(
        tree,
        source_id=source.source_id,
        repo=source.name,
        base_commit=source.commit,
        families=families,
        min_complexity=cfg.min_complexity,
        max_per_entity=cfg.max_per_entity,
        max_candidates=cfg.max_candidates_per_repo,
        seed=cfg.seed,
        pooled=pooled,
    )
    quarantine = [quarantined(STAGE, "source", f"{source.name}:{file}", "unparseable_file",
                              f"{file} does not parse ({error}); it was skipped", source.uri)
                  for file, error in unparseable]
    return candidates, quarantine


def pick(pool: list[Candidate], ref: ReferenceRun, cfg: SynthesisConfig) -> list[Candidate]:
    """The recipe's cap of procedural candidates from the pool, those in code the reference run ran first: a function
    or method any of whose body's lines ran, a class any of whose lines ran in a test or its fixtures (its `def` lines
    run whenever its module is imported). Where the run recorded no line of the pool's files, it cannot tell, and the
    cap is taken as it would be without it; so for a candidate whose lines its probes did not record (`recorder:
    probe`), which counts as run."""
    if not any(ref.coverage.get(f) for f in {c.entity.file for c in pool}):
        return procedural.pick(pool, cfg.max_candidates_per_repo)

    def ran(c: Candidate) -> bool:
        if ref.probed is not None and not probed_enough(c, ref.probed):
            return True
        lines, e = ref.coverage.get(c.entity.file, {}), c.entity
        if e.kind != "class":
            return any(n in lines for n in range(e.body_lineno or e.lineno, e.end_lineno + 1))
        return any(t != IMPORT_TIME and not t.startswith(IMPORTED_BY)
                   for n in range(e.lineno, e.end_lineno + 1) for t in lines.get(n, ()))
    return procedural.pick(pool, cfg.max_candidates_per_repo, ran)


def coverage_files(candidates: list[Candidate]) -> list[str]:
    """The files validation reads coverage of for these candidates: the changed entities' files and the files of the
    lines their attribution names (`validate.select_tests`). Measuring only them costs the reference run less (about
    a quarter less on networkx); a candidate that needs any other file runs the whole suite."""
    files: set[str] = set()
    for c in candidates:
        attribution = c.params.get("attribution") or {}
        files |= {c.entity.file, *(attribution.get("import_time") or {}), *(attribution.get("refs") or {})}
    return sorted(files)


def reference(backend: Backend, env: EnvironmentHandle, source: Source, cfg: ValidationConfig,
              limits: SandboxConfig, cover: list[str] | None = None, probe: dict[str, list[int]] | None = None
              ) -> ReferenceRun | Quarantine:
    """The reference run of the whole suite in a fresh sandbox (removed afterwards, runaways too), with coverage of
    the files `cover` names (every file when None), or line probes of the lines `probe` names."""
    sandbox = backend.start(env, limits)
    try:
        ref = reference_run(sandbox, runs=cfg.reference_runs, timeout=cfg.suite_timeout_s, cover=cover, probe=probe)
    except RepoRejected as exc:
        return quarantined("reference", "source", source.source_id, exc.reason, f"{source.uri}: {exc.detail}", source.uri)
    finally:
        sandbox.close()
    return ref.model_copy(update={"image": env.name})


def validate(pool: SandboxPool, candidate: Candidate, ref: ReferenceRun, cfg: ValidationConfig) -> Validation:
    """Validate one candidate in a warm sandbox of the pool."""
    with pool.acquire() as sandbox:
        try:
            return validate_candidate(sandbox, candidate, ref, selection=cfg.selection, timeout=cfg.test_timeout_s,
                                      timeout_factor=cfg.timeout_factor)
        except InfrastructureError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad candidate never stops the others
            return Validation(candidate_id=candidate.candidate_id, status="error", detail=f"{type(exc).__name__}: {exc}")


def tasks_from(source: Source, env: EnvironmentHandle, candidates: list[Candidate],
               validations: list[Validation]) -> list[Task]:
    """Tasks of the valid candidates, one per distinct bug (first candidate wins)."""
    by_id = {c.candidate_id: c for c in candidates}
    tasks: dict[str, Task] = {}
    for v in validations:
        if v.status == "valid":
            task = make_task(by_id[v.candidate_id], v, source, env.name, env.python)
            tasks.setdefault(task.task_id, task)
    return list(tasks.values())


def accept_proven(tasks: list[Task], gold: list[Verdict], source: Source) -> tuple[list[Task], list[Quarantine]]:
    """Keep the tasks whose gold patch passed its own checks; quarantine the rest with the evidence."""
    accepted, rejected = [], []
    for task, verdict in zip(tasks, gold):
        if verdict.passed:
            accepted.append(task)
        else:
            ev = verdict.evidence
            bad = [f"{o.test} ({o.outcome})" for o in ev.FAIL_TO_PASS + ev.PASS_TO_PASS if o.outcome != "passed"]
            named = f"; not passed: {', '.join(bad[:3])}" + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            why = ("; each of them passed on the clean repository in the whole-suite reference run, and the gold patch "
                   "restores that code: a test that passes there and fails run by its id depends on the tests that "
                   "ran before it, or on the machine (its load, the time), not on the fix") if bad else ""
            rejected.append(quarantined("verify-gold", "task", task.task_id, "gold_failed",
                                        f"the gold patch does not pass the task's own checks: {ev.detail}"
                                        f"{named if bad else ''}{why}", source.uri))
    return accepted, rejected
