"""Sentence embedder model (thin: the logic lives in pyramid_triton.embedder)."""

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
        from pyramid_triton.embedder import EmbedderModel

        self.impl = EmbedderModel(pb_utils, args)

    def execute(self, requests):
        return self.impl.execute(requests)

    def finalize(self):
        self.impl = None
