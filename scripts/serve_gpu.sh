#!/usr/bin/env bash
# Serve a GPU deployment with tritonserver in TensorRT-LLM's orchestrator mode: one server process; each
# tensorrt_llm model spawns its own MPI worker(s) on its gpu_device_ids (TRTLLM_ORCHESTRATOR=1), as NVIDIA's
# launch_triton_server.py --multi-model does. Runs inside NVIDIA's Triton TRT-LLM container (make serve-gpu
# starts it through scripts/trtllm_container.sh). In the foreground until Ctrl-C or SIGTERM.
#
# usage: scripts/serve_gpu.sh SPEC.yaml    render it first (scripts/render_repository.py) into $GPU_REPO with
#                                          $GPU_CALIBRATION if that file exists, else the engines only (no router:
#                                          record traces with pyramid record, calibrate, then serve again)
#        scripts/serve_gpu.sh REPOSITORY   serve an already rendered repository
#        Further arguments go to tritonserver as they are (the Helm chart passes its restricted-API flags, whose
#        key is shown masked in the command line this script prints; docs/SECURITY.md).
#        The renderer refuses a TensorRT-LLM engine that no stage of the calibration asks (it would hold its GPUs
#        for nothing); ALLOW_UNUSED_ENGINES=1 serves it anyway (e.g. under a transferred calibration).
# env:   GPU_REPO (out/model_repository/<profile>), GPU_CALIBRATION, ALLOW_UNUSED_ENGINES, HTTP_PORT/GRPC_PORT/METRICS_PORT
#        (8000/8001/8002), LOG_VERBOSE (0), PYTHON (python3), TRITONSERVER (/opt/tritonserver/bin/tritonserver),
#        MPIRUN (mpirun)
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 SPEC.yaml | REPOSITORY [TRITONSERVER_ARGS...]" >&2
  exit 2
fi
target=$1
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TRITONSERVER=${TRITONSERVER:-/opt/tritonserver/bin/tritonserver}
MPIRUN=${MPIRUN:-mpirun}
PYTHON=${PYTHON:-python3}
if [ ! -x "$TRITONSERVER" ] || [ ! -d "$(dirname "$TRITONSERVER")/../backends/tensorrtllm" ]; then
  echo "error: no tritonserver with the tensorrtllm backend at $TRITONSERVER:" >&2
  echo "       run this inside NVIDIA's Triton TRT-LLM container (make serve-gpu does)" >&2
  exit 2
fi

case "$target" in
  *.yaml|*.yml)
    spec=$target
    profile=$(basename "$spec"); profile=${profile%.*}
    repo=${GPU_REPO:-$ROOT/out/model_repository/$profile}
    render=("$PYTHON" "$ROOT/scripts/render_repository.py" "$spec" --out "$repo")
    if [ -n "${GPU_CALIBRATION:-}" ] && [ -f "$GPU_CALIBRATION" ]; then
      render+=(--calibration "$GPU_CALIBRATION")
    elif grep -qE '^calibration:' "$spec"; then
      : # the spec names its own calibration
    else
      echo "note: no calibration at '${GPU_CALIBRATION:-}': serving the engines only, without the router." >&2
      echo "      Record traces (pyramid record --committee ... --oracle ...), fit them (pyramid calibrate)," >&2
      echo "      then: make serve-gpu GPU_SPEC=$spec GPU_CALIBRATION=<that file>   (docs/GPU.md)" >&2
      render+=(--engines-only)
    fi
    if [ -n "${ALLOW_UNUSED_ENGINES:-}" ] && [ "$ALLOW_UNUSED_ENGINES" != 0 ]; then
      render+=(--allow-unused-engines)
    fi
    "${render[@]}"
    ;;
  *)
    repo=$target
    ;;
esac
if [ ! -d "$repo" ]; then
  echo "error: $repo is not a directory" >&2
  exit 2
fi
repo=$(cd "$repo" && pwd)

export TRTLLM_ORCHESTRATOR=1
export TRTLLM_ORCHESTRATOR_SPAWN_PROCESSES=1

args=(
  "--model-repository=$repo"
  "--http-port=${HTTP_PORT:-8000}" "--grpc-port=${GRPC_PORT:-8001}" "--metrics-port=${METRICS_PORT:-8002}"
  "--log-verbose=${LOG_VERBOSE:-0}"
  --disable-auto-complete-config
  --strict-readiness=true
  --exit-on-error=true
  "--backend-config=python,shm-region-prefix-name=prefix0_"
  # Orchestrator mode: the spawned workers own the GPU memory; the server itself keeps none.
  --pinned-memory-pool-byte-size=0
  --enable-peer-access=false
)
ngpus=$( (nvidia-smi --list-gpus 2>/dev/null || true) | wc -l)
for ((i = 0; i < ngpus; i++)); do
  args+=("--cuda-memory-pool-byte-size=$i:0")
done

args+=("$@")
# never print a restricted API's key (--http-restricted-api=APIS:HEADER=KEY)
echo "+ $MPIRUN --allow-run-as-root -n 1 $TRITONSERVER ${args[*]}" | sed -E 's/(restricted-(api|protocol)=[^ =]*=)[^ ]*/\1****/g' >&2
exec "$MPIRUN" --allow-run-as-root -n 1 "$TRITONSERVER" "${args[@]}"
