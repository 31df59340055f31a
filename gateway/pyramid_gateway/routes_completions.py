"""``POST /v1/chat/completions`` and ``POST /v1/completions``, streamed (server-sent events) or not.

Plain Starlette routes: they take the raw request and validate it themselves (``protocol.parse_request``),
so FastAPI's per-request dependency solving would be pure overhead on the two hot endpoints.

Client disconnect: a non-streaming request races its route against the client's ``http.disconnect``;
a streaming one is cancelled by the response when the client goes away. Either way the route's task is
cancelled, which cancels its gRPC call, so Triton sees the request cancelled (logged as 499, one line).

Hostile clients (docs/SECURITY.md): the body is bounded in size and time (``limits``); the JSON in depth, and
a string that cannot be UTF-8 (a lone surrogate) is a 400 naming its field (``protocol.check_json``);
metrics are labelled with known model names only (``Gateway.model_label``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from . import responses as R
from .auth import Lease
from .budget import Decision
from .conversation import question_from_messages
from .errors import CLIENT_CLOSED, ApiError, clip, internal_error, invalid
from .limits import ClientGone, read_body
from .metrics import NO_MODEL
from .protocol import ChatCompletionRequest, CompletionRequest, check_json, parse_request, prompt_text, too_deep
from .serving import new_request_id
from .state import GatewayConfig, GatewayState, state

# uvicorn's own log (configured by uvicorn.run): one line per request a client abandoned or sent too slowly
log = logging.getLogger("uvicorn.error")
router = APIRouter()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, aw: Any) -> Any:
    """Await ``aw``; if the client disconnects first, cancel it (and its gRPC call) and raise ClientGone."""
    task = asyncio.ensure_future(aw)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise ClientGone


class EventStream(StreamingResponse):
    """``text/event-stream`` that always watches for the client going away and then cancels the body
    (Starlette does so only for ASGI servers older than spec 2.4; a route may wait long between events)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], on_close: Any, headers: dict[str, str]) -> None:
        super().__init__(content, headers=headers)
        self.on_close = on_close  # called once the response is over, even if the body never started

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = asyncio.ensure_future(self.stream_response(send))
        watch = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({body, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (body, watch):
                t.cancel()
            # A send that failed because the client left is that same disconnect: nothing to report.
            await asyncio.gather(body, watch, return_exceptions=True)
            self.on_close()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _read_json(request: Request, config: GatewayConfig) -> Any:
    """The body, bounded (``limits.read_body``: 413 / 408 / ClientGone), decoded, and checked for depth and
    strings that are not text (``protocol.check_json``); a 400 otherwise, never a 500."""
    body = await read_body(request, config.max_body_bytes, config.body_timeout_s)
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise too_deep(body) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN / Infinity, an integer of 4,300+ digits
        raise invalid(f"the request body is not valid JSON: {clip(str(exc), 200)}", None) from None
    check_json(value)
    return value


async def chat(request: Request) -> Response:
    return await _serve(request, "chat")


async def completions(request: Request) -> Response:
    return await _serve(request, "completion")


router.add_route("/v1/chat/completions", chat, methods=["POST"])
router.add_route("/v1/completions", completions, methods=["POST"])


async def _serve(request: Request, kind: str) -> Response:
    st = state(request)
    endpoint = f"/v1/{'chat/completions' if kind == 'chat' else 'completions'}"
    t0 = time.perf_counter()
    model = NO_MODEL  # the metrics' label: a model name this gateway serves, never what the client wrote
    st.metrics.in_flight += 1
    streaming = False
    status = 200
    lease = Lease()
    try:
        lease = st.admit(request)
        req = parse_request(kind, await _read_json(request, st.config))  # type: ignore[arg-type]
        gateway = st.gateway
        model = gateway.model_label(req.model)
        cat, target = await gateway.resolve(req.model)
        model = target.name
        decision = st.book.decide(lease.label) if st.book is not None else None
        if decision is not None:
            target, decision = _apply_budget(req, cat, target, decision)
        if isinstance(req, ChatCompletionRequest):
            question = question_from_messages(req.messages)
        else:
            question = prompt_text(req)  # type: ignore[arg-type]
        rid = new_request_id()
        chat_kind = isinstance(req, ChatCompletionRequest)
        oid = ("chatcmpl-" if chat_kind else "cmpl-") + rid
        if not req.stream:
            a = await unless_disconnected(request, gateway.answer(req, cat, target, question, rid))
            st.metrics.add_tokens(model, a.prompt_tokens, a.completion_tokens)
            _account(st, lease, decision, a)
            build = R.chat_completion if chat_kind else R.text_completion
            headers = {**R.headers(a.pyramid), **_budget_headers(decision)}
            return JSONResponse(build(oid, req.model, st.created, a), headers=headers)
        events = gateway.events(req, cat, target, question, rid)
        first = await unless_disconnected(request, events.__anext__())
        streaming = True
        finish = _once(partial(_done, st, endpoint, model, t0, lease))
        body = _sse_body(st, req, chat_kind, oid, first, events, finish, partial(_account, st, lease, decision))
        headers = {**_first_headers(first, target.name, rid), **_budget_headers(decision), "cache-control": "no-cache"}
        return EventStream(body, partial(finish, CLIENT_CLOSED), headers)
    except ApiError as exc:
        status = exc.status
        raise
    except ClientGone:
        status = CLIENT_CLOSED
        return Response(status_code=CLIENT_CLOSED)
    except Exception:
        status = 500  # answered by the app's handler, in OpenAI's format
        raise
    finally:
        if not streaming:
            _done(st, endpoint, model, t0, lease, status)


def _apply_budget(req: Any, cat: Any, target: Any, decision: Decision) -> tuple[Any, Decision]:
    """The target (and the request's threshold) a key's budget state gives (``budget``): refused (429 until the
    period resets), committee-only (a routed model or the oracle engine becomes ``<router>-committee``), or, when
    low, a lower ``escalation_threshold`` (never above the client's own; a forced tier or a direct engine call has
    none to lower). The decision returned says the threshold applied, if any."""
    if decision.refuse:
        raise ApiError(
            429,
            "this API key's oracle budget for the period is spent, and the key is configured to refuse "
            f"(on_exhausted=refuse); it resets in {decision.retry_after_s} s",
            type="insufficient_quota",
            code="budget_exhausted",
            headers={"Retry-After": str(decision.retry_after_s), "x-pyramid-budget": decision.state},
        )
    if decision.committee_only and (target.kind == "router" or target.tier == "oracle"):
        return cat.targets.get(f"{cat.router}-committee", target), decision
    if decision.threshold is None:
        return target, decision
    if target.kind != "router" or target.force_tier is not None:
        return target, dataclasses.replace(decision, threshold=None)
    own = req.options().escalation_threshold
    t = decision.threshold if own is None else min(own, decision.threshold)
    req.pyramid = req.options().model_copy(update={"escalation_threshold": t})
    return target, dataclasses.replace(decision, threshold=t)


def _account(st: GatewayState, lease: Lease, decision: Decision | None, a: R.Answer) -> None:
    """One answer's usage for its key (``/metrics``) and, for a key with a budget, its spend: charged to the
    key's period and reported in ``pyramid.budget``."""
    st.metrics.add_key_usage(lease.label, a.pyramid)
    if decision is not None and st.book is not None:
        a.pyramid["budget"] = st.book.charge(decision, a.pyramid)


def _budget_headers(decision: Decision | None) -> dict[str, str]:
    """``x-pyramid-budget``: the budget state the request was served under (keys with a budget only)."""
    return {} if decision is None else {"x-pyramid-budget": decision.state}


def _done(st: GatewayState, endpoint: str, model: str, t0: float, lease: Lease, status: int) -> None:
    seconds = time.perf_counter() - t0
    if status == CLIENT_CLOSED:
        st.metrics.disconnects += 1
        log.info("%d POST %s model=%s: the client went away after %.2f s", status, endpoint, model, seconds)
    elif status == 408:
        log.info("%d POST %s: the request body did not arrive in time", status, endpoint)
    lease.release()
    st.metrics.in_flight -= 1
    st.metrics.observe(endpoint, model, status, seconds)


async def _sse_body(
    st: GatewayState,
    req: ChatCompletionRequest | CompletionRequest,
    chat_kind: bool,
    oid: str,
    first: tuple[str, Any],
    events: AsyncIterator[tuple[str, Any]],
    done: Any,
    account: Any = None,
) -> AsyncIterator[bytes]:
    status = 200
    sent = ""
    mk = partial(R.chunk, chat_kind, oid, req.model, st.created)
    try:
        if chat_kind:
            yield R.sse(mk(role=True, text=""))
        event: tuple[str, Any] | None = first
        while event is not None:
            what, value = event
            if what == "provisional":
                # an empty delta (no text: nothing for a plain client to concatenate) carrying the extension
                yield R.sse(mk(pyramid=value))
            elif what == "delta":
                if value:
                    sent += value
                    yield R.sse(mk(text=value))
            else:
                a: R.Answer = value
                st.metrics.add_tokens(req.model, a.prompt_tokens, a.completion_tokens)
                if account is not None:
                    account(a)
                rest = a.text[len(sent) :] if a.text.startswith(sent) else a.text
                if rest:
                    yield R.sse(mk(text=rest))
                yield R.sse(mk(finish_reason=a.finish_reason, pyramid=a.pyramid))
                if req.include_usage():
                    yield R.sse(mk(choices=False, usage=a.usage()))
            event = await anext_or_none(events)
        yield R.DONE
    except ApiError as exc:  # the 200 is sent: the error is an event (the OpenAI SDK raises it)
        status = exc.status
        yield R.sse(exc.body())
        yield R.DONE
    except Exception as exc:  # noqa: BLE001 - a bug: still an error event the client can read, then the end
        status = 500
        yield R.sse(internal_error(exc).body())
        yield R.DONE
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        with contextlib.suppress(BaseException):
            await events.aclose()
        done(status)


def _once(fn: Any) -> Any:
    """``fn(status)`` run at most once (a stream ends in its body or, if it never started, on close)."""
    called = False

    def call(status: int) -> None:
        nonlocal called
        if not called:
            called = True
            fn(status)

    return call


async def anext_or_none(it: AsyncIterator[Any]) -> Any | None:
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        return None


def _first_headers(first: tuple[str, Any], model: str, rid: str) -> dict[str, str]:
    """A stream's headers go out with its first event: its metadata when it has some (a provisional
    answer's, marked ``x-pyramid-provisional: true``, or the final one's), else the model and id."""
    what, value = first
    if what == "provisional":
        return R.headers(value)
    if what == "answer":
        return R.headers(value.pyramid)
    return R.headers({"model": model, "request_id": rid})
