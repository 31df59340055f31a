"""Remote engines: an agent or the oracle served by another Triton server, reached over gRPC.

A deployment spec may say that a model lives on another host (``remote: {url, model, decoupled}``);
the renderer writes the map of such models into the router's ``remote`` parameter (JSON), and the
router (``engine_calls.EngineCalls``) calls them with ``tritonclient.grpc.aio`` from inside the Python
backend's event loop instead of a BLS request. Everything above the call is unchanged: the same
text API tensors (``tensors.engine_request_tensors``, converted here to ``InferInput``), the same
failure mapping (``CallError`` with a code name), so per-call timeouts, the circuit breaker, the
degraded-mode rules and ``pyramid_model_failures_total`` (all in ``EngineCalls.call``) apply as
they do to local engines.

- **Connection reuse**: one ``InferenceServerClient`` (one gRPC channel, one HTTP/2 connection that
  multiplexes every concurrent call) per remote URL, created lazily in the running event loop and
  kept for the model's lifetime.
- **Retries**: the client's rule (``pyramid_client.retry``): only a gRPC ``UNAVAILABLE`` (nothing
  listening, connection refused or reset, the channel in back-off) is retried, at most ``retries``
  times, after ``backoff_s * 2**k`` seconds, and only while the per-call timeout leaves room; a
  decoupled call is retried only if no response had arrived. Nothing else is retried.
- **Deadlines**: every RPC carries the call's remaining time as its gRPC deadline, so the remote
  server can drop it; a call the router abandons (timeout, cancelled request) is cancelled, which
  for a remote engine really cancels the RPC (unlike a BLS child in Triton 2.51).
- **Dead links**: keepalive pings find a silently dead connection (a cable pulled, a link down:
  no RST ever comes); short reconnect back-off (``CHANNEL_ARGS``) lets a link that came back be
  used again within about a second.
- **Several replicas behind one name** (Kubernetes): a ``dns:///NAME:PORT`` URL (a headless Service)
  makes the channel balance calls over every address the name resolves to (gRPC ``round_robin``),
  and the client is renewed every ``RENEW_DNS_S`` seconds so replicas added by an autoscaler get
  traffic (a plain ``host:port`` behind a ClusterIP Service would pin one router to one pod: one
  HTTP/2 connection). The old client is closed once calls on it have had their time.
- A **decoupled** remote model (e.g. a TensorRT-LLM ensemble) is called over a gRPC stream (its
  responses merged, as for a local decoupled engine); a non-decoupled one with unary ``infer``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyramid_client.arrays import datatype
from pyramid_client.retry import UNCAPPED, Attempts, RetryPolicy
from pyramid_client.wire import CANCELLED, UNKNOWN, UNSUPPORTED, split_code

from . import tensors
from .protocol import INTERNAL, INVALID_ARG, NOT_FOUND, UNAVAILABLE, EngineRequest, EngineResponse

REMOTE_KEYS = {"url", "model", "decoupled", "return_answer"}
# gRPC status -> the Triton error code names the router uses. DEADLINE_EXCEEDED is our own
# per-call deadline (the engine did not answer in time): UNAVAILABLE, as a local timeout is.
GRPC_CODES = {
    "UNAVAILABLE": UNAVAILABLE,
    "DEADLINE_EXCEEDED": UNAVAILABLE,
    "RESOURCE_EXHAUSTED": UNAVAILABLE,
    "NOT_FOUND": NOT_FOUND,
    "INVALID_ARGUMENT": INVALID_ARG,
    "OUT_OF_RANGE": INVALID_ARG,
    "CANCELLED": CANCELLED,
    "UNIMPLEMENTED": UNSUPPORTED,
    "INTERNAL": INTERNAL,
    UNKNOWN: INTERNAL,
}
# Channel options of every remote client (gRPC core names). Keepalive: a ping every 10 s, even
# without calls, and a connection whose ping is not answered in 5 s is closed (a dead link is
# found without waiting for the OS's TCP timeout). Reconnect: back-off from 0.5 s to at most 2 s,
# each connection attempt bounded to 1 s, so a link that came back is used again quickly.
CHANNEL_ARGS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 1_000),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


DNS_SCHEME = "dns:///"
RENEW_DNS_S = 30.0  # a dns:/// client is replaced this often (new replicas are found on re-resolution)
OLD_CLIENT_GRACE_S = 600.0  # a replaced client is closed this long after (longer than any per-call timeout)


class CallError(Exception):
    """An engine call failed with a Triton error code name (``message`` without a "[CODE] " prefix)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message, self.code = message, code


