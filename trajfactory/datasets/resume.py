"""Publishing a version once, however the run that writes it is killed: the one call both halves make.

    version = publish_once(recipe.work_dir, root, lineage, lambda: write_dataset(...))

Before it writes, a run notes in its live dir (`executors.runs.LIVE_DIR`, removed when the run ends) which version
of the dataset was the latest. A run killed after it published leaves that note, and the run that resumes the work
dir finds the version it wrote: when it is still the latest and made from the same recipe, sources and factory
(`changes.unchanged_version`), the resumed run takes it as its own rather than write the same data again. One note
per dataset, so a run that publishes both halves' datasets keeps both.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

from trajfactory.datasets.changes import unchanged_version
from trajfactory.datasets.store import DatasetStore
from trajfactory.executors.runs import LIVE_DIR

log = logging.getLogger(__name__)

PUBLISHING = "publishing-{}.json"
"""In a run's live dir, per dataset (a hash of its root): from just before the run writes its version until the run
ends."""


def _note(live_dir: str | Path, root: str | Path) -> Path:
    resolved = str(Path(root).resolve())
    return Path(live_dir) / PUBLISHING.format(hashlib.sha256(resolved.encode()).hexdigest()[:16])


def begin_publishing(live_dir: str | Path, root: str | Path) -> None:
    """Note, before a run writes its version of the dataset at `root`, which version was the latest then."""
    path = _note(live_dir, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"root": str(Path(root).resolve()), "latest_before": DatasetStore(root).latest()}))
    tmp.replace(path)


def published_before_a_kill(live_dir: str | Path, root: str | Path, lineage: dict) -> str | None:
    """The version of the dataset at `root` that an earlier run of the work dir published and was killed before it
    ended (its note is still in `live_dir`), when it is still the latest and made from what `lineage` names: the
    run that resumes it takes that version as its own rather than write the same data again. None otherwise."""
    path = _note(live_dir, root)
    if not path.is_file():
        return None
    note = json.loads(path.read_text())
    latest = DatasetStore(root).latest()
    if note.get("root") != str(Path(root).resolve()) or latest is None or latest == note.get("latest_before"):
        return None  # the kill came before the version was published
    return unchanged_version(root, lineage)


def publish_once(work_dir: str | Path, root: str | Path, lineage: dict, write: Callable[[], str]) -> str:
    """`write()` (which writes the version of the dataset at `root` and returns its name), unless the run this one
    resumes, in `work_dir`, already published that version before it was killed: then that version's name."""
    live = Path(work_dir) / LIVE_DIR
    version = published_before_a_kill(live, root, lineage)
    if version:
        log.info("%s was published by the run this one resumes (killed before it ended): taking it (%s)", version,
                 root)
        return version
    begin_publishing(live, root)
    return write()
