#!/usr/bin/env bash
# Creates the verl virtual environment (in the machine's trajfactory cache, outside the checkout), idempotently.
# verl is the RL trainer whose own dataset class (`verl.utils.dataset.rl_dataset.RLHFDataset`) the tests load the
# factory's RL rows with. It lives in its own venv because its pins (transformers, tensordict, ray) clash with
# the factory's; only what that dataset class imports is installed (verl itself without its GPU-training extras).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="2.13.0"
VERL_VERSION="0.9.1"
venv="${TRAJFACTORY_CACHE:-$HOME/.cache/trajfactory}/verl-venv"
stamp="$venv/.trajfactory-stamp-torch${TORCH_VERSION}-verl${VERL_VERSION}"

log() { printf '\033[1m[setup-verl]\033[0m %s\n' "$*"; }
pip_q() {
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
    | { grep -v -E "^WARNING: (Location '.*' is ignored|Running pip as)|requires .*, which is not installed|but you have .* which is incompatible" || true; }
}

if [[ -f "$stamp" && -x "$venv/bin/python" ]]; then
  log "ready (stamp $stamp); delete $venv to rebuild"
  exit 0
fi
start=$SECONDS
[[ -x "$venv/bin/python" ]] || { log "creating $venv"; mkdir -p "$(dirname "$venv")"; python3 -m venv "$venv"; }
log "installing torch==${TORCH_VERSION} (local CPU wheel)"
pip_q "torch==${TORCH_VERSION}"
log "installing verl==${VERL_VERSION} (its dataset classes) and what they import"
pip_q --no-deps "verl==${VERL_VERSION}"
pip_q "torch==${TORCH_VERSION}" "transformers>=5.5.3,<5.11" "tensordict>=0.8,<=0.10" datasets omegaconf pillow \
  numpy pandas pyarrow ray codetiming
log "checking: import verl's RLHFDataset"
"$venv/bin/python" -c "from verl.utils.dataset.rl_dataset import RLHFDataset; import verl; print('verl', verl.__version__)" \
  || { log "import failed in $venv; fix the error above, then re-run this script"; exit 1; }
touch "$stamp"
log "ready in $((SECONDS - start)) s: $venv/bin/python"
