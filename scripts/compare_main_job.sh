#!/usr/bin/env bash
# Did a code change alter the data the main job produces?
#
#     bash scripts/compare_main_job.sh BEFORE_REV [AFTER_DIR]
#
# Runs the main job (`python -m trajfactory.cli run RECIPE`) once with the code of BEFORE_REV (a commit of the
# repository this script lives in, checked out in a throwaway `git worktree`) and once with the code of AFTER_DIR
# (default: the repository this script lives in, uncommitted edits included; it is copied to a temp dir first,
# tracked and untracked-but-not-ignored files, so edits made while the job runs do not leak into it). Each run
# gets its own fresh temp output dir and Prefect home, uses the factory's own virtual environment
# (scripts/venv.sh, or $TRAJFACTORY_PY), and has its side's checkout first on PYTHONPATH. Then both datasets the
# main job writes (the SWE one, `dataset.name`, and the web one, `web.dataset_name`) are compared with
# scripts/compare_datasets.py (which masks timings, loopback ports, pytest durations, cost estimates and
# tutorial ids; see its docstring). Exit status: 0 when both datasets are identical, 1 when they differ, 2 when
# the harness or a run failed. COMPARE_KEEP=1 keeps the temp dir (outputs, logs, the model's request logs);
# COMPARE_RAW_PROMPTS=1 forwards prompts unmasked (a diagnostic: shows what the prompt masking of 1. buys).
#
# The main job is not deterministic run to run, even with identical code. What this harness pins, and why:
#  1. Model text. The default recipe serves the tiny random-weight model with vLLM and samples at temperature
#     > 0 without a seed, with concurrent requests (batching changes float results). Here ONE vLLM server
#     (the tiny model dir of the trajfactory cache, the factory's own server flags) serves both runs with
#     batching and prefix caching off (--max-num-seqs 1, --no-enable-prefix-caching, a whole prompt per
#     step), behind a loopback proxy that makes every /v1/chat/completions request greedy (temperature 0,
#     no seed) and masks in the prompt what scripts/compare_datasets.py masks in the data (`mask_text`:
#     throwaway loopback ports such as the web apps' and the docs server's, pytest run times, object
#     addresses), so the reply is a function of what the comparison compares. Each side's recipe is its own
#     embedded default recipe with `model:` pointed at the proxy and its outputs in that side's temp dir.
#  2. Stale bytecode in sandboxes. The oracle edits a file and re-runs the tests within the same second; a
#     .pyc of a same-size file can hide the edit. The fix is `"PYTHONDONTWRITEBYTECODE": "1"` in
#     SANDBOX_ENV (trajfactory/executors/docker.py); a side whose code lacks it gets exactly that one-line pin
#     in its throwaway copy (never in AFTER_DIR itself), and the output says so.
#  3. Tutorial ids hash a URI holding the docs server's random port: compare_datasets.py masks them.
set -euo pipefail

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,5\}//'; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
case "$1" in -h|--help) usage ;; esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"    # the harness: compare_datasets.py, venv.sh
BEFORE_REV="$1"
AFTER_DIR="$(cd "${2:-$HERE}" && pwd)"
CACHE="${TRAJFACTORY_CACHE:-$HOME/.cache/trajfactory}"
MODEL_DIR="${COMPARE_MODEL_DIR:-$CACHE/models/tiny-v1}"
VLLM_PY="${TRAJFACTORY_VLLM_PYTHON:-$CACHE/vllm-venv/bin/python}"

say() { printf '[compare] %s\n' "$*"; }
die() { printf '[compare] error: %s\n' "$*" >&2; exit 2; }

if [ -z "${TRAJFACTORY_PY:-}" ]; then
  pushd "$HERE" >/dev/null
  # shellcheck source=/dev/null
  source scripts/venv.sh
  popd >/dev/null
fi
[ -x "$TRAJFACTORY_PY" ] || die "no factory python at $TRAJFACTORY_PY: run scripts/setup.sh first"
[ -x "$VLLM_PY" ] || die "no vLLM python at $VLLM_PY: run scripts/setup-vllm.sh first"
[ -f "$MODEL_DIR/config.json" ] || die "no tiny model at $MODEL_DIR: run the main job once, or set COMPARE_MODEL_DIR"
BEFORE_SHA="$(git -C "$HERE" rev-parse --verify --quiet "$BEFORE_REV^{commit}")" \
  || die "$BEFORE_REV is not a commit of $(basename "$HERE")"
