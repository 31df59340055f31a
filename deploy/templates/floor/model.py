"""The bare-BLS floor model (thin: the logic lives in pyramid_bench.floor).

Decoupled with ``async def execute``: requests on one instance run concurrently; each gets one
response and then the FINAL flag (an error response when the request is bad or routing fails).
"""

import json
import os
import sys

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        # The Python-backend stub ignores PYTHONPATH: the rendered config says where the project's code is.
        params = json.loads(args["model_config"]).get("parameters", {})
        path = params.get("python_path", {}).get("string_value", "")
        if path and not os.path.isabs(path):  # relative to the model's own directory (model_repository/)
            path = os.path.normpath(os.path.join(args["model_repository"], path))
        if path and path not in sys.path:
            sys.path.insert(0, path)
        from pyramid_bench.floor import FloorModel

        self.impl = FloorModel(pb_utils, args)

    async def execute(self, requests):
        await self.impl.execute(requests)
        return None

    def finalize(self):
        self.impl = None
