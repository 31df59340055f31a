"""Python-backend implementation of the engine models (the ``model.py`` files delegate here)."""

from __future__ import annotations

import dataclasses
import time
import traceback
from typing import Any

from . import tensors
from .config import REQUIRED, ModelParams
from .llamacpp import LlamaCppEngine, LlamaCppSettings, PromptFormat, RequestCancelled
from .protocol import EngineResponse, Limits, ServeError
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


class LlamaCppModel:
    """A llama.cpp engine as a decoupled model (like TensorRT-LLM's ``tensorrt_llm``).

    Same text API as the replay engine plus ``stream`` and ``exclude_input_in_output``. With
    ``stream`` true: one response per generated piece (``text_output`` is the delta;
    ``output_tokens`` and ``cum_log_probs`` count that piece's tokens, so they sum to the totals
    as ``tensors.merge_engine_responses`` sums them), the last one carrying the FINAL flag.
    Otherwise: one response with the whole text, with FINAL. ``exclude_input_in_output`` false
    puts ``text_input`` in front of the output (default: the output is the continuation only). Any failure is an error response with FINAL (bad input: INVALID_ARG naming the
    field); a cancelled request stops generating after the current token. Requests of one
    instance are served one at a time (``execute`` is synchronous).
    """

    def __init__(self, pb: Any, args: dict[str, Any]) -> None:
        self.pb = pb
        p = ModelParams(args)
        self.name = p.name
        self.limits = Limits(p.get_int("max_input_chars", 20_000), p.get_int("max_tokens_cap", 8192))
        settings = LlamaCppSettings(
            model_path=p.get_path("gguf", REQUIRED),
            n_ctx=p.get_int("n_ctx", 2048),
            n_threads=p.get_int("n_threads", 1),
            seed=p.get_int("seed", 0),
            temperature=p.get_float("temperature", 0.0),
            max_tokens=p.get_int("max_tokens", 256),
            top_k=p.get_int("top_k", 40),
            top_p=p.get_float("top_p", 0.95),
            prompt=PromptFormat.load(p.get_path("prompt", REQUIRED)),
        )
        self.engine = LlamaCppEngine.load(settings)
        self.final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        pb.Logger.log_info(
            f"{self.name}: loaded {settings.model_path} in {self.engine.load_seconds:.2f} s "
            f"(n_threads={settings.n_threads}, n_ctx={settings.n_ctx}, temperature={settings.temperature}, "
            f"seed={settings.seed}, max_tokens={settings.max_tokens})"
        )

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self.handle(request)
        return None

    def handle(self, request: Any) -> None:
        pb = self.pb
        sender = request.get_response_sender()

        def cancelled() -> bool:
            try:
                return bool(sender.is_cancelled())
            except Exception:  # noqa: BLE001 - a sender that cannot tell is not cancelled
                return False

        try:
            req = tensors.parse_engine_request(pb, request, self.limits)
            stream = bool(tensors.get_bool(pb, request, "stream"))
            prefix = req.text_input if tensors.get_bool(pb, request, "exclude_input_in_output") is False else ""
            if stream:
                pending: EngineResponse | None = None
                for delta in self.engine.stream(req, cancelled):
                    if prefix:
                        delta = dataclasses.replace(delta, text_output=prefix + delta.text_output)
                        prefix = ""
                    if pending is not None and delta.text_output == "":
                        # tokens after the last piece (a dropped stop string): count them with it
                        pending = _add_counts(pending, delta)
                        continue
                    if pending is not None:
                        sender.send(self._response(pending))
                    pending = delta
                last = pending if pending is not None else EngineResponse("", 0)
            else:
                last = self.engine.generate(req, cancelled)
                if prefix:
                    last = dataclasses.replace(last, text_output=prefix + last.text_output)
            response = self._response(last)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error response, then FINAL
            if isinstance(exc, RequestCancelled):
                pb.Logger.log_info(f"{self.name}: {exc}")
            elif not isinstance(exc, ServeError):
                pb.Logger.log_error(f"{self.name}: {traceback.format_exc()}")
            response = tensors.error_response(pb, exc)
        try:
            sender.send(response, flags=self.final)
        except Exception:  # noqa: BLE001 - the client may be gone (cancelled); nothing left to do
            pb.Logger.log_warn(f"{self.name}: could not send the final response: {traceback.format_exc()}")

    def _response(self, resp: EngineResponse) -> Any:
        return self.pb.InferenceResponse(output_tensors=tensors.engine_response_tensors(self.pb, resp, False))

    def finalize(self) -> None:
        self.engine.close()


def _add_counts(a: EngineResponse, b: EngineResponse) -> EngineResponse:
    """``a`` with ``b``'s tokens and log-probability added (``b`` has no text)."""
    lp = None if a.cum_log_prob is None or b.cum_log_prob is None else a.cum_log_prob + b.cum_log_prob
    return dataclasses.replace(a, output_tokens=(a.output_tokens or 0) + (b.output_tokens or 0), cum_log_prob=lp)
