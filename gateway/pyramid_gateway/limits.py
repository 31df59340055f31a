"""Bounds on what one client can make the gateway hold: request size and the time a request may take to arrive.

* **Body**: at most ``max_body_bytes`` (``--max-body-bytes``, default 4 MiB; the router refuses a question of
  more than 20,000 characters anyway): a larger ``Content-Length`` is a 413 before a byte of the body is read,
  and a body without one is counted as it arrives and refused at the limit. So a 20 MB prompt never crosses
  gRPC, tritonserver or the router's shared memory.
* **Body time**: the whole body within ``body_timeout_s`` of the headers (``--body-timeout-s``), else 408 and
  the connection closed: a client that sends headers and never a body holds nothing for longer.
* **Headers**: complete within ``header_timeout_s`` of the connection (or of the request's first byte on a
  kept-alive connection; ``--header-timeout-s``) and at most ``MAX_HEADER_BYTES`` (request line and headers),
  else 408 / 431 and the connection closed. uvicorn (0.54, httptools) bounds neither (its keep-alive timeout
  covers only the idle time between requests), so ``protocol_class`` adds both to its HTTP protocol.
* A client that goes away while its body is being read is ``ClientGone`` (a 499 in the log, one line), not
  an exception with a traceback.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import ClientDisconnect, Request

from .errors import ApiError

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_HEADER_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 64 * 1024  # request line + headers (nginx's large_client_header_buffers allow 4 x 8k per line)


class ClientGone(Exception):
    """The client closed the connection before the answer."""


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request body is larger than this server's limit of {limit} bytes (--max-body-bytes)",
        code="request_too_large",
        headers={"Connection": "close"},  # the rest of the body is not read: the connection cannot be reused
    )


def body_timeout(timeout_s: float) -> ApiError:
    return ApiError(
        408,
        f"the request body did not arrive within {timeout_s:g} s (--body-timeout-s)",
        code="request_timeout",
        headers={"Connection": "close"},
    )


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request's body, at most ``max_bytes`` (else 413) and whole within ``timeout_s`` (else 408);
    ClientGone if the client leaves first."""
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise too_large(max_bytes)

    async def read() -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large(max_bytes)
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise body_timeout(timeout_s) from None
    except ClientDisconnect:
        raise ClientGone from None


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = message.encode("ascii")
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode("ascii") + body


def protocol_class(header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S, max_header_bytes: int = MAX_HEADER_BYTES,
                   drain_timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> type:  # fmt: skip
    """uvicorn's httptools HTTP protocol with the header bounds above (``uvicorn.run(..., http=...)``).

    Also: a body the app answered without reading (a 401 or a 413) is discarded as it arrives, as uvicorn
    does, but for ``drain_timeout_s`` at most; then the connection is closed."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._guard: asyncio.TimerHandle | None = None
            self._headers_pending = False
            self._header_bytes = 0
            self._refused = False  # answered 408 / 431 and closing: the parser's further callbacks do nothing

        # -- timers ---------------------------------------------------------------------------------------
        def _arm(self, seconds: float) -> None:
            if self._guard is None:
                self._guard = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._guard is not None:
                self._guard.cancel()
                self._guard = None

        def _refuse(self, status: int, reason: str, message: str) -> None:
            self._disarm()
            self._refused = True
            if not self.transport.is_closing():
                self.transport.write(_raw_response(status, reason, message))
                self.transport.close()

        def _expired(self) -> None:
            self._guard = None
            if self._headers_pending:
                self._refuse(
                    408, "Request Timeout", f"the request headers did not arrive within {header_timeout_s:g} s"
                )
            elif not self.transport.is_closing():
                self.transport.close()  # a discarded body still arriving

        def _count(self, n: int) -> None:
            self._header_bytes += n
            if self._header_bytes > max_header_bytes:
                message = f"the request line and headers are larger than {max_header_bytes} bytes"
                self._refuse(431, "Request Header Fields Too Large", message)

        # -- protocol and parser callbacks ------------------------------------------------------------------
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._headers_pending, self._header_bytes = True, 0
            self._arm(header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused or self.transport.is_closing():
                return
            super().data_received(data)

        def on_message_begin(self) -> None:
            if self._refused:
                return
            super().on_message_begin()
            self._disarm()  # a discarded body's drain timer, if any: a new request has begun
            self._headers_pending, self._header_bytes = True, 0
            self._arm(header_timeout_s)

        def on_url(self, url: bytes) -> None:
            if not self._refused:
                self._count(len(url))
            if not self._refused:
                super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if not self._refused:
                self._count(len(name) + len(value) + 4)
            if not self._refused:
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self._refused:
                return
            self._disarm()
            self._headers_pending = False
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._refused:
                return
            super().on_message_complete()
            if self.cycle is not None and self.cycle.response_complete:
                self._disarm()  # the discarded body is over

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
                self._arm(drain_timeout_s)  # answered before its body was read: discard it, for a while

    return GuardedHttpToolsProtocol
