"""Python-backend implementation of the ``pyramid`` BLS router model (decoupled, async).

``model.py`` delegates here. Each request: validate inputs (an error names the
field), route with ``routing.route_async`` (each stage's new agents called
concurrently through ``await pb_utils.InferenceRequest(...).async_exec()``), send
one response, then the FINAL flag. Every exception becomes an error response
followed by FINAL, so a client never waits for a response that will not come.
"""

from __future__ import annotations

import asyncio
import re
import traceback
from typing import Any

from pyramid_moa.artifact import load_artifact

from . import tensors
from .config import REQUIRED, ModelParams
from .protocol import INTERNAL, EngineRequest, Limits, ServeError
from .routing import CallFailure, build_response, call_cost, failed_output, route_async, to_agent_output

_CODE_PREFIX = re.compile(r"^\[([A-Z_]+)\] ")
_CODE_NAMES = ("NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "CANCELLED", "INTERNAL", "UNKNOWN")


class PyramidModel:
    def __init__(self, pb: Any, args: dict[str, Any]) -> None:
        self.pb = pb
        p = ModelParams(args)
        self.name = p.name
        self.agents = p.get_list("agents")
        self.oracle = p.get_str("oracle", REQUIRED)
        self.artifact = load_artifact(p.get_path("calibration", REQUIRED), known_agents=[*self.agents, self.oracle])
        if self.artifact.oracle != self.oracle:
            raise ValueError(
                f"calibration oracle {self.artifact.oracle!r} differs from the deployment's oracle {self.oracle!r}"
            )
        self.router = self.artifact.router()
        self.cost_kind = self.artifact.target.get("cost_model")
        self.limits = Limits(p.get_int("max_input_chars", 20_000), p.get_int("max_tokens_cap", 8192))
        self.default_max_tokens = p.get_int("default_max_tokens", 512)
        self.agent_timeout_us = int(p.get_float("agent_timeout_s", 0.0) * 1e6)
        self.oracle_timeout_us = int(p.get_float("oracle_timeout_s", 0.0) * 1e6)
        self.parsed_answer_models = set(p.get_list("parsed_answer_models"))
        self.final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL

    async def execute(self, requests: list[Any]) -> None:
        await asyncio.gather(*(self.handle(r) for r in requests))

    async def handle(self, request: Any) -> None:
        pb = self.pb
        sender = request.get_response_sender()
        try:
            req = tensors.parse_pyramid_request(pb, request, self.limits, self.default_max_tokens)
            failures: dict[str, CallFailure] = {}
            ereq = req.engine_request()

            async def call(agent: str):
                return await self._call(agent, ereq, failures)

            result, outputs = await route_async(
                self.router, req.text_input, call, req.escalation_threshold, req.force_tier
            )
            cost = call_cost(self.artifact.cost_model, self.cost_kind, req.text_input, outputs)
            resp = build_response(self.router, req.text_input, result, outputs, failures, cost)
            response = pb.InferenceResponse(output_tensors=tensors.pyramid_response_tensors(pb, resp))
        except Exception as exc:  # noqa: BLE001 - answered as an error response, then FINAL
            if not isinstance(exc, ServeError):
                pb.Logger.log_error(f"{self.name}: {traceback.format_exc()}")
            response = tensors.error_response(pb, exc)
        try:
            sender.send(response, flags=self.final)
        except Exception:  # noqa: BLE001 - the client may be gone (cancelled); nothing left to do
            pb.Logger.log_warn(f"{self.name}: could not send the response: {traceback.format_exc()}")

    async def _call(self, agent: str, ereq: EngineRequest, failures: dict[str, CallFailure]):
        pb = self.pb
        with_answer = agent in self.parsed_answer_models
        names = list(tensors.ENGINE_OUTPUTS[:2]) + ([tensors.PARSED_ANSWER_OUTPUT] if with_answer else [])
        timeout = self.oracle_timeout_us if agent == self.oracle else self.agent_timeout_us
        kwargs = {"timeout": timeout} if timeout > 0 else {}
        try:
            infer = pb.InferenceRequest(
                model_name=agent,
                requested_output_names=names,
                inputs=tensors.engine_request_tensors(pb, ereq),
                **kwargs,
            )
            resp = await infer.async_exec()
            if resp.has_error():
                err = resp.error()
                code, message = self._code_name(err)
                failures[agent] = CallFailure(agent, message, code)
                return failed_output(agent)
            return to_agent_output(
                agent, tensors.parse_engine_response(pb, resp, with_answer), self.router.task.extract
            )
        except Exception as exc:  # noqa: BLE001 - a failed call is a failed agent, not a failed request
            failures[agent] = CallFailure(agent, f"{type(exc).__name__}: {exc}", INTERNAL)
            return failed_output(agent)

    def _code_name(self, err: Any) -> tuple[str, str]:
        """(code name, message without its "[CODE] " prefix) of a child model's error."""
        message = str(err.message())
        m = _CODE_PREFIX.match(message)
        if m:
            return m.group(1), message[m.end() :]
        try:
            code = err.code()
        except Exception:  # noqa: BLE001
            return INTERNAL, message
        for name in _CODE_NAMES:
            if getattr(self.pb.TritonError, name, object()) == code:
                return name, message
        return INTERNAL, message
