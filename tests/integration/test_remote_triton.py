"""Remote tiers on real servers: the router and the agents on one tritonserver, the oracle on a
second one (both on localhost, no namespaces), split from the session deployment's spec with
``host_spec``. The router calls the oracle over gRPC from inside its Python backend
(``tritonclient.grpc.aio`` in the stub's event loop). Answers must equal the single-host
deployment's; a stopped oracle server gives degraded committee answers fast, and a restarted one is
used again once the circuit breaker probes it. tests/integration/test_multihost.py does the same
across network namespaces, with the link cut instead of the server stopped."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from .conftest import COMMITTEE, ORACLE, serve, yaml_spec
from .test_triton_anytime import ask

BREAKER_S = 1.0
N_QUESTIONS = 30


def split_specs(deployment, tmp: Path, oracle_url: str, router: dict | None = None) -> tuple[Path, Path]:
    """(router-host spec, oracle-host spec) of the session deployment's spec, the oracle at ``oracle_url``."""
    from pyramid_deploy.render import host_spec

    whole = tmp / "whole.yaml"
    d = yaml.safe_load(yaml_spec(Path(__file__).resolve().parents[2] / "deploy" / "replay.yaml", deployment.traces))
    d["router"].update(router or {})
    whole.write_text(yaml.safe_dump(d), encoding="utf-8")
    router_spec, oracle_spec = tmp / "router-host.yaml", tmp / "oracle-host.yaml"
    router_spec.write_text(yaml.safe_dump(host_spec(whole, set(COMMITTEE), {ORACLE: oracle_url})), encoding="utf-8")
    agents_unused = {a: "unused:1" for a in COMMITTEE}  # the oracle host calls no one
    oracle_spec.write_text(yaml.safe_dump(host_spec(whole, {ORACLE}, agents_unused)), encoding="utf-8")
    return router_spec, oracle_spec


def start_engines(spec: Path, repo: Path, log: Path, **server_kw):
    """A tritonserver with the engines of ``spec`` only (no router)."""
    from pyramid_deploy.render import render
    from pyramid_ops.server import ServerError, TritonServer

    render(spec, repo, engines_only=True)
    server = TritonServer(repo, log_path=log, **server_kw)
    try:
        server.start(timeout_s=120)
    except ServerError as exc:
        pytest.fail(str(exc))
    return server


@pytest.fixture(scope="module")
def split(deployment, tmp_path_factory):
    from pyramid_ops.server import free_ports

    tmp = tmp_path_factory.mktemp("remote")
    oracle_ports = free_ports(3)
    router_spec, oracle_spec = split_specs(
        # dns:///: the Kubernetes form (round-robin over what the name resolves to), exercised for real here
        deployment,
        tmp,
        f"dns:///localhost:{oracle_ports[1]}",
        {"breaker_s": BREAKER_S, "oracle_timeout_s": 5},
    )
    state = {}

    def start_oracle():
        state["oracle"] = start_engines(
            oracle_spec,
            tmp / "oracle-repo",
            tmp / "oracle.log",
            http_port=oracle_ports[0],
            grpc_port=oracle_ports[1],
            metrics_port=oracle_ports[2],
        )

    start_oracle()
    try:
        with serve(router_spec, deployment.calibration, tmp / "router-repo", tmp / "router.log") as router:
            state["router"], state["start_oracle"] = router, start_oracle
            yield state
    finally:
        if state.get("oracle") is not None:
            state["oracle"].stop()


def _key(r: dict) -> tuple:
    return (r["answer"], r["tier"], bool(r["escalated"]), bool(r["degraded"]), r["calls"], r["failed"])


def test_the_router_has_no_local_oracle(split):
    import tritonclient.http as httpclient

    from pyramid_ops.access import http_headers

    c = httpclient.InferenceServerClient(split["router"].http_url)
    try:  # the repository index is model control: it needs the server's admin key
        names = {m["name"] for m in c.get_model_repository_index(headers=http_headers(split["router"].admin_key))}
    finally:
        c.close()
    assert ORACLE not in names and set(COMMITTEE) <= names


def test_routed_answers_equal_the_single_host_answers(split, deployment):
    from pyramid_moa.traces import TraceSet

    traces = TraceSet.open(deployment.traces)
    idxs = list(range(N_QUESTIONS)) + list(deployment.oracle_missing)
    escalated = 0
    for idx in idxs:
        q = traces.questions[idx].question
        local, remote = ask(deployment.grpc_url, q), ask(split["router"].grpc_url, q)
        assert _key(remote) == _key(local), f"idx {idx}"
        assert remote["confidence"] == pytest.approx(local["confidence"], abs=1e-6)
        escalated += bool(remote["escalated"])
    assert escalated >= 3, "the comparison must cover escalations (remote oracle calls)"
    for idx in deployment.oracle_missing:  # NOT_FOUND over gRPC: degraded, as with a local oracle
        r = ask(split["router"].grpc_url, traces.questions[idx].question)
        assert r["degraded"] and r["failed"] == [ORACLE]


def test_a_stopped_oracle_server_degrades_then_recovers(split, deployment):
    """Connection refused: gRPC UNAVAILABLE, retried twice, then the committee's answer, degraded;
    the breaker skips the oracle; a restarted server answers again after the breaker's probe."""
    from pyramid_moa.traces import TraceSet

    from .conftest import scrape

    traces = TraceSet.open(deployment.traces)
    router = split["router"]
    esc = [i for i in range(N_QUESTIONS, 200) if ask(deployment.grpc_url, traces.questions[i].question)["escalated"]]
    esc = [i for i in esc if i not in deployment.oracle_missing][:4]
    metrics = f"127.0.0.1:{router.metrics_port}"

    def failures():
        return sum(
            v for k, v in scrape(metrics).items() if k.startswith("pyramid_model_failures_total") and ORACLE in k
        )

    before = failures()
    split["oracle"].stop()
    split["oracle"] = None
    for idx in esc[:2]:
        t0 = time.monotonic()
        r = ask(router.grpc_url, traces.questions[idx].question, deadline_ms=3000)
        assert time.monotonic() - t0 < 2.0, "a refused connection fails fast"
        assert r["degraded"] and r["failed"] == [ORACLE] and not r["provisional"]
    time.sleep(1.0)  # the router flushes its metrics within 0.5 s of an update
    assert failures() >= before + 2
    split["start_oracle"]()
    time.sleep(BREAKER_S + 0.2)
    t0 = time.monotonic()
    while True:
        r = ask(router.grpc_url, traces.questions[esc[2]].question)
        if not r["degraded"]:
            break
        assert time.monotonic() - t0 < 15, "the router did not use the restarted oracle server"
        time.sleep(0.3)
    assert r["tier"] == "oracle" and ORACLE in r["calls"]
    local = ask(deployment.grpc_url, traces.questions[esc[3]].question)
    assert _key(ask(router.grpc_url, traces.questions[esc[3]].question)) == _key(local)