@dataclass(frozen=True)
class RemoteModel:
    """A model served by another Triton server: its gRPC ``url`` (host:port) and its ``model`` name
    there; ``decoupled``: a streaming model (called over a gRPC stream); ``return_answer``: it returns
    a parsed ``answer`` output (the replay engine does) that the router asks for."""

    url: str
    model: str
    decoupled: bool = False
    return_answer: bool = False

    @classmethod
    def from_spec(cls, name: str, d: Any, where: str) -> RemoteModel:
        if not isinstance(d, dict):
            raise ValueError(f"{where}: 'remote' must be a mapping with 'url' (host:port) and optionally 'model'")
        unknown = sorted(set(d) - REMOTE_KEYS)
        if unknown:
            raise ValueError(
                f"{where}: remote: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(REMOTE_KEYS))}"
            )
        url = str(d.get("url", "")).strip()
        target = url[len(DNS_SCHEME) :] if url.startswith(DNS_SCHEME) else url
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit() or "/" in target or " " in target or '"' in target:
            raise ValueError(
                f"{where}: remote url must be host:port (or dns:///name:port) of a Triton gRPC endpoint, got {url!r}"
            )
        for key in ("decoupled", "return_answer"):
            if not isinstance(d.get(key, False), bool):
                raise ValueError(f"{where}: remote {key} must be true or false, got {d[key]!r}")
        model = str(d.get("model", name))
        if not model or '"' in model:
            raise ValueError(f"{where}: remote model {model!r} is not a model name")
        return cls(url, model, bool(d.get("decoupled", False)), bool(d.get("return_answer", False)))

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "decoupled": self.decoupled, "return_answer": self.return_answer}


def parse_remote_map(text: str) -> dict[str, RemoteModel]:
    """The router's ``remote`` parameter: JSON ``{name: {url, model, decoupled, return_answer}}``."""
    if not text.strip():
        return {}
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"router parameter 'remote' is not valid JSON: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError("router parameter 'remote' must be a JSON object {model name: {url, model, ...}}")
    return {str(k): RemoteModel.from_spec(str(k), v, f"remote model {k!r}") for k, v in d.items()}


def remote_map_json(models: dict[str, RemoteModel]) -> str:
    """The router parameter's value (compact JSON; rendered into config.pbtxt, so no double quotes
    may appear unescaped: ``render`` writes it through ``pbtxt_string``)."""
    return json.dumps({k: v.to_dict() for k, v in sorted(models.items())}, separators=(",", ":"))


# --- tensors: the engine text API as tritonclient InferInputs, and results back --------------------


class _InputsShim:
    """A ``pb_utils``-like namespace whose ``Tensor(name, array)`` is a tritonclient ``InferInput``:
    ``tensors.engine_request_tensors`` builds the very same inputs for a remote call."""

    def __init__(self, grpcclient: Any) -> None:
        self._mod = grpcclient

    def Tensor(self, name: str, array: np.ndarray) -> Any:  # noqa: N802 - pb_utils' name
        t = self._mod.InferInput(name, list(array.shape), datatype(array.dtype))
        t.set_data_from_numpy(array)
        return t


def request_inputs(grpcclient: Any, ereq: EngineRequest) -> list[Any]:
    """``InferInput``s of one engine request (the tensors a local BLS call sends)."""
    return tensors.engine_request_tensors(_InputsShim(grpcclient), ereq)


def parse_result(result: Any, with_answer: bool) -> EngineResponse | None:
    """An engine reply from a tritonclient ``InferResult`` (None: a response without outputs)."""
    try:
        outputs = result.get_response().outputs
    except AttributeError:
        outputs = None
    if outputs is not None and not len(outputs):
        return None
    return tensors.engine_response(lambda name: tensors.first_element(result.as_numpy(name)), with_answer)


# --- errors -------------------------------------------------------------------------------------


def call_error(exc: BaseException) -> CallError:
    """A ``CallError`` from what a tritonclient call raised: an ``InferenceServerException`` (its
    ``status()`` is the gRPC status of a transport error, its message an engine's "[CODE] ..." text)
    or a ``grpc.RpcError`` (a stream's transport error). ``retryable`` is set on gRPC UNAVAILABLE."""
    status, message = "", str(exc)
    try:  # grpc.RpcError (grpc.aio streams raise it as is)
        status, message = exc.code().name, exc.details() or ""  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # not an RpcError
        try:  # tritonclient InferenceServerException
            status = str(exc.status() or "").replace("StatusCode.", "")  # type: ignore[attr-defined]
            message = str(exc.message())  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # neither: its text is all there is
            status = ""
    code, message = split_code(message)
    err = CallError(message, code or GRPC_CODES.get(status, INTERNAL))
    err.retryable = status == "UNAVAILABLE"  # type: ignore[attr-defined]
    if status and code is None:
        err.message = f"{status}: {message}"
    return err


def channel_args(url: str) -> list[tuple[str, Any]]:
    """``CHANNEL_ARGS``, plus round-robin balancing over every address of a ``dns:///`` URL."""
    return CHANNEL_ARGS + ([("grpc.lb_policy_name", "round_robin")] if url.startswith(DNS_SCHEME) else [])


async def _close(client: Any) -> None:
    try:
        await client.close()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass


# --- the client -----------------------------------------------------------------------------------


