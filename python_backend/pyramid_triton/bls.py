"""Python-backend implementation of the ``pyramid`` BLS router model (decoupled, async).

``model.py`` delegates here. Each request: validate inputs (an error names the
field), route with ``routing.route_async`` (each stage's new agents called
concurrently through ``await pb_utils.InferenceRequest(...).async_exec()``, or, for
a model of another server, over gRPC: ``remote.RemoteEngines``), send one response,
then the FINAL flag. Every exception becomes an error response followed by FINAL,
so a client never waits for a response that will not come.

After the response: the drift alarms see the route (``drift``), and a sampled share of requests is
shadowed (``shadow``: the models the route did not call, called in the background, one complete
record written), never on the client's critical path. The artifact is the ``calibration`` file or,
after a hot reload, the ``calibration_json`` parameter (``hot_reload``).

``PyramidModel`` wires parts with one job each and handles requests: ``engine_calls`` (engine calls
with their timeouts, the circuit breaker, remote models, embeddings), ``observability`` (metrics,
request log, drift lines), ``calibration_watch`` (the live calibration and its hot reload) and
``shadow`` (shadow sampling).
"""

from __future__ import annotations

import asyncio
import time
import traceback
from dataclasses import replace
from typing import Any

from pyramid_client.wire import cut_at_stop

from . import tensors
from .budget import BudgetController
from .calibration_watch import CalibrationWatch
from .config import REQUIRED, ModelParams
from .engine_calls import BREAKER_CODES, EngineCalls
from .metrics import RequestRecord
from .observability import Gauges, Observability
from .protocol import (
    ROUTER_PARAMS,
    EngineRequest,
    Limits,
    PyramidRequest,
    PyramidResponse,
    ServeError,
)
from .routing import (
    CallFailure,
    ClientCancelled,
    Routed,
    build_response,
    call_tokens,
    relative_costs,
    route_async,
    within,
)
from .shadow import Shadow, build_record, redact, sources_of
from .tasks import TaskRoute


