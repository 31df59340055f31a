"""Talk to the ``pyramid`` router model and get typed results, over gRPC (default) or HTTP.

    with PyramidClient("localhost:8001") as c:              # gRPC
        r = c.ask("question", threshold=0.8, deadline_ms=2000)
    with PyramidClient("http://localhost:8000") as c:       # HTTP (generate extension)
        for r in c.ask_stream("question"):                  # provisional, then final
            print(r.provisional, r.answer)

The protocol comes from ``protocol=`` or the URL's scheme (``grpc://``, ``http://``,
``https://``); a bare ``host:port`` is gRPC. ``AsyncPyramidClient`` is the same for asyncio
(many calls may run concurrently from one event loop).

Timeouts and retries: ``timeout_s`` bounds a whole call (retries and, for ``ask_stream``, every
response included; DEADLINE_EXCEEDED past it). A call is retried only when it fails with
UNAVAILABLE (nothing listening, server not ready) before any response arrived, at most
``retries`` times, sleeping ``backoff_s * 2**k`` (capped at ``max_backoff_s``) in between; every
other error is raised at once as ``PyramidError`` with the server's code and message (a bad
input's message names the input).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .types import (
    DEADLINE_EXCEEDED,
    INTERNAL,
    UNAVAILABLE,
    PyramidError,
    PyramidResult,
    build_inputs,
    result_from_outputs,
)

OUTPUTS = (
    "text_output",
    "answer",
    "tier",
    "escalated",
    "confidence",
    "agreement",
    "agent_answers",
    "degraded",
    "cost",
    "provisional",
)
PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
DEFAULT_URL = "localhost:8001"  # gRPC
DEFAULT_HTTP_URL = "localhost:8000"

RetryHook = Callable[[int, PyramidError, float], None]


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


class _Base:
    def __init__(
        self,
        url: str | None,
        model: str,
        timeout_s: float,
        retries: int,
        protocol: str | None,
        backoff_s: float,
        max_backoff_s: float,
        on_retry: RetryHook | None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.protocol, self.url = resolve_endpoint(url, protocol)
        self.model, self.timeout_s, self.retries = model, float(timeout_s), int(retries)
        self.backoff_s, self.max_backoff_s, self.on_retry = backoff_s, max_backoff_s, on_retry

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))

    def _retry_delay(self, exc: PyramidError, attempt: int, yielded: bool, deadline: float) -> float | None:
        """The delay before the next attempt, or None to raise ``exc``."""
        exc.attempts = attempt
        if exc.code != UNAVAILABLE or yielded or attempt > self.retries:
            return None
        delay = self.backoff(attempt)
        if time.monotonic() + delay >= deadline:
            return None  # the call's timeout would pass while waiting
        if self.on_retry is not None:
            self.on_retry(attempt, exc, delay)
        return delay

    def _prepare(self, question: str, timeout_s: float | None, request_id: str | None, **kw: Any):
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        if timeout <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout}")
        return build_inputs(question, **kw), request_id or uuid.uuid4().hex, timeout


class PyramidClient(_Base):
    """Synchronous client. ``protocol``: ``"grpc"`` or ``"http"`` (default: from the URL's scheme,
    else gRPC). Safe to share between threads (gRPC: one connection per thread)."""

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
    ) -> None:
        super().__init__(url, model, timeout_s, retries, protocol, backoff_s, max_backoff_s, on_retry)
        if self.protocol == "http":
            from .http_transport import HttpTransport  # noqa: PLC0415

            self._transport: Any = HttpTransport(self.url, model)
        else:
            from .grpc_transport import GrpcTransport  # noqa: PLC0415

            self._transport = GrpcTransport(self.url, model)
        self._sleep = time.sleep

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> PyramidClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ask(
        self,
        question: str,
        *,
        threshold: float | None = None,
        force_tier: str | None = None,
        max_tokens: int | None = None,
        deadline_ms: int | None = None,
        strict: bool | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> PyramidResult:
        """One question, one answer (the final one; a provisional one only when ``deadline_ms``
        passed before the oracle answered)."""
        inputs, rid, timeout = self._prepare(
            question, timeout_s, request_id, threshold=threshold, force_tier=force_tier, max_tokens=max_tokens,
            deadline_ms=deadline_ms, strict=strict, temperature=temperature, seed=seed,
        )  # fmt: skip
        last = None
        for r in self._run(inputs, rid, timeout):
            last = r
        if last is None:
            raise PyramidError("the server ended the request without a response", INTERNAL)
        return last

    def ask_stream(
        self,
        question: str,
        *,
        threshold: float | None = None,
        force_tier: str | None = None,
        max_tokens: int | None = None,
        deadline_ms: int | None = None,
        strict: bool | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> Iterator[PyramidResult]:
        """Every response as it arrives: on escalation the committee's answer
        (``provisional=True``), then the oracle's final one; otherwise just the final one."""
        inputs, rid, timeout = self._prepare(
            question, timeout_s, request_id, threshold=threshold, force_tier=force_tier, max_tokens=max_tokens,
            deadline_ms=deadline_ms, strict=strict, temperature=temperature, seed=seed, stream=True,
        )  # fmt: skip
        return self._run(inputs, rid, timeout)

    def _run(self, inputs: dict[str, Any], rid: str, timeout: float) -> Iterator[PyramidResult]:
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            t0 = time.perf_counter()
            yielded = False
            try:
                for out in self._transport.stream(inputs, rid, deadline, timeout):
                    yielded = True
                    yield result_from_outputs(out, rid, time.perf_counter() - t0)
                return
            except PyramidError as exc:
                delay = self._retry_delay(exc, attempt, yielded, deadline)
                if delay is None:
                    raise
            self._sleep(delay)


