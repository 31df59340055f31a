"""Talk to the ``pyramid`` router model over gRPC and get a typed result.

The router is a *decoupled* model (one response, then FINAL), so requests go
over Triton's bidirectional gRPC stream: the sync client opens a stream per
call; the asyncio client (``tritonclient.grpc.aio``) too, so many calls run
concurrently from one event loop. Retries happen only on UNAVAILABLE (server
not reachable yet); every other error is raised as ``PyramidError`` with the
server's code and message (a bad input's message names the input).
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

OUTPUTS = ("text_output", "answer", "tier", "escalated", "confidence", "agreement", "agent_answers", "degraded", "cost")
DEFAULT_URL = "localhost:8001"


class PyramidError(RuntimeError):
    """The server answered with an error, or did not answer in time."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PyramidResult:
    answer: str | None
    text: str
    tier: str
    escalated: bool
    confidence: float
    agreement: float
    agent_answers: dict[str, str | None] = field(default_factory=dict)
    failed_agents: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    degraded: bool = False
    cost: float | None = None
    latency_s: float = 0.0
    request_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _inputs(mod: Any, question: str, max_tokens: int | None, threshold: float | None, force_tier: str | None) -> list:
    def add(name: str, arr: np.ndarray, dtype: str) -> None:
        t = mod.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        out.append(t)

    out: list = []
    add("text_input", np.array([[question.encode("utf-8")]], dtype=np.object_), "BYTES")
    if max_tokens is not None:
        add("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32")
    if threshold is not None:
        add("escalation_threshold", np.array([[threshold]], dtype=np.float32), "FP32")
    if force_tier is not None:
        add("force_tier", np.array([[force_tier.encode("utf-8")]], dtype=np.object_), "BYTES")
    return out


_CODE_PREFIX = re.compile(r"^\[([A-Z_]+)\] ")


def _status(exc: Any) -> str:
    """'INVALID_ARG', 'NOT_FOUND', 'UNAVAILABLE', ... from a tritonclient exception.

    Errors on a gRPC stream carry no status, only a message; the router puts its code first
    in the message ("[INVALID_ARG] ..."), which is used then."""
    raw = ""
    try:
        raw = str(exc.status() or "")
    except Exception:  # noqa: BLE001
        pass
    raw = raw.replace("StatusCode.", "")
    if not raw:
        m = _CODE_PREFIX.match(_raw_message(exc))
        raw = m.group(1) if m else ""
    return {"INVALID_ARGUMENT": "INVALID_ARG"}.get(raw, raw or "UNKNOWN")


def _raw_message(exc: Any) -> str:
    try:
        return str(exc.message())
    except Exception:  # noqa: BLE001
        return str(exc)


def _message(exc: Any) -> str:
    return _CODE_PREFIX.sub("", _raw_message(exc), count=1)


def _result(resp: Any, request_id: str, t0: float) -> PyramidResult:
    def one(name: str) -> Any:
        arr = resp.as_numpy(name)
        return None if arr is None else arr.reshape(-1)[0]

    def text(name: str) -> str:
        v = one(name)
        return v.decode("utf-8") if isinstance(v, bytes) else ("" if v is None else str(v))

    details = json.loads(text("agent_answers") or "{}")
    cost = one("cost")
    cost = None if cost is None or math.isnan(float(cost)) else float(cost)
    return PyramidResult(
        answer=text("answer") or None,
        text=text("text_output"),
        tier=text("tier"),
        escalated=bool(one("escalated")),
        confidence=float(one("confidence")),
        agreement=float(one("agreement")),
        agent_answers=details.get("agent_answers", {}),
        failed_agents=details.get("failed", []),
        calls=details.get("calls", []),
        degraded=bool(one("degraded")),
        cost=cost,
        latency_s=time.perf_counter() - t0,
        request_id=request_id,
    )


class PyramidClient:
    """Synchronous gRPC client: ``PyramidClient("localhost:8001").ask("question")``."""

    def __init__(self, url: str = DEFAULT_URL, model: str = "pyramid", timeout_s: float = 60.0, retries: int = 3):
        import tritonclient.grpc as grpcclient  # noqa: PLC0415

        self._mod = grpcclient
        self.url, self.model, self.timeout_s, self.retries = url, model, timeout_s, retries
        self._client = grpcclient.InferenceServerClient(url)

    def close(self) -> None:
        self._client.close()

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
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> PyramidResult:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        rid = request_id or uuid.uuid4().hex
        inputs = _inputs(self._mod, question, max_tokens, threshold, force_tier)
        outputs = [self._mod.InferRequestedOutput(n) for n in OUTPUTS]
        for attempt in range(self.retries + 1):
            t0 = time.perf_counter()
            got: queue.Queue = queue.Queue()
            try:
                self._client.start_stream(callback=lambda result, error: got.put((result, error)))
                answered = False
                try:
                    self._client.async_stream_infer(self.model, inputs, request_id=rid, outputs=outputs)
                    try:
                        result, error = got.get(timeout=timeout)
                        answered = True
                    except queue.Empty:
                        raise PyramidError(f"no response within {timeout} s", "DEADLINE_EXCEEDED") from None
                finally:
                    # Cancel only an unanswered request: cancelling a decoupled request on Triton 2.51
                    # can leave the model unable to unload.
                    self._client.stop_stream(cancel_requests=not answered)
            except self._mod.InferenceServerException as exc:
                error, result = exc, None
            if error is not None:
                code = _status(error)
                if code == "UNAVAILABLE" and attempt < self.retries:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise PyramidError(_message(error), code)
            return _result(result, rid, t0)
        raise AssertionError("unreachable")


