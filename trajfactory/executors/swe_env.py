"""The SWE environment: a repository sandbox (Docker or bubblewrap) in a task's buggy state, with bash/edit/submit.

    with SweEnvironments(backend, handle, sandbox_config) as envs:      # a thread pool and every sandbox it starts
        episode = run_episode_sync(envs(task), OraclePolicy(), task)
        verdict = envs(task).evaluate_sync(task, episode.trajectory)   # a fresh sandbox runs the task's tests

`reset` starts a fresh sandbox and puts it in the task's starting state: the bug applied and the git
history reduced to one commit, so the bug cannot be read back from `git log`. `step` executes one tool
call; `evaluate` tests the trajectory's final patch in another fresh sandbox (FAIL_TO_PASS and
PASS_TO_PASS, judged by `verifiers/tests.py`). Sandboxes start and close in worker threads, and
`SweEnvironments` closes every sandbox it started when its block ends, also when an episode was cancelled
in the middle of a start.
"""

from __future__ import annotations

import asyncio
import posixpath
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from trajfactory.executors.base import Backend, EnvironmentHandle, ExecResult, Sandbox, SandboxError, apply_patch
from trajfactory.executors.batchrun import BatchItem, ItemResult, run_batch
from trajfactory.executors.episode import run_episode_sync
from trajfactory.executors.protocol import Start, Transition
from trajfactory.executors import guard
from trajfactory.executors.canaries import outcome_of, uncollected, write_canaries
from trajfactory.executors.swe_tools import execute_call
from trajfactory.executors.testrun import run_tests, summarize
from trajfactory.executors.twins import name_bound, write_twins
from trajfactory.schema import (SWE_SYSTEM_PROMPT, SWE_TOOLS as TOOLS, Checks, Evidence, Final, Message, Task, ToolCall,
                                Trajectory, Verdict)
from trajfactory.settings import EpisodeLimits, SandboxConfig
from trajfactory.verifiers import tests as test_verifier

RETRY_PROMPT = "Please call one of the tools (bash, edit, submit)."
BUG_PATH = "/tmp/trajfactory-task.diff"
SYSTEM_PROMPT = SWE_SYSTEM_PROMPT

def only_commit(sandbox: Sandbox, message: str, force: list[str] | None = None) -> ExecResult:
    """Make the checkout as it stands the repository's one commit: the history goes (`rm -rf .git`), so nothing
    run in the sandbox can read the clean code from it (`git show HEAD~1:FILE`, `git checkout HEAD~1 -- .`). The
    backends see git's metadata changed and give the next `reset` a fresh checkout. `force`: paths committed even
    where the project's ignore rules would leave them out."""
    forced = f" && git add -f -- {' '.join(shlex.quote(p) for p in force)}" if force else ""
    return sandbox.execute(
        "rm -rf .git && git init -q "
        # Build artefacts never belong in a submitted patch.
        "&& printf '__pycache__/\\n*.pyc\\n.pytest_cache/\\n.coverage\\n' >> .git/info/exclude && git add -A"
        f"{forced} "
        "&& git -c core.hooksPath=/dev/null -c user.name=trajfactory -c user.email=trajfactory@localhost "
        f"commit -qm {message} --no-verify --allow-empty",
        timeout=120,
    )


def prepare_episode(sandbox: Sandbox, task: Task) -> None:
    """Put the sandbox in the task's starting state: bug applied, history reduced to one commit."""
    sandbox.reset()
    if (err := apply_patch(sandbox, task.bug_patch, BUG_PATH)) is not None:
        raise SandboxError(f"task {task.task_id}: the bug patch does not apply: {err[-500:]}")
    res = only_commit(sandbox, "initial")
    if res.exit_code != 0:
        raise SandboxError(f"task {task.task_id}: the starting state could not be committed: {res.output[-500:]}")


# ---------------------------------------------------------------- verification: the harness's side


def run_patch_tests(sandbox: Sandbox, task: Task, patch: str, *, timeout: float = 300.0,
                    checks: Checks | None = None) -> tuple[bool, Any, float]:
    """`patch` applied on top of the task's buggy state in `sandbox` (fresh or reset), guarded and tested against
    `checks` (the task's own by default): (passed, evidence, seconds). `guard.py` says what a patch may not do;
    `verifiers.tests` judges the outcomes."""
    started = time.monotonic()
    sandbox.reset()
    if (err := apply_patch(sandbox, task.bug_patch, "/tmp/trajfactory-bug.diff")) is not None:
        return test_verifier.not_applied(f"the task's bug patch does not apply: {err[-500:]}", started)
    return test_in_place(sandbox, checks or task.checks, patch, task.bug_patch, timeout=timeout, started=started,
                         gold=task.gold.patch)