AFTER_DIR="$(git -C "$AFTER_DIR" rev-parse --show-toplevel 2>/dev/null)" || die "${2:-$HERE} is not a git checkout"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/compare-main-job.XXXXXX")"
VLLM_PID=""
PROXY_PID=""
RUN_PID=""
WORKTREE=""

stop_group() {  # SIGTERM a process group, SIGKILL it after 15 s
  local pgid="$1" i
  kill -TERM -- "-$pgid" 2>/dev/null || return 0
  for i in $(seq 150); do kill -0 -- "-$pgid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$pgid" 2>/dev/null || true
}
stop_proxy() {
  if [ -n "$PROXY_PID" ]; then kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; fi
  PROXY_PID=""
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$RUN_PID" ]; then stop_group "$RUN_PID"; wait "$RUN_PID" 2>/dev/null || true; fi
  stop_proxy
  if [ -n "$VLLM_PID" ]; then stop_group "$VLLM_PID"; wait "$VLLM_PID" 2>/dev/null || true; fi
  if [ -n "$WORKTREE" ]; then
    git -C "$HERE" worktree remove --force "$WORKTREE" 2>/dev/null || true
    git -C "$HERE" worktree prune 2>/dev/null || true
  fi
  if [ "${COMPARE_KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { "$TRAJFACTORY_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the two checkouts --------------------------------------------------------------------------------------
WORKTREE="$WORK/before/src"
git -C "$HERE" worktree add --detach --quiet "$WORKTREE" "$BEFORE_SHA"
mkdir -p "$WORK/after/src"
git -C "$AFTER_DIR" ls-files -z --cached --others --exclude-standard \
  | (cd "$AFTER_DIR" && "$TRAJFACTORY_PY" -c '
import os, sys
names = [n for n in sys.stdin.buffer.read().split(b"\0") if n and os.path.lexists(n)]  # deleted files: skipped
sys.stdout.buffer.write(b"\0".join(names))') \
  | tar -C "$AFTER_DIR" --null -T - -cf - | tar -C "$WORK/after/src" -xf -
say "BEFORE: $BEFORE_REV = $(git -C "$HERE" log -1 --format='%h %s' "$BEFORE_SHA" | cut -c1-100)"
say "AFTER:  $AFTER_DIR at $(git -C "$AFTER_DIR" log -1 --format=%h HEAD)$( [ -z "$(git --no-optional-locks -C "$AFTER_DIR" status --porcelain)" ] || echo ' + uncommitted changes')"

PIN_OLD='SANDBOX_ENV = {"PYTHONHASHSEED": "0"}'
PIN_NEW='SANDBOX_ENV = {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}'
pin_bytecode() {  # side: give the throwaway copy the one-line PYTHONDONTWRITEBYTECODE pin when it lacks it
  local side="$1" f="$WORK/$1/src/trajfactory/executors/docker.py"
  if [ ! -f "$f" ]; then
    say "$side: WARNING: no trajfactory/executors/docker.py; PYTHONDONTWRITEBYTECODE not pinned (stale-.pyc race possible)"
  elif grep -q PYTHONDONTWRITEBYTECODE "$f"; then
    say "$side: sandboxes already run with PYTHONDONTWRITEBYTECODE=1 (no pin needed)"
  elif [ "$(grep -cxF "$PIN_OLD" "$f")" = 1 ]; then
    PIN_OLD="$PIN_OLD" PIN_NEW="$PIN_NEW" "$TRAJFACTORY_PY" -c '
import os, sys
p = sys.argv[1]; s = open(p).read()
open(p, "w").write(s.replace(os.environ["PIN_OLD"] + "\n", os.environ["PIN_NEW"] + "\n", 1))' "$f"
    say "$side: PINNED trajfactory/executors/docker.py (throwaway copy only): $PIN_NEW"
  else
    say "$side: WARNING: SANDBOX_ENV line not found in docker.py; PYTHONDONTWRITEBYTECODE not pinned (stale-.pyc race possible)"
  fi
}
pin_bytecode before
pin_bytecode after

# --- one vLLM server for both runs: no batching, no prefix cache ------------------------------------------
VLLM_PORT="$(free_port)"
TOOL_FLAGS=()
# as trajfactory/models/server.py does: the tool flags when that vLLM has the hermes parser (read from its source)
if "$VLLM_PY" -c '
import importlib.util as u, pathlib, sys
root = pathlib.Path(u.find_spec("vllm").submodule_search_locations[0])
sys.exit(0 if any(root.rglob("hermes_tool_parser.py")) and any(
    "enable_auto_tool_choice" in p.read_text(errors="replace") for p in root.glob("entrypoints/**/cli_args.py")) else 1)
' 2>/dev/null; then
  TOOL_FLAGS=(--enable-auto-tool-choice --tool-call-parser hermes)
fi
say "starting vLLM ($MODEL_DIR) on 127.0.0.1:$VLLM_PORT: --max-num-seqs 1, no prefix caching"
HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 setsid "$VLLM_PY" -m vllm.entrypoints.openai.api_server \
  --model "$MODEL_DIR" --served-model-name tiny --host 127.0.0.1 --port "$VLLM_PORT" \
  --max-model-len 2048 --gpu-memory-utilization 0.1 --enforce-eager --seed 0 \
  --max-num-seqs 1 --max-num-batched-tokens 2048 --no-enable-prefix-caching "${TOOL_FLAGS[@]}" \
  </dev/null >"$WORK/vllm.log" 2>&1 &
VLLM_PID=$!
"$TRAJFACTORY_PY" - "$VLLM_PORT" "$VLLM_PID" <<'PY' || { tail -40 "$WORK/vllm.log" >&2; die "vLLM did not start"; }
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("vLLM exited")
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).status == 200:
            sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit("vLLM did not answer within 600 s")
PY

# --- the greedy proxy (stdlib; started per run on the same port, each run with its own request log) --------
cat >"$WORK/proxy.py" <<'PY'
"""Loopback proxy to vLLM: every /v1/chat/completions request is made greedy (temperature 0, no seed) and
its messages' text masked with compare_datasets.mask_text (unless "raw"); everything else is forwarded untouched.
Each such request, as forwarded, and its reply are appended to the log (JSON lines)."""
import hashlib, http.client, json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

listen, upstream, log_path, scripts_dir, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
sys.path.insert(0, scripts_dir)
from compare_datasets import mask_text  # noqa: E402

lock = threading.Lock()
log = open(log_path, "a")


def masked(value):
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    if isinstance(value, str) and not value.startswith("data:"):  # images (data URLs) untouched
        return mask_text(value)
    return value


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _forward(self, method):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        entry = None
        if method == "POST" and self.path.rstrip("/").endswith("/chat/completions"):
            req = json.loads(body)
            req["temperature"] = 0
            req.pop("seed", None)
            if mode != "raw":
                req["messages"] = masked(req.get("messages", []))
            body = json.dumps(req).encode()
            entry = {"prompt_sha": hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()[:16],
                     "request": req}
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization", "accept")}
        headers["Content-Length"] = str(len(body))
        try:
            conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=3600)
            conn.request(method, self.path, body=body if method == "POST" else None, headers=headers)
            resp = conn.getresponse()
            status, ctype, data = resp.status, resp.getheader("Content-Type", "application/json"), resp.read()
            conn.close()
        except OSError as exc:
            status, ctype, data = 502, "application/json", json.dumps({"error": {"message": f"proxy: {exc}"}}).encode()
        if entry is not None:
            try:
                reply = json.loads(data)
                reply = {"choices": reply.get("choices"), "usage": reply.get("usage")} if "choices" in reply else reply
            except ValueError:
                reply = data.decode(errors="replace")
            entry.update(status=status, reply=reply)
            with lock:
                log.write(json.dumps(entry) + "\n")
                log.flush()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._forward("GET")

    def do_POST(self):
        self._forward("POST")


class Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


Server(("127.0.0.1", listen), Proxy).serve_forever()
PY
PROXY_PORT="$(free_port)"
if [ "${COMPARE_RAW_PROMPTS:-0}" = 1 ]; then
  say "model proxy on 127.0.0.1:$PROXY_PORT: greedy; prompts forwarded UNMASKED (COMPARE_RAW_PROMPTS=1)"
else
  say "model proxy on 127.0.0.1:$PROXY_PORT: greedy; prompts masked like the comparison (ports, pytest times, addresses)"
fi
start_proxy() {  # log file
  "$TRAJFACTORY_PY" "$WORK/proxy.py" "$PROXY_PORT" "$VLLM_PORT" "$1" "$HERE/scripts" \
    "$([ "${COMPARE_RAW_PROMPTS:-0}" = 1 ] && echo raw || echo masked)" &
  PROXY_PID=$!
  "$TRAJFACTORY_PY" - "$PROXY_PORT" <<'PY' || die "the model proxy did not start"
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/models", timeout=5)
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
PY
}

# --- the two runs -----------------------------------------------------------------------------------------
run_side() {  # side: write its recipe, run the main job, note where its datasets are
  local side="$1" dir="$WORK/$1" start rc
  mkdir -p "$dir/run" "$dir/prefect"
  "$TRAJFACTORY_PY" - "$dir" "$PROXY_PORT" >"$dir/datasets.txt" <<'PY'
import sys, yaml
from pathlib import Path
dir, port = Path(sys.argv[1]), sys.argv[2]
r = yaml.safe_load((dir / "src/trajfactory/data/recipes/default.yaml").read_text())
r["model"] = {"serve": None, "base_url": f"http://127.0.0.1:{port}/v1", "name": "tiny", "max_concurrency": 8,
              "max_model_len": 2048, "gpu_hour_price": 2.5}
out = dir / "out"
r["work_dir"] = str(out / "work")
r["dataset"]["root"] = str(out / "datasets")
web = r.get("web") or {}
if "work_dir" in web:
    web["work_dir"] = str(out / "web-work")
if "dataset_root" in web:
    web["dataset_root"] = str(out / "datasets")
(dir / "recipe.yaml").write_text(yaml.safe_dump(r, sort_keys=False))
print(f"swe\t{r['dataset']['name']}\t{r['dataset']['root']}")
if web.get("dataset_name"):
    print(f"web\t{web['dataset_name']}\t{web.get('dataset_root', r['dataset']['root'])}")
PY
  start_proxy "$dir/model-requests.jsonl"
  say "$side: running the main job (log: $dir/run.log) ..."
  start=$SECONDS
  rc=0
  # its own process group (stopped whole if this script is interrupted); waited for in the background so
  # that a signal to this script is handled at once
  (cd "$dir/run" && PYTHONPATH="$dir/src" PREFECT_HOME="$dir/prefect" \
     exec setsid "$TRAJFACTORY_PY" -m trajfactory.cli run "$dir/recipe.yaml") </dev/null >"$dir/run.log" 2>&1 &
  RUN_PID=$!
  wait "$RUN_PID" || rc=$?
  RUN_PID=""
  stop_proxy
  say "$side: exit $rc after $((SECONDS - start)) s, $(wc -l <"$dir/model-requests.jsonl") model requests"
  if [ "$rc" != 0 ]; then
    tail -30 "$dir/run.log" >&2
    COMPARE_KEEP=1
    die "the $side run failed (exit $rc)"
  fi
}
run_side before
run_side after

# --- compare ----------------------------------------------------------------------------------------------
version_dir() {  # root name: the one version the run wrote
  local found
  found="$(ls -d "$1/$2"/v*/ 2>/dev/null | sed 's:/$::')"
  [ "$(printf '%s\n' "$found" | grep -c .)" = 1 ] || { echo ""; return; }
  printf '%s\n' "$found"
}
status=0
summary=()
for kind in swe web; do
  read -r _ b_name b_root < <(grep "^$kind	" "$WORK/before/datasets.txt" || echo "- - -")
  read -r _ a_name a_root < <(grep "^$kind	" "$WORK/after/datasets.txt" || echo "- - -")
  b_ver="$(version_dir "$b_root" "$b_name")"
  a_ver="$(version_dir "$a_root" "$a_name")"
  echo
  say "$kind dataset: BEFORE $b_name/$(basename "${b_ver:-?}") vs AFTER $a_name/$(basename "${a_ver:-?}")"
  if [ -z "$b_ver" ] || [ -z "$a_ver" ]; then
    say "$kind dataset: missing on one side (BEFORE: ${b_ver:-none}, AFTER: ${a_ver:-none})"
    summary+=("$kind ($a_name): MISSING"); status=1; continue
  fi
  rc=0
  "$TRAJFACTORY_PY" "$HERE/scripts/compare_datasets.py" "$b_ver" "$a_ver" || rc=$?
  case "$rc" in
    0) summary+=("$kind ($a_name): identical") ;;
    1) summary+=("$kind ($a_name): DIFFERS"); [ "$status" = 2 ] || status=1 ;;
    *) summary+=("$kind ($a_name): comparison failed (exit $rc)"); status=2 ;;
  esac
done
echo
for line in "${summary[@]}"; do say "$line"; done
if [ "$status" = 0 ]; then say "both datasets identical"; else say "the datasets differ"; fi
exit "$status"
