#!/usr/bin/env bash
# What can be checked of the GPU deployment on ONE GPU, with no network, in under 10 minutes.
#
#   driver   nvidia-smi sees a GPU (name, memory, driver)
#   cuda     the CUDA driver API initialises and counts the devices (libcuda via ctypes)
#   specs    every deploy/gpu-*.yaml renders and its repository is consistent (tests/test_gpu_render.py
#            and the other GPU-path tests when pytest is there; else a plain render)
#   trtllm   tensorrt_llm's version, trtllm-build, tritonserver with the tensorrtllm backend
#   engine   a tiny random-weight Llama (scripts/make_tiny_llama.py) built into an engine by
#            scripts/build_engines.py from deploy/gpu-1gpu-smoke.yaml, then built again: up to date
#   serve    that repository (four TensorRT-LLM ensembles on GPU 0 + the router) loads in orchestrator mode
#            (scripts/serve_gpu.sh), and scripts/gpu_smoke.py checks engines and router end to end
#   engines  the real specs' engines, where built and where this machine has the GPUs for them
#
# Each stage prints PASS, SKIP (with why) or FAIL; the exit code is 1 if any stage failed. The stages
# from "trtllm" on need NVIDIA's Triton TRT-LLM container (or tensorrt_llm + tritonserver installed):
#   scripts/trtllm_container.sh scripts/gpu_check.sh
# usage: scripts/gpu_check.sh            env: PYTHON (python3), HTTP_PORT (18000), BUDGET_S (540)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
OUT="$ROOT/out/gpu-check"
mkdir -p "$OUT"
PY=${PYTHON:-python3}
VENV_PY="$ROOT/.venv/bin/python"
HTTP_PORT=${HTTP_PORT:-18000}
BUDGET_S=${BUDGET_S:-540}
SPEC="$ROOT/deploy/gpu-1gpu-smoke.yaml"
failed=0
declare -a summary=()

say() { printf '%s\n' "$*"; }
pass() { summary+=("PASS  $1: $2"); say "PASS  $1: $2"; }
skip() { summary+=("SKIP  $1: $2"); say "SKIP  $1: $2"; }
fail() { summary+=("FAIL  $1: $2"); say "FAIL  $1: $2"; failed=1; }
left() { echo $((BUDGET_S - SECONDS)); }

# A Python with PyYAML and numpy for rendering: the project venv if it runs here, else $PY.
render_py=$PY
if [ -x "$VENV_PY" ] && "$VENV_PY" -c 'import yaml, numpy' >/dev/null 2>&1; then
  render_py=$VENV_PY
fi

say "== GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -n)); logs in $OUT"

# --- driver ---------------------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1 && gpus=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1); then
  ngpus=$(printf '%s\n' "$gpus" | grep -c .)
  pass driver "$ngpus GPU(s): $(printf '%s' "$gpus" | head -n 1)"
else
  ngpus=0
  fail driver "nvidia-smi missing or failing: ${gpus:-not found}"
fi

# --- cuda -------------------------------------------------------------------------------------------
if cuda=$("$PY" - <<'EOF' 2>&1
import ctypes
lib = ctypes.CDLL("libcuda.so.1")
rc = lib.cuInit(0)
if rc != 0:
    raise SystemExit(f"cuInit returned {rc}")
n, v = ctypes.c_int(), ctypes.c_int()
lib.cuDeviceGetCount(ctypes.byref(n))
lib.cuDriverGetVersion(ctypes.byref(v))
print(f"{n.value} device(s), CUDA driver API {v.value // 1000}.{v.value % 1000 // 10}")
EOF
); then
  pass cuda "$cuda"
else
  fail cuda "$(printf '%s' "$cuda" | tail -n 1)"
fi

# --- specs --------------------------------------------------------------------------------------------
if [ "$render_py" = "$VENV_PY" ] && "$VENV_PY" -c 'import pytest, tritonclient' >/dev/null 2>&1; then
  if timeout 240 "$VENV_PY" -m pytest -p no:cacheprovider tests/test_gpu_render.py tests/test_trtllm_models.py \
      tests/test_build_engines.py >"$OUT/specs.log" 2>&1; then
    pass specs "$(tail -n 1 "$OUT/specs.log")"
  else
    fail specs "pytest failed: $(tail -n 1 "$OUT/specs.log") (see $OUT/specs.log)"
  fi
else
  ok=1
  for spec in deploy/gpu-*.yaml; do
    name=$(basename "$spec" .yaml)
    if ! "$render_py" scripts/render_repository.py "$spec" --out "$OUT/render/$name" --engines-only \
        >>"$OUT/specs.log" 2>&1; then
      ok=0
    fi
  done
  if [ "$ok" = 1 ]; then
    pass specs "every deploy/gpu-*.yaml renders (no pytest here: the consistency tests did not run)"
  else
    fail specs "a spec did not render (see $OUT/specs.log)"
  fi
fi

# --- trtllm ---------------------------------------------------------------------------------------------
trt_version=$("$PY" -c 'import importlib.metadata as m; print(m.version("tensorrt_llm"))' 2>/dev/null || true)
have_server=0
if [ -x /opt/tritonserver/bin/tritonserver ] && [ -d /opt/tritonserver/backends/tensorrtllm ]; then
  have_server=1
