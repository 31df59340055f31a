#!/usr/bin/env bash
# Run a command in NVIDIA's Triton TRT-LLM container (tritonserver + the tensorrtllm backend +
# tensorrt_llm + transformers), with what TensorRT-LLM on Triton needs:
#   --gpus (all, or $GPUS: e.g. '"device=0,1"'), --shm-size (Python-backend models talk to the server
#   through /dev/shm), --ulimit memlock=-1 and stack=64 MiB (as NVIDIA's examples run it),
#   this project mounted at the SAME path it has here (rendered configs hold absolute paths: engines,
#   tokenizers, the router's python_path), plus $EXTRA_MOUNTS ("HOST:CONTAINER ..." for checkpoints or
#   engines kept elsewhere), and with --ports the server's HTTP, gRPC and metrics ports published.
# Already inside such a container (/opt/tritonserver/backends/tensorrtllm exists), it just runs the command.
#
# usage: scripts/trtllm_container.sh [--ports] [--] COMMAND [ARGS...]
# env:   TRITON_IMAGE (default below), GPUS, SHM_SIZE (8g), EXTRA_MOUNTS, HTTP_PORT/GRPC_PORT/METRICS_PORT
#        (8000/8001/8002), DOCKER (docker); HF_TOKEN (gated checkpoints), TRTLLM_SRC, GPU_REPO, GPU_CALIBRATION,
#        ALLOW_UNUSED_ENGINES and LOG_VERBOSE are passed through when set
# Interactive (docker run -it) only when started in the foreground of a terminal: a background job
# (make serve-gpu ... &) runs without -i and -t, so the terminal does not stop it.
set -euo pipefail

TRITON_IMAGE=${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3}
GPUS=${GPUS:-all}
SHM_SIZE=${SHM_SIZE:-8g}
HTTP_PORT=${HTTP_PORT:-8000}
GRPC_PORT=${GRPC_PORT:-8001}
METRICS_PORT=${METRICS_PORT:-8002}
DOCKER=${DOCKER:-docker}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Whether this script's process group is the foreground group of its terminal (/proc/PID/stat fields 5 and 8:
# pgrp and tpgid); a job started with & from an interactive shell is in a group of its own, not the foreground.
in_foreground() {
  local stat fields
  stat=$(</proc/$$/stat) || return 1
  read -ra fields <<<"${stat##*) }"  # after the command name, which may hold spaces: state ppid pgrp session tty tpgid
  [ "${#fields[@]}" -ge 6 ] && [ "${fields[2]}" = "${fields[5]}" ]
}

ports=0
while [ $# -gt 0 ]; do
  case "$1" in
    --ports) ports=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [ $# -eq 0 ]; then
  echo "usage: $0 [--ports] [--] COMMAND [ARGS...]" >&2
  exit 2
fi

if [ -d /opt/tritonserver/backends/tensorrtllm ]; then
  cd "$ROOT"
  exec "$@"
fi

if ! command -v "$DOCKER" >/dev/null 2>&1; then
  echo "error: $DOCKER not found, and this is not NVIDIA's Triton TRT-LLM container" >&2
  echo "       (install Docker and the NVIDIA Container Toolkit, or run inside $TRITON_IMAGE)" >&2
  exit 2
fi

args=(run --rm --gpus "$GPUS" --shm-size "$SHM_SIZE" --ulimit memlock=-1 --ulimit stack=67108864
      -v "$ROOT:$ROOT" -w "$ROOT" -e PYTHONDONTWRITEBYTECODE=1)
for v in HF_TOKEN TRTLLM_SRC GPU_REPO GPU_CALIBRATION ALLOW_UNUSED_ENGINES LOG_VERBOSE; do  # passed through when set
  if [ -n "${!v:-}" ]; then
    args+=(-e "$v")
  fi
done
for m in ${EXTRA_MOUNTS:-}; do
  args+=(-v "$m")
done
if [ "$ports" = 1 ]; then
  args+=(-p "$HTTP_PORT:$HTTP_PORT" -p "$GRPC_PORT:$GRPC_PORT" -p "$METRICS_PORT:$METRICS_PORT"
         -e "HTTP_PORT=$HTTP_PORT" -e "GRPC_PORT=$GRPC_PORT" -e "METRICS_PORT=$METRICS_PORT")
fi
# -it only for a foreground job on a terminal: with -t, docker puts the terminal in raw mode, and a background
# job that does (make serve-gpu ... &) is stopped by the kernel ("Stopped (tty output)", SIGTTOU); with -i a
# background job reading the terminal is stopped too (SIGTTIN). A background job runs without either.
if [ -t 0 ] && [ -t 1 ] && in_foreground; then
  args+=(-it)
fi
echo "+ $DOCKER ${args[*]} $TRITON_IMAGE $*" >&2
exec "$DOCKER" "${args[@]}" "$TRITON_IMAGE" "$@"
