"""Harvest: repositories (and later tutorials) into `Source` records with provenance."""

from __future__ import annotations

from pathlib import Path

from trajfactory.config import BUILTIN_REPOS
from trajfactory.schema import Quarantine, Source, content_hash


def harvest_repo(uri: str, mirror_root: str | Path) -> Source | Quarantine:
    """Harvest one repository; a failure becomes a quarantine row naming the input and the cause."""
    from trajfactory.sources.repos import SourceError, harvest

    target = str(BUILTIN_REPOS / uri.split(":", 1)[1]) if uri.startswith("builtin:") else uri
    try:
        source = harvest(target, mirror_root)
    except SourceError as exc:
        return Quarantine(item_id=content_hash(uri), item_kind="source", stage="harvest",
                          reason=getattr(exc, "reason", "harvest_failed"), detail=str(exc), uri=uri)
    if target != uri:
        # Built-ins are named by their stable URI, never by where the package is installed.
        source = source.model_copy(update={"uri": uri, "source_id": content_hash(uri, source.commit)})
    return source
