"""The policy protocol: given the conversation so far, produce the next assistant message."""

from __future__ import annotations

from typing import Protocol

from trajfactory.schema import Message, Policy as PolicyInfo, Task, Usage


class Policy(Protocol):
    info: PolicyInfo
    usage: Usage

    def reset(self, task: Task) -> None:
        """Start an episode on `task`."""
        ...

    def act(self, messages: list[Message]) -> Message:
        """The next assistant message (normally with `tool_calls`)."""
        ...
