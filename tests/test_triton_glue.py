"""Unit tests of the Triton glue (tensors, the BLS router model, the async driver) with a fake
``triton_python_backend_utils`` (tests/fake_pb_utils.py). Routing logic is the real one; the
real server is exercised by tests/integration."""

from __future__ import annotations

import asyncio
import json
import math
import time

import fake_pb_utils as pb  # tests/ is on sys.path (rootdir conftest)
import numpy as np
import pytest

from pyramid_moa.artifact import CalibrationArtifact
from pyramid_moa.calibration import LogisticCalibrator
from pyramid_moa.cost import CostModel, ModelCost
from pyramid_moa.features import AgentOutput, make_feature_set
from pyramid_triton import tensors
from pyramid_triton.bls import PyramidModel
from pyramid_triton.protocol import EngineResponse, InvalidArgument, Limits, NotFound
from pyramid_triton.routing import Routed, relative_costs, route_async

AGENTS = ["a", "b", "c"]
ORACLE = "o"
Q_AGREE, Q_SPLIT, Q_ALLFAIL = "What is 2+2?", "What is 3+3?", "What is 4+4?"
# model -> question -> answer ("FAIL": the engine errors); a logistic on vote share makes a
# unanimous committee accept (P=0.95) and a 2-of-3 split escalate (P=0.42 < 0.5).
ANSWERS = {
    "a": {Q_AGREE: "4", Q_SPLIT: "6", Q_ALLFAIL: "FAIL"},
    "b": {Q_AGREE: "4", Q_SPLIT: "6", Q_ALLFAIL: "FAIL"},
    "c": {Q_AGREE: "4", Q_SPLIT: "7", Q_ALLFAIL: "FAIL"},
    "o": {Q_AGREE: "4", Q_SPLIT: "6", Q_ALLFAIL: "8"},
}


def engine(model: str):
    def run(req):
        a = ANSWERS[model].get(req.text_input)
        if a is None:
            raise NotFound(f"{model}: unknown question")
        if a == "FAIL":
            raise RuntimeError("engine crashed")
        return EngineResponse(f"The answer is {a}.\n#### {a}", output_tokens=10 if model != ORACLE else 40)

    return run


@pytest.fixture()
def model(tmp_path):
    fs = make_feature_set("agreement", AGENTS)
    art = CalibrationArtifact(
        committee=AGENTS,
        oracle=ORACLE,
        feature_set="agreement",
        calibrator="logistic",
        stages=[
            {
                "agents": AGENTS,
                "feature_names": fs.names,
                "calibrator": LogisticCalibrator([10.0, 0.0, 0.0, 0.0], -7.0).to_dict(),
                "threshold": 0.5,
            }
        ],
        target={"kind": "oracle_rate", "value": 0.3, "cost_model": "flops"},
        cost_model=CostModel({m: ModelCost(params_b=70.0 if m == ORACLE else 7.0) for m in [*AGENTS, ORACLE]}),
        fitted_on={"idx": []},
        fit_summary={"mean_output_tokens": {ORACLE: 40.0}},
    )
    art.save(tmp_path / "calibration.json")
    params = {
        "calibration": "calibration.json",
        "agents": ",".join(AGENTS),
        "oracle": ORACLE,
        "max_tokens_cap": "256",
        "max_input_chars": "100",
        "agent_timeout_s": "5",
        "request_log": "verbose",
    }
    args = {
        "model_config": json.dumps(
            {"name": "pyramid", "parameters": {k: {"string_value": v} for k, v in params.items()}}
        ),
        "model_repository": str(tmp_path),
    }
    pb.engines.clear()
    pb.engines.update({m: engine(m) for m in [*AGENTS, ORACLE]})
    pb.calls.clear()
    return PyramidModel(pb, args)


