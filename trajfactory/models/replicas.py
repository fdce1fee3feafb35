"""Several replicas of one model behind one client: each request goes to the replica with the fewest requests in
flight (ties in turn), and a replica that failed (no answer, a 5xx) is skipped for a cooldown while another answers,
so a dead replica costs one failed attempt, not a stage."""

from __future__ import annotations

import time
from collections.abc import Sequence


class Replicas:
    """The base URLs of one model's replicas and what each is doing; used from one event loop (no lock needed)."""

    def __init__(self, urls: Sequence[str], cooldown_s: float = 10.0):
        self.urls = [u.rstrip("/") for u in urls]
        if not self.urls:
            raise ValueError("no replica URL: give at least one base URL")
        self.cooldown_s = cooldown_s
        self.in_flight = [0] * len(self.urls)
        self.sent = [0] * len(self.urls)
        """Attempts sent to each replica (failed ones included)."""
        self.failed = [0] * len(self.urls)
        self._down_until = [0.0] * len(self.urls)
        self._turn = 0

    def up(self, i: int) -> bool:
        return self._down_until[i] <= time.monotonic()

    def pick(self) -> int:
        """The replica for the next attempt (every replica when all are cooling down: one may be back)."""
        n = len(self.urls)
        live = [i for i in range(n) if self.up(i)] or list(range(n))
        start, self._turn = self._turn, self._turn + 1
        i = min(live, key=lambda j: (self.in_flight[j], (j - start) % n))
        self.in_flight[i] += 1
        self.sent[i] += 1
        return i

    def done(self, i: int, healthy: bool) -> None:
        """The attempt on replica `i` ended; an unhealthy one sits out `cooldown_s`."""
        self.in_flight[i] -= 1
        if healthy:
            self._down_until[i] = 0.0
        else:
            self.failed[i] += 1
            self._down_until[i] = time.monotonic() + self.cooldown_s

    def another_up(self, i: int) -> bool:
        """Whether a replica other than `i` may take the retry at once (no backoff needed)."""
        return any(self.up(j) for j in range(len(self.urls)) if j != i)
