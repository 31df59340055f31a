"""A stand-in for ``triton_python_backend_utils``, for unit tests of the Triton glue only.

It implements the handful of calls the glue makes (tensors, requests, responses, errors,
response senders, BLS ``InferenceRequest.async_exec``) with plain Python objects. BLS calls
are answered by in-process ``engines``: ``{model_name: callable(EngineRequest) -> reply}``
where a reply is an ``EngineResponse``, a list of them (a decoupled engine's stream), a
coroutine giving one of those (a slow engine), or an exception to raise as an error response. The integration tests run the real server.

Remote engines (``pyramid_triton.remote``) are answered by ``FakeAioClient``, a stand-in for
``tritonclient.grpc.aio.InferenceServerClient`` serving ``remote_servers`` (see the section at the end).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1) -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None) -> None:
        self._tensors = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class ResponseSender:
    def __init__(self) -> None:
        self.sent: list[tuple[InferenceResponse | None, int]] = []

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self.sent and self.sent[-1][1] & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise RuntimeError("send after the final flag")
        self.sent.append((response, flags))

    def is_cancelled(self) -> bool:
        return False


class Request:
    """An incoming request: ``inputs`` maps name -> numpy array; ``cancelled`` flips when the test says."""

    def __init__(self, inputs: dict[str, np.ndarray], request_id: str = "", outputs: list[str] | None = None) -> None:
        self._inputs = [Tensor(k, v) for k, v in inputs.items()]
        self.sender = ResponseSender()
        self.cancelled = False
        self._id = request_id
        self._outputs = list(outputs or [])  # as Triton hands it over: the names asked for ([] in this fake: all)

    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def get_response_sender(self) -> ResponseSender:
        return self.sender

    def is_cancelled(self) -> bool:
        return self.cancelled

    def request_id(self) -> str:
        return self._id

    def requested_output_names(self) -> list[str]:
        return list(self._outputs)

    def inputs_dict(self) -> dict[str, np.ndarray]:
        return {t.name(): t.as_numpy() for t in self._inputs}


def get_input_tensor_by_name(request: Request, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


class Logger:
    lines: list[tuple[str, str]] = []

    @classmethod
    def log_error(cls, msg: str) -> None:
        cls.lines.append(("error", msg))

    @classmethod
    def log_warn(cls, msg: str) -> None:
        cls.lines.append(("warn", msg))

    @classmethod
    def log_info(cls, msg: str) -> None:
        cls.lines.append(("info", msg))

    @classmethod
    def log_verbose(cls, msg: str) -> None:
        cls.lines.append(("verbose", msg))


class Metric:
    def __init__(self, family: MetricFamily, labels: dict[str, str], buckets: list[float] | None = None) -> None:
        if (family.kind == MetricFamily.HISTOGRAM) != (buckets is not None):
            raise ValueError("histograms, and only histograms, take buckets")
        self.family, self.labels, self.buckets = family, labels, buckets
        self.value = 0.0
        self.observations: list[float] = []

    def increment(self, value: float) -> None:
        if self.family.kind != MetricFamily.COUNTER or value < 0:
            raise ValueError("counters only go up")
        self.value += value

    def set(self, value: float) -> None:
        self.value = value

    def observe(self, value: float) -> None:
        if self.family.kind != MetricFamily.HISTOGRAM:
            raise ValueError("observe is for histograms")
        self.observations.append(value)


class MetricFamily:
    COUNTER, GAUGE, HISTOGRAM = range(3)
    registry: dict[str, MetricFamily] = {}

    def __init__(self, name: str, description: str, kind: int) -> None:
        self.name, self.description, self.kind = name, description, kind
        self.metrics: list[Metric] = []
        MetricFamily.registry[name] = self

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> Metric:  # noqa: N802 - the real API
        m = Metric(self, labels, buckets)
        self.metrics.append(m)
        return m


# BLS: model name -> callable(EngineRequest) -> EngineResponse | list[EngineResponse]; may raise.
engines: dict[str, Callable[[Any], Any]] = {}
calls: list[tuple[str, bool]] = []  # (model, decoupled) of every BLS call, in order
requested: list[tuple[str, list[str]]] = []  # (model, output names asked for) of every BLS call, in order


# Models that are not engines: name -> callable(Request) -> InferenceResponse (e.g. the embedder model's
# own execute), answered before ``engines``.
models: dict[str, Callable[[Any], Any]] = {}


class InferenceRequest:
    def __init__(self, model_name: str, requested_output_names: list[str], inputs: list[Tensor], **kw: Any) -> None:
        self.model_name, self.requested, self.inputs, self.kw = model_name, requested_output_names, inputs, kw

    async def async_exec(self, decoupled: bool = False) -> Any:
        from pyramid_triton import tensors
        from pyramid_triton.protocol import Limits, ServeError

        calls.append((self.model_name, decoupled))
        requested.append((self.model_name, list(self.requested)))
        await asyncio.sleep(0)
        req = Request({t.name(): t.as_numpy() for t in self.inputs})
        if self.model_name in models:  # a model with its own tensors (e.g. the embedder)
            return models[self.model_name](req)
        try:
            engine_req = tensors.parse_engine_request(_module(), req, Limits())
            reply = engines[self.model_name](engine_req)
            if asyncio.iscoroutine(reply):  # an engine that takes its time
                reply = await reply
        except ServeError as exc:
            return _as(decoupled, [tensors.error_response(_module(), exc)])
        parts = reply if isinstance(reply, list) else [reply]
        responses = [
            InferenceResponse(tensors.engine_response_tensors(_module(), p, "answer" in self.requested)) for p in parts
        ]
        if decoupled:
            responses.append(InferenceResponse([]))  # the final flag's empty response
        return _as(decoupled, responses)


def _as(decoupled: bool, responses: list[InferenceResponse]) -> Any:
    return iter(responses) if decoupled else responses[0]


def _module() -> Any:
    import sys

    return sys.modules[__name__]


# --- remote engines: a stand-in for tritonclient.grpc (InferInput, ...) and tritonclient.grpc.aio ---------
# remote_servers: url -> {model name: callable(EngineRequest) -> reply, as for ``engines``}; a URL that is
# not there refuses connections (gRPC UNAVAILABLE). remote_unavailable: url -> how many more calls to that
# URL fail with UNAVAILABLE before it answers (a server coming back). remote_calls: (url, model, rpc).
remote_servers: dict[str, dict[str, Callable[[Any], Any]]] = {}
remote_unavailable: dict[str, int] = {}
remote_calls: list[tuple[str, str, str]] = []
remote_clients: list[FakeAioClient] = []


class InferenceServerException(Exception):
    """tritonclient.utils.InferenceServerException's interface: ``status()`` (a gRPC status of a
    transport error, e.g. "StatusCode.UNAVAILABLE", else None) and ``message()``."""

    def __init__(self, msg: str, status: str | None = None) -> None:
        super().__init__(msg)
        self._msg, self._status = msg, status

    def message(self) -> str:
        return self._msg

    def status(self) -> str | None:
        return self._status


class InferInput:
    def __init__(self, name: str, shape: list[int], datatype: str) -> None:
        self.name, self.shape, self.datatype = name, shape, datatype
        self.array: np.ndarray | None = None

    def set_data_from_numpy(self, array: np.ndarray) -> None:
        assert list(array.shape) == self.shape, (array.shape, self.shape)
        self.array = array


class InferRequestedOutput:
    def __init__(self, name: str) -> None:
        self.name = name


class _Response:
    def __init__(self, outputs: list[str]) -> None:
        self.outputs = outputs


class InferResult:
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self._arrays = arrays

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self._arrays.get(name)

    def get_response(self) -> _Response:
        return _Response(list(self._arrays))


_SERVE_CODES = {"NOT_FOUND": "NOT_FOUND", "INVALID_ARG": "INVALID_ARGUMENT", "UNAVAILABLE": "UNAVAILABLE"}


class FakeAioClient:
    """tritonclient.grpc.aio.InferenceServerClient's ``infer``, ``stream_infer`` and ``close``."""

    def __init__(self, url: str) -> None:
        self.url, self.closed = url, False
        remote_clients.append(self)

    async def _results(self, model: str, inputs: list[InferInput], outputs: list[Any] | None, rpc: str):
        from pyramid_triton import tensors
        from pyramid_triton.protocol import Limits, ServeError

        remote_calls.append((self.url, model, rpc))
        await asyncio.sleep(0)
        if remote_unavailable.get(self.url, 0) > 0:
            remote_unavailable[self.url] -= 1
            raise InferenceServerException("failed to connect to all addresses", "StatusCode.UNAVAILABLE")
        server = remote_servers.get(self.url)
        if server is None:
            raise InferenceServerException("failed to connect to all addresses", "StatusCode.UNAVAILABLE")
        if model not in server:
            raise InferenceServerException(f"Request for unknown model: '{model}' is not found", "StatusCode.NOT_FOUND")
        requested = {o.name for o in outputs or []}
        req = Request({t.name: t.array for t in inputs})
        try:
            reply = server[model](tensors.parse_engine_request(_module(), req, Limits()))
            if asyncio.iscoroutine(reply):
                reply = await reply
        except ServeError as exc:  # an engine's error response: its "[CODE] " message, the gRPC status
            raise InferenceServerException(
                f"[{exc.code}] {exc}", f"StatusCode.{_SERVE_CODES.get(exc.code, 'INTERNAL')}"
            ) from None
        parts = reply if isinstance(reply, list) else [reply]
        return [
            InferResult(
                {
                    t.name(): t.as_numpy()
                    for t in tensors.engine_response_tensors(_module(), p, "answer" in requested)
                    if not requested or t.name() in requested
                }
            )
            for p in parts
        ]

    async def infer(self, model_name: str, inputs: list[InferInput], outputs: Any = None, **kw: Any) -> InferResult:
        results = await self._results(model_name, inputs, outputs, "infer")
        assert len(results) == 1, "a non-decoupled model answers once"
        return results[0]

    def stream_infer(self, inputs_iterator: Any, stream_timeout: float | None = None, **kw: Any) -> _Stream:
        return _Stream(self, inputs_iterator)

    async def close(self) -> None:
        self.closed = True


class _Stream:
    """The async iterator ``stream_infer`` returns: (result, None) per response, (None, error) for an
    error response; a transport failure raises; ``cancel()`` as grpc's."""

    def __init__(self, client: FakeAioClient, requests: Any) -> None:
        self.client, self.requests, self.cancelled = client, requests, False
        self._items: list[tuple[Any, Any]] | None = None

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> tuple[Any, Any]:
        if self._items is None:
            self._items = []
            async for r in self.requests:
                try:
                    results = await self.client._results(r["model_name"], r["inputs"], r.get("outputs"), "stream")
                except InferenceServerException as exc:
                    if exc.status() == "StatusCode.UNAVAILABLE" and not exc.message().startswith("["):
                        raise  # a transport failure: the stream itself fails
                    self._items.append((None, InferenceServerException(exc.message())))
                    continue
                self._items.extend((res, None) for res in results)
                self._items.append((InferResult({}), None))  # the final flag's empty response
        if not self._items:
            raise StopAsyncIteration
        return self._items.pop(0)

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class grpc_module:  # noqa: N801 - stands in for the tritonclient.grpc module
    InferInput = InferInput
    InferRequestedOutput = InferRequestedOutput
