"""Serving logic: an OpenAI request, resolved to a target, becomes router or engine calls and then an
``Answer`` (or a sequence of stream events). No HTTP here (``app`` does that), so the rules are read in
one place:

* ``pyramid`` routes; ``pyramid-committee`` / ``pyramid-oracle`` route with ``force_tier``; an engine's
  name calls that engine directly (the engines' text API: ``text_input``, ``max_tokens``,
  ``temperature``, ``seed``; ``max_tokens`` defaults to the router's ``default_max_tokens``).
* ``pyramid.deadline_ms``: the router's anytime bound (a provisional committee answer when the oracle is
  late); with ``pyramid.provisional: "error"`` (unset: under ``pyramid.strict``) a provisional answer is refused
  with 504 instead. A direct engine call has no committee to fall back on: past ``deadline_ms`` it is a 504.
* ``pyramid.task``: a routed request naming none is sent with ``DEFAULT_TASK`` (``auto``: the router detects the
  task from the prompt among the calibrated ones; the ``pyramid`` object's ``task`` / ``task_source`` say which).
* ``usage`` counts every call the route made (the router's per-call counts); the per-tier breakdown is
  in ``pyramid.usage``.

Streaming events, in order: ``("provisional", meta)`` (the committee's answer before the oracle's, on
escalation), ``("delta", text)`` (pieces of a direct engine's text as it generates), ``("answer", Answer)`` (the end:
the whole final text, of which the part not yet sent as deltas is still to send, and the metadata).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pyramid_client import PyramidError, PyramidResult
from pyramid_client.wire import REQUEST_OPTIONS, cut_at_stop, estimate_tokens

from .errors import ApiError, deadline_exceeded, from_pyramid, invalid, model_not_found
from .metrics import UNKNOWN_MODEL
from .protocol import ChatCompletionRequest, CompletionRequest, refuses_provisional
from .responses import Answer, router_metadata
from .upstream import TIERS, Catalog, Target, Upstream

Request = ChatCompletionRequest | CompletionRequest
# ``pyramid`` options that apply to routing only: a 400 on a direct engine call (the table's ``direct``).
ROUTING_ONLY = tuple(n for n, o in REQUEST_OPTIONS.items() if o.openai == "pyramid" and not o.direct)
Event = tuple[str, Any]
# The task of a routed request that names none: detected by the router from the prompt (pyramid_triton.tasks).
DEFAULT_TASK = "auto"


def new_request_id() -> str:
    return uuid.uuid4().hex


class Gateway:
    """Resolves model names and runs requests against ``upstream``."""

    def __init__(self, upstream: Upstream, retry_after_s: int = 1, default_task: str | None = DEFAULT_TASK) -> None:
        self.upstream, self.retry_after_s, self.default_task = upstream, retry_after_s, default_task

    def _error(self, exc: PyramidError, req: Request) -> ApiError:
        return from_pyramid(exc, self.retry_after_s, "prompt" if isinstance(req, CompletionRequest) else "messages")

    async def catalog(self) -> Catalog:
        try:
            return await self.upstream.catalog()
        except PyramidError as exc:
            raise from_pyramid(exc, self.retry_after_s) from None

    def model_label(self, model: str) -> str:
        """``model`` if this gateway serves it (its catalog, or the deployment it was given while the catalog
        is not discovered yet), else ``unknown``: the metrics' label, from a bounded set."""
        up = self.upstream
        cat = getattr(up, "_catalog", None)
        if cat is not None:
            return model if model in cat.targets else UNKNOWN_MODEL
        router = getattr(up, "router_name", None)
        d = getattr(up, "deployment", None)
        names = {router, *(f"{router}-{t}" for t in TIERS)} if router else set()
        if d is not None:
            names |= {*d.committee, d.oracle}
        return model if model in names else UNKNOWN_MODEL

    async def resolve(self, model: str) -> tuple[Catalog, Target]:
        cat = await self.catalog()
        target = cat.targets.get(model)
        if target is None:
            raise model_not_found(model, list(cat.targets))
        return cat, target

    # --- non-streaming ----------------------------------------------------------------------------

    async def answer(self, req: Request, cat: Catalog, target: Target, question: str, rid: str) -> Answer:
        if target.kind == "router":
            try:
                r = await self.upstream.router.ask(question, **self._router_args(req, target, rid))
            except PyramidError as exc:
                raise self._error(exc, req) from None
            return self._router_answer(req, cat, target, r)
        text, tokens = "", []
        async for piece, n in self._engine_pieces(req, cat, target, question, rid, stream=False):
            text += piece
            tokens.append(n)
        return self._engine_answer(req, cat, target, question, text, tokens, rid)

    # --- streaming -------------------------------------------------------------------------------

    async def events(self, req: Request, cat: Catalog, target: Target, question: str, rid: str) -> AsyncIterator[Event]:
        """The stream events of one request (module docstring); raises ApiError."""
        if target.kind == "router":
            last = None
            try:
                async for r in self.upstream.router.ask_stream(question, **self._router_args(req, target, rid)):
                    if r.provisional:  # sent as soon as it comes; the route's last response is the answer
                        meta = router_metadata(target.name, r, cat.oracle)
                        meta["text"] = cut_at_stop(r.text, req.stops())[0]
                        yield "provisional", meta
                    last = r
            except PyramidError as exc:
                raise self._error(exc, req) from None
            if last is None:
                raise ApiError(502, "the router ended the request without a response", type="server_error")
            yield "answer", self._router_answer(req, cat, target, last)
            return
        stops = req.stops()
        text, tokens = "", []
        # With stop sequences the text is cut before it is sent: collect it whole first.
        async for piece, n in self._engine_pieces(req, cat, target, question, rid, stream=target.streams):
            text += piece
            tokens.append(n)
            if not stops and piece:
                yield "delta", piece
        yield "answer", self._engine_answer(req, cat, target, question, text, tokens, rid)

    # --- router ----------------------------------------------------------------------------------

    def _router_args(self, req: Request, target: Target, rid: str) -> dict[str, Any]:
        """The router's request options, by their names, from where the table puts them in the OpenAI body
        (``pyramid_client.wire.REQUEST_OPTIONS``): a top-level field, ``pyramid``, or the model name; ``task``
        unset (or empty): the gateway's ``default_task``."""
        where = {"body": req, "pyramid": req.options(), "model": target}
        args = {n: getattr(where[o.openai], n) for n, o in REQUEST_OPTIONS.items()}
        if not (args.get("task") or "").strip() and self.default_task:
            args["task"] = self.default_task
        return {**args, "request_id": rid}

    def _router_answer(self, req: Request, cat: Catalog, target: Target, r: PyramidResult) -> Answer:
        o = req.options()
        if r.provisional and refuses_provisional(o):
            why = f"pyramid.provisional is {o.provisional!r}" if o.provisional else "pyramid.strict is set"
            raise deadline_exceeded(
                f"pyramid.deadline_ms={o.deadline_ms} passed before the oracle answered, and {why}: the provisional "
                "committee answer is not returned"
            )
        text, _ = cut_at_stop(r.text, req.stops())
        meta = router_metadata(target.name, r, cat.oracle)
        prompt = sum(p for p, _ in r.tokens.values())
        completion = sum(c for _, c in r.tokens.values())
        return Answer(text, "stop", prompt, completion, meta)

    # --- engines -----------------------------------------------------------------------------------

    async def _engine_pieces(
        self, req: Request, cat: Catalog, target: Target, question: str, rid: str, stream: bool
    ) -> AsyncIterator[tuple[str, int | None]]:
        o = req.options()
        for key in ROUTING_ONLY:
            if getattr(o, key) is not None:
                raise invalid(
                    f"pyramid.{key} applies to the routed models ({cat.router}...), not to the engine "
                    f"{target.name!r}, which is called directly",
                    f"pyramid.{key}",
                )
        deadline = time.monotonic() + o.deadline_ms / 1000 if o.deadline_ms else None
        max_tokens = req.max_tokens or cat.default_max_tokens
        it = self.upstream.engine_stream(
            target.triton_model, question, max_tokens, req.temperature, req.seed, stream, rid
        ).__aiter__()
        try:
            while True:
                try:
                    if deadline is None:
                        reply = await it.__anext__()
                    else:
                        reply = await asyncio.wait_for(it.__anext__(), max(0.0, deadline - time.monotonic()))
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    raise deadline_exceeded(
                        f"the engine {target.name!r} did not finish within pyramid.deadline_ms={o.deadline_ms}"
                    ) from None
                except PyramidError as exc:
                    raise self._error(exc, req) from None
                yield reply.text, reply.output_tokens
        finally:
            await it.aclose()

    def _engine_answer(
        self,
        req: Request,
        cat: Catalog,
        target: Target,
        question: str,
        text: str,
        tokens: list[int | None],
        rid: str,
    ) -> Answer:
        completion = sum(tokens) if tokens and None not in tokens else estimate_tokens(text)  # type: ignore[arg-type]
        prompt = estimate_tokens(question)
        max_tokens = req.max_tokens or cat.default_max_tokens
        cut, stopped = cut_at_stop(text, req.stops())
        finish = "length" if not stopped and completion >= max_tokens else "stop"
        tier = {"calls": 1, "prompt_tokens": prompt, "completion_tokens": completion}
        empty = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
        meta = {
            "model": target.name,
            "tier": target.tier,
            "direct": True,
            "escalated": False,
            "provisional": False,
            "degraded": False,
            "calls": [target.triton_model],
            "usage": {t: (tier if t == target.tier else dict(empty)) for t in ("committee", "oracle")},
            "request_id": rid,
        }
        return Answer(cut, finish, prompt, completion, meta)
