"""Triton tensor glue: ``triton_python_backend_utils`` tensors <-> ``protocol`` dataclasses.

Every function takes the ``pb_utils`` module as its first argument instead of
importing it, so the glue is importable outside the Python-backend stub.
Shapes follow TensorRT-LLM's text API with ``max_batch_size: 1``: each
input/output is ``[1, 1]`` (batch, element); any shape with exactly one element
is accepted on input. Names and datatypes: ``pyramid_client.wire``, the client's too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pyramid_client import wire
from pyramid_client.arrays import to_array

from .protocol import (
    EngineRequest,
    EngineResponse,
    InvalidArgument,
    Limits,
    PyramidRequest,
    PyramidResponse,
    ServeError,
    validate_engine_request,
    validate_pyramid_request,
)

ENGINE_OUTPUTS = tuple(wire.ENGINE_OUTPUTS)
PARSED_ANSWER_OUTPUT = wire.PARSED_ANSWER_OUTPUT


def _element(t: Any | None, name: str) -> Any | None:
    """The single element of input tensor ``t`` (named ``name``), or None if absent."""
    if t is None:
        return None
    arr = t.as_numpy()
    if arr.size != 1:
        raise InvalidArgument(name, f"must hold exactly one element, got shape {list(arr.shape)}")
    return arr.reshape(-1)[0]


def _as_string(v: Any, name: str) -> str:
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(name, "is not valid UTF-8") from None
    return str(v)


def _string(t: Any | None, name: str) -> str | None:
    v = _element(t, name)
    return None if v is None else _as_string(v, name)


def _strings(t: Any | None, name: str) -> list[str] | None:
    """Every element of BYTES input tensor ``t`` (any shape), or None if absent."""
    return None if t is None else [_as_string(v, name) for v in t.as_numpy().reshape(-1)]


def _int(t: Any | None, name: str) -> int | None:
    v = _element(t, name)
    return None if v is None else int(v)


def _float(t: Any | None, name: str) -> float | None:
    v = _element(t, name)
    return None if v is None else float(v)


def _bool(t: Any | None, name: str) -> bool | None:
    v = _element(t, name)
    return None if v is None else bool(v)


def get_string(pb: Any, request: Any, name: str) -> str | None:
    return _string(pb.get_input_tensor_by_name(request, name), name)


def get_int(pb: Any, request: Any, name: str) -> int | None:
    return _int(pb.get_input_tensor_by_name(request, name), name)


def get_bool(pb: Any, request: Any, name: str) -> bool | None:
    return _bool(pb.get_input_tensor_by_name(request, name), name)


_READERS = {
    wire.BYTES: _string,
    wire.BOOL: _bool,
    wire.INT32: _int,
    wire.UINT64: _int,
    wire.FP32: _float,
}


def _inputs(pb: Any, request: Any, datatypes: dict[str, str]) -> dict[str, Any]:
    """``{name: value or None}`` of the inputs ``datatypes`` names (but those the router ignores). The
    request's input list is read once: ``pb_utils.get_input_tensor_by_name`` reads all of it again for
    every name (a copy from the stub's C++ side), and the router's API has 20 optional inputs."""
    present = {t.name(): t for t in request.inputs()}
    return {
        n: (_strings if n in wire.LIST_INPUTS else _READERS[t])(present.get(n), n)
        for n, t in datatypes.items()
        if n not in wire.IGNORED_INPUTS
    }


def _tensors(pb: Any, values: dict[str, Any], datatypes: dict[str, str]) -> list[Any]:
    return [pb.Tensor(name, to_array(value, datatypes[name])) for name, value in values.items()]


def error_code(pb: Any, code: str) -> Any:
    return getattr(pb.TritonError, code, getattr(pb.TritonError, "INTERNAL", None))


def error_response(pb: Any, exc: BaseException) -> Any:
    code = exc.code if isinstance(exc, ServeError) else wire.INTERNAL
    message = str(exc) if isinstance(exc, ServeError) else f"internal error: {type(exc).__name__}: {exc}"
    # Triton's gRPC stream (the only way to reach a decoupled model) carries an error's message but
    # not its code, so the code also leads the message: "[INVALID_ARG] invalid input 'max_tokens': ...".
    message = wire.error_message(code, message)
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, error_code(pb, code)))


# --- engine text API -------------------------------------------------------------------------


def parse_engine_request(pb: Any, request: Any, limits: Limits) -> EngineRequest:
    return validate_engine_request(**_inputs(pb, request, wire.ENGINE_INPUTS), limits=limits)


_ENGINE_OUTPUT_TYPES = {**wire.ENGINE_OUTPUTS, PARSED_ANSWER_OUTPUT: wire.BYTES}


def engine_output_names(req: EngineRequest, with_answer: bool) -> list[str]:
    """The outputs the router asks an engine for: only those it reads. ``cum_log_probs`` only with
    ``return_log_probs`` (the calibration's log-prob features), the parsed ``answer`` only from engines
    that give one; every output asked for is a tensor more for the engine, the server and the router."""
    names = [n for n in ENGINE_OUTPUTS if n != "cum_log_probs" or req.return_log_probs]
    return names + ([PARSED_ANSWER_OUTPUT] if with_answer else [])


def engine_response_tensors(pb: Any, resp: EngineResponse, with_answer: bool) -> list[Any]:
    out: dict[str, Any] = {
        "text_output": resp.text_output,
        "output_tokens": -1 if resp.output_tokens is None else resp.output_tokens,
    }
    if resp.cum_log_prob is not None:
        out["cum_log_probs"] = resp.cum_log_prob
    if with_answer and resp.has_answer:
        out[PARSED_ANSWER_OUTPUT] = resp.answer or ""
    return _tensors(pb, out, _ENGINE_OUTPUT_TYPES)


def engine_request_tensors(pb: Any, req: EngineRequest) -> list[Any]:
    values = {
        "text_input": req.text_input,
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "seed": req.seed,
        "return_log_probs": True if req.return_log_probs else None,
    }
    return _tensors(pb, {k: v for k, v in values.items() if v is not None}, wire.ENGINE_INPUTS)


def first_element(arr: Any | None) -> Any | None:
    """The first element of an output array (None if absent or empty)."""
    if arr is None:
        return None
    arr = arr.reshape(-1)
    return arr[0] if arr.size else None


def parse_engine_response(pb: Any, resp: Any, with_answer: bool) -> EngineResponse:
    """One BLS engine response; its output list is read once (``pb_utils.get_output_tensor_by_name``
    would read all of it again for each of the four names)."""
    found = {t.name(): t for t in resp.output_tensors()}
    return engine_response(lambda n: first_element(found[n].as_numpy()) if n in found else None, with_answer)


def engine_response(value: Callable[[str], Any | None], with_answer: bool) -> EngineResponse:
    """An engine reply from ``value(output name)`` (the output's first element, None if absent): the
    rule shared by local BLS responses (``parse_engine_response``) and remote gRPC results (``remote``)."""
    text = value("text_output")
    text = text.decode("utf-8") if isinstance(text, bytes) else ("" if text is None else str(text))
    tokens = value("output_tokens")
    tokens = None if tokens is None or int(tokens) < 0 else int(tokens)
    lp = value("cum_log_probs")
    lp = None if lp is None or not math.isfinite(float(lp)) else float(lp)
    answer, has_answer = None, False
    if with_answer:
        a = value(PARSED_ANSWER_OUTPUT)
        if a is not None:
            has_answer = True
            a = a.decode("utf-8") if isinstance(a, bytes) else str(a)
            answer = a or None
    return EngineResponse(text, tokens, lp, answer, has_answer)


# --- pyramid router API ----------------------------------------------------------------------


def parse_pyramid_request(pb: Any, request: Any, limits: Limits, default_max_tokens: int) -> PyramidRequest:
    return validate_pyramid_request(
        **_inputs(pb, request, wire.ROUTER_INPUTS), limits=limits, default_max_tokens=default_max_tokens
    )


def pyramid_response_tensors(pb: Any, resp: PyramidResponse, wanted: frozenset[str] | None = None) -> list[Any]:
    """The router's response tensors; with ``wanted`` (``requested_outputs``) only those: a client that asks
    for ``text_output`` alone (perf_analyzer, genai-perf, TensorRT-LLM-style clients) is not sent ten."""
    values = wire.answer_outputs(resp, resp.text_output, resp.latency_ms)
    if wanted:
        values = {k: v for k, v in values.items() if k in wanted}
    return _tensors(pb, values, wire.ROUTER_OUTPUTS)


def requested_outputs(request: Any) -> frozenset[str] | None:
    """The output names the request asked for; None (send every output) when it cannot say. Triton
    fills in every output of the model when a client names none."""
    try:
        names = request.requested_output_names()
    except (AttributeError, TypeError):  # a request object without the method
        return None
    return frozenset(names) or None


def merge_engine_responses(parts: list[EngineResponse]) -> EngineResponse:
    """One reply from a decoupled engine's responses: streamed text deltas concatenated, token counts
    summed where every part has them (each streamed TensorRT-LLM response's ``sequence_length`` counts
    its own new tokens), and ``cum_log_probs`` the last value sent: a streaming TensorRT-LLM engine sends
    the running cumulative log-probability with every response, so the last one is the request's (a sum
    would count the early tokens again and again). A single part is returned as is; the router does not
    ask engines to stream, so today every engine reply is one part."""
    if len(parts) == 1:
        return parts[0]
    tokens = [p.output_tokens for p in parts]
    lps = [p.cum_log_prob for p in parts if p.cum_log_prob is not None]
    last = next((p for p in reversed(parts) if p.has_answer), None)
    return EngineResponse(
        text_output="".join(p.text_output for p in parts),
        output_tokens=None if None in tokens else sum(tokens),  # type: ignore[arg-type]
        cum_log_prob=float(lps[-1]) if lps else None,
        answer=last.answer if last else None,
        has_answer=last is not None,
    )
