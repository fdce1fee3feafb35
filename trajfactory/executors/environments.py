"""Build the sandbox environment of a source; a repository that cannot be installed is quarantined."""

from __future__ import annotations

from trajfactory.executors.base import Backend, EnvironmentBuildError, EnvironmentHandle
from trajfactory.schema import Quarantine, Source


def build_environment(backend: Backend, source: Source) -> EnvironmentHandle | Quarantine:
    try:
        return backend.build(source.path, source.name, source.commit)
    except EnvironmentBuildError as exc:
        return Quarantine(item_id=source.source_id, item_kind="source", stage="build",
                          reason=exc.reason, detail=f"{source.uri}: {exc.detail}", uri=source.uri)
