#!/usr/bin/env bash
# Set up everything, then run the main job: the whole factory on the embedded default recipe
# (or on the recipe given as the first argument).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 -m trajfactory.cli run "$@"
