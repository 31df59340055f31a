#!/usr/bin/env bash
# The first thing to run on a GPU node: what can be checked of the GPU deployment on ONE GPU, with no network,
# in under 10 minutes. Each stage prints what it proved (PASS), or why it did not run (SKIP); the check stops
# at the first stage that FAILs, with the cause in one line (the full log is in out/gpu-check/).
#
#   driver   nvidia-smi sees a GPU (name, memory, driver)
#   cuda     the CUDA driver API initialises and counts the devices (libcuda via ctypes)
#   embedder the semantic task's embedder on the GPU (onnxruntime-gpu's CUDA provider) equals the CPU's within
#            1e-4 (scripts/embedder_gpu_check.py); SKIP without onnxruntime-gpu
#   specs    every deploy/gpu-*.yaml renders and its configs hold against the facts of the tensorrtllm backend
#            they target (deploy/trtllm_backend_facts.json); with pytest, the GPU-path tests run too
#   trtllm   tensorrt_llm's version is one the renderer has backend facts for, trtllm-build and tritonserver with
#            the tensorrtllm backend are there, and (in NVIDIA's container) the container's own tensorrt_llm
#            template declares the request names and parameters the facts say its backend reads
#   engine   a tiny random-weight Llama (scripts/make_tiny_llama.py) built into an engine by
#            scripts/build_engines.py from deploy/gpu-1gpu-smoke.yaml, then built again: up to date
#   serve    that repository (four TensorRT-LLM ensembles on GPU 0 + the router) loads in orchestrator mode
#            (scripts/serve_gpu.sh), and scripts/gpu_smoke.py checks engines and router end to end
#   engines  the real specs: what to run next for them (not started by this check)
#
# Exit code: 0 when no stage failed (stages may SKIP), 1 at the first failing stage. The stages from "trtllm"
# on need NVIDIA's Triton TRT-LLM container (or tensorrt_llm + tritonserver installed):
#   scripts/trtllm_container.sh scripts/gpu_check.sh
# usage: scripts/gpu_check.sh   env: PYTHON (python3), HTTP_PORT (18000), BUDGET_S (540), GPU_CHECK_OUT (out/gpu-check)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
OUT=${GPU_CHECK_OUT:-$ROOT/out/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
VENV_PY="$ROOT/.venv/bin/python"
HTTP_PORT=${HTTP_PORT:-18000}
BUDGET_S=${BUDGET_S:-540}
SPEC="$ROOT/deploy/gpu-1gpu-smoke.yaml"
declare -a summary=()
server_pid=""

say() { printf '%s\n' "$*"; }
pass() { summary+=("PASS  $1: $2"); say "PASS  $1: $2"; }
skip() { summary+=("SKIP  $1: $2"); say "SKIP  $1: $2"; }
left() { echo $((BUDGET_S - SECONDS)); }
print_summary() {
  say ""
  say "== summary (${SECONDS} s; logs in $OUT)"
  printf '%s\n' "${summary[@]}"
}
# FAIL: the stage, what failed, the cause (one line of its log), then stop.
fail() {
  local stage=$1 what=$2 log=${3:-}
  summary+=("FAIL  $stage: $what")
  say "FAIL  $stage: $what"
  if [ -n "$log" ] && [ -s "$log" ]; then
    say "      cause: $(cause "$log")"
    say "      log:   $log"
  fi
  stop_server
  print_summary
  say "stopped at stage '$stage'; the stages after it did not run"
  exit 1
}
# The most telling line of a log, never a stack trace: the first Triton error line (E<date>) or line naming the
# problem, else the last line that is not part of a Python traceback.
cause() {
  local log=$1 line
  line=$(awk '!found && /^E[0-9][0-9][0-9][0-9] |Cannot find parameter|unsupported head_size|^error:|^build_engines: error:/ {
                found = 1; printf "%s", $0; next }
              found && /^  - / { printf " %s", $0; exit }
              found { exit }' "$log")
  if [ -z "$line" ]; then
    line=$(grep -v -E '^Traceback|^[[:space:]]+|^[[:space:]]*$' "$log" | tail -n 1)
  fi
  printf '%s' "${line:0:400}"
}
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

# A Python with PyYAML and numpy for rendering: the project venv if it runs here, else $PY.
render_py=$PY
if [ -x "$VENV_PY" ] && "$VENV_PY" -c 'import yaml, numpy' >/dev/null 2>&1; then
  render_py=$VENV_PY
fi

say "== GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -n)); logs in $OUT"

# --- driver ---------------------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1 \
    && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/driver.log" 2>&1; then
  ngpus=$(grep -c . "$OUT/driver.log")
  pass driver "nvidia-smi sees $ngpus GPU(s): $(head -n 1 "$OUT/driver.log")"
else
  command -v nvidia-smi >/dev/null 2>&1 || echo "nvidia-smi not found (no NVIDIA driver, or not run with --gpus)" >"$OUT/driver.log"
  fail driver "no GPU visible" "$OUT/driver.log"
fi

# --- cuda -------------------------------------------------------------------------------------------
if "$PY" - >"$OUT/cuda.log" 2>&1 <<'EOF'
import ctypes
try:
    lib = ctypes.CDLL("libcuda.so.1")
except OSError as exc:
    raise SystemExit(f"error: libcuda.so.1 cannot be loaded ({exc})")
rc = lib.cuInit(0)
if rc != 0:
    raise SystemExit(f"error: cuInit returned {rc}")
n, v = ctypes.c_int(), ctypes.c_int()
lib.cuDeviceGetCount(ctypes.byref(n))
lib.cuDriverGetVersion(ctypes.byref(v))
print(f"{n.value} device(s), CUDA driver API {v.value // 1000}.{v.value % 1000 // 10}")
EOF
then
  pass cuda "the CUDA driver initialises: $(tail -n 1 "$OUT/cuda.log")"
else
  fail cuda "the CUDA driver API does not initialise" "$OUT/cuda.log"
fi

# --- embedder ---------------------------------------------------------------------------------------
# The semantic task's embedder on this GPU (ONNX Runtime's CUDA provider) against the CPU: a SKIP without
# onnxruntime-gpu, since only deployments with `embedder: {device: gpu}` need it.
PYTHONPATH="$ROOT/python_backend" "$render_py" scripts/embedder_gpu_check.py >"$OUT/embedder.log" 2>&1
case $? in
  0) pass embedder "$(tail -n 1 "$OUT/embedder.log" | cut -c1-200)" ;;
  3) skip embedder "$(tail -n 1 "$OUT/embedder.log" | cut -c1-200)" ;;
  *) fail embedder "the embedder on the GPU does not match the CPU" "$OUT/embedder.log" ;;
