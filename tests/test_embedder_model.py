"""The embedder Triton model's glue (pyramid_triton.embedder) with the fake triton_python_backend_utils;
the real model runs in tests/integration/test_semantic_serving.py."""

from __future__ import annotations

import asyncio
import json

import fake_pb_utils as pb
import numpy as np
import pytest

from pyramid_moa.embedding import default_embedder
from pyramid_triton.embedder import EmbedderModel, embed_over_bls
from pyramid_triton.protocol import ServeError


def _model(tmp_path, max_chars: int = 50, **more: str) -> EmbedderModel:
    params = {"model_dir": "", "max_input_chars": str(max_chars), **more}
    args = {
        "model_config": json.dumps(
            {"name": "embedder", "parameters": {k: {"string_value": v} for k, v in params.items()}}
        ),
        "model_repository": str(tmp_path),
    }
    return EmbedderModel(pb, args)


def _texts(*texts: str) -> pb.Request:
    return pb.Request({"text": np.array([t.encode() for t in texts], dtype=np.object_)})


def test_embeds_each_text_as_the_library_does(tmp_path):
    m = _model(tmp_path)
    (resp,) = m.execute([_texts("The capital of France is Paris.", "Paris is France's capital.")])
    assert not resp.has_error()
    got = pb.get_output_tensor_by_name(resp, "embedding").as_numpy()
    want = default_embedder().embed(["The capital of France is Paris.", "Paris is France's capital."])
    assert got.shape == (2, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_bad_requests_are_errors_naming_the_input(tmp_path):
    m = _model(tmp_path)
    too_long, missing, empty = m.execute([_texts("x" * 51), pb.Request({}), _texts()])
    assert "[INVALID_ARG] invalid input 'text': text 0 is 51 characters long" in too_long.error().message()
    assert "invalid input 'text': is required" in missing.error().message()
    assert "must hold 1 to 64 texts, got 0" in empty.error().message()


def test_router_side_call_over_bls(tmp_path):
    """embed_over_bls sends the texts and reads the vectors back; an error response raises naming the model."""
    m = _model(tmp_path)

    class Infer:
        def __init__(self, model_name, requested_output_names, inputs, **kw):
            self.model_name, self.inputs = model_name, inputs

        async def async_exec(self):
            if self.model_name != "embedder":
                return pb.InferenceResponse(error=pb.TritonError("no such model"))
            return m.execute([pb.Request({t.name(): t.as_numpy() for t in self.inputs})])[0]

    class PB:
        Tensor = pb.Tensor
        InferenceRequest = Infer
        get_output_tensor_by_name = staticmethod(pb.get_output_tensor_by_name)

    vecs = asyncio.run(embed_over_bls(PB, "embedder", ["a cat", "a dog"]))
    assert vecs.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ServeError, match="embedder 'nope' failed: no such model"):
        asyncio.run(embed_over_bls(PB, "nope", ["a"]))


def test_a_gpu_instance_without_cuda_fails_to_load_naming_the_fix(tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: scripts/embedder_gpu_check.py checks the GPU instance")
    with pytest.raises(Exception, match="install onnxruntime-gpu"):
        _model(tmp_path, device="gpu", backend="onnx")
