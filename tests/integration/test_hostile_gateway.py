"""A bounded hostile-client run against a real gateway in front of the session's real tritonserver (replay
profile), loopback only (issue 27 items 2-5; docs/SECURITY.md, "Hostile clients").

What hostile and careless clients sent (issue 27), each a bounded number of times: a model name that forges
/metrics lines and many long unknown names; bodies over the size limit (announced and chunked); headers that
never end; a body that never comes; clients that leave while sending; a lone surrogate, JSON 1,000 deep,
NaN, a 5,000-digit integer, coerced types; a megabyte model name; a question the replay traces do not have.
Then: no request got a 500, every refusal is the status that names the fault, /metrics parses strictly and holds
no label value a client chose, each vanished client is one log line and the log holds no traceback, and the
gateway answers exactly as the gRPC client does. It stops by itself: every socket has a timeout, every loop a count.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import COMMITTEE, ORACLE

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "gateway") not in sys.path:
    sys.path.insert(0, str(ROOT / "gateway"))

from test_gateway_unit import FORGED_MODEL, parse_exposition  # noqa: E402 - the strict exposition parser

MAX_BODY = 65536
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
N_UNKNOWN = 100  # unknown model names, 2 kB each
N_SLOW = 20  # connections that never finish their headers, and as many that never send their body
N_GONE = 10  # clients that leave while sending their body
SERVED = {"pyramid", "pyramid-committee", "pyramid-oracle", *COMMITTEE, ORACLE}


@pytest.fixture(scope="module")
def gateway(deployment, tmp_path_factory):
    from pyramid_gateway.process import GatewayProcess
    from pyramid_ops.server import free_ports

    log = tmp_path_factory.mktemp("hostile") / "gateway.log"
    args = ["--model-repository", str(deployment.repository), "--max-body-bytes", str(MAX_BODY),
            "--header-timeout-s", str(HEADER_TIMEOUT_S), "--body-timeout-s", str(BODY_TIMEOUT_S)]  # fmt: skip
    with GatewayProcess(deployment.grpc_url, free_ports(1)[0], log_path=log, extra_args=args) as gw:
        yield gw


def connect(gw, timeout_s: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=timeout_s)


def until_closed(sock: socket.socket, timeout_s: float = 10.0) -> bytes:
    """What the gateway sends until it closes the connection; fails if it is still open after ``timeout_s``."""
    sock.settimeout(timeout_s)
    out = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            out += chunk
    except ConnectionResetError:
        return out
    except TimeoutError:
        pass
    raise AssertionError(f"still open after {timeout_s} s; got {out[:200]!r}")


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def post(gw, body: bytes, path: str = "/v1/chat/completions") -> tuple[int, dict]:
    req = urllib.request.Request(gw.root + path, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def chat_body(content: str = "What is 2 + 2?", model: str = "pyramid", **extra) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], **extra}).encode()


def test_a_bounded_hostile_run_gets_no_500_leaves_clean_metrics_and_the_gateway_answers_after(
    gateway, deployment, traces
):
    statuses: list[int] = []
    t_start = time.monotonic()

    # 1. Forged metrics lines, and many long unknown names (issue 27 item 2): 404s, one "unknown" series.
    s, e = post(gateway, chat_body(model=FORGED_MODEL))
    assert s == 404 and "31337" in e["error"]["message"]  # the name is quoted (clipped), not obeyed
    statuses.append(s)
    for i in range(N_UNKNOWN):
        s, e = post(gateway, chat_body(model=f"{i:04d}" + "u" * 2000))
        assert s == 404 and len(json.dumps(e)) < 2000
        statuses.append(s)

    # 2. Malformed bodies (item 4): a 400 naming the field, never a 500.
    lone = b'{"model": "pyramid", "messages": [{"role": "user", "content": "\\ud800"}]}'
    deep = b'{"model": "pyramid", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    cases = [
        (lone, "messages[0].content"),
        (deep, "messages"),
        (b"[" * 30000 + b"]" * 30000, None),
        (chat_body(max_tokens=True), "max_tokens"),
        (chat_body(stream="yes"), "stream"),
        (chat_body()[:-1] + b', "temperature": NaN}', None),
        (chat_body()[:-1] + b', "seed": ' + b"9" * 5000 + b"}", None),
        (b'{"model": "pyramid", "messages": [{"role": {"x": 1}, "content": "a"}]}', "messages[0].role"),
    ]
    for body, param in cases:
        s, e = post(gateway, body)
        assert (s, e["error"]["param"]) == (400, param), (body[:80], e)
        statuses.append(s)

    # 3. What the error bodies say (item 5): a short prefix of a client's value, never a server path.
    s, e = post(gateway, chat_body(model="M" * 40_000))
    assert s == 404 and "M" * 64 + "..." in e["error"]["message"] and "M" * 65 not in e["error"]["message"]
    statuses.append(s)
    s, e = post(gateway, chat_body("A question no replay trace has: what is the airspeed of a laden swallow?"))
    assert s == 400 and e["error"]["code"] == "not_found", e  # the replay engines' NOT_FOUND, passed through
    text = json.dumps(e)
    assert str(deployment.traces) not in text and str(deployment.traces.parent) not in text and "/tmp/" not in text
    assert "<path>" in text  # where the engines' message named the trace directory
    statuses.append(s)

    # 4. Sizes (item 3): an announced body over the limit is refused before it is sent; a chunked one as it grows.
    sock = connect(gateway)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: 20000000\r\n\r\n")  # fmt: skip
    reply = until_closed(sock)
    sock.close()
    assert status_of(reply) == 413 and b"request_too_large" in reply
    statuses.append(413)
    sock = connect(gateway)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (8192, b" " * 8192)
    try:
        for _ in range(MAX_BODY // 8192 + 2):
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the gateway answered and closed before the last chunks
    reply = until_closed(sock)
    sock.close()
    assert status_of(reply) == 413
    statuses.append(413)

    # 5. Time (item 3): headers that never end and bodies that never come are each answered 408 and closed,
    #    all within the timeouts (they are held at once, not one after the other).
    slow = []
    for i in range(N_SLOW):
        a = connect(gateway)
        a.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-slow: " + str(i).encode())  # no end
        b = connect(gateway)
        b.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: 1000\r\n\r\n{\"model\": ")  # fmt: skip
        slow += [a, b]
    t0 = time.monotonic()
    replies = [until_closed(c, timeout_s=10 * max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S)) for c in slow]
    waited = time.monotonic() - t0
    for c in slow:
        c.close()
    assert [status_of(r) for r in replies] == [408] * (2 * N_SLOW)
    assert waited < 5 * max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) + 5, waited
    statuses += [408] * (2 * N_SLOW)

    # 6. Clients that leave while sending their body: a 499 each, one log line each, no traceback.
    for _ in range(N_GONE):
        c = connect(gateway)
        c.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-length: 500\r\n\r\n{"model"')
        time.sleep(0.05)
        c.close()

    def metrics() -> list[tuple[str, dict[str, str], float]]:
        with urllib.request.urlopen(gateway.root + "/metrics", timeout=10) as r:
            return parse_exposition(r.read().decode())

    def value(samples, name: str, **labels) -> float:
        return sum(v for n, lb, v in samples if n == name and all(lb.get(k) == w for k, w in labels.items()))

    deadline = time.monotonic() + 30
    while value(metrics(), "pyramid_gateway_client_disconnects_total") < N_GONE:
        assert time.monotonic() < deadline, "the vanished clients were not all counted"
        time.sleep(0.1)

    # 7. 32 at once of the cheap kinds above, from threads, while the gateway still serves: nothing is a 500.
    burst: list[int] = []

    def one(i: int) -> None:
        burst.append(post(gateway, lone if i % 2 else chat_body(model=FORGED_MODEL + str(i)))[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(set(burst)) == [400, 404] and len(burst) == 32
    statuses += burst

    assert 500 not in statuses

    # The scrape: strict, no forged sample, no label value a client chose, no 500, nothing left in flight.
    samples = metrics()
    assert not [n for n, _, _ in samples if not n.startswith("pyramid_gateway_")]
    assert {lb["model"] for _, lb, _ in samples if "model" in lb} <= SERVED | {"unknown", "?"}
    assert value(samples, "pyramid_gateway_requests_total", model="unknown", status="404") == N_UNKNOWN + 2 + 16
    assert value(samples, "pyramid_gateway_requests_total", status="500") == 0
    assert value(samples, "pyramid_gateway_requests_total", status="499") == N_GONE
    assert value(samples, "pyramid_gateway_requests_total", status="408") == N_SLOW  # bodies; headers never reached it
    assert [v for n, _, v in samples if n == "pyramid_gateway_in_flight"] == [0]
    log = gateway.log_path.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    assert sum(" 499 " in f" {line} " for line in log.splitlines()) == N_GONE
    assert "laden swallow" not in log and "31337" not in log and "uuuu" not in log  # no prompt, no client's text

    # Afterwards the gateway answers exactly as the gRPC client does.
    from pyramid_client import PyramidClient

    q = traces.questions[0].question
    with PyramidClient(deployment.grpc_url, timeout_s=60) as c:
        want = c.ask(q)
    s, e = post(gateway, chat_body(q))
    assert s == 200 and e["choices"][0]["message"]["content"] == want.text
    assert e["pyramid"]["tier"] == want.tier and e["pyramid"]["answer"] == want.answer
    assert time.monotonic() - t_start < 240  # the whole run is bounded
