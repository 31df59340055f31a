"""Python-backend implementation of the engine models (the ``model.py`` files delegate here)."""

from __future__ import annotations

import time
from typing import Any

from . import tensors
from .config import REQUIRED, ModelParams
from .protocol import Limits
from .replay import ReplayEngine


class ReplayModel:
    """A replay engine behind the TensorRT-LLM-style text API (one request per execute)."""

    def __init__(self, pb: Any, args: dict[str, Any]) -> None:
        self.pb = pb
        p = ModelParams(args)
        self.name = p.name
        self.limits = Limits(p.get_int("max_input_chars", 20_000), p.get_int("max_tokens_cap", 8192))
        self.engine = ReplayEngine.open(
            p.get_path("traces", REQUIRED),
            p.get_str("source", p.name),
            p.get_float("seconds_per_token", 0.0),
            p.get_bool("return_answer", True),
        )
        self.with_answer = p.get_bool("return_answer", True)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                req = tensors.parse_engine_request(self.pb, request, self.limits)
                resp = self.engine.generate(req)
                delay = self.engine.latency_s(resp)
                if delay > 0:
                    time.sleep(delay)
                responses.append(
                    self.pb.InferenceResponse(
                        output_tensors=tensors.engine_response_tensors(self.pb, resp, self.with_answer)
                    )
                )
            except Exception as exc:  # noqa: BLE001 - every failure becomes an error response
                responses.append(tensors.error_response(self.pb, exc))
        return responses
