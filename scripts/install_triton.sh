#!/usr/bin/env bash
# Install a real Triton Inference Server (CPU) into the project venv, from PyPI.
#
# nvidia-pytriton ships tritonserver 2.51 with the Python backend and one
# Python-backend stub per interpreter version; the stub for the venv's Python
# must be copied into backends/python (see shared/PLATFORM.md). numpy stays
# below 2 (numpy 2 crashes the 2.51 stub on BYTES inputs). Idempotent.
#
# usage: scripts/install_triton.sh [VENV]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${VENV:-.venv}}
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  echo "error: $PY not found; run 'make setup' first" >&2
  exit 1
fi
# -c requirements.lock keeps numpy (and everything else) at the project's pins; a no-op when satisfied.
"$PY" -m pip install -q -c requirements.lock -r requirements-serve.txt
"$PY" - <<'PY'
import shutil, sys
from pathlib import Path
import numpy
import pytriton

if int(numpy.__version__.split(".")[0]) >= 2:
    sys.exit(f"error: numpy {numpy.__version__} is installed; Triton 2.51's Python stub needs numpy<2")
root = Path(pytriton.__file__).parent / "tritonserver"
ver = f"{sys.version_info.major}.{sys.version_info.minor}"
stub = root / "python_backend_stubs" / ver / "triton_python_backend_stub"
if not stub.is_file():
    sys.exit(f"error: no Python-backend stub for Python {ver} in {stub.parent.parent}")
dest = root / "backends" / "python" / "triton_python_backend_stub"
if not dest.is_file() or dest.read_bytes() != stub.read_bytes():
    shutil.copy2(stub, dest)
    print(f"copied the Python {ver} stub to {dest}")
server = root / "bin" / "tritonserver"
print(f"tritonserver: {server}")
PY