def request(**inputs) -> pb.Request:
    arrays = {}
    for k, v in inputs.items():
        if isinstance(v, np.ndarray):
            arrays[k] = v
        elif isinstance(v, str):
            arrays[k] = np.array([[v.encode()]], dtype=np.object_)
        elif isinstance(v, bool):
            arrays[k] = np.array([[v]], dtype=np.bool_)
        elif isinstance(v, int):
            arrays[k] = np.array([[v]], dtype=np.int32)
        else:
            arrays[k] = np.array([[v]], dtype=np.float32)
    return pb.Request(arrays)


def run(model: PyramidModel, *requests: pb.Request) -> None:
    asyncio.run(model.execute(list(requests)))


def outputs(response) -> dict:
    d = {}
    for t in response.output_tensors():
        v = t.as_numpy().reshape(-1)[0]
        d[t.name()] = v.decode() if isinstance(v, bytes) else v
    details = json.loads(d.pop("agent_answers"))
    d["costs"] = details.pop("cost")
    d.update(details)
    return d


def test_accepts_unanimous_committee_with_one_final_response(model):
    r = request(text_input=Q_AGREE)
    run(model, r)
    assert [flags for _, flags in r.sender.sent] == [pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL]
    out = outputs(r.sender.sent[0][0])
    assert (out["answer"], out["tier"], bool(out["escalated"]), bool(out["provisional"])) == (
        "4",
        "committee",
        False,
        False,
    )
    assert out["calls"] == AGENTS and ORACLE not in {m for m, _ in pb.calls}
    # 3 agents x 7B x (prompt + 10) / (70B x (prompt + 40)), prompt = len(question)/4 rounded
    p = round(len(Q_AGREE) / 4)
    assert out["cost"] == pytest.approx(3 * 7 * (p + 10) / (70 * (p + 40)), rel=1e-5)
    assert out["costs"]["flops"] == pytest.approx(out["cost"], rel=1e-5)
    assert out["costs"]["usd"] is None  # no prices in this cost model


def test_split_committee_escalates(model):
    r = request(text_input=Q_SPLIT)
    run(model, r)
    out = outputs(r.sender.sent[0][0])
    assert (out["answer"], out["tier"], bool(out["escalated"])) == ("6", "oracle", True)
    assert out["calls"] == [*AGENTS, ORACLE] and out["cost"] > 1
    assert out["text_output"].startswith("The answer is 6")


def test_stream_sends_provisional_then_final(model):
    r = request(text_input=Q_SPLIT, stream=True)
    run(model, r)
    assert [flags for _, flags in r.sender.sent] == [0, pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL]
    first, final = (outputs(resp) for resp, _ in r.sender.sent)
    assert bool(first["provisional"]) and first["tier"] == "committee" and first["answer"] == "6"
    assert first["calls"] == AGENTS
    assert not final["provisional"] and final["tier"] == "oracle"


def test_failing_agents_escalate_and_mark_degraded(model):
    r = request(text_input=Q_ALLFAIL)
    run(model, r)
    out = outputs(r.sender.sent[0][0])
    assert out["answer"] == "8" and out["tier"] == "oracle" and bool(out["degraded"])
    assert out["failed"] == AGENTS


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"text_input": ""}, "text_input"),
        ({"text_input": "x" * 101}, "text_input"),
        ({"text_input": Q_AGREE, "max_tokens": 0}, "max_tokens"),
        ({"text_input": Q_AGREE, "max_tokens": 257}, "max_tokens"),
        ({"text_input": Q_AGREE, "escalation_threshold": 1.5}, "escalation_threshold"),
        ({"text_input": Q_AGREE, "force_tier": "cloud"}, "force_tier"),
        ({"text_input": Q_AGREE, "deadline_ms": -1}, "deadline_ms"),
        ({"text_input": np.array([[b"a", b"b"]], dtype=np.object_)}, "text_input"),
        ({"text_input": np.array([[b"\xff\xfe"]], dtype=np.object_)}, "text_input"),
    ],
)
def test_bad_input_is_one_error_response_naming_the_field(model, inputs, field):
    r = request(**inputs)
    run(model, r)
    assert len(r.sender.sent) == 1
    response, flags = r.sender.sent[0]
    assert flags == pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL and response.has_error()
    assert response.error().message().startswith(f"[INVALID_ARG] invalid input '{field}'")
    assert response.error().code() == pb.TritonError.INVALID_ARG
    assert pb.calls == []  # no model was called


