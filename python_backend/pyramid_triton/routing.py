"""The asynchronous routing driver used in-server.

It drives ``pyramid_moa.router.Router.plan``, the same stage loop the
offline ``Router.route`` drives, so decisions cannot differ: stage by stage
the stage's *new* agents are called concurrently, then ``Router.decide``
accepts, asks the next stage, or escalates; the oracle is called only on
escalation (or ``force_tier="oracle"``).

Faults: an agent whose call fails is passed to ``decide`` as
``AgentOutput(failed=True)`` and the result is marked ``degraded``; all agents
failing escalates (``decide`` does that); an oracle failure falls back to the
committee answer (``Router.final_answer``), marked degraded, or is an error in
strict mode.

Anytime: with a deadline, the committee's answer is returned *provisional* when
the oracle has not answered in time; with streaming it is sent before the
oracle is called. Both use ``committee_fallback``: the same route replayed with
a failed oracle, so the provisional answer is exactly what an oracle failure
would give.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from pyramid_moa.cost import COST_MODELS, CostModel, estimate_tokens, prompt_tokens, relative_cost
from pyramid_moa.features import AgentOutput
from pyramid_moa.router import Router, RouteResult

from .protocol import NOT_FOUND, UNAVAILABLE, EngineResponse, PyramidResponse, ServeError

AgentCall = Callable[[str], Awaitable[AgentOutput]]
T = TypeVar("T")


@dataclass
class CallFailure:
    """Why a call failed (kept beside the failed AgentOutput, for the error message)."""

    agent: str
    message: str
    code: str


def to_agent_output(agent: str, resp: EngineResponse, extract: Callable[[str | None], str | None]) -> AgentOutput:
    """An engine reply as the router sees it: the engine's own answer if it gives one, else extracted."""
    answer = resp.answer if resp.has_answer else extract(resp.text_output)
    return AgentOutput(
        agent,
        resp.text_output,
        answer,
        output_tokens=resp.output_tokens,
        cum_log_prob=resp.cum_log_prob,
    )


def failed_output(agent: str) -> AgentOutput:
    """What offline evaluation uses for a missing record, and the server for a failed call."""
    return AgentOutput(agent, None, None, 0, failed=True)


@dataclass
class Routed:
    """A route as driven in-server: the offline ``RouteResult`` plus what only serving has.

    ``provisional``: the oracle had not answered by the request's deadline (or, streaming, has
    not answered yet), so ``result`` carries the committee's answer; ``oracle_abandoned``: the
    oracle was or is being called but its answer is not in this response (its cost is spent all
    the same, so it is counted); ``latency_ms``: wall time per step.
    """

    result: RouteResult
    outputs: dict[str, AgentOutput]
    provisional: bool = False
    oracle_abandoned: bool = False
    latency_ms: dict[str, float] = field(default_factory=dict)


OnProvisional = Callable[[Routed], Awaitable[None]]
# After a committee stage's calls, before its decision: the stage's outputs (in its agents' order) -> the
# outputs the decision sees (e.g. the answers' embeddings added in one embedder call for the whole stage).
OnStage = Callable[[list[AgentOutput]], Awaitable[list[AgentOutput]]]


def committee_fallback(
    router: Router,
    question: str,
    got: dict[str, AgentOutput],
    threshold: float | None,
    force_tier: str | None,
    thresholds: Sequence[float] | None = None,
) -> RouteResult:
    """The answer the route gives if the oracle fails: ``Router.route`` replayed on the outputs
    already in hand with a failed oracle (pure and cheap: no model is called), reported as the
    committee's."""
    result = router.route(question, lambda n: got.get(n) or failed_output(n), threshold, force_tier, thresholds)
    calls = [c for c in result.calls if c != router.oracle]
    return replace(result, tier="committee", calls=calls, oracle_fallback=False)


