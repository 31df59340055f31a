#!/usr/bin/env python3
"""Build the TensorRT-LLM engines of deployment specs: see python_backend/pyramid_deploy/engine_build.py.

usage: python3 scripts/build_engines.py deploy/gpu-8x80gb.yaml [--dry-run] [--only NAME,...] \
           [--trtllm-src DIR] [--download | --download-only] [--force] [--clean-checkpoints]

Runs where tensorrt_llm and trtllm-build are installed (NVIDIA's Triton TRT-LLM container: make engines);
--dry-run prints the exact commands anywhere, and --download-only fetches the specs' missing Hugging Face
checkpoints anywhere (docs/GPU.md step 1). Needs PyYAML and numpy (the container has both).
"""

import sys
from pathlib import Path

# Kept: this script also runs where nothing is installed (NVIDIA's TRT-LLM container over this checkout:
# scripts/trtllm_container.sh, serve_gpu.sh, gpu_check.sh), so it finds the packages in python_backend/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python_backend"))

from pyramid_deploy.engine_build import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
