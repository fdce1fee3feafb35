"""The stories of the factory as plain functions, callable without Prefect: `swe.py` (repositories -> a verified
SWE dataset version) and `web.py` (tutorials -> a verified web dataset version); `runner.py` says how their
units of work run."""
