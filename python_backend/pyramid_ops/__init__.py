"""Operating a Pyramid MoA server: the processes around Triton, not the code Triton runs.

* ``server``: start / wait / stop a real ``tritonserver`` process (``python -m pyramid_ops.server``,
  ``make serve``), with the OpenAI gateway beside it (``pyramid_gateway.process``).
* ``launcher``: the venv's ``tritonserver`` command (nvidia-pytriton's binary, set up for the Python stub).
* ``supervisor``: reload an engine whose stub process died (Triton 2.51 does not); the liveness check.
* ``access``: the admin key (model control) and inference key: sources, tritonserver flags, headers.
* ``helm_values`` / ``helm_check``: the Helm chart's values from a deployment spec, one tier per host kind, and
  the chart rendered and validated against Kubernetes' schemas (``scripts/helm_values.py``,
  ``scripts/helm_check.py``, ``make helm-check``).

It imports the model side (``pyramid_triton``) and the repository builder (``pyramid_deploy``), never the
other way.
"""

# pyramid_triton finds pyramid-client in client/ when it is not installed (a source tree in NVIDIA's
# container: scripts/liveness.py); ``access`` imports the client's keys.
import pyramid_triton  # noqa: F401
