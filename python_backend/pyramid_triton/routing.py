"""The asynchronous routing driver used in-server.

It drives ``pyramid_moa.router.Router.plan``, the same stage loop the
offline ``Router.route`` drives, so decisions cannot differ: stage by stage
the stage's *new* agents are called concurrently, then ``Router.decide``
accepts, asks the next stage, or escalates; the oracle is called only on
escalation (or ``force_tier="oracle"``).

Faults: an agent whose call fails is passed to ``decide`` as
``AgentOutput(failed=True)`` and the result is marked ``degraded``; all agents
failing escalates (``decide`` does that); an oracle failure falls back to the
committee answer (``Router.final_answer``), marked degraded.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pyramid_moa.cost import CostModel, estimate_tokens
from pyramid_moa.features import AgentOutput
from pyramid_moa.router import Router, RouteResult

from .protocol import NOT_FOUND, UNAVAILABLE, EngineResponse, PyramidResponse, ServeError

AgentCall = Callable[[str], Awaitable[AgentOutput]]


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


async def route_async(
    router: Router,
    question: str,
    call: AgentCall,
    threshold: float | None = None,
    force_tier: str | None = None,
) -> tuple[RouteResult, dict[str, AgentOutput]]:
    """Drive ``Router.plan`` with each step's models called concurrently; also returns every output."""
    got: dict[str, AgentOutput] = {}
    steps = router.plan(question, threshold, force_tier)
    try:
        names = next(steps)
        while True:
            outs = await asyncio.gather(*(call(a) for a in names))
            batch = dict(zip(names, outs))
            got.update(batch)
            names = steps.send(batch)
    except StopIteration as stop:
        return stop.value, got


def call_cost(cost_model: CostModel | None, kind: str | None, question: str, outputs: dict[str, AgentOutput]) -> float:
    """Cost of the calls made, in the artifact's cost model (absolute units; NaN when unknown)."""
    if cost_model is None or kind is None or not cost_model.available(kind, list(outputs)):
        return math.nan
    total = 0.0
    for name, o in outputs.items():
        if o.failed:
            continue
        prompt = o.prompt_tokens if o.prompt_tokens is not None else estimate_tokens(question)
        total += cost_model.call_cost(kind, name, prompt, o.output_tokens or 0)
    return total


def build_response(
    router: Router,
    question: str,
    result: RouteResult,
    outputs: dict[str, AgentOutput],
    failures: dict[str, CallFailure],
    cost: float = math.nan,
) -> PyramidResponse:
    """The client-facing response; raises ServeError when no model produced anything."""
    if failures and len(failures) == len(outputs):
        codes = {f.code for f in failures.values()}
        code = NOT_FOUND if codes == {NOT_FOUND} else UNAVAILABLE
        detail = "; ".join(f"{f.agent}: {f.message}" for f in failures.values())
        raise ServeError(f"every model called failed ({detail})", code)
    if (
        result.tier == "oracle"
        and router.oracle in outputs
        and not outputs[router.oracle].failed
        and not result.oracle_fallback
    ):
        text = outputs[router.oracle].text or ""
    else:
        text = _committee_text(router, result, outputs)
    committee = [a for a in result.calls if a != router.oracle]
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
        cost=cost,
    )


def _committee_text(router: Router, result: RouteResult, outputs: dict[str, AgentOutput]) -> str:
    """The text of the first committee agent whose answer is the committee's answer."""
    if not result.decisions:
        return ""
    vote = result.decisions[-1].vote
    agents = router.stages[result.decisions[-1].stage].agents
    for agent, key in zip(agents, vote.keys):
        if key is not None and key == vote.key:
            return outputs[agent].text or ""
    return ""