class AsyncPyramidClient:
    """asyncio gRPC client; many ``await client.ask(...)`` may run concurrently."""

    def __init__(self, url: str = DEFAULT_URL, model: str = "pyramid", timeout_s: float = 60.0, retries: int = 3):
        import tritonclient.grpc as grpcclient  # noqa: PLC0415
        import tritonclient.grpc.aio as aioclient  # noqa: PLC0415

        self._mod = grpcclient
        self._aio = aioclient
        self.url, self.model, self.timeout_s, self.retries = url, model, timeout_s, retries
        self._client = aioclient.InferenceServerClient(url)

    async def close(self) -> None:
        await self._client.close()

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
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> PyramidResult:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        rid = request_id or uuid.uuid4().hex
        request = {
            "model_name": self.model,
            "inputs": _inputs(self._mod, question, max_tokens, threshold, force_tier),
            "outputs": [self._mod.InferRequestedOutput(n) for n in OUTPUTS],
            "request_id": rid,
        }
        for attempt in range(self.retries + 1):
            t0 = time.perf_counter()

            async def requests():
                yield request

            try:
                result, error = await asyncio.wait_for(self._first(requests()), timeout)
            except asyncio.TimeoutError:
                raise PyramidError(f"no response within {timeout} s", "DEADLINE_EXCEEDED") from None
            except self._mod.InferenceServerException as exc:
                result, error = None, exc
            if error is not None:
                code = _status(error)
                if code == "UNAVAILABLE" and attempt < self.retries:
                    await asyncio.sleep(0.5 * (attempt + 1))
                    continue
                raise PyramidError(_message(error), code)
            got_id = result.get_response().id
            if got_id != rid:
                raise PyramidError(f"response for request id {got_id!r}, expected {rid!r}", "INTERNAL")
            return _result(result, rid, t0)
        raise AssertionError("unreachable")

    async def _first(self, requests: Any) -> tuple[Any, Any]:
        """The stream's first (result, error); the stream is then read to its end rather than
        cancelled (cancelling a decoupled request on Triton 2.51 can leave the model unable to unload)."""
        stream = self._client.stream_infer(requests)
        first = None
        try:
            async for item in stream:
                if first is None:
                    first = item
        except BaseException:
            stream.cancel()
            raise
        if first is None:
            raise PyramidError("the stream closed without a response", "INTERNAL")
        return first


def ask_main(argv: list[str] | None = None) -> int:
    """``pyramid ask "question" [--url HOST:PORT] [--threshold T] [--force-tier TIER] [--json]``."""
    import argparse  # noqa: PLC0415
    import sys  # noqa: PLC0415

    ap = argparse.ArgumentParser(prog="pyramid ask", description="Ask a Pyramid MoA Triton deployment one question")
    ap.add_argument("question")
    ap.add_argument("--url", default=DEFAULT_URL, help=f"gRPC HOST:PORT (default {DEFAULT_URL})")
    ap.add_argument("--model", default="pyramid")
    ap.add_argument("--threshold", type=float, help="per-request escalation threshold in [0, 1]")
    ap.add_argument("--force-tier", choices=["committee", "oracle"])
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds")
    ap.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = ap.parse_args(argv)
    try:
        with PyramidClient(args.url, args.model, args.timeout) as client:
            r = client.ask(
                args.question, threshold=args.threshold, force_tier=args.force_tier, max_tokens=args.max_tokens
            )
    except PyramidError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(r.to_dict(), indent=1))
    else:
        flags = " (degraded)" if r.degraded else ""
        print(
            f"answer: {r.answer}\ntier: {r.tier}{flags}  confidence: {r.confidence:.3f}  agreement: {r.agreement:.2f}"
        )
        print(f"agents: {', '.join(f'{a}={v}' for a, v in r.agent_answers.items())}")
        print(f"latency: {r.latency_s * 1000:.1f} ms")
    return 0