def test_requests_in_one_execute_are_answered_independently(model):
    rs = [request(text_input=q) for q in (Q_AGREE, "", Q_SPLIT)]
    run(model, *rs)
    assert outputs(rs[0].sender.sent[0][0])["answer"] == "4"
    assert rs[1].sender.sent[0][0].has_error()
    assert outputs(rs[2].sender.sent[0][0])["answer"] == "6"


def test_decoupled_engine_stream_is_merged(model):
    model.decoupled_models = {"c"}
    pb.engines["c"] = lambda req: [EngineResponse("The answer ", 2), EngineResponse("is 4.\n#### 4", 5)]
    r = request(text_input=Q_AGREE)
    run(model, r)
    out = outputs(r.sender.sent[0][0])
    assert out["agent_answers"]["c"] == "4" and out["tier"] == "committee"
    assert ("c", True) in pb.calls and ("a", False) in pb.calls


def test_strict_makes_an_oracle_failure_an_error(model):
    pb.engines[ORACLE] = engine("missing")  # raises: no such model in ANSWERS
    ANSWERS["missing"] = {}
    r = request(text_input=Q_SPLIT)
    run(model, r)
    out = outputs(r.sender.sent[0][0])
    assert out["answer"] == "6" and bool(out["degraded"]) and out["failed"] == [ORACLE]
    r = request(text_input=Q_SPLIT, strict=True)
    run(model, r)
    err = r.sender.sent[0][0].error().message()
    assert err.startswith("[NOT_FOUND] strict: the oracle o failed")


# --- the async driver, without Triton -------------------------------------------------------------


def test_route_async_deadline_returns_provisional_committee_answer(model):
    router = model.router

    async def call(name):
        if name == ORACLE:
            await asyncio.sleep(10)
        return AgentOutput(name, "", ANSWERS[name][Q_SPLIT], 10)

    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        routed = await route_async(router, Q_SPLIT, call, deadline=t0 + 0.05, clock=loop.time)
        return routed, loop.time() - t0

    routed, elapsed = asyncio.run(go())
    assert routed.provisional and routed.oracle_abandoned and elapsed < 5
    assert routed.result.answer == "6" and routed.result.tier == "committee" and routed.result.escalated
    assert ORACLE not in routed.outputs


def test_a_streamed_provisional_answer_counts_the_oracle_call_that_follows_it(model):
    """The committee's answer streamed before the oracle's is flagged as having the oracle call to pay
    for (its cost counts it), unless the deadline has already passed and the oracle is not called."""
    router = model.router
    seen: list = []
    called: list[str] = []

    async def call(name):
        called.append(name)
        return AgentOutput(name, "", ANSWERS[name][Q_SPLIT], 10)

    async def on_provisional(routed):
        seen.append(routed)

    async def go(deadline_offset):
        loop = asyncio.get_running_loop()
        deadline = None if deadline_offset is None else loop.time() + deadline_offset
        return await route_async(router, Q_SPLIT, call, deadline=deadline, on_provisional=on_provisional,
                                 clock=loop.time)  # fmt: skip

    final = asyncio.run(go(None))
    assert seen[0].provisional and seen[0].oracle_abandoned and ORACLE in called
    assert not final.provisional and ORACLE in final.outputs
    seen.clear()
    called.clear()
    final = asyncio.run(go(-1.0))  # past: the oracle is not called, so not counted
    assert seen[0].provisional and not seen[0].oracle_abandoned and ORACLE not in called
    assert final.provisional and not final.oracle_abandoned


