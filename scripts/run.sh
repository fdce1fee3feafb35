#!/usr/bin/env bash
# Set up everything, then run the main job: the whole factory on the embedded default recipe
# (or on the recipe given as the first argument), in the factory's own virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/venv.sh
exec "$TRAJFACTORY_PY" -m trajfactory.cli run "$@"
