"""gRPC transport (``tritonclient.grpc``): the router is decoupled, so every request goes over
Triton's bidirectional stream, one stream per request.

Both transports yield each response as ``{output name: Python scalar}`` and raise
``PyramidError``; the retry loop and result parsing live in ``client``.

- sync: ``InferenceServerClient.start_stream`` + ``async_stream_infer`` with
  ``enable_empty_final_response``, so the end of the request (Triton's FINAL flag) is seen
  even when it comes without a response. A ``tritonclient`` client holds one stream at a time,
  so each thread gets its own client.
- asyncio: ``tritonclient.grpc.aio`` ``stream_infer`` with a one-request iterator; the server
  ends the stream after that request's FINAL flag.

A request is cancelled only when it is abandoned (timeout, the caller stopped iterating):
cancelling a decoupled request on Triton 2.51 can leave the model unable to unload, so a
request that is answered is always read to its end.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np

from .arrays import to_array
from .types import PyramidError, error_from_message, timed_out
from .wire import INPUT_DATATYPES, INTERNAL


def _tensors(mod: Any, inputs: dict[str, Any]) -> list:
    out = []
    for name, value in inputs.items():
        t = mod.InferInput(name, [1, 1], INPUT_DATATYPES[name])
        t.set_data_from_numpy(to_array(value, INPUT_DATATYPES[name]))
        out.append(t)
    return out


def _scalar(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, np.generic):
        return v.item()
    return v


def outputs_of(result: Any) -> dict[str, Any]:
    """``{name: scalar}`` of a tritonclient ``InferResult`` (every output has one element)."""
    out = {}
    for o in result.get_response().outputs:
        arr = result.as_numpy(o.name)
        if arr is not None and arr.size:
            out[o.name] = _scalar(arr.reshape(-1)[0])
    return out


def _is_final(result: Any) -> bool:
    params = result.get_response().parameters
    return "triton_final_response" in params and params["triton_final_response"].bool_param


def _from_triton(exc: Any) -> PyramidError:
    """From a tritonclient ``InferenceServerException`` (a status only for transport errors)."""
    try:
        status = str(exc.status() or "").replace("StatusCode.", "")
    except (AttributeError, TypeError):  # not an InferenceServerException
        status = ""
    try:
        message = str(exc.message())
    except (AttributeError, TypeError):
        message = str(exc)
    return error_from_message(message, status or None)


def _from_rpc(exc: Any) -> PyramidError:
    """From a ``grpc.RpcError`` (what ``tritonclient.grpc.aio`` streams raise on transport errors)."""
    try:
        code = exc.code().name
        details = exc.details() or ""
    except (AttributeError, TypeError):  # not a grpc.RpcError after all
        code, details = "", str(exc)
    return error_from_message(details, code or None)


class GrpcTransport:
    protocol = "grpc"

    def __init__(self, url: str, model: str, headers: dict[str, str] | None = None) -> None:
        import tritonclient.grpc as grpcclient

        self._mod = grpcclient
        self.url, self.model = url, model
        self.headers = dict(headers) if headers else None  # gRPC metadata of every request
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    def _client(self) -> tuple[Any, dict | None]:
        """(this thread's client, its slot), or (a new client to close after the call, None) while
        this thread's client still has a stream open (an ``ask_stream`` iterator not run to its end)."""
        slot = getattr(self._local, "slot", None)
        if slot is None:
            slot = {"client": self._mod.InferenceServerClient(self.url), "busy": False}
            self._local.slot = slot
            with self._lock:
                self._clients.append(slot["client"])
        if slot["busy"]:
            return self._mod.InferenceServerClient(self.url), None
        slot["busy"] = True
        return slot["client"], slot

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            c.close()
        self._local = threading.local()

    def stream(self, inputs: dict[str, Any], request_id: str, deadline: float, timeout_s: float) -> Iterator[dict]:
        """Each response of one request, as it arrives; ends after the FINAL flag."""
        c, slot = self._client()
        got: queue.Queue = queue.Queue()
        ended = False  # the request is over at the server: no cancellation needed
        try:
            c.start_stream(callback=lambda result, error: got.put((result, error)), headers=self.headers)
        except BaseException:
            self._release(c, slot)
            raise
        try:
            try:
                c.async_stream_infer(
                    self.model,
                    _tensors(self._mod, inputs),
                    request_id=request_id,
                    enable_empty_final_response=True,
                )
            except self._mod.InferenceServerException as exc:
                # The stream already failed (e.g. nothing listening); its callback has the real error.
                try:
                    _, error = got.get(timeout=2.0)
                except queue.Empty:
                    error = exc
                ended = True
                raise _from_triton(error or exc) from None
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise timed_out(timeout_s)
                try:
                    result, error = got.get(timeout=remaining)
                except queue.Empty:
                    raise timed_out(timeout_s) from None
                if error is not None:
                    ended = True  # an error response is the request's last
                    raise _from_triton(error)
                final = _is_final(result)
                if result.get_response().outputs:
                    if final:
                        ended = True
                    yield outputs_of(result)
                if final:
                    ended = True
                    return
        finally:
            try:
                c.stop_stream(cancel_requests=not ended)
            finally:
                self._release(c, slot)

    @staticmethod
    def _release(c: Any, slot: dict | None) -> None:
        if slot is None:
            c.close()
        else:
            slot["busy"] = False


class AsyncGrpcTransport:
    protocol = "grpc"

    def __init__(self, url: str, model: str, headers: dict[str, str] | None = None) -> None:
        import grpc
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as aioclient

        self._grpc, self._mod = grpc, grpcclient
        self.url, self.model = url, model
        self.headers = dict(headers) if headers else None  # gRPC metadata of every request
        self._client = aioclient.InferenceServerClient(url)

    async def close(self) -> None:
        await self._client.close()

    async def stream(
        self, inputs: dict[str, Any], request_id: str, deadline: float, timeout_s: float
    ) -> AsyncIterator[dict]:
        request = {
            "model_name": self.model,
            "inputs": _tensors(self._mod, inputs),
            "request_id": request_id,
        }

        async def requests():
            yield request

        it = self._client.stream_infer(requests(), headers=self.headers)
        ended = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise timed_out(timeout_s)
                try:
                    result, error = await asyncio.wait_for(it.__anext__(), remaining)
                except StopAsyncIteration:
                    ended = True
                    return
                except asyncio.TimeoutError:
                    raise timed_out(timeout_s) from None
                except self._grpc.RpcError as exc:
                    ended = True
                    raise _from_rpc(exc) from None
                except self._mod.InferenceServerException as exc:
                    ended = True
                    raise _from_triton(exc) from None
                if error is not None:
                    # An error response is the request's last; read the stream to its end.
                    await _drain(it, deadline)
                    ended = True
                    raise _from_triton(error)
                got_id = result.get_response().id
                if got_id and got_id != request_id:
                    raise PyramidError(f"response for request id {got_id!r}, expected {request_id!r}", INTERNAL)
                if result.get_response().outputs:
                    yield outputs_of(result)
        finally:
            if not ended:
                it.cancel()


async def _drain(it: Any, deadline: float) -> None:
    try:
        while True:
            await asyncio.wait_for(it.__anext__(), max(0.1, deadline - time.monotonic()))
    except Exception:  # noqa: BLE001 - best effort: StopAsyncIteration, a timeout, a transport error
        return
