"""The router's engine calls: each bounded by its timeout, behind a circuit breaker, over BLS or (a model
of another server) gRPC (``remote``), and the answers' embeddings for semantic tasks.

Every failure is a failed output (``routing.failed_output``) and a ``CallFailure`` in the request's
``failures``, never an exception: the route decides what a missing agent means.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pyramid_client.wire import CODE_NAMES, split_code
from pyramid_moa.features import AgentOutput
from pyramid_moa.semantic import embedding_text

from . import tensors
from .config import ModelParams
from .embedder import embed_over_bls
from .protocol import INTERNAL, ROUTER_PARAMS, UNAVAILABLE, EngineRequest
from .remote import CallError, RemoteEngines, parse_remote_map
from .routing import CallFailure, CallTimeout, failed_output, to_agent_output, within
from .tasks import TaskRoute

# An engine's own failure (timeout, crash): it opens the breaker and counts in pyramid_model_failures_total.
# NOT_FOUND (a replay engine has no record of this question) and INVALID_ARG are the request's, not the engine's.
BREAKER_CODES = {UNAVAILABLE, INTERNAL}


class EngineCalls:
    """Calls to one router's engines (``agents`` and ``oracle``), configured by its parameters.
    ``extract``: the default task's answer extractor (for a call without a task route: shadow calls)."""

    def __init__(
        self, pb: Any, p: ModelParams, agents: list[str], oracle: str, extract: Callable[[], Callable[[str], Any]]
    ) -> None:
        d = ROUTER_PARAMS  # the defaults of the parameters a config may leave out (the renderer's too)
        self.pb, self.name, self.oracle, self._extract = pb, p.name, oracle, extract
        self.agent_timeout_us = int(p.get_typed("agent_timeout_s", d) * 1e6)
        self.oracle_timeout_us = int(p.get_typed("oracle_timeout_s", d) * 1e6)
        self.parsed_answer_models = set(p.get_list("parsed_answer_models"))
        self.decoupled_models = set(p.get_list("decoupled_models"))
        self.logprob_models = set(p.get_list("logprob_models"))
        # Models on other Triton servers (spec entries with ``remote``): called over gRPC, not BLS.
        self.remote = RemoteEngines(
            parse_remote_map(p.get_str("remote", "") or ""), retries=p.get_typed("remote_retries", d)
        )
        stray = sorted(set(self.remote.models) - {*agents, oracle})
        if stray:
            raise ValueError(f"model {self.name!r}: remote model(s) {stray} are neither agents nor the oracle")
        # Circuit breaker: after an engine fails (timeout, crash: not a per-question NOT_FOUND or a bad
        # argument), calls to it fail fast for breaker_s seconds; the next call after that probes it.
        self.breaker_s = p.get_typed("breaker_s", d)
        self.down_until: dict[str, float] = {}

    def broken(self, models: list[str]) -> dict[str, bool]:
        """Whether each model's breaker is open now."""
        now = time.monotonic()
        return {m: self.down_until.get(m, 0.0) > now for m in models}

    async def call(
        self, agent: str, ereq: EngineRequest, failures: dict[str, CallFailure], route: TaskRoute | None = None
    ) -> AgentOutput:
        """One engine call, bounded by the per-call timeout (``routing.within``; a BLS request's own
        ``timeout`` bounds only its queueing); any failure is a failed output. A call that overruns, or
        whose request was cancelled, is abandoned: a remote one is cancelled (its RPC really ends); a BLS
        child, which Triton 2.51 cannot cancel, finishes in the background and its result is dropped."""
        timeout_s = (self.oracle_timeout_us if agent == self.oracle else self.agent_timeout_us) / 1e6
        now = time.monotonic()
        down = self.down_until.get(agent, 0.0) - now
        if down > 0:  # circuit open: fail fast instead of waiting on an engine that just failed
            failures[agent] = CallFailure(agent, f"skipped: it failed {self.breaker_s - down:.1f} s ago", UNAVAILABLE)
            return failed_output(agent)
        try:
            out = await within(self._exec(agent, ereq, timeout_s, route), timeout_s)
            self.down_until.pop(agent, None)
            return out
        except CallTimeout as exc:
            failure = CallFailure(agent, str(exc), UNAVAILABLE)
        except CallError as exc:
            failure = CallFailure(agent, exc.message, exc.code)
        except Exception as exc:  # noqa: BLE001 - a failed call is a failed agent, not a failed request
            failure = CallFailure(agent, f"{type(exc).__name__}: {exc}", INTERNAL)
        failures[agent] = failure
        if self.breaker_s > 0 and failure.code in BREAKER_CODES:
            self.down_until[agent] = time.monotonic() + self.breaker_s
        return failed_output(agent)

    async def embed_stage(
        self, embedder: str, outs: list[AgentOutput], question: str, failures: dict[str, CallFailure]
    ) -> list[AgentOutput]:
        """``outs`` (one committee stage's) with their answers' embeddings, all in ONE call to the embedder
        model over BLS (the texts: ``semantic.embedding_text``). Failed outputs and outputs without an
        answer pass through. Should that call fail, each answer is tried alone, so that only an answer the
        embedder cannot embed leaves its agent out of the vote, like a failed call."""
        todo = [i for i, o in enumerate(outs) if not o.failed and o.answer is not None]
        if not todo:
            return outs
        texts = [embedding_text(outs[i].answer or "", question) for i in todo]
        outs = list(outs)
        try:
            vecs = await embed_over_bls(self.pb, embedder, texts, self.agent_timeout_us)
        except Exception as exc:  # noqa: BLE001 - a failed embedding is a failed agent, not a failed request
            if len(todo) == 1:
                outs[todo[0]] = self._not_embedded(outs[todo[0]], exc, failures)
                return outs
            for i, text in zip(todo, texts):  # one by one, to find the answer(s) at fault
                try:
                    vec = await embed_over_bls(self.pb, embedder, [text], self.agent_timeout_us)
                    outs[i] = replace(outs[i], embedding=vec[0])
                except Exception as one:  # noqa: BLE001 - as above
                    outs[i] = self._not_embedded(outs[i], one, failures)
            return outs
        for i, vec in zip(todo, vecs):
            outs[i] = replace(outs[i], embedding=vec)
        return outs

    @staticmethod
    def _not_embedded(out: AgentOutput, exc: Exception, failures: dict[str, CallFailure]) -> AgentOutput:
        failures[out.agent] = CallFailure(out.agent, f"its answer could not be embedded: {exc}", INTERNAL)
        return failed_output(out.agent)

    async def _exec(
        self, agent: str, ereq: EngineRequest, timeout_s: float = 0.0, route: TaskRoute | None = None
    ) -> AgentOutput:
        pb = self.pb
        with_answer = agent in self.parsed_answer_models
        if agent in self.logprob_models:
            ereq = replace(ereq, return_log_probs=True)
        if agent in self.remote:  # another server: gRPC, with the same deadline and failure mapping
            parts = await self.remote.call(agent, ereq, with_answer, timeout_s)
            if not parts:
                raise CallError("the engine sent no output", INTERNAL)
            return self._output(agent, parts, ereq, route)
        names = tensors.engine_output_names(ereq, with_answer)
        infer = pb.InferenceRequest(
            model_name=agent, requested_output_names=names, inputs=tensors.engine_request_tensors(pb, ereq)
        )
        if agent in self.decoupled_models:
            # A decoupled engine's responses come through a blocking iterator: drain it off the loop.
            stream = await infer.async_exec(decoupled=True)
            responses = await asyncio.to_thread(list, stream)
        else:
            responses = [await infer.async_exec()]
        parts = []
        for resp in responses:
            if resp.has_error():
                code, message = self._code_name(resp.error())
                raise CallError(message, code)
            if resp.output_tensors():
                parts.append(tensors.parse_engine_response(pb, resp, with_answer))
        if not parts:
            raise CallError("the engine sent no output", INTERNAL)
        return self._output(agent, parts, ereq, route)

    def _output(self, agent: str, parts: list[Any], ereq: EngineRequest, route: TaskRoute | None) -> AgentOutput:
        """The engine's reply as an AgentOutput, its answer read by the request's task (an engine's own
        parsed answer only where the task route says so: ``TaskRoute.use_parsed``)."""
        resp = tensors.merge_engine_responses(parts)
        if route is None:
            return to_agent_output(agent, resp, self._extract())
        if not route.use_parsed:
            resp = replace(resp, has_answer=False)
        return to_agent_output(agent, resp, lambda text: route.extract(text, ereq.text_input))

    def _code_name(self, err: Any) -> tuple[str, str]:
        """(code name, message without its "[CODE] " prefix) of a child model's error."""
        prefixed, message = split_code(str(err.message()))
        if prefixed:
            return prefixed, message
        try:
            code = err.code()
        except (AttributeError, TypeError):  # a TritonError without a code (older backends)
            return INTERNAL, message
        for name in CODE_NAMES:
            if getattr(self.pb.TritonError, name, object()) == code:
                return name, message
        return INTERNAL, message
