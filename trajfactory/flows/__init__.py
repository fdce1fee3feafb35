"""Prefect flows: orchestration only (wiring, caching, concurrency, retries, artifacts)."""

import os

# The ephemeral server starts slowly on a busy 2-core machine, and no analytics can leave it.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
