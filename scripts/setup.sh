#!/usr/bin/env bash
# Installs everything trajfactory needs on a fresh Debian machine (root), idempotently:
# Debian packages (Docker, debootstrap, bubblewrap, git, Chromium), a running Docker engine, the Python package with its test extras,
# and the locally built base image every sandbox image starts from.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

need_apt=()
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
command -v git >/dev/null 2>&1 || need_apt+=(git)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)  # web sandboxes: Playwright drives the system browser
if ((${#need_apt[@]})); then
  log "installing Debian packages: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log "no Docker engine answers; starting dockerd"
  mkdir -p /var/log
  setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/dockerd.log (the local sandbox backend will be used)"; }
fi

stamp=".cache/setup/pip-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -f "$stamp" ]] || ! python3 -c "import trajfactory" >/dev/null 2>&1; then
  log "installing the trajfactory Python package (with test extras)"
  # The CPU build first, so the torch requirement never pulls the CUDA build and its GBs of packages.
  python3 -c "import torch" >/dev/null 2>&1 || \
    python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v -E "^WARNING: (Location|Running pip)" || true
  python3 -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v -E "^WARNING: (Location|Running pip)" || true
  python3 -c "import trajfactory, prefect, docker, git, pyarrow" || { log "Python install failed"; exit 1; }
  mkdir -p "$(dirname "$stamp")" && touch "$stamp"
fi

if docker info >/dev/null 2>&1; then
  log "ensuring the local base image"
  python3 -m trajfactory.cli sandbox base-image
fi
log "ensuring the CPU vLLM environment"
bash scripts/setup-vllm.sh
log "ready"