class AsyncPyramidClient(_Base):
    """asyncio client; many ``await client.ask(...)`` may run concurrently."""

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
    ) -> None:
        super().__init__(url, model, timeout_s, retries, protocol, backoff_s, max_backoff_s, on_retry)
        if self.protocol == "http":
            from .http_transport import AsyncHttpTransport  # noqa: PLC0415

            self._transport: Any = AsyncHttpTransport(self.url, model)
        else:
            from .grpc_transport import AsyncGrpcTransport  # noqa: PLC0415

            self._transport = AsyncGrpcTransport(self.url, model)
        self._sleep = asyncio.sleep

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncPyramidClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ask(
        self,
        question: str,
        *,
        threshold: float | None = None,
        force_tier: str | None = None,
        max_tokens: int | None = None,
        deadline_ms: int | None = None,
        strict: bool | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> PyramidResult:
        inputs, rid, timeout = self._prepare(
            question, timeout_s, request_id, threshold=threshold, force_tier=force_tier, max_tokens=max_tokens,
            deadline_ms=deadline_ms, strict=strict, temperature=temperature, seed=seed,
        )  # fmt: skip
        last = None
        async for r in self._run(inputs, rid, timeout):
            last = r
        if last is None:
            raise PyramidError("the server ended the request without a response", INTERNAL)
        return last

    def ask_stream(
        self,
        question: str,
        *,
        threshold: float | None = None,
        force_tier: str | None = None,
        max_tokens: int | None = None,
        deadline_ms: int | None = None,
        strict: bool | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[PyramidResult]:
        """``async for r in client.ask_stream(q)``: provisional (on escalation), then final."""
        inputs, rid, timeout = self._prepare(
            question, timeout_s, request_id, threshold=threshold, force_tier=force_tier, max_tokens=max_tokens,
            deadline_ms=deadline_ms, strict=strict, temperature=temperature, seed=seed, stream=True,
        )  # fmt: skip
        return self._run(inputs, rid, timeout)

    async def _run(self, inputs: dict[str, Any], rid: str, timeout: float) -> AsyncIterator[PyramidResult]:
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            t0 = time.perf_counter()
            yielded = False
            try:
                async for out in self._transport.stream(inputs, rid, deadline, timeout):
                    yielded = True
                    yield result_from_outputs(out, rid, time.perf_counter() - t0)
                return
            except PyramidError as exc:
                delay = self._retry_delay(exc, attempt, yielded, deadline)
                if delay is None:
                    raise
            await self._sleep(delay)


__all__ = [
    "DEADLINE_EXCEEDED",
    "DEFAULT_HTTP_URL",
    "DEFAULT_URL",
    "OUTPUTS",
    "AsyncPyramidClient",
    "PyramidClient",
    "PyramidError",
    "PyramidResult",
    "resolve_endpoint",
]
