"""A lasting Prefect server on PostgreSQL, deployments with schedules, and the worker that runs them (opt-in)."""
