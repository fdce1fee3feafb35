#!/usr/bin/env bash
# Set up everything, then run the test suite against the real components (Docker engine, git, Prefect).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
exec python3 -m pytest -p no:cacheprovider -q -ra "$@"