class PyramidModel:
    def __init__(self, pb: Any, args: dict[str, Any]) -> None:
        self.pb = pb
        p = ModelParams(args)
        self.name = p.name
        self.agents = p.get_list("agents")
        self.oracle = p.get_str("oracle", REQUIRED)
        models = [*self.agents, self.oracle]
        # One calibration per answer task (tasks.py); the default task's is "the" artifact (cost facts,
        # drift, shadow, hot reload), and a request naming another task is routed by that task's.
        self._params = p
        self.calibration_watch = CalibrationWatch(pb, p, models, self.oracle)
        self.limits = Limits.from_params(p)
        self.default_max_tokens = p.get_typed("default_max_tokens", ROUTER_PARAMS)
        self.engines = EngineCalls(pb, p, self.agents, self.oracle, lambda: self.router.task.extract)
        self.final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        self.budget = BudgetController.from_params(p)  # None: off (budget.py)
        self.observability = Observability(pb, p, models, self._gauges)
        if self.metrics is not None:
            self.metrics.set_calibration(self.calibration["id"])
        self.shadow = Shadow.from_params(p, self.name, self.artifact, models, self.oracle)
        self._shadow_tasks: set[asyncio.Future] = set()
        self._in_flight = 0  # requests between arrival and their last response (drain waits for them)
        # hot reload: the calibration file, looked at by a background thread
        self.calibration_watch.start(self._switched)
        self.drain_s = min(
            DRAIN_MAX_S,
            len(self.router.stages) * self.engines.agent_timeout_us / 1e6 + self.engines.oracle_timeout_us / 1e6,
        )
        # Every gauge right from the first scrape (the live calibration's id, the expected rates): a
        # dashboard or an alert must not read 0 between a start and the first request.
        self._flush_metrics()
        pb.Logger.log_info(
            f"{self.name}: calibration {self.calibration['id']} from {self.artifact_source} "
            f"(labels {self.calibration['labels']}); shadow rate {self.shadow.rate if self.shadow else 0}"
        )

    # ---- the parts' state, as the model's attributes -------------------------------------------
    tasks = property(lambda self: self.calibration_watch.live.tasks)
    artifact = property(lambda self: self.calibration_watch.live.artifact)
    artifact_source = property(lambda self: self.calibration_watch.live.source)
    router = property(lambda self: self.calibration_watch.live.router)
    cost_kind = property(lambda self: self.calibration_watch.live.cost_kind)
    reference_tokens = property(lambda self: self.calibration_watch.live.reference_tokens)
    calibration = property(lambda self: self.calibration_watch.live.version)
    drift = property(lambda self: self.calibration_watch.live.drift)
    watch = property(lambda self: self.calibration_watch.watch)
    metrics = property(lambda self: self.observability.metrics)
    request_log = property(lambda self: self.observability.request_log)
    remote = property(lambda self: self.engines.remote)
    agent_timeout_us = property(lambda self: self.engines.agent_timeout_us)
    oracle_timeout_us = property(lambda self: self.engines.oracle_timeout_us)
    parsed_answer_models = property(lambda self: self.engines.parsed_answer_models)
    _down_until = property(lambda self: self.engines.down_until)

    @property
    def breaker_s(self) -> float:
        return self.engines.breaker_s

    @breaker_s.setter
    def breaker_s(self, value: float) -> None:
        self.engines.breaker_s = value

    @property
    def decoupled_models(self) -> set[str]:
        return self.engines.decoupled_models

    @decoupled_models.setter
    def decoupled_models(self, value: set[str]) -> None:
        self.engines.decoupled_models = value

    @property
    def logprob_models(self) -> set[str]:
        return self.engines.logprob_models

    @logprob_models.setter
    def logprob_models(self, value: set[str]) -> None:
        self.engines.logprob_models = value

    # ---- the calibration's hot reload (calibration_watch.py) -------------------------------------
    def _reload(self, path: Any) -> None:
        """The watch thread: the calibration file changed (``CalibrationWatch.reload``)."""
        self.calibration_watch.reload(path)

    def _switched(self, path: Any, old: str, problem: Exception | None) -> None:
        """On the loop, after a reload: the new calibration is live (``problem`` None) or refused."""
        if problem is not None:
            self.pb.Logger.log_error(
                f"{self.name}: calibration {path} refused ({problem}); calibration {old} keeps serving"
            )
            outcome = "refused"
        else:
            if self.shadow is not None:
                models = [*self.agents, self.oracle]
                self.shadow.writer.use_sources(sources_of(self.artifact, models, self.oracle, self.name))
            self.pb.Logger.log_info(
                f"{self.name}: calibration {self.calibration['id']} from {path} is live "
                f"(labels {self.calibration['labels']}; was {old})"
            )
            outcome = "ok"
        self.observability.reloaded(outcome, self.calibration["id"], self.calibration_watch.on_loop())

    async def execute(self, requests: list[Any]) -> None:
        self.calibration_watch.loop = asyncio.get_running_loop()
        await asyncio.gather(*(self.handle(r) for r in requests))

    async def handle(self, request: Any) -> None:
        """Answer one request: its response(s), then FINAL; an error response, then FINAL; or, when
        the client cancelled, FINAL alone (the route is abandoned: no further model is called)."""
        self._in_flight += 1
        try:
            await self._handle(request)
        finally:
            self._in_flight -= 1

    def drain(self, timeout_s: float | None = None, poll_s: float = 0.02) -> int:
        """Wait (blocking: ``finalize`` runs outside the requests' event loop) until no request is in
        flight, at most ``timeout_s`` (default: the longest a request can take); the number left."""
        self.calibration_watch.stop()
        deadline = time.monotonic() + (self.drain_s if timeout_s is None else timeout_s)
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(poll_s)
        if self._in_flight:
            self.pb.Logger.log_warn(f"{self.name}: unloaded with {self._in_flight} request(s) still in flight")
        return self._in_flight

    async def _handle(self, request: Any) -> None:
        pb = self.pb
        arrived = time.monotonic()
        sender = request.get_response_sender()
        failures: dict[str, CallFailure] = {}
        rec = RequestRecord(_request_id(request), "ok", 0.0)
        response = None
        prompt = None
        req = None
        ctx: dict[str, Any] = {}
        try:
            req = tensors.parse_pyramid_request(pb, request, self.limits, self.default_max_tokens)
            prompt = req.text_input
            ctx["outputs"] = wanted = tensors.requested_outputs(request)
            rec.response = await within(
                self._route(req, sender, failures, arrived, ctx), cancelled=request.is_cancelled
            )
            response = pb.InferenceResponse(output_tensors=tensors.pyramid_response_tensors(pb, rec.response, wanted))
        except ClientCancelled:  # the route is abandoned: no further model is called
            rec.outcome = "cancelled"
        except Exception as exc:  # noqa: BLE001 - answered as an error response, then FINAL
            if not isinstance(exc, ServeError):
                pb.Logger.log_error(f"{self.name}: {traceback.format_exc()}")
            response = tensors.error_response(pb, exc)
            rec.outcome, rec.error = "error", str(exc)
        self._send(sender, response, final=True)  # None: FINAL alone (cancelled)
        rec.seconds = time.monotonic() - arrived
        rec.failed = sorted(failures)
        rec.engine_failed = sorted(m for m, f in failures.items() if f.code in BREAKER_CODES)
        self.observability.observe(rec, prompt)
        # Drift and shadow watch the default task's calibration: other tasks' requests are not its traffic.
        if rec.response is not None and req is not None and "routed" in ctx and not ctx["other_task"]:
            self._after(req, ctx["routed"], failures)

    async def _route(
        self,
        req: PyramidRequest,
        sender: Any,
        failures: dict[str, CallFailure],
        arrived: float,
        ctx: dict[str, Any] | None = None,
    ) -> PyramidResponse:
        ereq = req.engine_request()
        route = self.tasks.resolve(req.task, req.force_tier, req.text_input)
        if ctx is not None:
            ctx["other_task"] = route.router is not self.router or route.fallback

        async def call(agent: str):
            return await self._call(agent, ereq, failures, route)

        async def embed_stage(outs: list) -> list:
            # A semantic task's stage: its answers embedded in one embedder call once all are in.
            return await self.engines.embed_stage(self.tasks.embedder, outs, req.text_input, failures)

        # The oracle budget controls the requests routed by the default calibration's own thresholds.
        budget = self.budget
        if budget is not None and (
            req.escalation_threshold is not None or route.force_tier is not None
            or route.router is not self.router or route.fallback
        ):  # fmt: skip
            budget = None
        base = [st.threshold for st in route.router.stages]
        applied = budget.thresholds(base) if budget is not None else None
        report = budget.report(applied) if budget is not None and applied is not None else None

        async def send_provisional(routed: Routed) -> None:
            resp = replace(self._build(req, routed, failures, route), budget=report)
            out = tensors.pyramid_response_tensors(self.pb, resp, (ctx or {}).get("outputs"))
            self._send(sender, self.pb.InferenceResponse(out), final=False)

        try:
            routed = await route_async(
                route.router,
                req.text_input,
                call,
                req.escalation_threshold,
                route.force_tier,
                deadline=arrived + req.deadline_ms / 1000 if req.deadline_ms else None,
                on_provisional=send_provisional if req.stream else None,
                thresholds=applied.thresholds if applied is not None else None,
                on_stage=embed_stage if route.embed else None,
            )
        except BaseException:  # no route (cancelled, an error): not counted in the budget's window
            if budget is not None and applied is not None:
                budget.release(applied)
            raise
        if ctx is not None:
            ctx["routed"] = routed
        if budget is not None and applied is not None:
            r = routed.result
            budget.observe(applied, r.escalated, [(d.confidence, base[d.stage], d.all_failed) for d in r.decisions])
            report = budget.report(applied)
        return replace(self._build(req, routed, failures, route), budget=report)

    async def _call(
        self, agent: str, ereq: EngineRequest, failures: dict[str, CallFailure], route: TaskRoute | None = None
    ):
        return await self.engines.call(agent, ereq, failures, route)

    # ---- after the response: drift and shadow sampling -------------------------------------------
    def _after(self, req: PyramidRequest, routed: Routed, failures: dict[str, CallFailure]) -> None:
        """Drift bookkeeping and, for a sampled request, the shadow record; never raises."""
        try:
            own = req.escalation_threshold is None and req.force_tier is None  # the artifact's own thresholds
            if own:
                self._drift_line(self.drift.observe_route(routed.result.escalated))
            if self.shadow is None or not self.shadow.sampled():
                return
            have = {n for n, o in routed.outputs.items() if not o.failed}
            missing = [m for m in [*self.agents, self.oracle] if m not in have]
            if missing and not self.shadow.admit(len(missing)):
                self.observability.shadow_done("skipped")  # the bound on shadow calls in flight: shed, never queued
                return
            task = asyncio.ensure_future(self._shadow_run(req, routed, sorted(failures), missing, own))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        except Exception:  # noqa: BLE001 - shadow and drift must never fail a request
            self.pb.Logger.log_warn(f"{self.name}: shadow/drift failed: {traceback.format_exc()}")

    async def _shadow_run(
        self, req: PyramidRequest, routed: Routed, route_failed: list[str], missing: list[str], own: bool
    ) -> None:
        assert self.shadow is not None
        outcome, cost = "failed", None
        try:
            try:
                ereq = req.engine_request()
                outs = await asyncio.gather(*(self._call(m, ereq, {}) for m in missing))
            finally:
                self.shadow.release(len(missing))
            shadow_outs = dict(zip(missing, outs))
            cost = relative_costs(
                self.artifact.cost_model, self.oracle, self.reference_tokens, req.text_input,
                Routed(routed.result, shadow_outs),
            ).get(self.cost_kind)  # fmt: skip
            record = build_record(
                self.shadow.ids.next(), req.text_input, routed, shadow_outs, route_failed, self.calibration,
                req.escalation_threshold, req.force_tier, self.name,
            )  # fmt: skip
            record = redact(record, self.request_log.redact)  # prompts are user data: the same hook
            if record is None:
                outcome = "dropped"
            else:
                self.shadow.writer.write(record)
                outcome = "recorded"
            r = routed.result
            oracle = shadow_outs.get(self.oracle) or routed.outputs.get(self.oracle)
            # Live fidelity for tasks whose answers compare as strings; semantic answers compare by embedding
            # (the task's string equality refuses them), so shadows of those are recorded but not scored here.
            keyed = self.router.task.keyed
            if (
                own
                and keyed
                and not r.escalated
                and oracle is not None
                and not oracle.failed
                and oracle.answer is not None
            ):
                self._drift_line(self.drift.observe_shadow(self.router.task.equal(r.answer, oracle.answer)))
        except Exception:  # noqa: BLE001 - counted and logged; the client has its answer already
            self.pb.Logger.log_warn(f"{self.name}: shadow record failed: {traceback.format_exc()}")
        self.observability.shadow_done(outcome, cost)

    def _drift_line(self, line: str | None) -> None:
        self.observability.drift_line(line, self.drift.drifting)

    def _gauges(self) -> Gauges:
        """The gauges' current values (drift, shadow calls in flight, breakers), for each metrics flush."""
        f = self.drift.figures
        e = self.drift.figures["escalation_rate"]
        b = self.budget
        return (
            {
                "pyramid_live_escalation_rate": e.observed,
                "pyramid_live_fidelity": f["fidelity"].observed,
                "pyramid_expected_escalation_rate": e.expected,
                "pyramid_expected_fidelity": f["fidelity"].expected,
                "pyramid_shadow_in_flight": self.shadow.in_flight if self.shadow else 0,
                "pyramid_budget_target_oracle_rate": b.target if b else None,
                "pyramid_budget_window_oracle_rate": b.window_rate if b else None,
                "pyramid_budget_threshold_offset": b.offset if b else None,
            },
            {name: fig.drifting for name, fig in f.items()},
            self.engines.broken([*self.agents, self.oracle]),
        )

    def _flush_metrics(self) -> None:
        self.observability.flush()

    def _build(
        self, req: PyramidRequest, routed: Routed, failures: dict[str, CallFailure], route: TaskRoute | None = None
    ) -> PyramidResponse:
        costs = relative_costs(self.artifact.cost_model, self.oracle, self.reference_tokens, req.text_input, routed)
        router = self.router if route is None else route.router
        resp = build_response(router, routed, failures, costs, self.cost_kind, req.strict)
        text, _ = cut_at_stop(resp.text_output, req.stop_words)  # the answer was read from the whole text
        return replace(resp, tokens=call_tokens(req.text_input, routed), text_output=text)

    def _send(self, sender: Any, response: Any | None, final: bool) -> None:
        try:
            if response is None:
                sender.send(flags=self.final)
            else:
                sender.send(response, flags=self.final if final else 0)
        except Exception:  # noqa: BLE001 - the client may be gone (cancelled); nothing left to do
            self.pb.Logger.log_warn(f"{self.name}: could not send the response: {traceback.format_exc()}")


DRAIN_MAX_S = 300.0  # the most an unloaded router waits for its requests in flight
__all__ = ["BREAKER_CODES", "DRAIN_MAX_S", "PyramidModel"]


def _request_id(request: Any) -> str:
    try:
        return str(request.request_id() or "")
    except (AttributeError, TypeError):  # a request object without ids
        return ""
