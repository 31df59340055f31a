"""Pyramid MoA on Triton Inference Server: the model side, the code Triton's Python stub imports
(framework glue around the ``pyramid_moa`` router library).

Layout (after NVIDIA's ``tensorrt_llm_bls``: thin ``model.py`` files, logic elsewhere):

* ``protocol``: pure request/response dataclasses and input validation (no Triton import).
* ``routing``: the asynchronous routing driver, stage by stage with concurrent agent calls.
* ``replay``: the replay engine's lookup of recorded outputs (no Triton import).
* ``tensors``: conversion between ``triton_python_backend_utils`` tensors and ``protocol``.
* ``bls`` / ``engines``: the Python-backend model implementations the ``model.py`` files delegate to.
* ``llamacpp``: the llama.cpp engine (a GGUF through llama-cpp-python; no Triton import).
* ``trtllm``: the TensorRT-LLM kind's pre/postprocessing models.
* ``metrics``: the router's Prometheus metrics and per-request JSON log line.
* ``request_log``: the router's per-request log (off by default, redaction hook, private bounded file).

What runs elsewhere lives elsewhere, and this package imports none of it: building a repository
(``pyramid_deploy``: render, TensorRT-LLM specs and facts, engine builds), operating a server
(``pyramid_ops``: server, launcher, supervisor, access) and measuring one (``pyramid_bench``: perf, the
floor). tests/test_layers.py checks the directions.

The wire format (tensor names and datatypes, response fields, error codes) and the retry rule are
the client's (``pyramid_client.wire``, ``pyramid_client.retry``): one definition for both sides.
"""

import importlib.util
import sys
from pathlib import Path

__all__ = ["__version__"]
__version__ = "0.1.0"

# pyramid-client is a dependency (make setup installs it into .venv). Run from a source tree without it
# installed (NVIDIA's container serving a rendered repository, whose models add only python_backend/ to
# sys.path; the scripts there), it is found in client/ beside python_backend/.
_CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "client"
if importlib.util.find_spec("pyramid_client") is None and (_CLIENT_SOURCE / "pyramid_client").is_dir():
    sys.path.append(str(_CLIENT_SOURCE))