async def route_async(
    router: Router,
    question: str,
    call: AgentCall,
    threshold: float | None = None,
    force_tier: str | None = None,
    deadline: float | None = None,
    on_provisional: OnProvisional | None = None,
    clock: Callable[[], float] = time.monotonic,
    thresholds: Sequence[float] | None = None,
    on_stage: OnStage | None = None,
) -> Routed:
    """Drive ``Router.plan`` with each step's models called concurrently.

    Anytime behaviour, where a committee answer exists when the route escalates:
    ``on_provisional`` (streaming) is awaited with the committee's answer before the
    oracle is called; with ``deadline`` (a ``clock()`` time) the oracle is awaited until
    then, and if it has not answered the committee's answer is returned, provisional (the
    oracle is not called at all when the deadline has already passed). ``thresholds``: one per stage
    instead of the stages' own (the budget controller's), where ``threshold`` is None. ``on_stage``:
    awaited with each committee stage's outputs once all of them are in, before the stage's decision
    (its time counts in the stage's latency); what it returns is what the decision sees.
    """
    got: dict[str, AgentOutput] = {}
    latency: dict[str, float] = {}
    steps = router.plan(question, threshold, force_tier, thresholds)
    try:
        names = next(steps)
        stage = 0
        while True:
            t0 = clock()
            is_oracle = names == [router.oracle]
            anytime = deadline is not None or on_provisional is not None
            if is_oracle and anytime and any(not o.failed for o in got.values()):
                fallback = committee_fallback(router, question, got, threshold, force_tier, thresholds)
                will_call = deadline is None or deadline > clock()
                if on_provisional is not None:  # the oracle call about to start is paid for: counted
                    await on_provisional(Routed(fallback, dict(got), provisional=True, oracle_abandoned=will_call))
                task = None
                if will_call:
                    task = asyncio.ensure_future(call(router.oracle))
                    if deadline is not None:
                        try:
                            await asyncio.wait({task}, timeout=max(0.0, deadline - clock()))
                        except asyncio.CancelledError:
                            task.cancel()
                            raise
                if task is None or not task.done() and deadline is not None:
                    if task is not None:
                        task.add_done_callback(discard_outcome)
                    latency["oracle"] = (clock() - t0) * 1000
                    return Routed(fallback, got, True, task is not None, latency)
                outs = [await task]
            else:
                outs = list(await asyncio.gather(*(call(a) for a in names)))
                if on_stage is not None and not is_oracle:
                    outs = list(await on_stage(outs))
            latency["oracle" if is_oracle else f"stage{stage}"] = (clock() - t0) * 1000
            stage += 0 if is_oracle else 1
            batch = dict(zip(names, outs))
            got.update(batch)
            names = steps.send(batch)
    except StopIteration as stop:
        return Routed(stop.value, got, latency_ms=latency)


class CallTimeout(Exception):
    """``within``'s time bound passed before the awaited call answered."""


class ClientCancelled(Exception):
    """The client cancelled the request while ``within`` waited (its ``cancelled`` poll said so)."""


CANCEL_POLL_S = 0.05


async def within(
    aw: Awaitable[T], timeout_s: float = 0.0, cancelled: Callable[[], bool] | None = None, poll_s: float = CANCEL_POLL_S
) -> T:
    """``await aw``, giving up with ``CallTimeout`` after ``timeout_s`` seconds (<= 0: no bound), or with
    ``ClientCancelled`` once ``cancelled()`` is true: polled every ``poll_s`` (the Python backend has no
    cancellation callback), so a request shorter than that is never polled.

    What ``asyncio.wait_for`` and a polling ``asyncio.wait`` would do, for the router's per-call bound
    and per-request cancellation, without a second task, a waiter and done-callbacks each time
    (``asyncio.timeout`` is 3.11+; Triton's containers may run 3.10): a timer cancels the awaiting task
    itself, and that cancellation is told apart from any other by who set it off. What ``aw`` waits for
    is cancelled: a remote gRPC call really ends; a BLS call, which Triton 2.51 cannot cancel, finishes
    in its executor thread and its result is dropped."""
    if timeout_s <= 0 and cancelled is None:
        return await aw
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    why: list[Exception] = []
    timers: dict[str, asyncio.TimerHandle] = {}

    def stop(reason: Exception) -> None:
        if not why:
            why.append(reason)
            task.cancel()  # type: ignore[union-attr]

    if timeout_s > 0:
        timers["timeout"] = loop.call_later(timeout_s, stop, CallTimeout(f"no answer within {timeout_s:g} s"))
    if cancelled is not None:

        def poll() -> None:
            if cancelled():
                stop(ClientCancelled("the client cancelled the request"))
            else:
                timers["poll"] = loop.call_later(poll_s, poll)

        timers["poll"] = loop.call_later(poll_s, poll)
    try:
        return await aw
    except asyncio.CancelledError:
        if not why:  # cancelled from elsewhere: it goes on up
            raise
        uncancel = getattr(task, "uncancel", None)  # 3.11+: this task is not being cancelled any more
        if uncancel is not None:
            uncancel()
        raise why[0] from None
    finally:
        for timer in timers.values():
            timer.cancel()


def discard_outcome(task: asyncio.Future) -> None:
    """Consume an abandoned call's outcome so that nothing is logged as never retrieved."""
    if not task.cancelled():
        task.exception()


