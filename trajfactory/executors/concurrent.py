"""Concurrent rollouts: many episodes in flight over a pool of sandboxes, sharing one model server.

The event loop drives the policies (a served model's requests are awaited, so the server stays
busy) while every sandbox call runs in a worker thread. `run_episodes` bounds the episodes (and so
the sandboxes) in flight, runs several samples per task, and closes every sandbox it started when
it returns, fails or is cancelled (Ctrl-C included). Each episode reports where its time went:
waiting on the model, in sandbox commands, and the harness's own overhead (the rest).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field

from trajfactory.agents.base import EpisodeLimits, Policy, PolicyError
from trajfactory.agents.tools import TOOLS
from trajfactory.executors.base import Backend, EnvironmentHandle, Sandbox, SandboxLimits
from trajfactory.executors.rollout import SYSTEM_PROMPT, execute_call, prepare_episode
from trajfactory.schema import Final, Message, Policy as PolicyInfo, Step, Task, Trajectory, Usage
from trajfactory.schema import content_hash

log = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 20
"""Step limit when neither the caller nor the policy sets one (the sync `rollout` default)."""
Offload = Callable[..., Awaitable[Any]]


class _Stats(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TurnTiming(_Stats):
    """Where one agent turn (one `act` and the actions it asked for) spent its wall time."""

    model_s: float = 0.0
    """Awaiting the policy: the model request, queueing behind the client's concurrency bound included."""
    sandbox_s: float = 0.0
    """Running the turn's actions in the sandbox (measured in the worker thread)."""
    overhead_s: float = 0.0
    """The rest: the harness's own work, thread hand-offs and event-loop contention."""


class EpisodeStats(_Stats):
    trajectory_id: str
    task_id: str
    sample: int
    exit_status: str = ""
    setup_s: float = 0.0
    """Getting a sandbox (a start, or a warm one) and putting it in the task's starting state."""
    model_s: float = 0.0
    sandbox_s: float = 0.0
    overhead_s: float = 0.0
    loop_s: float = 0.0
    """Wall time of the agent loop: model_s + sandbox_s + overhead_s."""
    turns: list[TurnTiming] = Field(default_factory=list)
    error: str | None = None
    """The exception that ended the episode, when one did."""


class RunStats(_Stats):
    episodes: list[EpisodeStats] = Field(default_factory=list)
    concurrency: int = 1
    wall_s: float = 0.0
    sandboxes_started: int = 0
    max_sandboxes_alive: int = 0
    """Most sandboxes alive at once, as counted by the pool."""

    @property
    def agent_turns(self) -> int:
        return sum(len(e.turns) for e in self.episodes)

    @property
    def overhead_per_turn_s(self) -> float:
        """The harness's own overhead per agent turn, averaged over the run."""
        return sum(e.overhead_s for e in self.episodes) / max(1, self.agent_turns)