def test_in_place(sandbox: Sandbox, checks: Checks, patch: str, bug_patch: str, *, timeout: float = 300.0,
                  started: float | None = None, gold: str | None = None) -> tuple[bool, Any, float]:
    """`patch` applied on the buggy state the sandbox's checkout holds, guarded, and `checks` run:
    (passed, evidence, seconds). `bug_patch`: the change that made the buggy state (the modules of its files get
    canary tests, and what its removed lines referred to a fix may put back: `guard.removed_references`).

    The buggy state, with the canary tests (`canaries.write_canaries`) among its files, first becomes the repository's
    only commit (`only_commit`): it is the baseline the tampering scan compares with (empty for a task with no bug: a
    no-op task), the clean code in the history, which code the patch adds could restore at import, is gone, and git
    cannot tell the canaries from the project's own tests. The failing tests' own file first gets twins and mutants
    of those tests and canaries (`twins.write_twins`, `mutants.py`), committed with it. With `gold` (the task's own
    fix), a twin that failed, or a mutant that passed, beside its passing original is tried once more under that fix
    (`twins.name_bound`), and one that does so there too is not held against the patch: its test depends on its own
    name or place (the evidence says so)."""
    started = time.monotonic() if started is None else started
    tests = test_verifier.tests_of(checks)
    # the task's own test files, whatever their names, unless the bug itself is in one (an external bug's patch)
    kept, reverted = guard.strip_protected(patch, guard.suite_files(tests) - set(guard.paths_of(bug_patch)))
    modules = sorted({m for p in guard.paths_of(kept) + guard.paths_of(bug_patch) if (m := guard.module_of(p))})
    twins = write_twins(sandbox, checks.FAIL_TO_PASS)
    canaries = write_canaries(sandbox, modules, beside=tests[0].split("::", 1)[0] if tests else "")
    commit = only_commit(sandbox, "initial", force=[canaries.path, *(c.path for c in twins.canaries), *twins.files])
    if commit.exit_code != 0:
        return test_verifier.not_applied(f"the buggy state could not be committed: {commit.output[-300:]}", started)
    if (err := apply_patch(sandbox, kept, "/tmp/trajfactory-final.diff")) is not None:
        return test_verifier.not_applied(f"the submitted patch does not apply: {err[-500:]}", started, reverted)
    if refused := guard.scan_tampering(sandbox, bug_patch=bug_patch):
        return test_verifier.refused(refused, reverted, started)
    run = run_tests(sandbox, tests + canaries.ids + twins.ids, timeout=timeout, last=twins.ids)
    if run.timed_out:
        return test_verifier.not_applied(f"tests did not finish within {timeout:.0f}s", started, reverted)
    if run.results_error:  # the record was changed after the harness wrote it, or cannot be read
        return test_verifier.refused([run.results_error], reverted, started)
    if not run.sealed:
        return test_verifier.not_applied("the test session ended before the harness sealed its record (a crash or an "
                                         f"early exit, exit status {run.exit_code})", started, reverted)
    reached = guard.run_time_reaches(run.reaches, kept, bug_patch)
    silent = [c for c in [canaries, *twins.canaries]
              if c.ids and all(outcome_of(t, run.outcomes) == "missing" for t in c.ids)]
    excused = uncollected(sandbox, bug_patch, silent, timeout) if silent else set()
    if excused:  # the sandbox was reset: what follows reads the run's outcomes, and `name_bound` resets it again
        canaries = canaries.without(excused)
        twins.canaries = [c.without(excused) for c in twins.canaries]
    broken = [f"canary test {b}" for b in canaries.broken(run.outcomes)] + reached
    bound, loose = [], []  # tried only where nothing else refuses; the sandbox is done with by now
    apart, fooled = twins.told_apart(run.outcomes), twins.mutants_passed(run.outcomes)
    if not broken and gold is not None and (apart or fooled):
        bound, loose = (apart, fooled) if patch == gold else name_bound(
            sandbox, bug_patch, gold, sorted(set(apart) | set(fooled)), timeout, alongside=tests, pairs=twins.pairs,
            mutants=twins.mutants)
    if broken := broken + twins.broken(run.outcomes, bound, loose):
        return test_verifier.refused(broken, reverted, started)
    outcomes = {t: run.outcomes.get(t, "missing") for t in tests}
    passed, evidence = test_verifier.judge_outcomes(checks, outcomes, summarize(outcomes))
    evidence.reverted = reverted
    if excused:
        folders = sorted({posixpath.dirname(t.split("::", 1)[0]) or "." for t in excused})
        evidence.detail += (f"; {len(excused)} canary tests not counted: the project does not collect plain tests in "
                            f"{', '.join(folders)} (its own collection), under the buggy state either")[:1000]
    if loose:
        evidence.detail += (f"; mutants not counted for {', '.join(loose)}: they pass under the task's own fix too (the "
                            "tests depend on their names or place, or on an equality that holds for both values)")[:1000]
    if bound:
        evidence.detail += (f"; twins not counted for {', '.join(bound)}: they fail under the task's own fix too (the "
                            "tests depend on their names or place)")[:1000]
    return passed, evidence, time.monotonic() - started


