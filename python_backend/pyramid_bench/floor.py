"""The bare-BLS floor: the least a Python-backend BLS router making the router's calls can cost.

A decoupled model that answers each request by making exactly the engine calls the real router's
offline route makes for that question (the same engines, stage by stage, concurrently within a
stage, the oracle last) and nothing else: no features, calibrator, metrics, log or routing outputs,
one output tensor. Its plan per question comes from ``route_plans`` (``Router.route`` offline on the
recorded traces), written beside the model by ``pyramid_bench.perf.add_floor``. ``make perf``
measures it side by side with ``pyramid`` and a direct engine call: the difference between the
router and the floor is the router's own work; the floor over the direct call is what BLS itself
costs on the machine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pyramid_moa.features import AgentOutput
from pyramid_moa.router import Router, RouteResult
from pyramid_triton import tensors
from pyramid_triton.config import REQUIRED, ModelParams
from pyramid_triton.protocol import ROUTER_PARAMS, EngineRequest, ServeError

PLAN_FILE = "plan.json"


def route_stages(router: Router, result: RouteResult) -> list[list[str]]:
    """The calls of one route as the router makes them: each decided stage's new agents, then the
    oracle if it was called."""
    groups = [router.new_agents(s) for s in range(len(result.decisions))]
    return groups + ([[router.oracle]] if result.escalated else [])


def route_plans(
    router: Router, questions: Iterable[tuple[str, Callable[[str], AgentOutput]]]
) -> dict[str, list[list[str]]]:
    """``{question: stages of calls}`` for ``(question, call)`` pairs, routed offline."""
    plans = {}
    for question, call in questions:
        result = router.route(question, call)
        plans[question] = route_stages(router, result)
    return plans


class FloorModel:
    """The floor as a decoupled Python-backend model (its ``model.py`` delegates here)."""

    def __init__(self, pb: Any, args: dict[str, Any]) -> None:
        self.pb = pb
        p = ModelParams(args)
        self.plans: dict[str, list[list[str]]] = json.loads(Path(p.get_path("plan", REQUIRED)).read_text())
        self.max_tokens = p.get_int("default_max_tokens", ROUTER_PARAMS["default_max_tokens"])
        self.final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL

    async def execute(self, requests: list[Any]) -> None:
        await asyncio.gather(*(self.handle(r) for r in requests))

    async def handle(self, request: Any) -> None:
        pb = self.pb
        sender = request.get_response_sender()
        try:
            text = tensors.get_string(pb, request, "text_input") or ""
            max_tokens = tensors.get_int(pb, request, "max_tokens") or self.max_tokens
            plan = self.plans.get(text)
            if plan is None:
                raise ServeError("the floor has no plan for this question", "NOT_FOUND")
            answer = ""
            for stage in plan:
                outs = await asyncio.gather(*(self._call(m, text, max_tokens) for m in stage))
                answer = outs[-1]
            out = pb.Tensor("text_output", np.array([[answer.encode()]], dtype=np.object_))
            sender.send(pb.InferenceResponse(output_tensors=[out]), flags=self.final)
        except Exception as exc:  # noqa: BLE001 - answered as an error response, then FINAL
            sender.send(tensors.error_response(pb, exc), flags=self.final)

    async def _call(self, model: str, text: str, max_tokens: int) -> str:
        pb = self.pb
        # Tensors built anew for every call: one Tensor object in concurrent BLS requests crashes 2.51.
        infer = pb.InferenceRequest(
            model_name=model,
            requested_output_names=["text_output"],
            inputs=tensors.engine_request_tensors(pb, EngineRequest(text, max_tokens)),
        )
        resp = await infer.async_exec()
        if resp.has_error():
            raise ServeError(f"{model}: {resp.error().message()}", "UNAVAILABLE")
        t = pb.get_output_tensor_by_name(resp, "text_output")
        v = t.as_numpy().reshape(-1)[0] if t is not None else b""
        return v.decode() if isinstance(v, bytes) else str(v)