async def arollout(
    task: Task,
    policy: Policy,
    sandbox: Sandbox,
    *,
    limits: EpisodeLimits | None = None,
    command_timeout: float = 120.0,
    sample: int = 0,
    offload: Offload | None = None,
) -> tuple[Trajectory, EpisodeStats]:
    """The async twin of `rollout`: awaits async policies, runs sandbox work via `offload` (a thread).

    Limits are the stricter of `limits` and `policy.limits`; they are checked before each turn, and
    the wall-clock limit also bounds the model call and the command timeouts of the turn.
    """
    offload = offload or asyncio.to_thread
    started = time.monotonic()
    await offload(prepare_episode, sandbox, task)
    policy.reset(task)
    lim = (limits or EpisodeLimits()).tighten(getattr(policy, "limits", None))
    if lim.max_steps is None:
        lim = lim.model_copy(update={"max_steps": DEFAULT_MAX_STEPS})
    trajectory_id = content_hash(task.task_id, policy.info.model_dump(), sample)
    stats = EpisodeStats(trajectory_id=trajectory_id, task_id=task.task_id, sample=sample)
    system = getattr(policy, "system_prompt", None) or SYSTEM_PROMPT
    messages = [Message(role="system", content=system), Message(role="user", content=task.instruction)]
    steps: list[Step] = []
    final_patch, exit_status = "", ""
    loop_start = time.monotonic()
    stats.setup_s = loop_start - started

    def left() -> float | None:
        return None if lim.max_seconds is None else lim.max_seconds - (time.monotonic() - loop_start)

    while (hit := lim.hit(len(steps), policy.usage, time.monotonic() - loop_start)) is None:
        turn = TurnTiming()
        stats.turns.append(turn)
        t_turn = time.monotonic()
        ended: str | None = None
        try:
            reply = policy.act(messages)  # a sync policy answers here; it must not block for long
            if inspect.isawaitable(reply):
                reply = await asyncio.wait_for(reply, left())
        except PolicyError as exc:
            if exc.message is not None:
                messages.append(exc.message)
            steps.append(Step(index=len(steps), tool="", error=exc.reason, observation=exc.observation))
            messages.append(Message(role="user", content=exc.observation))
            reply, ended = None, exc.stop
        except asyncio.TimeoutError:
            reply, ended = None, "time_limit"
        turn.model_s = time.monotonic() - t_turn
        if reply is not None and not reply.tool_calls:
            messages.append(reply)
            messages.append(Message(role="user", content="Please call one of the tools (bash, edit, submit)."))
            steps.append(Step(index=len(steps), tool="", error="no_tool_call"))
        elif reply is not None:
            messages.append(reply)
            for call in reply.tool_calls:
                remaining = left()
                timeout = command_timeout if remaining is None else max(1.0, min(command_timeout, remaining))
                step, tool_msg, finished = await offload(execute_call, sandbox, call, len(steps), timeout)
                turn.sandbox_s += step.duration_s
                steps.append(step)
                messages.append(tool_msg)
                if finished:
                    final_patch = step.observation if step.exit_code == 0 else ""
                    ended = "submitted" if step.exit_code == 0 else "submit_failed"
                    break
        turn.overhead_s = max(0.0, time.monotonic() - t_turn - turn.model_s - turn.sandbox_s)
        if ended:
            exit_status = ended
            break
    else:
        exit_status = hit
    stats.loop_s = time.monotonic() - loop_start
    stats.model_s = sum(t.model_s for t in stats.turns)
    stats.sandbox_s = sum(t.sandbox_s for t in stats.turns)
    stats.overhead_s = max(0.0, stats.loop_s - stats.model_s - stats.sandbox_s)
    stats.exit_status = exit_status
    trajectory = Trajectory(
        trajectory_id=trajectory_id, task_id=task.task_id, policy=policy.info, sample=sample,
        messages=messages, tools=TOOLS, steps=steps, final=Final(patch=final_patch),
        usage=policy.usage.model_copy(), exit_status=exit_status, duration_s=time.monotonic() - started,
    )
    return trajectory, stats


