"""Building a Triton model repository for Pyramid MoA: what runs before the server, never inside it.

* ``render``: deployment spec (YAML) -> model repository (configs from ``deploy/templates``, the router's
  parameters, the calibration; ``scripts/render_repository.py``, ``make render``).
* ``trtllm_spec`` / ``trtllm_facts``: the GPU kind: NVIDIA's TensorRT-LLM model layout and memory plan, and
  the facts about its Triton backend that a rendered config must satisfy.
* ``engine_build`` / ``trtllm_convert``: TensorRT-LLM checkpoint conversion and engine builds
  (``scripts/build_engines.py``, ``make engines``).

It imports the model side (``pyramid_triton``: the parameters, tasks and engines a rendered model reads),
never the other way: the Python stub imports nothing from here.
"""