esac

# --- specs --------------------------------------------------------------------------------------------
: >"$OUT/specs.log"
if [ "$render_py" = "$VENV_PY" ] && "$VENV_PY" -c 'import pytest, tritonclient' >/dev/null 2>&1; then
  if timeout 300 "$VENV_PY" -m pytest -q -p no:cacheprovider tests/test_trtllm_facts.py tests/test_gpu_render.py \
      tests/test_trtllm_models.py tests/test_build_engines.py >"$OUT/specs.log" 2>&1; then
    pass specs "every GPU spec renders; its configs hold against the backend facts; GPU-path tests: $(tail -n 1 "$OUT/specs.log")"
  else
    first=$(grep -m 1 -E '^(FAILED|ERROR) ' "$OUT/specs.log" | cut -c1-200)
    fail specs "the GPU-path tests failed${first:+: $first}" "$OUT/specs.log"
  fi
else
  for spec in deploy/gpu-*.yaml; do
    name=$(basename "$spec" .yaml)
    if ! "$render_py" scripts/render_repository.py "$spec" --out "$OUT/render/$name" --engines-only \
        >>"$OUT/specs.log" 2>&1; then
      fail specs "$spec does not render" "$OUT/specs.log"
    fi
  done
  pass specs "every deploy/gpu-*.yaml renders and its configs hold against the backend facts (no pytest here: the tests did not run)"
fi

# --- trtllm ---------------------------------------------------------------------------------------------
trt_version=$("$PY" -c 'import importlib.metadata as m; print(m.version("tensorrt_llm"))' 2>/dev/null || true)
have_trtllm=0
if [ -z "$trt_version" ]; then
  skip trtllm "tensorrt_llm is not installed: run inside NVIDIA's Triton TRT-LLM container (scripts/trtllm_container.sh scripts/gpu_check.sh)"
elif ! command -v trtllm-build >/dev/null 2>&1; then
  echo "tensorrt_llm $trt_version is installed but trtllm-build is not on PATH" >"$OUT/trtllm.log"
  fail trtllm "no trtllm-build" "$OUT/trtllm.log"