def verify_trajectory(sandbox: Sandbox, task: Task, trajectory: Trajectory, *, timeout: float = 300.0) -> Verdict:
    """The test verdict of a trajectory's final patch (not submitted: failed, whatever the tests say)."""
    return test_verifier.trajectory_verdict(task, trajectory, *run_patch_tests(sandbox, task, trajectory.final.patch,
                                                                           timeout=timeout))


def verify_gold(sandbox: Sandbox, task: Task, *, timeout: float = 300.0) -> Verdict:
    """Prove the task's gold patch passes its own checks (those the bug's change reached: `tests.gold_checks`)."""
    return test_verifier.gold_verdict(task, *run_patch_tests(sandbox, task, task.gold.patch, timeout=timeout,
                                                             checks=test_verifier.gold_checks(task)))


def verify_gold_batch(sandbox: Sandbox, tasks: list[Task], *, timeout: float = 300.0,
                      costs: list | None = None, share: bool = True) -> list[Verdict]:
    """`verify_gold` for many tasks in one warm test worker (`batchrun.run_batch`), the verdicts in task order. Each
    task's bug patch and then its gold patch are applied, and the worker requires the checkout to be exactly its clean
    commit again (`git status` empty): a gold patch that leaves any other change fails here, so the tampering scan and
    canaries of a submitted patch have nothing to find. The `gold_checks` then run in the worker's collected session,
    as validation runs its candidates, without a pytest start and collection per task.

    With `share`, each test runs once per batch, in the first proof that wants it (`tests.share_tests`): every proof's
    checkout is the same clean commit, so a test's outcome is the clean repository's whichever proof ran it, and a
    test that many tasks reached costs one run instead of one per task. A proof left with no test to run only checks
    its patches. A task whose shared tests got no outcome from the proof that ran them (its patches did not apply, it
    timed out or died) is proven again with all its own tests. `costs`, where given, gets each batch's `BatchInfo`
    and each item's CPU breakdown (`ItemResult.stats`), for the bench."""
    checks = [test_verifier.gold_checks(task) for task in tasks]
    wanted = [test_verifier.tests_of(c) for c in checks]
    results = _gold_runs(sandbox, tasks, test_verifier.share_tests(wanted) if share else wanted, timeout, costs)
    pool: dict[str, str] = {}
    for result in results:
        if result.run is not None and not result.run.timed_out:
            pool.update(result.run.outcomes)
    sources = [pool] * len(tasks)
    again = [i for i, result in enumerate(results) if share and result.run is not None and not result.run.timed_out
             and any(t not in pool for t in wanted[i])]
    if again:
        retried = _gold_runs(sandbox, [tasks[i] for i in again], [wanted[i] for i in again], timeout, costs)
        for i, result in zip(again, retried):
            results[i] = result
            sources[i] = result.run.outcomes if result.run is not None else {}
    verdicts = []
    for task, task_checks, tests, result, source in zip(tasks, checks, wanted, results, sources):
        run = result.run
        if run is None:
            passed, evidence = False, Evidence(detail=f"gold proof: {result.patch_error} (the first patch: the task's "
                                                      "bug patch; the second: its gold patch)"[:2000])
        elif run.timed_out:
            passed, evidence = False, Evidence(detail=f"tests did not finish within {timeout:.0f}s")
        else:
            outcomes = {t: source.get(t, "missing") for t in tests}
            passed, evidence = test_verifier.judge_outcomes(task_checks, outcomes, summarize(outcomes))
        verdicts.append(test_verifier.gold_verdict(task, passed, evidence, run.duration_s if run else 0.0))
    return verdicts


def _gold_runs(sandbox: Sandbox, tasks: list[Task], tests: list[list[str]], timeout: float,
               costs: list | None) -> list[ItemResult]:
    """One worker's run of the tasks' bug + gold patches, each item running the given tests."""
    items = [BatchItem(key=task.task_id, patch=task.bug_patch, then=task.gold.patch, timeout=timeout, hot=True,
                       tests=own) for task, own in zip(tasks, tests)]
    results, info = run_batch(sandbox, items)
    if costs is not None:
        costs.append((info, [r.stats for r in results]))
    return results


# ---------------------------------------------------------------- the environment


