"""Metrics, request logs, and an engine killed under load, on real tritonservers.

The kill test runs its own supervised deployment (``TritonServer(supervise=True)``): explicit model
control and the watchdog that reloads a model whose stub process died. The engine is killed by the
PID of the server's own child process, never by name.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import pytest
import yaml

from .conftest import COMMITTEE, ORACLE, SPEC, scrape, serve

VICTIM = COMMITTEE[0]  # the agent whose engine process is killed (asked in the first stage)


def _series(metrics: dict[str, float], name: str, **labels) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    hits = [v for k, v in metrics.items() if k.split("{")[0] == name and all(w in k for w in want)]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def _settled(metrics_url: str, limit_s: float = 20.0) -> dict[str, float]:
    """The router's metrics once two scrapes a flush interval apart agree: every update made before has been
    flushed (the router batches them, FLUSH_S = 0.5 s), so no earlier request is counted later."""
    last = scrape(metrics_url)
    deadline = time.monotonic() + limit_s
    while True:
        time.sleep(1.0)
        now = scrape(metrics_url)
        if now == last or time.monotonic() > deadline:
            return now
        last = now


def test_metrics_count_known_traffic(deployment, router, traces, offline_route):
    from pyramid_client import PyramidClient, PyramidError

    idxs = [i for i in range(900, 960) if i not in deployment.oracle_missing]
    before = _settled(deployment.metrics_url)  # earlier tests' traffic may not be flushed yet
    wants = [offline_route(router, traces, i) for i in idxs]
    with PyramidClient(deployment.grpc_url) as c:
        for i in idxs:
            c.ask(traces.questions[i].question)
        with pytest.raises(PyramidError):
            c.ask(traces.questions[0].question, max_tokens=0)
    after = _settled(deployment.metrics_url)  # the router flushes its metrics within FLUSH_S (0.5 s) of an update

    def delta(name, **labels):
        return _series(after, name, model="pyramid", **labels) - _series(before, name, model="pyramid", **labels)

    escalated = sum(w.escalated for w in wants)
    assert 0 < escalated < len(idxs)
    assert delta("pyramid_requests_total", outcome="ok") == len(idxs)
    assert delta("pyramid_requests_total", outcome="error") == 1
    assert delta("pyramid_escalations_total") == escalated
    assert delta("pyramid_tier_total", tier="oracle") == sum(w.tier == "oracle" for w in wants)
    assert delta("pyramid_tier_total", tier="committee") == sum(w.tier == "committee" for w in wants)
    assert delta("pyramid_confidence_count") == len(idxs)
    assert delta("pyramid_request_duration_seconds_count") == len(idxs) + 1
    spent = delta("pyramid_cost_oracle_calls_total", kind="spent")
    assert delta("pyramid_cost_oracle_calls_total", kind="baseline") == len(idxs)
    assert 0 < spent < len(idxs)  # the router saved against always-oracle on these questions
    # Triton's own metrics are exported next to ours
    assert any(k.startswith("nv_inference_request_success") for k in scrape(deployment.metrics_url, "nv_"))


@pytest.fixture(scope="module")
def supervised(deployment, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("supervised")
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    spec.pop("calibration")
    spec["engine"]["traces"] = str(deployment.traces)
    spec["router"].update(agent_timeout_s=3.0, oracle_timeout_s=5.0, breaker_s=0.5, request_log="info")
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    with serve(spec_path, deployment.calibration, tmp / "repo", tmp / "tritonserver.log", supervise=True) as server:
        yield server


def test_engine_killed_under_load(supervised, router, traces, offline_route):
    """16 concurrent clients; one agent's engine process is SIGKILLed mid-load. Every request gets
    its own answer or a clear error, none hangs; answers given without the victim equal the offline
    route with the victim failed; the supervisor reloads the engine and answers are whole again."""
    from pyramid_client import AsyncPyramidClient, PyramidError
    from pyramid_moa.features import AgentOutput
    from pyramid_ops.supervisor import stub_processes

    idxs = [i for i in range(0, 1319, 3) if all(traces.samples(m).get(i) for m in [*COMMITTEE, ORACLE])][:320]

    def offline(idx, failed):
        def call(agent):
            if agent in failed:
                return AgentOutput(agent, None, None, 0, failed=True)
            s = traces.samples(agent)[idx][0]
            return AgentOutput(agent, s.text, s.answer, s.output_tokens)

        return router.route(traces.questions[idx].question, call)

    victim_pid = next(pid for model, pid in stub_processes(supervised.proc.pid).values() if model == VICTIM)
    results: dict[int, object] = {}

    async def load():
        async with AsyncPyramidClient(supervised.grpc_url, timeout_s=20, retries=0) as c:

            async def worker(k):
                for idx in idxs[k::16]:
                    try:
                        results[idx] = await c.ask(traces.questions[idx].question, request_id=f"q{idx}")
                    except PyramidError as exc:
                        results[idx] = exc

            async def killer():
                await asyncio.sleep(0.3)
                os.kill(victim_pid, signal.SIGKILL)

            await asyncio.gather(*(worker(k) for k in range(16)), killer())

    t0 = time.monotonic()
    asyncio.run(load())
    elapsed = time.monotonic() - t0
    assert len(results) == len(idxs)
    errors = {i: r for i, r in results.items() if isinstance(r, Exception)}
    assert not [e for e in errors.values() if e.code == "DEADLINE_EXCEEDED"], "a request hung"
    assert not errors, {i: str(e) for i, e in errors.items()}
    degraded = 0
    for idx, r in results.items():
        assert r.request_id == f"q{idx}"
        failed = set(r.failed_agents)
        assert failed <= {VICTIM}, (idx, r.failed_agents)
        want = offline(idx, failed)
        assert (r.answer, r.tier, r.calls) == (want.answer, want.tier, want.calls), idx
        degraded += r.degraded
    assert degraded > 0, "the kill landed after the load: nothing was degraded"
    assert elapsed < 120
    print(f"\nkill under load: {len(idxs)} requests in {elapsed:.1f} s, {degraded} degraded, 0 errors, 0 hung")

    # The supervisor reloaded the engine: a new process, and whole answers again.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not supervised.supervisor.restarts:
        time.sleep(0.2)
    assert [m for _, m in supervised.supervisor.restarts] == [VICTIM]
    print(f"engine reloaded {supervised.supervisor.restarts[0][0] - t0 - 0.3:.1f} s after the kill")
    new_pid = next(pid for model, pid in stub_processes(supervised.proc.pid).values() if model == VICTIM)
    assert new_pid != victim_pid

    from pyramid_client import PyramidClient

    with PyramidClient(supervised.grpc_url, timeout_s=20) as c:
        deadline = time.monotonic() + 10
        while True:
            r = c.ask(traces.questions[idxs[0]].question)
            if not r.degraded or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert not r.degraded and r.failed_agents == []

    # One structured log line per routed request, with its request id, tier and step latencies.
    lines = [
        json.loads(m.group(1)) for m in re.finditer(r'(\{"event":"pyramid\.request".*\})"?\s*$', _log(supervised), re.M)
    ]
    by_id = {d["request_id"]: d for d in lines}
    for idx in idxs[:50]:
        d = by_id[f"q{idx}"]
        assert d["tier"] == results[idx].tier and d["outcome"] == "ok" and "stage0" in d["step_ms"]


def _log(server) -> str:
    text = server.log_path.read_text(encoding="utf-8", errors="replace")
    # Triton quotes log messages: "{\"event\":...}" -> unescape
    return text.replace('\\"', '"')
