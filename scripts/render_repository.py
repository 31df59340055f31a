#!/usr/bin/env python3
"""Render a Triton model repository from a deployment spec: see python_backend/pyramid_deploy/render.py.

usage: .venv/bin/python scripts/render_repository.py deploy/replay.yaml --out out/model_repository/replay \
           [--calibration out/calibration/replay.json]
"""

import sys
from pathlib import Path

# Kept: this script also runs where nothing is installed (NVIDIA's TRT-LLM container over this checkout:
# scripts/trtllm_container.sh, serve_gpu.sh, gpu_check.sh), so it finds the packages in python_backend/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python_backend"))

from pyramid_deploy.render import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
