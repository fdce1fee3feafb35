"""Measuring a vLLM server from the outside: its Prometheus `/metrics` polled from a thread, its own
request totals, and the small statistics the rollout bench reports."""

from __future__ import annotations

import re
import statistics
import sys
import threading
import time

import httpx


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BusyPoller:
    """Polls vLLM's Prometheus `/metrics` from a thread; busy = share of polls with >= 1 running request.

    Also counts the polls with a request in the server at all (running or waiting, e.g. waiting for its
    structured-output grammar), and reports progress through `report` every `report_every_s`.
    """

    def __init__(self, metrics_url: str, model: str, interval_s: float = 0.05, report=None, report_every_s=5.0):
        self.url, self.model, self.interval_s = metrics_url, model, interval_s
        self.samples: list[tuple[float, float, float]] = []
        """(unix time, running, waiting) per poll."""
        self.errors = 0
        self.last_error = ""
        self._report, self._report_every_s = report, report_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="vllm-metrics-poller")

    def gauge(self, text: str, name: str) -> float | None:
        found = re.findall(rf"^{re.escape(name)}\{{([^}}]*)\}}\s+([0-9.eE+-]+)", text, re.M)
        values = [float(v) for labels, v in found if f'model_name="{self.model}"' in labels]
        return sum(values) if values else None

    def _run(self) -> None:
        last_report = time.monotonic()
        with httpx.Client(timeout=2.0) as http:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    text = http.get(self.url).text
                    running = self.gauge(text, "vllm:num_requests_running")
                    if running is None:
                        raise ValueError(f"no vllm:num_requests_running for model {self.model!r} in {self.url}")
                    self.samples.append((time.time(), running, self.gauge(text, "vllm:num_requests_waiting") or 0.0))
                except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                if self._report and time.monotonic() - last_report >= self._report_every_s:
                    last_report = time.monotonic()
                    self._report(self)
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - t0)))

    def window(self, start: float = 0.0, end: float = float("inf")) -> list[tuple[float, float, float]]:
        return [x for x in self.samples if start <= x[0] <= end]

    def busy(self, start: float = 0.0, end: float = float("inf")) -> float | None:
        """Share of the polls in [start, end] (unix times) with at least one request running."""
        polls = self.window(start, end)
        return sum(r >= 1 for _, r, _ in polls) / len(polls) if polls else None

    def occupied(self, start: float = 0.0, end: float = float("inf")) -> float | None:
        """Share of the polls in [start, end] with at least one request in the server (running or waiting)."""
        polls = self.window(start, end)
        return sum(r + w >= 1 for _, r, w in polls) / len(polls) if polls else None

    def __enter__(self) -> "BusyPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def server_totals(metrics_url: str, model: str) -> tuple[float, float]:
    """vLLM's own request accounting so far: (sum of end-to-end request seconds, requests); zeros if unread."""
    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.HTTPError:
        return 0.0, 0.0
    totals = []
    for name in ("vllm:e2e_request_latency_seconds_sum", "vllm:e2e_request_latency_seconds_count"):
        found = re.findall(rf"^{re.escape(name)}\{{([^}}]*)\}}\s+([0-9.eE+-]+)", text, re.M)
        totals.append(sum(float(v) for labels, v in found if f'model_name="{model}"' in labels))
    return totals[0], totals[1]


def union_busy(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Share of [start, end] covered by the union of the (begin, finish) intervals."""
    covered, cursor = 0.0, start
    for b, f in sorted(intervals):
        b, f = max(b, cursor), min(f, end)
        if f > b:
            covered += f - b
            cursor = f
    return covered / (end - start) if end > start else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
