"""The one episode loop: any `Policy` in any `Environment` (see `protocol.py`), async at its core.

    episode = await run_episode(env, policy, task, limits=EpisodeLimits(max_steps=20))
    episode = run_episode_sync(env, policy, task)                   # from sync code
    episodes, stats = await run_episodes(tasks, make_env, make_policy, concurrency=8, samples=4)

The loop owns the episode's budgets (the stricter of the caller's and the policy's limits, checked before
each turn; the wall-clock limit also bounds the model call and the commands of the turn), the timing of
each turn (waiting on the policy, in the environment, and the harness's own overhead), malformed-output
recovery (a `PolicyError` or a reply without an action is an error step the policy sees), and cleanup:
the environment is closed however the episode ends, cancellation included. A bug of the policy or the
environment ends its episode with exit status `error: ...`, never the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field

from trajfactory.executors.base import InfrastructureError
from trajfactory.executors.protocol import INFRA_FAILED, Action, Environment, Policy, PolicyError
from trajfactory.runtime import run_sync
from trajfactory.schema import Final, Message, Policy as PolicyInfo, Step, Trajectory, Usage, Verdict, content_hash
from trajfactory.settings import EpisodeLimits

log = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 20
"""Step limit when neither the caller nor the policy sets one."""


class _Stats(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TurnTiming(_Stats):
    """Where one agent turn (one `act` and the calls it asked for) spent its wall time."""

    model_s: float = 0.0
    """Awaiting the policy: the model request, queueing behind the client's concurrency bound included."""
    sandbox_s: float = 0.0
    """Running the turn's calls in the environment (as the environment measured them)."""
    overhead_s: float = 0.0
    """The rest: the harness's own work, thread hand-offs and event-loop contention."""


class EpisodeStats(_Stats):
    trajectory_id: str
    task_id: str
    sample: int
    exit_status: str = ""
    setup_s: float = 0.0
    """Waiting for a slot, resetting the environment (a sandbox start, a site launch) and the first observation."""
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
    environments_started: int = 0
    max_environments_alive: int = 0
    """Most environments alive at once (reset, not yet closed)."""

    @property
    def agent_turns(self) -> int:
        return sum(len(e.turns) for e in self.episodes)

    @property
    def overhead_per_turn_s(self) -> float:
        """The harness's own overhead per agent turn, averaged over the run."""
        return sum(e.overhead_s for e in self.episodes) / max(1, self.agent_turns)


@dataclass
class Episode:
    trajectory: Trajectory
    stats: EpisodeStats
    verdict: Verdict | None = None
    """The environment's verdict on the final state (with `evaluate=True`)."""


def trajectory_id(task_id: str, info: PolicyInfo, sample: int, actions: list[str] | None = None) -> str:
    """A trajectory's id: (task, policy, sample), plus the actions for environments that hash them."""
    parts: tuple[Any, ...] = (task_id, info.model_dump(), sample)
    return content_hash(*parts, actions) if actions is not None else content_hash(*parts)


