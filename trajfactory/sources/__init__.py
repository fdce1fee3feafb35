"""Harvest: repositories (and later tutorials) into `Source` records with provenance."""

from __future__ import annotations

from pathlib import Path

from trajfactory.schema import Quarantine, Source, content_hash, quarantined
from trajfactory.settings import BUILTIN_REPOS


def expand_repo(uri: str, python: str | None = None) -> list[str] | Quarantine:
    """The repository URIs a recipe's `uri` stands for (`pypi:NAME@latest:N`: the N newest releases, asked of the
    package index now, of those that support `python`, the sandbox's Python; any other: itself); a failure becomes a
    quarantine row naming the input and the cause."""
    from trajfactory.sources.repos import SourceError, expand_uri

    if uri.startswith("builtin:"):
        return [uri]
    try:
        return expand_uri(uri, python=python)
    except SourceError as exc:
        reason = getattr(exc, "reason", "harvest_failed")
        return quarantined("harvest", "source", content_hash(uri), reason, str(exc), uri)


def harvest_repo(uri: str, mirror_root: str | Path) -> Source | Quarantine:
    """Harvest one repository; a failure becomes a quarantine row naming the input and the cause."""
    from trajfactory.sources.repos import SourceError, harvest

    target = str(BUILTIN_REPOS / uri.split(":", 1)[1]) if uri.startswith("builtin:") else uri
    try:
        source = harvest(target, mirror_root)
    except SourceError as exc:
        return quarantined("harvest", "source", content_hash(uri), getattr(exc, "reason", "harvest_failed"), str(exc), uri)
    if target != uri:
        # Built-ins are named by their stable URI, never by where the package is installed.
        source = source.model_copy(update={"uri": uri, "source_id": content_hash(uri, source.commit)})
    return source
