#!/usr/bin/env bash
# Set up everything, then run the test suite against the real components (Docker engine, git, Prefect, vLLM,
# Chromium) in the factory's own virtual environment, which only the declared dependencies reach.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The scheduled-run tests start a private PostgreSQL cluster for the Prefect server (opt-in for users, so setup.sh
# does not install it).
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  printf '\033[1m[test]\033[0m %s\n' "installing Debian package: postgresql"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
source scripts/venv.sh
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
exec "$TRAJFACTORY_PY" -m pytest -p no:cacheprovider -q -ra --durations=30 "$@"