class SweEnvironments:
    """Makes SWE environments (`envs(task)`) that share a thread pool; closes every sandbox they start on exit.

    `handles`: the built environment of each repository (by name), or one for all tasks.
    """

    def __init__(self, backend: Backend, handles: EnvironmentHandle | dict[str, EnvironmentHandle],
                 sandbox: SandboxConfig | None = None, concurrency: int = 1):
        self.backend, self.sandbox = backend, sandbox or SandboxConfig()
        self._handles = handles
        # Own threads, two per episode (a command cut off by cancellation, and the close), so nothing queues.
        self._executor = ThreadPoolExecutor(max_workers=2 * concurrency + 1, thread_name_prefix="trajfactory-sandbox")
        self._alive: list[Sandbox] = []
        self._lock = threading.Lock()
        self._closed = False
        self.started = 0

    def handle(self, task: Task) -> EnvironmentHandle:
        if isinstance(self._handles, EnvironmentHandle):
            return self._handles
        return self._handles[task.environment.repo]

    def __call__(self, task: Task) -> "SweEnvironment":
        return SweEnvironment(self, self.handle(task))

    async def offload(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def start(self, handle: EnvironmentHandle) -> Sandbox:
        """A fresh sandbox (in a worker thread); one that finishes starting after `close_all` is closed at once."""
        sandbox = self.backend.start(handle, self.sandbox)
        with self._lock:
            late = self._closed
            if not late:
                self._alive.append(sandbox)
                self.started += 1
        if late:
            sandbox.close()
            raise RuntimeError("the environments were closed while a sandbox started")
        return sandbox

    def close(self, sandbox: Sandbox) -> None:
        sandbox.close()
        with self._lock:  # forgotten only once closed: close_all still reaches a close cut short
            if sandbox in self._alive:
                self._alive.remove(sandbox)

    def close_all(self) -> None:
        """Close every sandbox still alive, in parallel; blocking on purpose, so it finishes under cancellation."""
        with self._lock:
            self._closed = True
            sandboxes, self._alive = self._alive, []

        def close(sandbox: Sandbox) -> None:
            try:
                sandbox.close()
            except Exception:  # noqa: BLE001 - closing must reach every sandbox
                pass

        threads = [threading.Thread(target=close, args=(s,)) for s in sandboxes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "SweEnvironments":
        return self

    def __exit__(self, *exc) -> None:
        self.close_all()


class SweEnvironment:
    """One episode's sandbox: the `Environment` of SWE tasks (observations are the last tool output)."""

    ids_hash_actions = False

    def __init__(self, envs: SweEnvironments, handle: EnvironmentHandle):
        self.envs, self.handle = envs, handle
        self.sandbox: Sandbox | None = None

    async def reset(self, task: Task) -> Start[str]:
        await self.close()
        self.sandbox = await self.envs.offload(self.envs.start, self.handle)
        await self.envs.offload(prepare_episode, self.sandbox, task)
        return Start(system_prompt=SYSTEM_PROMPT, messages=[Message(role="user", content=task.instruction)],
                     tools=TOOLS, observation="", retry_prompt=RETRY_PROMPT)

    async def step(self, call: ToolCall, timeout: float | None = None) -> Transition[str]:
        if self.sandbox is None:
            raise SandboxError("step before reset: call reset(task) first")
        limit = self.envs.sandbox.command_timeout_s
        limit = limit if timeout is None else min(limit, timeout)
        step, message, finished, patch = await self.envs.offload(execute_call, self.sandbox, call, limit)
        if not finished:
            return Transition(step=step, messages=[message], observation=step.observation)
        submitted = step.exit_code == 0
        return Transition(step=step, messages=[message], observation=step.observation, done=True,
                          exit_status="submitted" if submitted else "submit_failed",
                          final=Final(patch=patch if submitted else ""))

    def _evaluate(self, task: Task, trajectory: Trajectory, timeout: float) -> Verdict:
        sandbox = self.envs.start(self.handle)
        try:
            return verify_trajectory(sandbox, task, trajectory, timeout=timeout)
        finally:
            self.envs.close(sandbox)

    async def evaluate(self, task: Task, trajectory: Trajectory, timeout: float = 300.0) -> Verdict:
        """The tests' verdict on the trajectory's final patch, in a fresh sandbox (the episode's may be tampered with)."""
        return await self.envs.offload(self._evaluate, task, trajectory, timeout)

    def evaluate_sync(self, task: Task, trajectory: Trajectory, timeout: float = 300.0) -> Verdict:
        return self._evaluate(task, trajectory, timeout)

    async def close(self) -> None:
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None:
            await self.envs.offload(self.envs.close, sandbox)


def run_swe_episode(task: Task, policy: Any, backend: Backend, handle: EnvironmentHandle,
                    sandbox: SandboxConfig | None = None, *, max_steps: int = 20, sample: int = 0) -> Trajectory:
    """One episode of `policy` on `task` in a fresh sandbox of `handle` (closed afterwards)."""
    with SweEnvironments(backend, handle, sandbox) as envs:
        return run_episode_sync(envs(task), policy, task, sample=sample,
                                limits=EpisodeLimits(max_steps=max_steps)).trajectory
