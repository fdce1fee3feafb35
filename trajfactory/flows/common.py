"""Helpers every flow uses: the run journal, result storage, and gathering futures with progress."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from trajfactory.progress import Progress

_journal_lock = threading.Lock()


def journal(work_dir: str | Path, stage: str, key: str) -> None:
    """One line each time a task body really runs (a cache hit writes nothing): how tests see resumption."""
    path = Path(work_dir) / "journal.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _journal_lock, path.open("a") as fh:
        fh.write(json.dumps({"stage": stage, "key": key, "pid": os.getpid(), "at": time.time()}) + "\n")


def result_storage(work_dir: str | Path) -> Path:
    """Where cached task results live: a path Prefect turns into local file storage."""
    return (Path(work_dir) / "results").resolve()


def gather(futures, description: str) -> list:
    """Results of the futures in order, with a progress bar (or log lines off a terminal)."""
    results = []
    with Progress(description, len(futures)) as bar:
        for future in futures:
            results.append(future.result())
            bar.advance()
    return results
