"""The gateway in front of a deployment whose oracle is slow (seconds_per_token), so that a route is
observably in flight: a client that disconnects mid-route cancels its Triton request, and API keys
(401, and 429 + Retry-After past a key's concurrency limit) are checked while a request holds its slot.

The route is known to be mid-oracle, without any sleep, once its provisional committee answer has
streamed out: the router sends it right before it calls the oracle.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from .conftest import ORACLE, SPEC, scrape, serve

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "gateway") not in sys.path:
    sys.path.insert(0, str(ROOT / "gateway"))

import httpx2 as httpx  # noqa: E402 - the openai SDK's HTTP client
import openai  # noqa: E402

SLOW_ORACLE_S_PER_TOKEN = 0.05
MIN_ORACLE_TOKENS = 100  # the questions asked here: their oracle call takes >= 5 s
KEY, OTHER = "sk-test-key-0123456789", "sk-other-key-0123456789"


@pytest.fixture(scope="module")
def slow(deployment, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway-slow")
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    spec.pop("calibration")
    spec["engine"]["traces"] = str(deployment.traces)
    spec["oracle"] = {"name": ORACLE, "seconds_per_token": SLOW_ORACLE_S_PER_TOKEN}
    spec["router"]["oracle_timeout_s"] = 60
    spec_path = tmp / "slow.yaml"
    spec_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    with serve(spec_path, deployment.calibration, tmp / "repo", tmp / "tritonserver.log") as server:
        yield server


@pytest.fixture(scope="module")
def gateway(slow, tmp_path_factory):
    from pyramid_gateway.process import GatewayProcess
    from pyramid_ops.server import free_ports

    tmp = tmp_path_factory.mktemp("gateway-keys")
    keys = tmp / "keys"
    keys.write_text(f"{KEY} 1\n{OTHER}\n", encoding="utf-8")
    args = ["--model-repository", str(slow.model_repository), "--api-keys-file", str(keys), "--retry-after-s", "2"]
    with GatewayProcess(slow.grpc_url, free_ports(1)[0], log_path=tmp / "gateway.log", extra_args=args) as gw:
        yield gw


def count(metrics_url: str, name: str, **labels) -> float:
    m = scrape(metrics_url, name)
    return sum(v for k, v in m.items() if all(f'{a}="{b}"' in k for a, b in labels.items()))


def gateway_metric(gw, line_prefix: str) -> float:
    with urllib.request.urlopen(gw.root + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(cond, what: str, timeout_s: float = 30.0) -> None:
    """Poll ``cond`` until true; the bound only catches a hang (nothing about this machine's speed)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def escalating_question(router, traces, offline_route) -> str:
    """A question whose route escalates and whose oracle record is long: its oracle call takes
    >= MIN_ORACLE_TOKENS x SLOW_ORACLE_S_PER_TOKEN seconds (the replay engine's emulated generation)."""
    for i in range(len(traces.questions)):
        rec = traces.samples(ORACLE).get(i)
        if rec and (rec[0].output_tokens or 0) >= MIN_ORACLE_TOKENS and offline_route(router, traces, i).escalated:
            return traces.questions[i].question
    raise AssertionError("no escalating question with a long oracle record")


def open_stream(gw, question: str, key: str = KEY):
    """A raw streaming request (httpx, as the SDK sends it): (client, response) with the response open."""
    client = httpx.Client(timeout=60)
    body = {"model": "pyramid", "stream": True, "messages": [{"role": "user", "content": question}]}
    req = client.build_request(
        "POST", gw.url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    return client, client.send(req, stream=True)


def read_until_provisional(lines) -> dict:
    """Read ``lines`` (one ``resp.iter_lines()``, kept by the caller: dropping that iterator closes
    the response) up to the provisional extension chunk."""
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            chunk = json.loads(line[6:])
            if chunk.get("pyramid", {}).get("provisional") and not chunk["choices"][0]["delta"]:
                return chunk["pyramid"]
    raise AssertionError("the stream ended without a provisional answer")


def test_api_keys_401_and_429_with_retry_after(gateway, router, traces, offline_route):
    with openai.OpenAI(base_url=gateway.url, api_key="sk-wrong-0123456789", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError) as e:
            c.models.list()
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(urllib.error.HTTPError) as h:  # no key at all
        urllib.request.urlopen(urllib.request.Request(gateway.url + "/models"), timeout=10)
    assert h.value.code == 401
    q = escalating_question(router, traces, offline_route)
    client, resp = open_stream(gateway, q)
    try:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        read_until_provisional(lines)  # KEY's one slot is held: its route waits for the slow oracle
        with openai.OpenAI(base_url=gateway.url, api_key=KEY, max_retries=0) as c:
            with pytest.raises(openai.RateLimitError) as e:
                c.chat.completions.create(model="pyramid", messages=[{"role": "user", "content": q}])
            assert e.value.status_code == 429 and e.value.response.headers["retry-after"] == "2"
        with openai.OpenAI(base_url=gateway.url, api_key=OTHER, max_retries=0) as c:  # another key: served
            r = c.chat.completions.create(model="pyramid-committee", messages=[{"role": "user", "content": q}])
            assert r.model_extra["pyramid"]["tier"] == "committee"
        rest = "".join(lines)
        assert "[DONE]" in rest
    finally:
        resp.close()
        client.close()
    log = gateway.log_path.read_text(encoding="utf-8", errors="replace")
    assert KEY not in log and OTHER not in log and "sk-wrong" not in log  # the gateway logs no key (docs/SECURITY.md)
    with openai.OpenAI(base_url=gateway.url, api_key=KEY, max_retries=0) as c:  # the slot is free again
        assert c.chat.completions.create(model="pyramid-committee", messages=[{"role": "user", "content": q}])


def test_client_disconnect_mid_route_cancels_the_triton_request(slow, gateway, router, traces, offline_route):
    metrics_url = f"127.0.0.1:{slow.metrics_port}"
    q = escalating_question(router, traces, offline_route)
    cancelled0 = count(metrics_url, "pyramid_requests_total", outcome="cancelled")
    gone0 = gateway_metric(gateway, "pyramid_gateway_client_disconnects_total")

    # streaming: the client goes away while the route waits for the oracle
    client, resp = open_stream(gateway, q)
    lines = resp.iter_lines()
    p = read_until_provisional(lines)
    assert p["tier"] == "committee" and ORACLE not in p["calls"]
    resp.close()
    client.close()
    wait_for(
        lambda: count(metrics_url, "pyramid_requests_total", outcome="cancelled") == cancelled0 + 1,
        "the router to count the stream's request cancelled",
    )
    wait_for(lambda: gateway_metric(gateway, "pyramid_gateway_client_disconnects_total") == gone0 + 1, "gateway")

    # not streaming: the client goes away once the committee has answered (the route is then mid-oracle)
    agent = router.stages[0].agents[0]
    committee0 = count(metrics_url, "nv_inference_request_success", model=agent)
    body = json.dumps({"model": "pyramid", "messages": [{"role": "user", "content": q}]}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {gateway.host}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((gateway.host, gateway.port), timeout=30) as sock:
        sock.sendall(head + body)
        wait_for(lambda: count(metrics_url, "nv_inference_request_success", model=agent) > committee0, "the committee")
    wait_for(
        lambda: count(metrics_url, "pyramid_requests_total", outcome="cancelled") == cancelled0 + 2,
        "the router to count the plain request cancelled",
    )
    wait_for(lambda: gateway_metric(gateway, "pyramid_gateway_client_disconnects_total") == gone0 + 2, "gateway")
    assert gateway_metric(gateway, "pyramid_gateway_in_flight") == 0