def test_relative_costs_count_every_call_and_an_abandoned_oracle():
    cm = CostModel({"a": ModelCost(7, 1.0, 2.0), ORACLE: ModelCost(70, 10.0, 20.0)})
    q = "x" * 40  # 10 prompt tokens
    routed = Routed(
        result=None,  # type: ignore[arg-type]  # relative_costs reads only outputs and flags
        outputs={"a": AgentOutput("a", "", "1", 10), "b": AgentOutput("b", None, None, 0, failed=True)},
    )
    got = relative_costs(cm, ORACLE, {ORACLE: 30.0}, q, routed)
    assert got["flops"] == pytest.approx(7 * 20 / (70 * 40))
    assert got["usd"] == pytest.approx((1 * 10 + 2 * 10) / (10 * 10 + 20 * 30))
    routed.oracle_abandoned = True
    assert relative_costs(cm, ORACLE, {ORACLE: 30.0}, q, routed)["flops"] == pytest.approx(1 + 7 * 20 / (70 * 40))
    assert relative_costs(cm, ORACLE, {}, q, routed) == {"flops": None, "usd": None}  # no reference length


def test_engine_request_tensors_round_trip():
    from pyramid_triton.protocol import EngineRequest

    req = EngineRequest("hello", 32, 0.5, 7, True)
    r = pb.Request({t.name(): t.as_numpy() for t in tensors.engine_request_tensors(pb, req)})
    assert tensors.parse_engine_request(pb, r, Limits()) == req
    with pytest.raises(InvalidArgument, match="max_tokens"):
        tensors.parse_engine_request(pb, pb.Request({"text_input": np.array([[b"q"]], dtype=np.object_)}), Limits())


def test_log_probs_are_requested_only_from_logprob_models(model):
    seen = {}

    def recording(name):
        inner = engine(name)

        def run(req):
            seen[name] = req.return_log_probs
            return inner(req)

        return run

    pb.engines.update({m: recording(m) for m in AGENTS})
    model.logprob_models = {"a"}
    pb.requested.clear()
    run(model, request(text_input=Q_AGREE))
    assert seen == {"a": True, "b": False, "c": False}
    # and only those engines are asked for the cum_log_probs output (a tensor more for everyone)
    asked = dict(pb.requested)
    assert "cum_log_probs" in asked["a"] and "cum_log_probs" not in asked["b"]
    assert {"text_output", "output_tokens"} <= set(asked["b"])


def _metric(name: str, **labels) -> pb.Metric:
    fam = pb.MetricFamily.registry[name]
    return next(m for m in fam.metrics if all(m.labels.get(k) == v for k, v in labels.items()))


def test_metrics_and_log_lines_after_known_traffic(model):
    pb.Logger.lines.clear()
    run(model, request(text_input=Q_AGREE), request(text_input=Q_SPLIT), request(text_input=Q_ALLFAIL))
    run(model, request(text_input=""))
    assert _metric("pyramid_requests_total", outcome="ok").value == 0  # batched: nothing sent yet
    model.metrics.flush()
    assert _metric("pyramid_requests_total", outcome="ok").value == 3
    assert _metric("pyramid_requests_total", outcome="error").value == 1
    assert _metric("pyramid_tier_total", tier="committee").value == 1
    assert _metric("pyramid_tier_total", tier="oracle").value == 2
    assert _metric("pyramid_escalations_total").value == 2
    assert _metric("pyramid_degraded_total").value == 1
    assert _metric("pyramid_model_failures_total", target="a").value == 1
    assert _metric("pyramid_model_failures_total", target=ORACLE).value == 0
    assert _metric("pyramid_confidence_count").value == 3
    assert _metric("pyramid_confidence_bucket", le="+Inf").value == 3
    assert _metric("pyramid_request_duration_seconds_count").value == 4
    assert _metric("pyramid_tier_request_duration_seconds_count", tier="oracle").value == 2
    spent = _metric("pyramid_cost_oracle_calls_total", kind="spent").value
    assert _metric("pyramid_cost_oracle_calls_total", kind="baseline").value == 3
    p = [round(len(q) / 4) for q in (Q_AGREE, Q_SPLIT, Q_ALLFAIL)]
    want = 3 * 7 * (p[0] + 10) / (70 * (p[0] + 40)) + (1 + 3 * 7 * (p[1] + 10) / (70 * (p[1] + 40))) + 1
    assert spent == pytest.approx(want, rel=1e-6)
    lines = [json.loads(msg) for level, msg in pb.Logger.lines if level == "verbose"]
    assert [d["outcome"] for d in lines] == ["ok", "ok", "ok", "error"]
    assert lines[1]["tier"] == "oracle" and set(lines[1]["step_ms"]) == {"stage0", "oracle"}
    assert lines[2]["failed"] == AGENTS and "invalid input 'text_input'" in lines[3]["error"]


