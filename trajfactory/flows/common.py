"""Helpers every flow uses: the run journal, result storage, gathering futures with progress, and the
model endpoint's lifetime."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Iterator

from trajfactory.model_config import ModelConfig
from trajfactory.models.service import ModelEndpoint, model_endpoint
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


@contextlib.contextmanager
def model_session(cfg: ModelConfig | None, work_dir: str | Path, endpoint: ModelEndpoint | None,
                  needed: bool) -> Iterator[ModelEndpoint | None]:
    """The endpoint a flow hands to its tasks: the caller's when given (the end-to-end flow opened it),
    else one opened here for this flow alone (a served model stops when the block ends, however it
    ends), or None when the flow needs no model."""
    if endpoint is not None or not needed:
        yield endpoint
        return
    if cfg is None:
        raise ValueError("this stage needs a model (LM rewrite, model statements, model rollouts, the judge, or the web "
                         "model agent / judge) but none is configured: add a `model:` section (`serve: builtin:tiny`, "
                         "a model directory, or `base_url:` of an OpenAI-compatible endpoint)")
    with model_endpoint(cfg, work_dir) as opened:
        yield opened
