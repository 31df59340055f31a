"""Pyramid MoA on Triton Inference Server: framework glue around the ``pyramid_moa`` router library.

Layout (after NVIDIA's ``tensorrt_llm_bls``: thin ``model.py`` files, logic elsewhere):

* ``protocol``: pure request/response dataclasses and input validation (no Triton import).
* ``routing``: the asynchronous routing driver, stage by stage with concurrent agent calls.
* ``replay``: the replay engine's lookup of recorded outputs (no Triton import).
* ``tensors``: conversion between ``triton_python_backend_utils`` tensors and ``protocol``.
* ``bls`` / ``engines``: the Python-backend model implementations the ``model.py`` files delegate to.
* ``render``: deployment spec (YAML) -> model repository.
* ``server``: start / wait / stop a real ``tritonserver`` process.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