class AsyncSandboxPool:
    """At most `size` sandboxes alive at once, one fresh sandbox per episode; `close_all` reaches every one.

    Fresh, not reused: `prepare_episode` replaces the checkout's git history, so `reset()` could
    not restore a used sandbox and would replace its container anyway. Sandboxes start and close in
    worker threads; a start still running when the pool closes closes its sandbox itself, so a
    cancelled run leaves no container behind.
    """

    def __init__(self, backend: Backend, size: int, limits: SandboxLimits | None, offload: Offload):
        self.backend, self.size, self.limits, self._offload = backend, size, limits, offload
        self._all: list[Sandbox] = []
        self._lock = threading.Lock()  # _all is touched by worker threads
        self._closed = False
        self._slots = 0  # alive or starting; only the event loop touches it
        self.started = 0
        self.max_alive = 0

    def _start(self, env: EnvironmentHandle) -> Sandbox:
        sandbox = self.backend.start(env, self.limits)
        with self._lock:
            late = self._closed
            if not late:
                self._all.append(sandbox)
                self.started += 1
        if late:
            sandbox.close()
            raise RuntimeError("the sandbox pool was closed while a sandbox started")
        return sandbox

    async def acquire(self, env: EnvironmentHandle) -> Sandbox:
        if self._slots >= self.size:
            raise RuntimeError(f"sandbox pool of {self.size} is full; bound acquire() by the same concurrency")
        self._slots += 1
        self.max_alive = max(self.max_alive, self._slots)
        try:
            return await self._offload(self._start, env)
        except BaseException:
            self._slots -= 1
            raise

    def _close(self, sandbox: Sandbox) -> None:
        sandbox.close()
        with self._lock:  # forgotten only once closed: close_all still reaches a close cut short
            if sandbox in self._all:
                self._all.remove(sandbox)

    async def release(self, sandbox: Sandbox) -> None:
        """Close an episode's sandbox and free its slot."""
        try:
            await self._offload(self._close, sandbox)
        except Exception as exc:  # noqa: BLE001 - one bad close stops no other episode; close_all retries
            log.warning("closing a sandbox failed: %s", exc)
        finally:
            self._slots -= 1

    def close_all(self) -> None:
        """Close every sandbox, in parallel threads; blocking on purpose, so it finishes under cancellation."""
        with self._lock:
            self._closed = True
            sandboxes, self._all = self._all, []

        def close(sandbox: Sandbox) -> None:
            try:
                sandbox.close()
            except Exception as exc:  # noqa: BLE001 - closing must reach every sandbox
                log.warning("closing a sandbox failed: %s", exc)

        threads = [threading.Thread(target=close, args=(s,)) for s in sandboxes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _error_trajectory(task: Task, policy: Policy | None, sample: int, exc: BaseException) -> Trajectory:
    info = policy.info if policy is not None else PolicyInfo(name="unknown")
    return Trajectory(
        trajectory_id=content_hash(task.task_id, info.model_dump(), sample), task_id=task.task_id, policy=info,
        sample=sample, messages=[], tools=TOOLS, steps=[], final=Final(),
        usage=policy.usage.model_copy() if policy is not None else Usage(),
        exit_status=f"error: {type(exc).__name__}: {exc}"[:500],
    )


async def run_episodes(
    tasks: Iterable[Task],
    make_policy: Callable[[Task, int], Policy],
    backend: Backend,
    env_of: Callable[[Task], EnvironmentHandle],
    *,
    concurrency: int = 2,
    samples: int = 1,
    limits: EpisodeLimits | None = None,
    sandbox_limits: SandboxLimits | None = None,
    raise_errors: bool = False,
) -> tuple[list[Trajectory], RunStats]:
    """Roll out every task `samples` times, `concurrency` episodes (and sandboxes) at once.

    `make_policy(task, sample)` gives a fresh policy per episode (model policies share one client,
    whose own bound caps the requests at the server). Trajectories come back in (task, sample)
    order. An episode that raises is recorded as a trajectory with exit status `error: ...`, unless
    `raise_errors`, which cancels the rest and re-raises. Each episode gets a fresh sandbox, closed
    when it ends; whatever ends the run, every sandbox it started is closed before this returns.
    """
    if concurrency < 1 or samples < 1:
        raise ValueError(f"concurrency={concurrency}, samples={samples}: both must be at least 1")
    work = [(task, s) for task in tasks for s in range(samples)]
    command_timeout = (sandbox_limits or SandboxLimits()).command_timeout_s
    loop = asyncio.get_running_loop()
    # Own threads, two per episode (a command cut off by cancellation, and the close), so nothing queues:
    # the default executor is small (cores + 4).
    executor = ThreadPoolExecutor(max_workers=2 * concurrency + 1, thread_name_prefix="trajfactory-sandbox")

    def offload(fn, *args):
        return loop.run_in_executor(executor, fn, *args)

    pool = AsyncSandboxPool(backend, concurrency, sandbox_limits, offload)
    episodes = asyncio.Semaphore(concurrency)
    results: list[tuple[Trajectory, EpisodeStats] | None] = [None] * len(work)
    started = time.monotonic()

    async def episode(n: int, task: Task, sample: int) -> None:
        async with episodes:
            t0 = time.monotonic()
            env = env_of(task)
            sandbox = policy = None
            waited = 0.0
            try:
                sandbox = await pool.acquire(env)
                waited = time.monotonic() - t0
                policy = make_policy(task, sample)
                traj, stats = await arollout(task, policy, sandbox, limits=limits, command_timeout=command_timeout,
                                             sample=sample, offload=offload)
            except Exception as exc:
                if raise_errors:
                    raise
                log.warning("episode %s/%d failed: %s: %s", task.task_id, sample, type(exc).__name__, exc)
                traj = _error_trajectory(task, policy, sample, exc)
                stats = EpisodeStats(trajectory_id=traj.trajectory_id, task_id=task.task_id, sample=sample,
                                     exit_status=traj.exit_status, error=f"{type(exc).__name__}: {exc}")
            finally:
                if sandbox is not None:
                    await pool.release(sandbox)
            stats.setup_s += waited
            results[n] = (traj, stats)
            log.info("episode %d/%d: task %s sample %d -> %s (%d steps, %.1fs)", n + 1, len(work), task.task_id,
                     sample, traj.exit_status, len(traj.steps), time.monotonic() - t0)

    try:
        async with asyncio.TaskGroup() as group:
            for n, (task, sample) in enumerate(work):
                group.create_task(episode(n, task, sample))
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None  # the first failure, not a group: callers expect it plain
    finally:
        pool.close_all()
        executor.shutdown(wait=True)
    stats = RunStats(episodes=[r[1] for r in results], concurrency=concurrency, wall_s=time.monotonic() - started,
                     sandboxes_started=pool.started, max_sandboxes_alive=pool.max_alive)
    return [r[0] for r in results], stats
