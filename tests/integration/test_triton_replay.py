"""Pyramid MoA served by a real tritonserver (replay profile): decisions equal the offline router's."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from .conftest import AGENT_MISSING, FAULTY_AGENT, ORACLE

# 120 questions spread over the set, plus every fault-injected one.
SPREAD = list(range(0, 1319, 11))[:120]


@pytest.fixture(scope="module")
def client(deployment):
    from pyramid_client import PyramidClient

    with PyramidClient(deployment.grpc_url, timeout_s=60) as c:
        yield c


def assert_same_decision(got, want, where: str) -> None:
    assert (got.tier, got.escalated, got.answer) == (want.tier, want.escalated, want.answer), where
    assert got.calls == want.calls, where
    assert math.isclose(got.confidence, want.confidence, abs_tol=1e-6), where
    assert math.isclose(got.agreement, want.agreement, abs_tol=1e-6), where


def expected_degraded(idx: int, want, deployment) -> bool:
    return (idx in AGENT_MISSING and FAULTY_AGENT in want.calls) or (
        idx in deployment.oracle_missing and ORACLE in want.calls
    )


def test_routes_match_offline_router(deployment, client, router, traces, offline_route):
    idxs = sorted(set(SPREAD) | set(AGENT_MISSING) | set(deployment.oracle_missing))
    assert len(idxs) >= 100
    tiers = []
    for idx in idxs:
        got = client.ask(traces.questions[idx].question)
        want = offline_route(router, traces, idx)
        assert_same_decision(got, want, f"idx {idx}")
        assert got.degraded == expected_degraded(idx, want, deployment), f"idx {idx}"
        assert got.agent_answers.keys() == {a for a in want.calls if a != ORACLE}
        assert got.text, f"idx {idx}: empty text_output"
        assert got.cost is not None and got.cost > 0
        tiers.append(got.tier)
    # the sample exercises both outcomes
    assert 0 < tiers.count("oracle") < len(tiers)


def test_faults_are_degraded_not_fatal(deployment, client, traces):
    for idx in AGENT_MISSING:
        r = client.ask(traces.questions[idx].question)
        assert r.degraded and r.failed_agents == [FAULTY_AGENT] and r.answer is not None
        assert r.agent_answers[FAULTY_AGENT] is None
    for idx in deployment.oracle_missing:
        r = client.ask(traces.questions[idx].question)
        # the oracle failed: the committee's answer comes back, marked degraded
        assert r.tier == "oracle" and r.escalated and r.degraded and r.failed_agents == [ORACLE]


@pytest.mark.parametrize(
    "threshold,force_tier", [(0.0, None), (1.0, None), (0.5, None), (None, "committee"), (None, "oracle")]
)
def test_threshold_and_force_tier_match_offline(client, router, traces, offline_route, threshold, force_tier):
    for idx in (0, 5, 33, 101, 707):
        got = client.ask(traces.questions[idx].question, escalation_threshold=threshold, force_tier=force_tier)
        want = offline_route(router, traces, idx, threshold, force_tier)
        assert_same_decision(got, want, f"idx {idx} threshold={threshold} force_tier={force_tier}")
    if threshold == 1.0:
        assert got.tier == "oracle"


def test_32_concurrent_requests(deployment, router, traces, offline_route):
    from pyramid_client import AsyncPyramidClient

    idxs = list(range(300, 1300, 31))[:32]

    async def run():
        async with AsyncPyramidClient(deployment.grpc_url, timeout_s=120) as c:
            return await asyncio.gather(*(c.ask(traces.questions[i].question, request_id=f"req-{i}") for i in idxs))

    results = asyncio.run(run())
    assert len(results) == 32
    for idx, got in zip(idxs, results):
        assert got.request_id == f"req-{idx}"
        assert_same_decision(got, offline_route(router, traces, idx), f"idx {idx}")


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"question": ""}, "text_input"),
        ({"question": "   "}, "text_input"),
        ({"question": "x" * 20001}, "text_input"),
        ({"escalation_threshold": 1.5}, "escalation_threshold"),
        ({"escalation_threshold": -0.1}, "escalation_threshold"),
        ({"escalation_threshold": float("nan")}, "escalation_threshold"),
        ({"force_tier": "gpu"}, "force_tier"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"max_tokens": 10**6}, "max_tokens"),
    ],
)
def test_bad_input_names_the_field_and_server_stays_healthy(client, traces, kwargs, field):
    from pyramid_client import PyramidError

    question = kwargs.pop("question", traces.questions[0].question)
    with pytest.raises(PyramidError) as err:
        client.ask(question, timeout_s=20, **kwargs)
    assert err.value.code == "INVALID_ARG", err.value
    assert field in err.value.message
    good = client.ask(traces.questions[1].question)
    assert good.answer is not None


def test_wrong_dtype_is_rejected_by_name(deployment, client, traces):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(deployment.grpc_url)
    text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[traces.questions[0].question.encode()]], dtype=np.object_))
    mt = grpcclient.InferInput("max_tokens", [1, 1], "FP32")
    mt.set_data_from_numpy(np.array([[16.0]], dtype=np.float32))
    with pytest.raises(grpcclient.InferenceServerException) as err:
        c.infer(ORACLE, [text, mt])
    assert "max_tokens" in err.value.message()
    c.close()
    assert client.ask(traces.questions[2].question).answer is not None


def test_unknown_question_is_not_found(deployment, client, traces):
    import tritonclient.grpc as grpcclient

    from pyramid_client import PyramidError

    with pytest.raises(PyramidError) as err:
        client.ask("What is the airspeed velocity of an unladen swallow?", timeout_s=20)
    assert err.value.code == "NOT_FOUND" and "not found" in err.value.message

    c = grpcclient.InferenceServerClient(deployment.grpc_url)
    text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"no such question"]], dtype=np.object_))
    mt = grpcclient.InferInput("max_tokens", [1, 1], "INT32")
    mt.set_data_from_numpy(np.array([[16]], dtype=np.int32))
    with pytest.raises(grpcclient.InferenceServerException) as err2:
        c.infer(ORACLE, [text, mt])
    assert "NOT_FOUND" in str(err2.value.status()) and "not found in traces" in err2.value.message()
    c.close()
    assert client.ask(traces.questions[3].question).answer is not None


def test_replay_engine_returns_the_recorded_output(deployment, traces):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(deployment.grpc_url)
    for idx in (0, 1, 500):
        text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[traces.questions[idx].question.encode()]], dtype=np.object_))
        mt = grpcclient.InferInput("max_tokens", [1, 1], "INT32")
        mt.set_data_from_numpy(np.array([[512]], dtype=np.int32))
        r = c.infer(ORACLE, [text, mt])
        s = traces.samples(ORACLE)[idx][0]
        assert r.as_numpy("text_output")[0, 0].decode() == s.text
        assert int(r.as_numpy("output_tokens")[0, 0]) == s.output_tokens
        assert r.as_numpy("answer")[0, 0].decode() == (s.answer or "")
    c.close()


def test_server_and_models_ready_over_http(deployment):
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(deployment.http_url)
    assert c.is_server_ready()
    for m in ["pyramid", ORACLE, FAULTY_AGENT]:
        assert c.is_model_ready(m)
    c.close()


def test_a_client_asking_for_text_output_alone_gets_one_tensor(deployment, router, traces, offline_route):
    """As perf_analyzer with -o / TensorRT-LLM-style clients ask: only the outputs named are sent."""
    import queue

    import tritonclient.grpc as grpcclient

    idx = SPREAD[3]
    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(deployment.grpc_url)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        t = grpcclient.InferInput("text_input", [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[traces.questions[idx].question.encode()]], dtype=np.object_))
        client.async_stream_infer("pyramid", [t], outputs=[grpcclient.InferRequestedOutput("text_output")])
        result, error = got.get(timeout=60)
    finally:
        client.stop_stream()
        client.close()
    assert error is None, error
    assert [o.name for o in result.get_response().outputs] == ["text_output"]
    want = offline_route(router, traces, idx)
    assert want.answer in result.as_numpy("text_output").reshape(-1)[0].decode()
