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
PYTEST=("$TRAJFACTORY_PY" -m pytest -p no:cacheprovider -q -ra --durations=30)
if [ $# -gt 0 ]; then  # the tests named, as asked
  exec "${PYTEST[@]}" "$@"
fi
# The whole suite. Most of its time waits on containers, servers and subprocesses, so it runs on N workers
# (TRAJFACTORY_TEST_WORKERS, default 2); modules that share a costly session fixture stay on one worker
# (tests/conftest.py). The `exclusive` tests (they restart the Docker engine) then run alone.
# The two sessions share what both would make alike (tests/conftest.py: the undisturbed run), in a folder of this run.
TRAJFACTORY_TEST_SHARE="$(mktemp -d)"
export TRAJFACTORY_TEST_SHARE
trap 'rm -rf "$TRAJFACTORY_TEST_SHARE"' EXIT
status=0
"${PYTEST[@]}" -n "${TRAJFACTORY_TEST_WORKERS:-2}" --dist loadscope -m "not exclusive" || status=$?
"${PYTEST[@]}" -m exclusive || { last=$?; [ "$status" -ne 0 ] || status=$last; }
exit "$status"