class RemoteEngines:
    """Calls remote models; ``clients`` are reused per URL (``client_factory(url)`` makes one; the
    default is ``tritonclient.grpc.aio.InferenceServerClient`` with ``CHANNEL_ARGS``)."""

    def __init__(
        self,
        models: dict[str, RemoteModel],
        retries: int = 2,
        backoff_s: float = 0.1,
        client_factory: Callable[[str], Any] | None = None,
        grpcclient: Any = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"remote_retries must be >= 0, got {retries}")
        self.models = dict(models)
        self.policy = RetryPolicy(retries, backoff_s, UNCAPPED)
        self.client_factory = client_factory
        self.grpcclient = grpcclient
        self._clients: dict[str, tuple[Any, Any, float]] = {}  # url -> (event loop, client, made at)
        self.attempts: dict[str, int] = {}  # model -> RPCs sent (retries included), for tests and logs

    def __contains__(self, name: str) -> bool:
        return name in self.models

    def _mod(self) -> Any:
        if self.grpcclient is None:
            import tritonclient.grpc as grpcclient

            self.grpcclient = grpcclient
        return self.grpcclient

    def client(self, url: str) -> Any:
        """This URL's client in the running event loop (made on first use, then reused; a
        ``dns:///`` URL's is renewed every ``RENEW_DNS_S`` seconds)."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        held = self._clients.get(url)
        if held is not None and held[0] is loop:
            if not url.startswith(DNS_SCHEME) or now - held[2] < RENEW_DNS_S:
                return held[1]
            loop.call_later(OLD_CLIENT_GRACE_S, lambda old=held[1]: asyncio.ensure_future(_close(old)))
        if self.client_factory is not None:
            c = self.client_factory(url)
        else:
            import tritonclient.grpc.aio as aioclient

            c = aioclient.InferenceServerClient(url, channel_args=channel_args(url))
        self._clients[url] = (loop, c, now)  # a client of another (finished) loop is dropped, not reused
        return c

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for loop, c, _ in clients:
            if loop is asyncio.get_running_loop():
                try:
                    await c.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass

    async def call(
        self, name: str, ereq: EngineRequest, with_answer: bool, timeout_s: float | None
    ) -> list[EngineResponse]:
        """The engine replies of one call (several for a decoupled model); ``CallError`` on failure.

        Retries a gRPC UNAVAILABLE up to ``retries`` times while ``timeout_s`` leaves room."""
        rm = self.models[name]
        deadline = None if not timeout_s or timeout_s <= 0 else time.monotonic() + timeout_s
        outputs = tensors.engine_output_names(ereq, with_answer)
        send = self._stream if rm.decoupled else self._unary
        tries = Attempts(self.policy, deadline, lambda exc, attempt: _failure(rm, exc, attempt))
        async for _ in tries:
            with tries:
                self.attempts[name] = self.attempts.get(name, 0) + 1
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise CallError(f"no answer from {rm.url} within {timeout_s:g} s", UNAVAILABLE)
                received: list[EngineResponse] = []
                async for reply in send(rm, ereq, outputs, with_answer, remaining):
                    tries.answered = True
                    received.append(reply)
                return received

    async def _unary(
        self, rm: RemoteModel, ereq: EngineRequest, outputs: list[str], with_answer: bool, timeout_s: float | None
    ) -> AsyncIterator[EngineResponse]:
        mod = self._mod()
        result = await self.client(rm.url).infer(
            rm.model,
            request_inputs(mod, ereq),
            outputs=[mod.InferRequestedOutput(n) for n in outputs],
            client_timeout=timeout_s,
        )
        reply = parse_result(result, with_answer)
        if reply is None:
            raise CallError(f"{rm.model}@{rm.url}: the engine sent no output", INTERNAL)
        yield reply

    async def _stream(
        self, rm: RemoteModel, ereq: EngineRequest, outputs: list[str], with_answer: bool, timeout_s: float | None
    ) -> AsyncIterator[EngineResponse]:
        """One request over a gRPC stream; every response until the server ends the stream (it does
        after the request's final response, since the request iterator is then exhausted)."""
        mod = self._mod()
        request = {
            "model_name": rm.model,
            "inputs": request_inputs(mod, ereq),
            "outputs": [mod.InferRequestedOutput(n) for n in outputs],
        }

        async def one():
            yield request

        it = self.client(rm.url).stream_infer(one(), stream_timeout=timeout_s)
        done = False
        try:
            async for result, error in it:
                if error is not None:
                    done = True  # an error response is the request's last
                    err = call_error(error)
                    err.retryable = False  # type: ignore[attr-defined] - the engine answered: not a link failure
                    raise err
                reply = parse_result(result, with_answer)
                if reply is not None:
                    yield reply
            done = True
        finally:
            if not done:
                it.cancel()


def _failure(rm: RemoteModel, exc: Exception, attempt: int) -> tuple[CallError, bool] | None:
    """How a remote call's exception counts (``pyramid_client.retry``): a ``CallError`` (the engine's
    error response, or no time left) as it is; anything else mapped by ``call_error``, named after
    the remote model, and retried when it is a gRPC UNAVAILABLE."""
    if isinstance(exc, CallError):
        return None
    err = call_error(exc)
    err.message = f"{rm.model}@{rm.url}: {err.message}" + (f" (after {attempt} attempts)" if attempt > 1 else "")
    return err, err.retryable  # type: ignore[attr-defined]
