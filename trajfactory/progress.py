"""Progress for long operations: a rich bar on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("trajfactory")


def setup_logging() -> None:
    """Log lines with times to stderr, for the CLI; the chattiest libraries only say what went wrong."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("httpx", "httpcore", "docker", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Progress:
    def __init__(self, description: str, total: int):
        self.description, self.total, self.done = description, total, 0
        self._last_log = 0.0
        self._bar = None
        if sys.stderr.isatty() and total:
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(transient=False)
            self._bar.start()
            self._task = self._bar.add_task(description, total=total)
        else:
            log.info("%s: 0/%d", description, total)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n)
        elif time.monotonic() - self._last_log > 5 or self.done == self.total:
            self._last_log = time.monotonic()
            log.info("%s: %d/%d", self.description, self.done, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
