#!/usr/bin/env bash
# Set up everything, then run the test suite against the real components (Docker engine, git, Prefect, vLLM,
# Chromium) in the factory's own virtual environment, which only the declared dependencies reach.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/venv.sh
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
exec "$TRAJFACTORY_PY" -m pytest -p no:cacheprovider -q -ra "$@"