def test_cancelled_request_gets_final_flag_only_and_the_oracle_is_not_called(model):
    async def slow(req):
        await asyncio.sleep(0.3)
        return engine("c")(req)

    pb.engines["c"] = slow
    r = request(text_input=Q_SPLIT)

    async def go():
        task = asyncio.ensure_future(model.execute([r]))
        await asyncio.sleep(0.1)
        r.cancelled = True
        await task

    asyncio.run(go())
    model.metrics.flush()
    assert r.sender.sent == [(None, pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)]
    assert ORACLE not in {m for m, _ in pb.calls}
    assert _metric("pyramid_requests_total", outcome="cancelled").value >= 1


def test_circuit_breaker_skips_a_crashed_engine_then_probes_it_again(model):
    model.breaker_s = 0.2
    crashed = {"on": True}

    def flaky(req):
        if crashed["on"]:
            raise RuntimeError("stub process is not healthy")
        return engine("c")(req)

    pb.engines["c"] = flaky
    for _ in range(3):
        run(model, request(text_input=Q_AGREE))
    assert [m for m, _ in pb.calls].count("c") == 1  # called once, then skipped while the circuit is open
    r = request(text_input=Q_AGREE)
    run(model, r)
    assert outputs(r.sender.sent[0][0])["failed"] == ["c"]
    crashed["on"] = False
    time.sleep(0.25)
    r = request(text_input=Q_AGREE)
    run(model, r)
    out = outputs(r.sender.sent[0][0])
    assert out["failed"] == [] and not out["degraded"]  # probed, healthy again
    assert [m for m, _ in pb.calls].count("c") == 2


def test_not_found_does_not_open_the_circuit(model):
    model.breaker_s = 60
    for q in ("unknown question", Q_AGREE):
        run(model, request(text_input=q))
    assert [m for m, _ in pb.calls].count("c") == 2
    # nor is it an engine failure on the dashboard: the question was unknown, the engine is fine
    model.metrics.flush()
    assert all(_metric("pyramid_model_failures_total", target=m).value == 0 for m in AGENTS)


def test_gauges_are_set_at_load_before_any_request(model):
    """A scrape right after a start must name the live calibration and the expected figures: an
    alert on ``pyramid_calibration_info`` or ``pyramid_expected_*`` misfired until the first request."""
    assert _metric("pyramid_calibration_info", id=model.calibration["id"]).value == 1
    # the fixture's artifact states no expected rate: NaN (set), not the 0 of a gauge never set
    assert math.isnan(_metric("pyramid_expected_escalation_rate").value)
    assert _metric("pyramid_breaker_open", target="a").value == 0
    assert not model.metrics.pending


def test_metrics_are_flushed_by_the_router_after_a_burst(model):
    async def go():
        await model.execute([request(text_input=Q_AGREE), request(text_input=Q_SPLIT)])
        assert _metric("pyramid_requests_total", outcome="ok").value == 0
        await asyncio.sleep(0.7)  # FLUSH_S after the first pending update

    asyncio.run(go())
    assert _metric("pyramid_requests_total", outcome="ok").value == 2
    assert _metric("pyramid_tier_total", tier="oracle").value == 1
    assert _metric("pyramid_confidence_count").value == 2