fi
if [ -z "$trt_version" ]; then
  skip trtllm "tensorrt_llm is not installed: run inside NVIDIA's Triton TRT-LLM container (scripts/trtllm_container.sh scripts/gpu_check.sh)"
elif ! command -v trtllm-build >/dev/null 2>&1; then
  fail trtllm "tensorrt_llm $trt_version but no trtllm-build on PATH"
elif [ "$have_server" = 0 ]; then
  fail trtllm "tensorrt_llm $trt_version, but no /opt/tritonserver with backends/tensorrtllm"
else
  pass trtllm "tensorrt_llm $trt_version, trtllm-build, tritonserver with the tensorrtllm backend"
fi

# --- engine -------------------------------------------------------------------------------------------------
engine_ok=0
if [ -z "$trt_version" ] || [ "$have_server" = 0 ] || [ "$ngpus" -lt 1 ]; then
  skip engine "needs the trtllm stage and a GPU"
elif ! "$PY" -c 'import torch, transformers, tokenizers, yaml' >/dev/null 2>&1; then
  skip engine "no torch/transformers/tokenizers/yaml in $PY to write the tiny checkpoint"
else
  t0=$SECONDS
  if ! timeout 120 "$PY" scripts/make_tiny_llama.py --spec "$SPEC" >"$OUT/engine.log" 2>&1; then
    fail engine "scripts/make_tiny_llama.py failed (see $OUT/engine.log)"
  elif ! timeout "$(left)" "$PY" scripts/build_engines.py "$SPEC" >>"$OUT/engine.log" 2>&1; then
    fail engine "scripts/build_engines.py failed (see $OUT/engine.log)"
  elif ! "$PY" scripts/build_engines.py "$SPEC" 2>&1 | tee -a "$OUT/engine.log" | grep -q "0 engine(s) built, 1 up to date"; then
    fail engine "built, but a second run rebuilt it (not idempotent; see $OUT/engine.log)"
  else
    engine_ok=1
    pass engine "tiny Llama built in $((SECONDS - t0)) s; a second build run was a no-op"
  fi
fi

# --- serve --------------------------------------------------------------------------------------------------
server_pid=""
stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -INT "$server_pid" 2>/dev/null
    for _ in $(seq 1 30); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 1
    done
    # the server leads its own process group (setsid): its MPI workers and Python stubs go with it
    kill -KILL -- "-$server_pid" 2>/dev/null
  fi
  server_pid=""
}
trap stop_server EXIT

if [ "$engine_ok" = 0 ]; then
  skip serve "needs the engine stage"
elif [ "$(left)" -lt 120 ]; then
  skip serve "less than 2 minutes of the ${BUDGET_S} s budget left"
elif ! "$render_py" scripts/render_repository.py "$SPEC" --out "$OUT/repo" >"$OUT/serve.log" 2>&1; then
  fail serve "render failed (see $OUT/serve.log)"
else
  HTTP_PORT=$HTTP_PORT GRPC_PORT=$((HTTP_PORT + 1)) METRICS_PORT=$((HTTP_PORT + 2)) \
    setsid scripts/serve_gpu.sh "$OUT/repo" >>"$OUT/serve.log" 2>&1 &
  server_pid=$!
  ready=0
  deadline=$((SECONDS + $(left) - 60))
  while [ $SECONDS -lt $deadline ] && kill -0 "$server_pid" 2>/dev/null; do
    if "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$HTTP_PORT/v2/health/ready', timeout=2)" \
        >/dev/null 2>&1; then
      ready=1
      break
    fi
    sleep 2
  done
  if [ "$ready" = 0 ]; then
    fail serve "the repository did not load (see $OUT/serve.log: $(grep -m 1 -iE 'error|failed' "$OUT/serve.log" | cut -c1-160))"
  elif timeout 120 "$PY" scripts/gpu_smoke.py "http://127.0.0.1:$HTTP_PORT" --json "$OUT/responses.json" \
      >"$OUT/smoke.log" 2>&1; then
    pass serve "repository loaded; $(tail -n 1 "$OUT/smoke.log") (engines, log-probs, router)"
  else
    fail serve "$(grep -c '^FAIL' "$OUT/smoke.log") smoke check(s) failed: $(grep -m 1 '^FAIL' "$OUT/smoke.log" | cut -c1-160) (see $OUT/smoke.log)"
  fi
  stop_server
fi

# --- engines ---------------------------------------------------------------------------------------------------
for spec in deploy/gpu-*.yaml; do
  name=$(basename "$spec" .yaml)
  [ "$name" = gpu-1gpu-smoke ] && continue
  need=$(grep -m 1 -oE 'gpus: *[0-9]+' "$spec" | grep -oE '[0-9]+')
  if [ "${need:-0}" -gt "$ngpus" ]; then
    skip "engines $name" "needs $need GPUs; this machine has $ngpus (serve it with make serve-gpu GPU_SPEC=$spec)"
  else
    skip "engines $name" "not started by this check: make engines / make serve-gpu GPU_SPEC=$spec"
  fi
done

say ""
say "== summary (${SECONDS} s)"
printf '%s\n' "${summary[@]}"
exit "$failed"
