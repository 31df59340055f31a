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
"""

from __future__ import annotations

import asyncio
import time
import traceback
from dataclasses import replace
from typing import Any

from pyramid_client.wire import CODE_NAMES, cut_at_stop, split_code
from pyramid_moa.features import AgentOutput
from pyramid_moa.semantic import TASK as SEMANTIC_TASK

from . import tensors
from .config import REQUIRED, ModelParams
from .drift import DriftMonitor
from .embedder import embed_over_bls
from .hot_reload import Watch
from .metrics import FLUSH_S, RequestRecord, RouterMetrics
from .protocol import (
    INTERNAL,
    ROUTER_PARAMS,
    UNAVAILABLE,
    EngineRequest,
    Limits,
    PyramidRequest,
    PyramidResponse,
    ServeError,
)
from .remote import CallError, RemoteEngines, parse_remote_map
from .request_log import RequestLog
from .routing import (
    CallFailure,
    CallTimeout,
    ClientCancelled,
    Routed,
    build_response,
    call_tokens,
    failed_output,
    relative_costs,
    route_async,
    to_agent_output,
    within,
)
from .shadow import Shadow, artifact_version, build_record, redact, sources_of
from .tasks import TaskRoute, load_task_routers


class PyramidModel:
    def __init__(self, pb: Any, args: dict[str, Any]) -> None:
        self.pb = pb
        p = ModelParams(args)
        self.name = p.name
        self.agents = p.get_list("agents")
        self.oracle = p.get_str("oracle", REQUIRED)
        # One calibration per answer task (tasks.py); the default task's is "the" artifact (cost facts,
        # drift, shadow, hot reload), and a request naming another task is routed by that task's.
        self._params = p
        self._use(*self._load_calibration())
        self._loop: asyncio.AbstractEventLoop | None = None  # the requests' event loop, once one came
        d = ROUTER_PARAMS  # the defaults of the parameters a config may leave out (the renderer's too)
        self.limits = Limits.from_params(p)
        self.default_max_tokens = p.get_int("default_max_tokens", d["default_max_tokens"])
        self.agent_timeout_us = int(p.get_float("agent_timeout_s", d["agent_timeout_s"]) * 1e6)
        self.oracle_timeout_us = int(p.get_float("oracle_timeout_s", d["oracle_timeout_s"]) * 1e6)
        self.parsed_answer_models = set(p.get_list("parsed_answer_models"))
        self.decoupled_models = set(p.get_list("decoupled_models"))
        self.logprob_models = set(p.get_list("logprob_models"))
        # Models on other Triton servers (spec entries with ``remote``): called over gRPC, not BLS.
        self.remote = RemoteEngines(
            parse_remote_map(p.get_str("remote", "") or ""), retries=p.get_int("remote_retries", d["remote_retries"])
        )
        stray = sorted(set(self.remote.models) - {*self.agents, self.oracle})
        if stray:
            raise ValueError(f"model {self.name!r}: remote model(s) {stray} are neither agents nor the oracle")
        self.final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        # Circuit breaker: after an engine fails (timeout, crash: not a per-question NOT_FOUND or a bad
        # argument), calls to it fail fast for breaker_s seconds; the next call after that probes it.
        self.breaker_s = p.get_float("breaker_s", d["breaker_s"])
        self._down_until: dict[str, float] = {}
        # off by default; prompts and answers only if asked, through the redaction hook (request_log.py)
        self.request_log = RequestLog.from_params(p, self.name)
        self._flush_scheduled = False
        self.metrics = (
            RouterMetrics(pb, self.name, [*self.agents, self.oracle]) if p.get_bool("metrics", True) else None
        )
        if self.metrics is not None:
            self.metrics.set_calibration(self.calibration["id"])
        self.shadow = Shadow.from_params(p, self.name, self.artifact, [*self.agents, self.oracle], self.oracle)
        self._shadow_tasks: set[asyncio.Future] = set()
        self._in_flight = 0  # requests between arrival and their last response (drain waits for them)
        # hot reload: the calibration file, looked at by a background thread
        self.watch = Watch.from_params(p).start(self._reload)
        self.drain_s = min(
            DRAIN_MAX_S, len(self.router.stages) * self.agent_timeout_us / 1e6 + self.oracle_timeout_us / 1e6
        )
        # Every gauge right from the first scrape (the live calibration's id, the expected rates): a
        # dashboard or an alert must not read 0 between a start and the first request.
        self._flush_metrics()
        pb.Logger.log_info(
            f"{self.name}: calibration {self.calibration['id']} from {self.artifact_source} "
            f"(labels {self.calibration['labels']}); shadow rate {self.shadow.rate if self.shadow else 0}"
        )

    # ---- the calibration, and its hot reload (hot_reload.py) -----------------------------------
    def _load_calibration(self) -> tuple[Any, Any, str]:
        """(task routers, the default task's artifact, where from), validated for this deployment."""
        tasks, art, source = load_task_routers(self._params, [*self.agents, self.oracle])
        if art.oracle != self.oracle:
            raise ValueError(f"calibration oracle {art.oracle!r} differs from the deployment's oracle {self.oracle!r}")
        return tasks, art, source

    def _use(self, tasks: Any, art: Any, source: str) -> None:
        """Switch to a calibration. Requests resolve their route on arrival (``tasks.resolve``), so one
        in flight keeps the router it started with; the drift windows start again."""
        self.tasks, self.artifact, self.artifact_source = tasks, art, source
        self.router = tasks.routers[tasks.default]
        self.cost_kind = art.target.get("cost_model")
        self.reference_tokens = dict(art.fit_summary.get("mean_output_tokens", {}))
        self.calibration = artifact_version(art)
        self.drift = DriftMonitor.from_params(self._params, art.fit_summary.get("expected"))

    def _reload(self, path: Any) -> None:
        """The watch thread: the calibration file changed. Load and validate it here (off the requests'
        loop); the switch itself happens on the loop, between requests."""
        try:
            loaded, problem = self._load_calibration(), None
        except Exception as exc:  # noqa: BLE001 - any problem with the new file: refused, the old one serves
            loaded, problem = None, exc
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(self._switch, path, loaded, problem)
        else:
            self._switch(path, loaded, problem)

    def _switch(self, path: Any, loaded: Any, problem: Exception | None) -> None:
        old = self.calibration["id"]
        if loaded is None:
            self.pb.Logger.log_error(
                f"{self.name}: calibration {path} refused ({problem}); calibration {old} keeps serving"
            )
            outcome = "refused"
        else:
            self._use(*loaded)
            if self.shadow is not None:
                models = [*self.agents, self.oracle]
                self.shadow.writer.use_sources(sources_of(self.artifact, models, self.oracle, self.name))
            self.pb.Logger.log_info(
                f"{self.name}: calibration {self.calibration['id']} from {path} is live "
                f"(labels {self.calibration['labels']}; was {old})"
            )
            outcome = "ok"
        if self.metrics is not None:
            self.metrics.observe_reload(outcome, self.calibration["id"])
            if self._loop is not None and self._loop.is_running():
                self._schedule_flush()
            else:
                self._flush_metrics()

    async def execute(self, requests: list[Any]) -> None:
        self._loop = asyncio.get_running_loop()
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
        self.watch.stop()
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
        self._observe(rec, prompt)
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
        route = self.tasks.resolve(req.task, req.force_tier)
        if ctx is not None:
            ctx["other_task"] = route.router is not self.router or route.fallback

        async def call(agent: str):
            out = await self._call(agent, ereq, failures, route)
            if route.embed and agent != self.oracle and not out.failed and out.answer is not None:
                out = await self._embed(out, failures)
            return out

        async def send_provisional(routed: Routed) -> None:
            resp = self._build(req, routed, failures, route)
            out = tensors.pyramid_response_tensors(self.pb, resp, (ctx or {}).get("outputs"))
            self._send(sender, self.pb.InferenceResponse(out), final=False)

        routed = await route_async(
            route.router,
            req.text_input,
            call,
            req.escalation_threshold,
            route.force_tier,
            deadline=arrived + req.deadline_ms / 1000 if req.deadline_ms else None,
            on_provisional=send_provisional if req.stream else None,
        )
        if ctx is not None:
            ctx["routed"] = routed
        return self._build(req, routed, failures, route)

    async def _embed(self, out: AgentOutput, failures: dict[str, CallFailure]) -> AgentOutput:
        """``out`` with its answer's embedding (the embedder model, over BLS); an embedder failure
        leaves the agent out of the vote, like a failed call."""
        try:
            vec = await embed_over_bls(self.pb, self.tasks.embedder, [out.answer or ""], self.agent_timeout_us)
        except Exception as exc:  # noqa: BLE001 - a failed embedding is a failed agent, not a failed request
            failures[out.agent] = CallFailure(out.agent, f"its answer could not be embedded: {exc}", INTERNAL)
            return failed_output(out.agent)
        return replace(out, embedding=vec[0])

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
                self._shadow_done("skipped")  # the bound on shadow calls in flight: shed, never queued
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
            keyed = self.router.task.name != SEMANTIC_TASK
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
        self._shadow_done(outcome, cost)

    def _shadow_done(self, outcome: str, cost: float | None = None) -> None:
        if self.metrics is not None:
            self.metrics.observe_shadow(outcome, cost)
            self._schedule_flush()

    def _drift_line(self, line: str | None) -> None:
        if line:
            (self.pb.Logger.log_warn if self.drift.drifting else self.pb.Logger.log_info)(f"{self.name}: {line}")

    def _gauges(self) -> None:
        """Hand the gauges' current values to the metrics (drift, shadow calls in flight, breakers)."""
        if self.metrics is None:
            return
        f = self.drift.figures
        e = self.drift.figures["escalation_rate"]
        now = time.monotonic()
        self.metrics.set_gauges(
            {
                "pyramid_live_escalation_rate": e.observed,
                "pyramid_live_fidelity": f["fidelity"].observed,
                "pyramid_expected_escalation_rate": e.expected,
                "pyramid_expected_fidelity": f["fidelity"].expected,
                "pyramid_shadow_in_flight": self.shadow.in_flight if self.shadow else 0,
            },
            {name: fig.drifting for name, fig in f.items()},
            {m: self._down_until.get(m, 0.0) > now for m in [*self.agents, self.oracle]},
        )

    def _observe(self, rec: RequestRecord, prompt: str | None = None) -> None:
        try:
            if self.metrics is not None:
                self.metrics.observe(rec)
                self._schedule_flush()
            if self.request_log.enabled:
                answer = rec.response.text_output if rec.response is not None else None
                problem = self.request_log.write(rec.log_fields(self.name), prompt, answer, self._emit_log)
                if problem:
                    self.pb.Logger.log_warn(f"{self.name}: {problem}")
        except Exception:  # noqa: BLE001 - observability must never fail a request
            self.pb.Logger.log_warn(f"{self.name}: metrics/log failed: {traceback.format_exc()}")

    def _emit_log(self, level: str, line: str) -> None:
        (self.pb.Logger.log_info if level == "info" else self.pb.Logger.log_verbose)(line)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_S, self._flush_metrics)

    def _flush_metrics(self) -> None:
        self._flush_scheduled = False
        try:
            if self.metrics is not None:
                self._gauges()
                self.metrics.flush()
        except Exception:  # noqa: BLE001 - observability must never fail the router
            self.pb.Logger.log_warn(f"{self.name}: metrics flush failed: {traceback.format_exc()}")

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

    async def _call(
        self, agent: str, ereq: EngineRequest, failures: dict[str, CallFailure], route: TaskRoute | None = None
    ):
        """One engine call, bounded by the per-call timeout (``routing.within``; a BLS request's own
        ``timeout`` bounds only its queueing); any failure is a failed output. A call that overruns, or
        whose request was cancelled, is abandoned: a remote one is cancelled (its RPC really ends); a BLS
        child, which Triton 2.51 cannot cancel, finishes in the background and its result is dropped."""
        timeout_s = (self.oracle_timeout_us if agent == self.oracle else self.agent_timeout_us) / 1e6
        now = time.monotonic()
        down = self._down_until.get(agent, 0.0) - now
        if down > 0:  # circuit open: fail fast instead of waiting on an engine that just failed
            failures[agent] = CallFailure(agent, f"skipped: it failed {self.breaker_s - down:.1f} s ago", UNAVAILABLE)
            return failed_output(agent)
        try:
            out = await within(self._exec(agent, ereq, timeout_s, route), timeout_s)
            self._down_until.pop(agent, None)
            return out
        except CallTimeout as exc:
            failure = CallFailure(agent, str(exc), UNAVAILABLE)
        except CallError as exc:
            failure = CallFailure(agent, exc.message, exc.code)
        except Exception as exc:  # noqa: BLE001 - a failed call is a failed agent, not a failed request
            failure = CallFailure(agent, f"{type(exc).__name__}: {exc}", INTERNAL)
        failures[agent] = failure
        if self.breaker_s > 0 and failure.code in BREAKER_CODES:
            self._down_until[agent] = time.monotonic() + self.breaker_s
        return failed_output(agent)

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
            return to_agent_output(agent, resp, self.router.task.extract)
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


DRAIN_MAX_S = 300.0  # the most an unloaded router waits for its requests in flight
# An engine's own failure (timeout, crash): it opens the breaker and counts in pyramid_model_failures_total.
# NOT_FOUND (a replay engine has no record of this question) and INVALID_ARG are the request's, not the engine's.
BREAKER_CODES = {UNAVAILABLE, INTERNAL}


def _request_id(request: Any) -> str:
    try:
        return str(request.request_id() or "")
    except (AttributeError, TypeError):  # a request object without ids
        return ""
