#!/usr/bin/env bash
# Installs everything trajfactory needs on a fresh Debian machine (root), idempotently:
# Debian packages (Docker, debootstrap, bubblewrap, git, Chromium, the image registry cluster nodes share), a running
# Docker engine, the factory's own virtual environment (made from the declared dependencies alone), the locally built
# base image every sandbox image starts from, and the CPU vLLM environment.
#
# The factory's venv never sees the machine's site-packages, so a package installed by hand cannot hide a missing
# dependency. It lives in the trajfactory cache, keyed by pyproject.toml and the Python version (a dependency change
# makes a new one from scratch; a second run or a fresh clone reuses it), and `.venv` in the checkout links to it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
# pip's notes about the machine's unused local index folders are noise; real errors still show and fail.
quiet_pip() { grep -v -E "^WARNING: (Location '.*' is ignored|Running pip as)" || true; }

need_apt=()
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
command -v git >/dev/null 2>&1 || need_apt+=(git)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)  # web sandboxes: Playwright drives the system browser
command -v pkill >/dev/null 2>&1 || need_apt+=(procps)  # the fault tests find and kill processes by name
command -v mount >/dev/null 2>&1 || need_apt+=(mount)  # the full-disk test mounts a small tmpfs
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)  # images shared by cluster nodes
# the local sandbox backend builds a project's C extensions with the machine's compiler, as the base image does
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)  # Cython modules built as C++ (frozenlist)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_path("include"), "Python.h")))' \
  || need_apt+=(python3-dev)
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

stamp="$TRAJFACTORY_VENV/.trajfactory-ready"
if [[ ! -f "$stamp" ]]; then
  log "creating the factory's virtual environment $TRAJFACTORY_VENV (declared dependencies only)"
  rm -rf "$TRAJFACTORY_VENV"
  mkdir -p "$(dirname "$TRAJFACTORY_VENV")"
  python3 -m venv "$TRAJFACTORY_VENV"
  # The CPU build first, so the torch requirement never pulls the CUDA build and its GBs of packages.
  "$TRAJFACTORY_PY" -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | quiet_pip
  "$TRAJFACTORY_PY" -m pip install -q --disable-pip-version-check -e ".[test,cluster]" 2>&1 | quiet_pip
  "$TRAJFACTORY_PY" -c "import trajfactory, prefect, docker, git, pyarrow, pytest_cov, importlinter, ray, grpc" \
    || { log "Python install failed"; exit 1; }
  touch "$stamp"
fi
# The venv is shared by clones: point its editable install at this checkout (a few seconds, no dependency changes).
here="$(pwd -P)/trajfactory/__init__.py"
# from / : the current directory must not answer the import, only the installed package
if [[ "$(cd / && "$TRAJFACTORY_PY" -c 'import trajfactory; print(trajfactory.__file__)' 2>/dev/null)" != "$here" ]]; then
  log "installing this checkout into $TRAJFACTORY_VENV"
  "$TRAJFACTORY_PY" -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | quiet_pip
fi
ln -sfn "$TRAJFACTORY_VENV" .venv

if docker info >/dev/null 2>&1; then
  log "ensuring the local base image"
  "$TRAJFACTORY_PY" -m trajfactory.cli sandbox base-image
fi
log "ensuring the CPU vLLM environment"
bash scripts/setup-vllm.sh
log "ensuring the verl environment (its dataset class loads the factory's RL rows in the tests)"
bash scripts/setup-verl.sh
log "ready: activate the factory's environment with \`. .venv/bin/activate\`"
