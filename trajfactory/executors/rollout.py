"""Rollout: a policy acts in a sandbox on a task; every action is executed and recorded.

The sandbox starts from the task's buggy state with a fresh one-commit git history, so the
bug cannot be read back from `git log`. The result is a `Trajectory` of OpenAI chat messages
with `tool_calls`, the tools' JSON schemas, and one `Step` per executed action.
"""

from __future__ import annotations

import inspect
import json
import time

from trajfactory.agents.base import Policy
from trajfactory.agents.tools import TOOLS, run_tool
from trajfactory.executors.base import Sandbox, SandboxError
from trajfactory.schema import Final, Message, Step, Task, ToolCall, Trajectory, content_hash, utcnow

SYSTEM_PROMPT = (
    "You are a software engineer working in a Python repository checked out at the current directory. "
    "Use the tools to investigate and fix the problem the user describes: run commands with `bash`, "
    "change files with `edit`, and call `submit` when the fix is complete. Do not modify the tests."
)
BUG_PATH = "/tmp/trajfactory-task.diff"


def prepare_episode(sandbox: Sandbox, task: Task) -> None:
    """Put the sandbox in the task's starting state: bug applied, history reduced to one commit."""
    sandbox.reset()
    sandbox.write_file(BUG_PATH, task.bug_patch)
    res = sandbox.execute(
        f"git apply {BUG_PATH} && rm -f {BUG_PATH} && rm -rf .git && git init -q "
        # Build artefacts never belong in a submitted patch.
        "&& printf '__pycache__/\\n*.pyc\\n.pytest_cache/\\n.coverage\\n' >> .git/info/exclude && git add -A "
        "&& git -c user.name=trajfactory -c user.email=trajfactory@localhost commit -qm initial",
        timeout=120,
    )
    if res.exit_code != 0:
        raise SandboxError(f"task {task.task_id}: the bug patch does not apply: {res.output[-500:]}")


def execute_call(sandbox: Sandbox, call: ToolCall, index: int, timeout: float) -> tuple[Step, Message, bool]:
    """Execute one tool call: (step, tool message, whether it submitted). A bad call is an error step."""
    t0, at = time.monotonic(), utcnow()
    finished = False
    try:
        args = json.loads(call.function.arguments or "{}")
        if not isinstance(args, dict):
            raise ValueError("arguments must be a JSON object")
    except ValueError as exc:
        obs, code, err, args = f"Error: the arguments are not a JSON object: {exc}", None, "bad_json", {}
    else:
        result = run_tool(sandbox, call.function.name, args, timeout=timeout)
        obs, code, err, finished = result.observation, result.exit_code, result.error, result.done
    step = Step(index=index, tool=call.function.name, arguments=args, observation=obs, exit_code=code,
                error=err, started_at=at, duration_s=time.monotonic() - t0)
    return step, Message(role="tool", tool_call_id=call.id, name=call.function.name, content=obs), finished


def rollout(
    task: Task,
    policy: Policy,
    sandbox: Sandbox,
    *,
    max_steps: int = 20,
    command_timeout: float = 120.0,
    sample: int = 0,
) -> Trajectory:
    started = time.monotonic()
    prepare_episode(sandbox, task)
    policy.reset(task)
    messages = [Message(role="system", content=SYSTEM_PROMPT), Message(role="user", content=task.instruction)]
    steps: list[Step] = []
    final_patch = ""
    exit_status = "step_limit"
    while len(steps) < max_steps:
        reply = policy.act(messages)
        if inspect.isawaitable(reply):  # an async policy (a served model) needs the event loop
            getattr(reply, "close", lambda: None)()
            raise TypeError(f"policy {policy.info.name!r} acts asynchronously; roll it out with "
                            "trajfactory.executors.concurrent.arollout or run_episodes")
        messages.append(reply)
        if not reply.tool_calls:
            messages.append(Message(role="user", content="Please call one of the tools (bash, edit, submit)."))
            steps.append(Step(index=len(steps), tool="", error="no_tool_call"))
            continue
        done = False
        for call in reply.tool_calls:
            step, tool_message, finished = execute_call(sandbox, call, len(steps), command_timeout)
            steps.append(step)
            messages.append(tool_message)
            obs, code = step.observation, step.exit_code
            if finished:
                final_patch, done = (obs if code == 0 else ""), True
                exit_status = "submitted" if code == 0 else "submit_failed"
                break
        if done:
            break
    trajectory_id = content_hash(task.task_id, policy.info.model_dump(), sample)
    return Trajectory(
        trajectory_id=trajectory_id,
        task_id=task.task_id,
        policy=policy.info,
        sample=sample,
        messages=messages,
        tools=TOOLS,
        steps=steps,
        final=Final(patch=final_patch),
        usage=policy.usage,
        exit_status=exit_status,
        duration_s=time.monotonic() - started,
    )