elif [ ! -x /opt/tritonserver/bin/tritonserver ] || [ ! -d /opt/tritonserver/backends/tensorrtllm ]; then
  echo "tensorrt_llm $trt_version is installed but there is no /opt/tritonserver with backends/tensorrtllm" >"$OUT/trtllm.log"
  fail trtllm "no tritonserver with the tensorrtllm backend" "$OUT/trtllm.log"
elif ! PYTHONPATH="$ROOT/python_backend" "$render_py" -m pyramid_deploy.trtllm_facts --version "$trt_version" \
    >"$OUT/trtllm.log" 2>&1; then
  fail trtllm "tensorrt_llm $trt_version: the backend facts do not cover this container" "$OUT/trtllm.log"
else
  have_trtllm=1
  pass trtllm "tensorrt_llm $trt_version, trtllm-build, tritonserver + tensorrtllm backend; $(tail -n 1 "$OUT/trtllm.log" | cut -c1-200)"
fi

# --- engine -------------------------------------------------------------------------------------------------
engine_ok=0
if [ "$have_trtllm" = 0 ]; then
  skip engine "needs the trtllm stage"
elif ! "$PY" -c 'import torch, transformers, tokenizers, yaml' >/dev/null 2>&1; then
  skip engine "no torch/transformers/tokenizers/yaml in $PY to write the tiny checkpoint"
else
  t0=$SECONDS
  if ! timeout 120 "$PY" scripts/make_tiny_llama.py --spec "$SPEC" >"$OUT/engine.log" 2>&1; then
    fail engine "scripts/make_tiny_llama.py did not write the tiny checkpoint" "$OUT/engine.log"
  fi
  if ! timeout "$(left)" "$PY" scripts/build_engines.py "$SPEC" >>"$OUT/engine.log" 2>&1; then
    fail engine "scripts/build_engines.py did not build the tiny engine" "$OUT/engine.log"
  fi
  "$PY" scripts/build_engines.py "$SPEC" >"$OUT/engine-again.log" 2>&1
  if ! grep -q "0 engine(s) built, 1 up to date" "$OUT/engine-again.log"; then
    fail engine "built, but a second run rebuilt it (the build is not idempotent)" "$OUT/engine-again.log"
  fi
  engine_ok=1
  pass engine "tiny Llama (head_dim 64) converted and built into an engine in $((SECONDS - t0)) s; a second build run was a no-op"
fi

# --- serve --------------------------------------------------------------------------------------------------
if [ "$engine_ok" = 0 ]; then
  skip serve "needs the engine stage"
elif [ "$(left)" -lt 120 ]; then
  skip serve "less than 2 minutes of the ${BUDGET_S} s budget left"
else
  if ! "$render_py" scripts/render_repository.py "$SPEC" --out "$OUT/repo" >"$OUT/serve.log" 2>&1; then
    fail serve "the smoke repository does not render here" "$OUT/serve.log"
  fi
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
    fail serve "the repository did not load in orchestrator mode" "$OUT/serve.log"
  fi
  if ! timeout 120 "$PY" scripts/gpu_smoke.py "http://127.0.0.1:$HTTP_PORT" --json "$OUT/responses.json" \
      >"$OUT/smoke.log" 2>&1; then
    grep -E '^FAIL' "$OUT/smoke.log" >"$OUT/smoke-failed.log"
    fail serve "$(grep -c '^FAIL' "$OUT/smoke.log") smoke check(s) failed" "$OUT/smoke-failed.log"
  fi
  pass serve "the repository loaded in orchestrator mode; $(tail -n 1 "$OUT/smoke.log") (engines, greedy log-probs, a too-long prompt, the router)"
  stop_server
fi

# --- engines ---------------------------------------------------------------------------------------------------
ngpus=${ngpus:-0}
for spec in deploy/gpu-*.yaml; do
  name=$(basename "$spec" .yaml)
  [ "$name" = gpu-1gpu-smoke ] && continue
  need=$(grep -m 1 -oE 'gpus: *[0-9]+' "$spec" | grep -oE '[0-9]+')
  if [ "${need:-0}" -gt "$ngpus" ]; then
    skip "engines $name" "needs $need GPUs; this machine has $ngpus"
  else
    skip "engines $name" "not started by this check: make engines GPU_SPEC=$spec ENGINE_FLAGS=--dry-run first, then make engines / make serve-gpu"
  fi
done

print_summary
exit 0