def relative_costs(
    cost_model: CostModel | None,
    oracle: str,
    reference_tokens: dict[str, float | None],
    question: str,
    routed: Routed,
) -> dict[str, float | None]:
    """Cost of the calls made, relative to one oracle call on this question, per cost model.

    The reference is the oracle's own call when it was made and its length is known, else
    a call of the oracle's mean output length on the calibration questions
    (``reference_tokens``, from the artifact). An abandoned oracle call (deadline) counts
    as one reference call. None where a cost model lacks a price or size it needs.
    """
    made = {n: o for n, o in routed.outputs.items() if not o.failed}
    out: dict[str, float | None] = {}
    for kind in COST_MODELS:
        if cost_model is None or not cost_model.available(kind, [*made, oracle]):
            out[kind] = None
            continue
        o = made.get(oracle)
        tokens = o.output_tokens if o is not None and o.output_tokens is not None else reference_tokens.get(oracle)
        if tokens is None:
            out[kind] = None
            continue
        prompt = prompt_tokens(o, question) if o is not None else estimate_tokens(question)
        ref = cost_model.call_cost(kind, oracle, prompt, tokens)
        total = sum(cost_model.output_cost(kind, n, m, question) for n, m in made.items())
        out[kind] = relative_cost(total + (ref if routed.oracle_abandoned else 0.0), ref)
    return out


def call_tokens(question: str, routed: Routed) -> dict[str, list[int]]:
    """[prompt, completion] tokens of each call whose output is in hand: the engine's counts where it
    reports them, else chars/4 (``estimate_tokens``, as the cost model does). Failed calls and an oracle
    call abandoned at the deadline are not in hand, so not counted."""
    return {
        n: [
            prompt_tokens(o, question),
            o.output_tokens if o.output_tokens is not None else estimate_tokens(o.text or ""),
        ]
        for n, o in routed.outputs.items()
        if not o.failed
    }


# The task of the request being routed, as ``tasks.TaskRouters.resolve`` decided it: (the router it chose, the
# route's ``report()``). A request is routed in its own asyncio task (``execute`` gathers them), so each sees its
# own; ``build_response`` reads it for a response built with that router and no ``task`` of its own.
ROUTE_TASK: ContextVar[tuple[Router, dict[str, Any]] | None] = ContextVar("pyramid_route_task", default=None)


def build_response(
    router: Router,
    routed: Routed,
    failures: dict[str, CallFailure],
    costs: dict[str, float | None] | None = None,
    cost_kind: str | None = None,
    strict: bool = False,
    task: dict[str, Any] | None = None,
) -> PyramidResponse:
    """The client-facing response. Raises ServeError when no model produced anything, and in
    ``strict`` mode when the oracle was asked and failed (instead of a degraded committee answer).
    ``task``: the response's task metadata (None: what ``ROUTE_TASK`` holds for ``router``, if anything)."""
    if task is None:
        held = ROUTE_TASK.get()
        task = held[1] if held is not None and held[0] is router else None
    result, outputs = routed.result, routed.outputs
    failures = {a: f for a, f in failures.items() if a in outputs}  # not an abandoned call's late failure
    if failures and len(failures) == len(outputs):
        codes = {f.code for f in failures.values()}
        code = NOT_FOUND if codes == {NOT_FOUND} else UNAVAILABLE
        detail = "; ".join(f"{f.agent}: {f.message}" for f in failures.values())
        raise ServeError(f"every model called failed ({detail})", code)
    if strict and router.oracle in failures:
        f = failures[router.oracle]
        raise ServeError(f"strict: the oracle {f.agent} failed ({f.message})", f.code)
    oracle_out = outputs.get(router.oracle)
    if result.tier == "oracle" and oracle_out is not None and not oracle_out.failed and not result.oracle_fallback:
        text = oracle_out.text or ""
    else:  # the text of the agent whose answer was returned (a semantic vote's: its group's most central member)
        voters = [a for a in result.answered_by if a in outputs and a != router.oracle]
        who = next((a for a in voters if outputs[a].answer == result.answer), voters[0] if voters else None)
        text = (outputs[who].text or "") if who is not None else ""
    committee = [a for a in result.calls if a != router.oracle]
    costs = dict(costs or {})
    cost = costs.get(cost_kind) if cost_kind else None
    return PyramidResponse(
        text_output=text,
        answer=result.answer,
        tier=result.tier,
        escalated=result.escalated,
        confidence=float(result.confidence),
        agreement=float(result.agreement),
        agent_answers={a: outputs[a].answer for a in committee},
        failed_agents=sorted(failures),
        calls=list(result.calls),
        degraded=bool(failures),
        cost=math.nan if cost is None else float(cost),
        costs=costs,
        provisional=routed.provisional,
        latency_ms=dict(routed.latency_ms),
        answered_by=list(result.answered_by),
        task=dict(task) if task is not None else None,
    )