async def run_episode(env: Environment, policy: Policy, task: Any, *, sample: int = 0,
                      limits: EpisodeLimits | None = None, evaluate: bool = False,
                      raise_errors: bool = False) -> Episode:
    """Run `policy` on `task` in `env` until it submits, gives up or a budget runs out; then close `env`.

    With `evaluate`, the environment's verifier judges the final state before it closes. An error in the
    reset propagates; an error inside the loop ends the episode as `error: ...` (re-raised with
    `raise_errors`, and always for an `InfrastructureError`, which a caller may retry).
    """
    started = time.monotonic()
    try:
        start = await env.reset(task)
        policy.reset(task, start)
        lim = (limits or EpisodeLimits()).tighten(policy.limits)
        if lim.max_steps is None:
            lim = lim.model_copy(update={"max_steps": DEFAULT_MAX_STEPS})
        messages = [Message(role="system", content=policy.system_prompt(start.system_prompt)), *start.messages]
        steps: list[Step] = []
        final, exit_status, error = Final(), "", None
        observation = start.observation
        turns: list[TurnTiming] = []
        loop_start = time.monotonic()

        def left() -> float | None:
            return None if lim.max_seconds is None else lim.max_seconds - (time.monotonic() - loop_start)

        try:
            while (hit := lim.hit(len(steps), policy.usage, time.monotonic() - loop_start)) is None:
                turn = TurnTiming()
                turns.append(turn)
                t_turn = time.monotonic()
                ended: str | None = None
                action: Action | None = None
                try:
                    budget = left()
                    act = policy.act(messages, observation)
                    action = await (act if budget is None else asyncio.wait_for(act, budget))
                    if action is None:
                        ended = "submitted"
                except PolicyError as exc:
                    steps.append(Step(index=len(steps), tool="", error=exc.reason, observation=exc.observation))
                    if not exc.infra:  # an infrastructure failure is no turn of the conversation
                        if exc.message is not None:
                            messages.append(exc.message)
                        messages.append(Message(role="user", content=exc.observation))
                    ended = exc.stop
                except asyncio.TimeoutError:
                    ended = "time_limit"
                turn.model_s = time.monotonic() - t_turn
                if action is not None:
                    messages.append(action.message)
                    if not action.calls:
                        steps.append(Step(index=len(steps), tool="", error="no_action"))
                        messages.append(Message(role="user", content=start.retry_prompt))
                    for call in action.calls:
                        budget = left()
                        tr = await env.step(call, None if budget is None else max(1.0, budget))
                        turn.sandbox_s += tr.step.duration_s
                        steps.append(tr.step.model_copy(update={"index": len(steps)}))
                        messages += tr.messages
                        observation = tr.observation
                        if tr.done:
                            ended, final = tr.exit_status, tr.final or Final()
                            break
                turn.overhead_s = max(0.0, time.monotonic() - t_turn - turn.model_s - turn.sandbox_s)
                if ended:
                    exit_status = ended
                    break
            else:
                exit_status = hit
        except (InfrastructureError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a policy or environment bug ends this episode, never the batch
            if raise_errors:
                raise
            error = f"{type(exc).__name__}: {exc}"
            exit_status = f"error: {error}"[:500]
            log.warning("episode of task %s ended by %s", getattr(task, "task_id", task), error)
        loop_s = time.monotonic() - loop_start
        actions = [m.content or "" for m in messages if m.role == "assistant"] if env.ids_hash_actions else None
        traj = Trajectory(
            trajectory_id=trajectory_id(task.task_id, policy.info, sample, actions), task_id=task.task_id,
            policy=policy.info, sample=sample, messages=messages, tools=start.tools, steps=steps, final=final,
            usage=policy.usage.model_copy(), exit_status=exit_status, duration_s=time.monotonic() - started)
        model_s, sandbox_s = sum(t.model_s for t in turns), sum(t.sandbox_s for t in turns)
        stats = EpisodeStats(trajectory_id=traj.trajectory_id, task_id=task.task_id, sample=sample,
                             exit_status=exit_status, setup_s=loop_start - started, model_s=model_s,
                             sandbox_s=sandbox_s, overhead_s=max(0.0, loop_s - model_s - sandbox_s), loop_s=loop_s,
                             turns=turns, error=error)
        verdict = await env.evaluate(task, traj) if evaluate else None
        return Episode(traj, stats, verdict)
    finally:
        await env.close()


def require_server(trajectories: list[Trajectory], what: str) -> None:
    """Fail the step when the model server failed under any episode (`infra_failed`, after the client's retries): its
    result is then never cached, the flow retries the step, and a run that still cannot reach the server stops with
    this message and redoes the step when it is run again, so the dataset is the one an undisturbed run makes."""
    failed = [t for t in trajectories if t.exit_status == INFRA_FAILED]
    if failed:
        said = failed[0].steps[-1].observation if failed[0].steps else ""
        raise InfrastructureError(f"{what}: the model server failed under {len(failed)} of {len(trajectories)} "
                                  f"episodes ({said[:300]})")


def run_episode_sync(env: Environment, policy: Policy, task: Any, **kwargs: Any) -> Episode:
    """`run_episode` from sync code (its own event loop)."""
    return run_sync(run_episode(env, policy, task, **kwargs))


def _failed(task: Any, policy: Policy | None, sample: int, exc: BaseException, ids_hash_actions: bool) -> Episode:
    """The record of an episode that never ran its loop (the environment could not reset)."""
    info = policy.info if policy is not None else PolicyInfo(name="unknown")
    error = f"{type(exc).__name__}: {exc}"
    traj = Trajectory(
        trajectory_id=trajectory_id(task.task_id, info, sample, [] if ids_hash_actions else None),
        task_id=task.task_id, policy=info, sample=sample, messages=[], tools=[], steps=[], final=Final(),
        usage=policy.usage.model_copy() if policy is not None else Usage(), exit_status=f"error: {error}"[:500])
    stats = EpisodeStats(trajectory_id=traj.trajectory_id, task_id=task.task_id, sample=sample,
                         exit_status=traj.exit_status, error=error)
    return Episode(traj, stats)


async def run_episodes(
    tasks: Iterable[Any],
    make_env: Callable[[Any], Environment],
    make_policy: Callable[[Any, int], Policy],
    *,
    concurrency: int = 2,
    samples: int = 1,
    limits: EpisodeLimits | None = None,
    evaluate: bool = False,
    raise_errors: bool = False,
) -> tuple[list[Episode], RunStats]:
    """Roll out every task `samples` times, `concurrency` episodes (and environments) at once.

    `make_env(task)` gives a fresh environment per episode and `make_policy(task, sample)` a fresh policy
    (model policies share one client, whose own bound caps the requests at the server). Episodes come back
    in (task, sample) order. An episode that fails is recorded with exit status `error: ...`, unless
    `raise_errors`, which cancels the rest and re-raises. Every environment is closed when its episode
    ends, however the run ends.
    """
    if concurrency < 1 or samples < 1:
        raise ValueError(f"concurrency={concurrency}, samples={samples}: both must be at least 1")
    work = [(task, s) for task in tasks for s in range(samples)]
    slots = asyncio.Semaphore(concurrency)
    results: list[Episode | None] = [None] * len(work)
    alive = {"now": 0, "max": 0, "started": 0}
    started = time.monotonic()

    async def episode(n: int, task: Any, sample: int) -> None:
        async with slots:
            t0 = time.monotonic()
            env = make_env(task)
            policy = None
            alive["started"] += 1
            alive["now"] += 1
            alive["max"] = max(alive["max"], alive["now"])
            try:
                policy = make_policy(task, sample)
                result = await run_episode(env, policy, task, sample=sample, limits=limits, evaluate=evaluate,
                                           raise_errors=raise_errors)
            except Exception as exc:
                if raise_errors:
                    raise
                log.warning("episode %s/%d failed: %s: %s", task.task_id, sample, type(exc).__name__, exc)
                result = _failed(task, policy, sample, exc, env.ids_hash_actions)
            finally:
                alive["now"] -= 1
            results[n] = result
            log.info("episode %d/%d: task %s sample %d -> %s (%d steps, %.1fs)", n + 1, len(work), task.task_id,
                     sample, result.trajectory.exit_status, len(result.trajectory.steps), time.monotonic() - t0)

    try:
        async with asyncio.TaskGroup() as group:
            for n, (task, sample) in enumerate(work):
                group.create_task(episode(n, task, sample))
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None  # the first failure, not a group: callers expect it plain
    stats = RunStats(episodes=[r.stats for r in results], concurrency=concurrency, wall_s=time.monotonic() - started,
                     environments_started=alive["started"], max_environments_alive=alive["max"])
    return list(results), stats