def test_only_the_outputs_a_request_asks_for_are_sent(model):
    """perf_analyzer, genai-perf and TensorRT-LLM-style clients ask for text_output alone: one tensor,
    not the ten routing outputs (each is work for the stub); a request that names none gets them all."""
    only = pb.Request(request(text_input=Q_SPLIT).inputs_dict(), outputs=["text_output"])
    run(model, only)
    (resp, _), *_ = only.sender.sent
    assert [t.name() for t in resp.output_tensors()] == ["text_output"]
    every = request(text_input=Q_SPLIT)
    run(model, every)
    (resp, _), *_ = every.sender.sent
    assert {"text_output", "answer", "tier", "agent_answers"} <= {t.name() for t in resp.output_tensors()}


def test_a_batched_histogram_sends_its_classic_series_once_per_flush():
    """The router's histograms are Prometheus' bucket/sum/count series as counters: observations are
    counted locally and a flush sends at most one increment per series, whatever the number observed."""
    from pyramid_triton.metrics import BatchedHistogram, le_label

    made: list = []

    def family(name, description, kind):
        f = pb.MetricFamily(name=name, description=description, kind=kind)
        made.append(f)
        return f

    h = BatchedHistogram(family, pb.MetricFamily.COUNTER, "t_hist", "test", [0.5, 0.1, 1.0], [{"m": "x"}, {"m": "y"}])
    assert [f.name for f in made] == ["t_hist_bucket", "t_hist_sum", "t_hist_count"]
    bucket = {m.labels["le"]: m for m in made[0].metrics if m.labels["m"] == "x"}
    assert list(bucket) == ["0.1", "0.5", "1", "+Inf"]  # sorted bounds, then +Inf
    for v in (0.05, 0.1, 0.3, 0.3, 0.7, 2.0):
        h.observe(v)
    h.observe(0.2, series=1)
    assert h.pending and all(m.value == 0 for m in made[0].metrics)  # nothing sent before the flush
    h.flush()
    assert {le: m.value for le, m in bucket.items()} == {"0.1": 2, "0.5": 4, "1": 5, "+Inf": 6}  # le is inclusive
    (sum_x, sum_y), (count_x, count_y) = made[1].metrics, made[2].metrics
    assert sum_x.value == pytest.approx(3.45) and count_x.value == 6
    assert sum_y.value == pytest.approx(0.2) and count_y.value == 1
    assert not h.pending
    h.observe(0.4)
    h.flush()
    assert bucket["0.1"].value == 2 and bucket["0.5"].value == 5 and count_x.value == 7 and count_y.value == 1
    with pytest.raises(ValueError, match=">= 0"):
        h.observe(-1.0)
    assert le_label(0.0025) == "0.0025" and le_label(60.0) == "60" and le_label(float("inf")) == "+Inf"


def test_within_bounds_a_call_and_tells_its_timeout_from_the_requests_cancellation():
    from pyramid_triton.routing import CallTimeout, ClientCancelled, within

    async def answer(after_s: float, value: str = "ok") -> str:
        await asyncio.sleep(after_s)
        return value

    async def go():
        assert await within(answer(0.0), 5.0) == "ok"
        assert await within(answer(0.0, "unbounded"), 0) == "unbounded"
        with pytest.raises(CallTimeout, match="within 0.05 s"):
            await within(answer(30.0), 0.05)
        # the task that timed out is not left cancelled: it goes on awaiting normally
        assert await asyncio.sleep(0.01, "still running") == "still running"

        # the request's own cancellation is not a timeout: it goes on up as CancelledError
        inner = asyncio.ensure_future(within(answer(30.0), 5.0))
        await asyncio.sleep(0.01)
        inner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await inner

        # a client's cancellation, polled: the awaited call is cancelled, ClientCancelled says why
        client = {"cancelled": False}
        polled = asyncio.ensure_future(within(answer(30.0), 5.0, cancelled=lambda: client["cancelled"], poll_s=0.01))
        await asyncio.sleep(0.05)
        assert not polled.done()
        client["cancelled"] = True
        with pytest.raises(ClientCancelled):
            await polled

    asyncio.run(go())
