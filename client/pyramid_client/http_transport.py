"""HTTP transport: Triton's *generate* extension, standard library only (``http.client``).

Triton's KServe ``/v2/models/{m}/infer`` endpoint refuses decoupled models, so the router is
called through ``POST /v2/models/{m}/generate`` (one JSON response) and
``POST /v2/models/{m}/generate_stream`` (server-sent events, one ``data: {...}`` per response,
the connection closed after the FINAL flag). As verified against tritonserver 2.51 with the
router (``max_batch_size: 1``, every input and output ``[1, 1]``):

- the request body is a flat JSON object ``{input name: scalar}``; Triton shapes each scalar to
  the model's ``[1, 1]``; ``"id"`` is the request id and is echoed back; unknown keys are ignored.
- a response is a flat JSON object ``{output name: scalar, "model_name", "model_version", "id"}``.
- an error is an HTTP status (400 for errors the model returns, whatever their code; 404 unknown
  model; 500 an unparsable body or a value of the wrong JSON type) with ``{"error": "message"}``
  (``data: {"error": ...}`` on ``generate_stream``, also mid-stream). The router's messages
  start with ``[CODE] ``, which gives the code.

Each request uses its own connection, so one client may be used from many threads; the asyncio
flavour runs the same code in worker threads.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlsplit

from .types import PyramidError, error_from_message, timed_out
from .wire import INTERNAL, UNAVAILABLE


def split_url(url: str, default_port: int = 8000) -> tuple[str, str, int, str]:
    """(scheme, host, port, path prefix) of ``host:port`` or ``http[s]://host:port[/prefix]``."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"not an HTTP URL: {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in URL {url!r}")
    return parts.scheme, parts.hostname, parts.port or default_port, parts.path.rstrip("/")


def _error_body(status: int, body: bytes) -> PyramidError:
    text = body.decode("utf-8", errors="replace").strip()
    message = text
    for line in text.splitlines():  # an SSE body: data: {"error": ...}
        if line.startswith("data:"):
            text = line[5:].strip()
            break
    try:
        obj = json.loads(text)
        if isinstance(obj, dict) and "error" in obj:
            message = str(obj["error"])
    except json.JSONDecodeError:
        pass
    return error_from_message(message or f"HTTP {status}", status)


class HttpTransport:
    protocol = "http"

    def __init__(self, url: str, model: str, headers: dict[str, str] | None = None) -> None:
        self.scheme, self.host, self.port, self.prefix = split_url(url)
        self.url, self.model = url, model
        self.headers = dict(headers or {})  # sent with every request

    def close(self) -> None:
        pass

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout)

    def stream(
        self, inputs: dict[str, Any], request_id: str, deadline: float, timeout_s: float
    ) -> Iterator[dict[str, Any]]:
        """Each response of one request, as it arrives (``generate_stream`` when the request asks
        to stream, else ``generate``)."""
        streaming = bool(inputs.get("stream"))
        path = f"{self.prefix}/v2/models/{quote(self.model, safe='')}/{'generate_stream' if streaming else 'generate'}"
        body = json.dumps({**inputs, "id": request_id}).encode("utf-8")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise timed_out(timeout_s)
        conn = self._connection(remaining)
        try:
            try:
                conn.request("POST", path, body, {**self.headers, "Content-Type": "application/json", "Accept": "*/*"})
                resp = conn.getresponse()
            except TimeoutError:
                raise timed_out(timeout_s) from None
            except OSError as exc:  # refused, reset, unreachable, name not resolved
                raise PyramidError(
                    f"cannot reach {self.host}:{self.port}: {exc.strerror or exc}", UNAVAILABLE
                ) from None
            except http.client.HTTPException as exc:  # e.g. RemoteDisconnected before a status line
                raise PyramidError(f"{self.host}:{self.port} closed the connection: {exc}", UNAVAILABLE) from None
            try:
                if resp.status != 200:
                    raise _error_body(resp.status, resp.read())
                if not streaming:
                    yield self._json(resp.read())
                    return
                yield from self._events(conn, resp, deadline, timeout_s)
            except TimeoutError:
                raise timed_out(timeout_s) from None
            except (OSError, http.client.HTTPException) as exc:
                raise PyramidError(f"the connection broke while reading the response: {exc}", INTERNAL) from None
        finally:
            conn.close()

    @staticmethod
    def _json(raw: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PyramidError(f"the response is not JSON ({exc}): {raw[:200]!r}", INTERNAL) from None
        if not isinstance(obj, dict):
            raise PyramidError(f"the response is not a JSON object: {raw[:200]!r}", INTERNAL)
        if "error" in obj:
            raise error_from_message(str(obj["error"]))
        return obj

    def _events(self, conn: Any, resp: Any, deadline: float, timeout_s: float) -> Iterator[dict[str, Any]]:
        """Server-sent events: ``data:`` lines, an event ending at a blank line."""
        data: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timed_out(timeout_s)
            if conn.sock is not None:
                conn.sock.settimeout(remaining)
            line = resp.readline()
            if not line:  # the server closed the stream: the request is over
                if data:
                    yield self._json("\n".join(data).encode("utf-8"))
                return
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            if text == "":
                if data:
                    event, data = "\n".join(data), []
                    yield self._json(event.encode("utf-8"))
            elif text.startswith("data:"):
                data.append(text[5:].lstrip(" "))
            # other fields (event:, id:, retry:, comments) are not used by Triton


class AsyncHttpTransport:
    """The HTTP transport for asyncio: the blocking transport in worker threads."""

    protocol = "http"

    def __init__(self, url: str, model: str, headers: dict[str, str] | None = None, max_workers: int = 64) -> None:
        self._sync = HttpTransport(url, model, headers)
        self.url, self.model = url, model
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="pyramid-http")

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def stream(
        self, inputs: dict[str, Any], request_id: str, deadline: float, timeout_s: float
    ) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def put(item: tuple) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        def work() -> None:
            try:
                for out in self._sync.stream(inputs, request_id, deadline, timeout_s):
                    put(("item", out))
                    if stop.is_set():
                        return
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                put(("error", exc))
            else:
                put(("end", None))

        loop.run_in_executor(self._pool, work)
        try:
            while True:
                kind, value = await q.get()
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            stop.set()
