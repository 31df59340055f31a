"""Anytime behaviour, streaming, strict mode, per-call deadlines and relative cost, on a real tritonserver.

Two deployments: the session's replay deployment (``deployment``), and here a *slow and broken*
one made from the same traces and calibration by the deployment spec alone: one agent's engine
is slow (seconds_per_token) so that its calls overrun the router's per-call timeout, one agent's
engine has no records at all (every call fails, NOT_FOUND), and the oracle is slow. Nothing is
faked: the router sees real timeouts and real error responses from real model processes.
"""

from __future__ import annotations

import json
import math
import queue
import shutil
import time

import numpy as np
import pytest
import yaml

from .conftest import COMMITTEE, ORACLE, SPEC, serve

FAST, SLOW, BROKEN = COMMITTEE  # roles of the three agents in the slow-and-broken deployment
AGENT_TIMEOUT_S = 1.0
SLOW_AGENT_S_PER_TOKEN = 0.05  # >= 42 tokens per record: every call takes >= 2.1 s > AGENT_TIMEOUT_S
SLOW_ORACLE_S_PER_TOKEN = 0.1  # >= 21 tokens per record: every oracle call takes >= 2.1 s


def stream(url: str, question: str, timeout_s: float = 60.0, **inputs) -> list[dict]:
    """Send one request over a gRPC stream; every response until Triton's final flag, as dicts.

    A raw tritonclient stream, so the server's own responses are seen one by one."""
    import tritonclient.grpc as grpcclient

    def tensor(name, value):
        if isinstance(value, str):
            arr, dt = np.array([[value.encode()]], dtype=np.object_), "BYTES"
        elif isinstance(value, bool):
            arr, dt = np.array([[value]], dtype=np.bool_), "BOOL"
        elif isinstance(value, int):
            arr, dt = np.array([[value]], dtype=np.int32), "INT32"
        else:
            arr, dt = np.array([[value]], dtype=np.float32), "FP32"
        t = grpcclient.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        return t

    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    out = []
    try:
        client.start_stream(callback=lambda result, error: got.put((result, error)))
        client.async_stream_infer(
            "pyramid",
            [tensor("text_input", question), *(tensor(k, v) for k, v in inputs.items())],
            enable_empty_final_response=True,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            result, error = got.get(timeout=max(0.1, deadline - time.monotonic()))
            if error is not None:
                out.append({"error": str(error)})
                break
            params = result.get_response().parameters
            final = "triton_final_response" in params and params["triton_final_response"].bool_param
            if result.as_numpy("tier") is not None:
                out.append(_decode(result))
            if final:
                break
    finally:
        client.stop_stream(cancel_requests=False)
        client.close()
    return out


def _decode(result) -> dict:
    def one(name):
        v = result.as_numpy(name).reshape(-1)[0]
        return v.decode() if isinstance(v, bytes) else v

    d = {n: one(n) for n in ("answer", "tier", "escalated", "confidence", "provisional", "degraded", "cost")}
    details = json.loads(one("agent_answers"))
    d["costs"] = details.pop("cost")
    d.update(details)
    return d


def ask(url: str, question: str, **inputs) -> dict:
    responses = stream(url, question, **inputs)
    assert len(responses) == 1, responses
    return responses[0]


def escalating(router, traces, offline_route, n: int, start: int = 0, fail=()):
    """The first ``n`` question indices from ``start`` whose offline route escalates (with ``fail``ed agents)."""
    from pyramid_moa.features import AgentOutput

    found = []
    for idx in range(start, len(traces.questions)):
        if fail:
            q = traces.questions[idx].question

            def call(agent, idx=idx):
                rows = traces.samples(agent).get(idx)
                if agent in fail or not rows:
                    return AgentOutput(agent, None, None, 0, failed=True)
                s = rows[0]
                return AgentOutput(agent, s.text, s.answer, s.output_tokens)

            want = router.route(q, call)
        else:
            want = offline_route(router, traces, idx)
        if want.escalated and traces.samples(ORACLE).get(idx):
            found.append((idx, want))
            if len(found) == n:
                return found
    raise AssertionError("not enough escalating questions")


# --- the session deployment: streaming, strict, deadline that is met, relative cost -----------------


def test_stream_sends_provisional_committee_answer_then_the_oracles(deployment, router, traces, offline_route):
    for idx, want in escalating(router, traces, offline_route, 3, start=300):
        q = traces.questions[idx].question
        got = stream(deployment.grpc_url, q, stream=True)
        assert [r["provisional"] for r in got] == [True, False], f"idx {idx}"
        first, final = got
        assert first["tier"] == "committee" and first["escalated"], f"idx {idx}"
        assert first["answer"] == (want.committee_answer or ""), f"idx {idx}"
        assert ORACLE not in first["calls"]
        assert (final["tier"], final["answer"]) == (want.tier, want.answer or ""), f"idx {idx}"
        assert final["calls"] == want.calls
        # the non-streamed answer is the streamed final one
        plain = ask(deployment.grpc_url, q)
        assert (plain["answer"], plain["tier"], plain["provisional"]) == (final["answer"], final["tier"], False)


def test_stream_without_escalation_is_one_final_response(deployment, router, traces, offline_route):
    idx = next(i for i in range(50) if not offline_route(router, traces, i).escalated)
    got = stream(deployment.grpc_url, traces.questions[idx].question, stream=True)
    assert len(got) == 1 and got[0]["provisional"] is np.False_ and got[0]["tier"] == "committee"


def test_a_deadline_the_oracle_meets_changes_nothing(deployment, router, traces, offline_route):
    for idx, want in escalating(router, traces, offline_route, 2, start=400):
        got = ask(deployment.grpc_url, traces.questions[idx].question, deadline_ms=60_000)
        assert not got["provisional"] and (got["tier"], got["answer"]) == (want.tier, want.answer or "")


def test_strict_turns_an_oracle_failure_into_an_error(deployment, traces):
    for idx in deployment.oracle_missing:
        q = traces.questions[idx].question
        lenient = ask(deployment.grpc_url, q)
        assert lenient["degraded"] and lenient["failed"] == [ORACLE]
        strict = ask(deployment.grpc_url, q, strict=True)
        assert "error" in strict, strict
        assert strict["error"].startswith("[NOT_FOUND] strict: the oracle") and ORACLE in strict["error"]


def test_cost_is_relative_to_one_oracle_call(deployment, router, traces, offline_route):
    """USD cost of the calls made / USD cost of one oracle call on the same question: the oracle's
    own call when it was made, else a call of its mean output length on the calibration set."""
    from pyramid_moa.artifact import load_artifact
    from pyramid_moa.cost import estimate_tokens

    art = load_artifact(deployment.calibration)
    cm, mean_tokens = art.cost_model, art.fit_summary["mean_output_tokens"][ORACLE]
    seen = set()
    for idx in range(600, 700):
        want = offline_route(router, traces, idx)
        rows = {m: traces.samples(m).get(idx) for m in [*COMMITTEE, ORACLE]}
        if not all(rows.values()) or want.escalated in seen:
            continue
        seen.add(want.escalated)
        q = traces.questions[idx].question
        got = ask(deployment.grpc_url, q)
        p = estimate_tokens(q)

        def usd(m, p=p, rows=rows):
            return cm.call_cost("usd", m, p, rows[m][0].output_tokens or 0)

        reference = usd(ORACLE) if want.escalated else cm.call_cost("usd", ORACLE, p, mean_tokens)
        expected = sum(usd(m) for m in want.calls) / reference
        assert math.isclose(got["cost"], expected, rel_tol=1e-4), f"idx {idx}"
        assert math.isclose(got["costs"]["usd"], expected, rel_tol=1e-4)
        assert got["costs"]["flops"] is None  # closed models: no parameter counts
        assert (got["cost"] > 1) == want.escalated
        if len(seen) == 2:
            break
    assert seen == {True, False}


def test_bad_deadline_and_strict_inputs_are_invalid_arg(deployment, traces):
    q = traces.questions[0].question
    got = stream(deployment.grpc_url, q, deadline_ms=-5)
    assert got[0]["error"].startswith("[INVALID_ARG] invalid input 'deadline_ms'")
    assert ask(deployment.grpc_url, q)["tier"] in ("committee", "oracle")  # still healthy


# --- the slow-and-broken deployment ------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow(deployment, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slow")
    broken = tmp / "broken-traces"
    (broken / "traces").mkdir(parents=True)
    for f in ("questions.jsonl", "sources.json"):
        shutil.copy(deployment.traces / f, broken)
    (broken / "traces" / f"{BROKEN}.jsonl").write_text("", encoding="utf-8")  # every call: NOT_FOUND
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    spec.pop("calibration")
    spec["engine"]["traces"] = str(deployment.traces)
    spec["agents"] = [
        {"name": FAST},
        {"name": SLOW, "seconds_per_token": SLOW_AGENT_S_PER_TOKEN},
        {"name": BROKEN, "traces": str(broken)},
    ]
    spec["oracle"] = {"name": ORACLE, "seconds_per_token": SLOW_ORACLE_S_PER_TOKEN}
    spec["router"]["agent_timeout_s"] = AGENT_TIMEOUT_S
    spec["router"]["breaker_s"] = 0  # every request really waits for the slow agent's timeout
    spec_path = tmp / "slow.yaml"
    spec_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    with serve(spec_path, deployment.calibration, tmp / "repo", tmp / "tritonserver.log") as server:
        yield server


def test_slow_and_failing_agents_give_degraded_answers_equal_to_offline(slow, router, traces, offline_route):
    """The router goes on with the one healthy agent; the decision equals the offline route in
    which the two other agents failed."""
    found = escalating(router, traces, offline_route, 1, start=20, fail=(SLOW, BROKEN))
    idx, want = found[0]
    q = traces.questions[idx].question
    # Deadline after the agents' timeout: the oracle is called, and abandoned at the deadline.
    t0 = time.monotonic()
    got = ask(slow.grpc_url, q, deadline_ms=int((AGENT_TIMEOUT_S + 0.5) * 1000))
    elapsed = time.monotonic() - t0
    assert got["degraded"] and got["failed"] == sorted([SLOW, BROKEN])
    assert got["provisional"], "the slow oracle cannot answer within the deadline"
    assert got["answer"] == (want.committee_answer or "")
    assert got["tier"] == "committee" and got["escalated"] and ORACLE not in got["calls"]
    # Back at the deadline, not when the oracle (>= 2.1 s per call) answered: `provisional` above
    # proves it; the wall clock only catches a hang (no bound on this machine's speed).
    assert elapsed < 30, elapsed
    assert got["cost"] >= 1.0, "the abandoned oracle call is paid for: one oracle call's worth"
    # Deadline already past when the route escalates: the oracle is not called at all.
    got = ask(slow.grpc_url, q, deadline_ms=100)
    assert got["provisional"] and got["answer"] == (want.committee_answer or "")
    assert got["cost"] < 1.0


def test_without_a_deadline_the_slow_oracle_is_awaited(slow, router, traces, offline_route):
    idx, want = escalating(router, traces, offline_route, 1, start=700, fail=(SLOW, BROKEN))[0]
    got = ask(slow.grpc_url, traces.questions[idx].question, timeout_s=120)
    assert not got["provisional"] and got["tier"] == "oracle"
    assert got["answer"] == (want.answer or "") and got["degraded"]


def test_client_cancellation_abandons_the_route(slow, router, traces, offline_route):
    """Cancelled while the committee is still being asked: no response is sent, the oracle is never
    called, the server counts it and goes on serving."""
    import tritonclient.grpc as grpcclient

    from .conftest import scrape

    idx, want = escalating(router, traces, offline_route, 1, start=900, fail=(SLOW, BROKEN))[0]
    metrics_url = f"127.0.0.1:{slow.metrics_port}"

    def count(name, **labels):
        m = scrape(metrics_url, name)
        return sum(v for k, v in m.items() if all(f'{a}="{b}"' in k for a, b in labels.items()))

    cancelled0 = count("pyramid_requests_total", outcome="cancelled")
    oracle0 = count("nv_inference_request_success", model=ORACLE)
    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(slow.grpc_url)
    text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[traces.questions[idx].question.encode()]], dtype=np.object_))
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    client.async_stream_infer("pyramid", [text])
    time.sleep(AGENT_TIMEOUT_S / 2)  # the slow agent has not timed out yet: no escalation so far
    client.stop_stream(cancel_requests=True)
    client.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and count("pyramid_requests_total", outcome="cancelled") == cancelled0:
        time.sleep(0.1)
    assert count("pyramid_requests_total", outcome="cancelled") == cancelled0 + 1
    time.sleep(AGENT_TIMEOUT_S + 0.5)  # past the point where the route would have escalated
    assert count("nv_inference_request_success", model=ORACLE) == oracle0
    assert all(r is None or r.as_numpy("tier") is None for r, _ in list(got.queue))
    assert ask(slow.grpc_url, traces.questions[idx].question, deadline_ms=1500)["answer"] == (
        want.committee_answer or ""
    )
