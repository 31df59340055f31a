"""Talk to the ``pyramid`` router model and get typed results, over gRPC (default) or HTTP.

    with PyramidClient("localhost:8001") as c:              # gRPC
        r = c.ask("question", escalation_threshold=0.8, deadline_ms=2000)
    with PyramidClient("http://localhost:8000") as c:       # HTTP (generate extension)
        for r in c.ask_stream("question"):                  # provisional, then final
            print(r.provisional, r.answer)

The protocol comes from ``protocol=`` or the URL's scheme (``grpc://``, ``http://``,
``https://``); a bare ``host:port`` is gRPC. ``AsyncPyramidClient`` is the same for asyncio
(many calls may run concurrently from one event loop).

Timeouts and retries: ``timeout_s`` bounds a whole call (retries and, for ``ask_stream``, every
response included; DEADLINE_EXCEEDED past it). A call is retried only when it fails with
UNAVAILABLE (nothing listening, server not ready) before any response arrived, at most
``retries`` times, sleeping ``backoff_s * 2**k`` (capped at ``max_backoff_s``) in between
(``retry``); every other error is raised at once as ``PyramidError`` with the server's code and
message (a bad input's message names the input).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, TypedDict

from .retry import Attempts, RetryHook, RetryPolicy
from .types import PyramidError, PyramidResult, build_inputs, result_from_outputs
from .wire import DEADLINE_EXCEEDED, INTERNAL, REQUEST_OPTIONS, ROUTER_OUTPUTS, key_headers

if TYPE_CHECKING:
    from typing import Unpack

OUTPUTS = tuple(ROUTER_OUTPUTS)
PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
DEFAULT_URL = "localhost:8001"  # gRPC
DEFAULT_HTTP_URL = "localhost:8000"


# The keywords of ``ask`` / ``ask_stream`` (every one optional; None: the deployment's default): the request
# options of ``wire.REQUEST_OPTIONS``, by their names, and ``timeout_s`` (this call's timeout instead of the
# client's) and ``request_id`` (default a random one).
AskOptions = TypedDict(  # type: ignore[misc]  # built from the table, so an option is added in one place
    "AskOptions",
    {
        **{name: o.python_type | None for name, o in REQUEST_OPTIONS.items()},
        "timeout_s": float | None,
        "request_id": str | None,
    },
    total=False,
)
AskOptions.__doc__ = (
    "The keywords of ``ask`` / ``ask_stream`` (every one optional; None: the deployment's default).\n\n"
    + "\n".join(f"``{name}``: {o.help}" for name, o in REQUEST_OPTIONS.items())
    + "\n``timeout_s``: this call's timeout instead of the client's\n``request_id``: default a random one"
)


def resolve_endpoint(url: str | None, protocol: str | None) -> tuple[str, str]:
    """(protocol, url for that transport) from a URL (``host:port``, ``grpc://``, ``http[s]://``)
    and an optional explicit protocol; ValueError when they disagree."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    scheme = url.split("://", 1)[0].lower() if url and "://" in url else None
    if scheme is not None and scheme not in ("grpc", "http", "https"):
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r} (grpc://, http://, https://)")
    implied = None if scheme is None else ("grpc" if scheme == "grpc" else "http")
    if protocol and implied and protocol != implied:
        raise ValueError(f"URL {url!r} is {implied}, but protocol={protocol!r}")
    proto = protocol or implied or "grpc"
    if not url:
        url = f"localhost:{DEFAULT_PORTS[proto]}"
    if proto == "grpc" and scheme == "grpc":
        url = url.split("://", 1)[1]
    return proto, url


def make_transport(
    protocol: str, url: str, model: str, asynchronous: bool, headers: dict[str, str] | None = None
) -> Any:
    """The transport of one model: ``stream(inputs, request_id, deadline, timeout_s)`` yields each
    response as ``{output name: scalar}`` (an async iterator when ``asynchronous``); ``headers`` go with
    every request (HTTP headers, or gRPC metadata)."""
    if protocol == "http":
        from .http_transport import AsyncHttpTransport, HttpTransport

        return (AsyncHttpTransport if asynchronous else HttpTransport)(url, model, headers)
    from .grpc_transport import AsyncGrpcTransport, GrpcTransport

    return (AsyncGrpcTransport if asynchronous else GrpcTransport)(url, model, headers)


def _final(last: PyramidResult | None) -> PyramidResult:
    if last is None:
        raise PyramidError("the server ended the request without a response", INTERNAL)
    return last


class _Base(RetryPolicy):
    """What both clients share: the endpoint (``url``, ``protocol``), the router ``model``, the call
    timeout ``timeout_s``, the retry policy (``retries``, ``backoff_s``, ``max_backoff_s``,
    ``on_retry(attempt, error, wait)``: see ``retry``), and what goes with every request: ``headers``
    (HTTP headers, or gRPC metadata, as given) and ``inference_key``, the key of a server that puts
    inference behind one (sent as the protocol needs it: ``wire.key_headers``; docs/SECURITY.md)."""

    _asynchronous = False

    def __init__(
        self,
        url: str | None = None,
        model: str = "pyramid",
        timeout_s: float = 60.0,
        retries: int = 3,
        *,
        protocol: str | None = None,
        backoff_s: float = 0.25,
        max_backoff_s: float = 4.0,
        on_retry: RetryHook | None = None,
        headers: dict[str, str] | None = None,
        inference_key: str | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        super().__init__(retries, backoff_s, max_backoff_s)
        self.protocol, self.url = resolve_endpoint(url, protocol)
        self.model, self.timeout_s, self.on_retry = model, float(timeout_s), on_retry
        sent = dict(headers or {})
        if inference_key:
            sent.update(key_headers(self.protocol, inference_key))
        self._transport = make_transport(self.protocol, self.url, model, self._asynchronous, sent)
        self._sleep: Any = asyncio.sleep if self._asynchronous else time.sleep

    def _prepare(self, question: str, options: AskOptions, stream: bool) -> tuple[dict[str, Any], str, float]:
        """(inputs, request id, timeout) of one call."""
        opts = dict(options)
        timeout = opts.pop("timeout_s", None)
        timeout = self.timeout_s if timeout is None else float(timeout)
        if timeout <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout}")
        rid = opts.pop("request_id", None)
        return build_inputs(question, stream, **opts), rid or uuid.uuid4().hex, timeout

    def _attempts(self, timeout: float) -> Attempts:
        return Attempts(self, time.monotonic() + timeout, on_retry=self.on_retry, sleep=self._sleep)


class PyramidClient(_Base):
    """Synchronous client. ``protocol``: ``"grpc"`` or ``"http"`` (default: from the URL's scheme,
    else gRPC). Safe to share between threads (gRPC: one connection per thread)."""

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> PyramidClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ask(self, question: str, **options: Unpack[AskOptions]) -> PyramidResult:
        """One question, one answer (the final one; a provisional one only when ``deadline_ms``
        passed before the oracle answered). ``options``: ``AskOptions``."""
        last = None
        for r in self._run(*self._prepare(question, options, False)):
            last = r
        return _final(last)

    def ask_stream(self, question: str, **options: Unpack[AskOptions]) -> Iterator[PyramidResult]:
        """Every response as it arrives: on escalation the committee's answer
        (``provisional=True``), then the oracle's final one; otherwise just the final one."""
        return self._run(*self._prepare(question, options, True))

    def _run(self, inputs: dict[str, Any], rid: str, timeout: float) -> Iterator[PyramidResult]:
        tries = self._attempts(timeout)
        for _ in tries:
            with tries:
                t0 = time.perf_counter()
                for out in self._transport.stream(inputs, rid, tries.deadline, timeout):
                    tries.answered = True
                    yield result_from_outputs(out, rid, time.perf_counter() - t0)
                return


class AsyncPyramidClient(_Base):
    """asyncio client; many ``await client.ask(...)`` may run concurrently."""

    _asynchronous = True

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncPyramidClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ask(self, question: str, **options: Unpack[AskOptions]) -> PyramidResult:
        last = None
        async for r in self._run(*self._prepare(question, options, False)):
            last = r
        return _final(last)

    def ask_stream(self, question: str, **options: Unpack[AskOptions]) -> AsyncIterator[PyramidResult]:
        """``async for r in client.ask_stream(q)``: provisional (on escalation), then final."""
        return self._run(*self._prepare(question, options, True))

    async def _run(self, inputs: dict[str, Any], rid: str, timeout: float) -> AsyncIterator[PyramidResult]:
        tries = self._attempts(timeout)
        async for _ in tries:
            with tries:
                t0 = time.perf_counter()
                async for out in self._transport.stream(inputs, rid, tries.deadline, timeout):
                    tries.answered = True
                    yield result_from_outputs(out, rid, time.perf_counter() - t0)
                return


__all__ = [
    "DEADLINE_EXCEEDED",
    "DEFAULT_HTTP_URL",
    "DEFAULT_URL",
    "OUTPUTS",
    "AskOptions",
    "AsyncPyramidClient",
    "PyramidClient",
    "PyramidError",
    "PyramidResult",
    "make_transport",
    "resolve_endpoint",
]
