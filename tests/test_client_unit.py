"""The client's pure parts without a Triton server: result parsing, errors, endpoints, inputs, the
run-gsm8k summary arithmetic and formatting, and the HTTP transport against a scripted stdlib
HTTP server (SSE parsing, error bodies, retry on 503 only, timeouts)."""

from __future__ import annotations

import asyncio
import io
import json
import math
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "python_backend", ROOT / "client"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from pyramid_cli.gsm8k import (  # noqa: E402
    Outcome,
    Progress,
    Question,
    UsageError,
    format_summary,
    format_table,
    grade,
    load_questions,
    percentile,
    progress_line,
    select,
    summarize,
)
from pyramid_client import PyramidClient, PyramidError, PyramidResult, resolve_endpoint  # noqa: E402
from pyramid_client.types import build_inputs, error_from_message, result_from_outputs  # noqa: E402

DETAILS = {
    "agent_answers": {"a": "18", "b": None},
    "failed": ["b"],
    "calls": ["a", "b", "o"],
    "cost": {"usd": 1.25, "flops": None},
    "latency_ms": {"stage0": 1.5, "oracle": 3.0},
}


def outputs(**over):
    d = {
        "text_output": "The answer is 18.",
        "answer": "18",
        "tier": "oracle",
        "escalated": True,
        "confidence": 0.25,
        "agreement": 0.5,
        "agent_answers": json.dumps(DETAILS),
        "degraded": True,
        "cost": 1.25,
        "provisional": False,
    }
    d.update(over)
    return d


# --- result parsing ------------------------------------------------------------------------------


def test_result_from_json_outputs():
    r = result_from_outputs(outputs(), "rid", 0.5)
    assert (r.answer, r.tier, r.escalated, r.degraded, r.provisional) == ("18", "oracle", True, True, False)
    assert r.agent_answers == {"a": "18", "b": None} and r.failed_agents == ["b"] and r.calls == ["a", "b", "o"]
    assert r.cost == 1.25 and r.costs == {"usd": 1.25, "flops": None}
    assert r.server_latency_ms == {"stage0": 1.5, "oracle": 3.0}
    assert (r.request_id, r.latency_s) == ("rid", 0.5)
    assert PyramidResult(**r.to_dict()) == r


def test_result_from_numpy_scalars_as_grpc_gives_them():
    r = result_from_outputs(
        outputs(
            answer=b"18", tier=b"committee", escalated=np.bool_(False), confidence=np.float32(0.75),
            cost=np.float32("nan"), provisional=np.bool_(True), agent_answers=json.dumps(DETAILS).encode(),
        )
    )  # fmt: skip
    assert (r.answer, r.tier, r.escalated, r.provisional) == ("18", "committee", False, True)
    assert r.confidence == pytest.approx(0.75) and r.cost is None


def test_result_from_an_older_server_without_new_outputs():
    old = {k: v for k, v in outputs().items() if k != "provisional"}
    old["agent_answers"] = json.dumps({"agent_answers": {}, "failed": [], "calls": []})
    old["answer"] = ""
    r = result_from_outputs(old)
    assert r.provisional is False and r.costs == {} and r.server_latency_ms == {} and r.answer is None


@pytest.mark.parametrize("bad", [{"tier": None}, {"agent_answers": "{not json"}])
def test_malformed_response_is_internal(bad):
    out = outputs(**bad)
    if bad.get("tier", "") is None:
        del out["tier"]
    with pytest.raises(PyramidError) as err:
        result_from_outputs(out)
    assert err.value.code == "INTERNAL"


# --- errors, endpoints, inputs -------------------------------------------------------------------


@pytest.mark.parametrize(
    "message,code,want_code,want_message",
    [
        ("[INVALID_ARG] invalid input 'max_tokens': x", None, "INVALID_ARG", "invalid input 'max_tokens': x"),
        ("[NOT_FOUND] strict: the oracle failed", "INTERNAL", "NOT_FOUND", "strict: the oracle failed"),
        ("bad", "INVALID_ARGUMENT", "INVALID_ARG", "bad"),
        ("failed to connect", "UNAVAILABLE", "UNAVAILABLE", "failed to connect"),
        ("Request for unknown model: 'x' is not found", None, "NOT_FOUND", None),
        ("something odd", None, "UNKNOWN", "something odd"),
    ],
)
def test_error_codes_from_messages(message, code, want_code, want_message):
    e = error_from_message(message, code)
    assert e.code == want_code
    assert e.message == (want_message or message)


def test_error_str_and_pickle():
    import pickle

    e = PyramidError("cannot reach", "UNAVAILABLE", attempts=4)
    assert str(e) == "UNAVAILABLE: cannot reach (after 4 attempts)"
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.code, e2.message, e2.attempts) == ("UNAVAILABLE", "cannot reach", 4)


@pytest.mark.parametrize(
    "url,protocol,want",
    [
        (None, None, ("grpc", "localhost:8001")),
        (None, "http", ("http", "localhost:8000")),
        ("h:1", None, ("grpc", "h:1")),
        ("h:1", "http", ("http", "h:1")),
        ("grpc://h:1", None, ("grpc", "h:1")),
        ("http://h:1", None, ("http", "http://h:1")),
        ("https://h/x", "http", ("http", "https://h/x")),
    ],
)
def test_resolve_endpoint(url, protocol, want):
    assert resolve_endpoint(url, protocol) == want


@pytest.mark.parametrize(
    "url,protocol", [("http://h:1", "grpc"), ("grpc://h:1", "http"), ("ftp://h", None), ("h", "x")]
)
def test_resolve_endpoint_refuses(url, protocol):
    with pytest.raises(ValueError):
        resolve_endpoint(url, protocol)


def test_build_inputs_sends_only_what_is_set():
    assert build_inputs("q") == {"text_input": "q"}
    got = build_inputs(
        "q", escalation_threshold=1, deadline_ms=5, strict=False, seed=3, stream=True, force_tier="oracle"
    )
    assert got == {
        "text_input": "q",
        "escalation_threshold": 1.0,
        "force_tier": "oracle",
        "deadline_ms": 5,
        "strict": False,
        "seed": 3,
        "stream": True,
    }
    with pytest.raises(PyramidError) as err:
        build_inputs("q", max_tokens=2**31)
    assert err.value.code == "INVALID_ARG" and "max_tokens" in err.value.message


# --- run-gsm8k: selection, grading, summary, formatting ------------------------------------------


def result(answer, tier="committee", conf=0.9, costs=None, latency=0.01, **kw):
    costs = {"usd": 0.2, "flops": None} if costs is None else costs
    return PyramidResult(
        answer=answer, text="", tier=tier, escalated=tier == "oracle", confidence=conf, agreement=1.0,
        cost=costs.get("usd"), costs=costs, latency_s=latency, **kw,
    )  # fmt: skip


def outcome(idx, gold, r=None, err=None):
    q = Question(idx, f"q{idx}", gold)
    return Outcome(q, r, err, r is not None and grade(r.answer, gold))


def test_grade_uses_numeric_equality():
    assert grade("18", "18") and grade("18.0", "18") and grade("$1,000", "1000")
    assert not grade(None, "18") and not grade("17", "18") and not grade("18", None)


def test_summary_arithmetic():
    outs = [
        outcome(0, "1", result("1", latency=0.010)),
        outcome(1, "2", result("3", tier="oracle", costs={"usd": 1.4, "flops": None}, latency=0.030)),
        outcome(2, "3", result("3", degraded=True, latency=0.020)),
        outcome(3, "4", result("4", tier="oracle", provisional=False, costs={"usd": 1.2, "flops": None}, latency=0.1)),
        outcome(4, "5", None, PyramidError("nope", "NOT_FOUND")),
    ]
    s = summarize(outs)
    assert (s["n"], s["answered"], s["errors"], s["error_codes"]) == (5, 4, 1, {"NOT_FOUND": 1})
    assert s["correct"] == 3 and s["accuracy"] == pytest.approx(3 / 5)
    assert s["oracle_calls"] == 2 and s["oracle_call_rate"] == pytest.approx(2 / 4)
    assert s["mean_cost"]["usd"] == pytest.approx((0.2 + 1.4 + 0.2 + 1.2) / 4)
    assert s["mean_cost"]["flops"] is None
    assert s["degraded"] == 1 and s["provisional"] == 0
    lat = [10.0, 30.0, 20.0, 100.0]
    assert s["latency_ms"]["p50"] == pytest.approx(np.percentile(lat, 50))
    assert s["latency_ms"]["p95"] == pytest.approx(np.percentile(lat, 95))
    text = format_summary(s)
    assert "accuracy: 0.6000 (3/5)" in text and "oracle-call rate: 0.500 (2/4)" in text
    assert "0.750 (usd)" in text and "errors: 1 (NOT_FOUND x1)" in text and "p50 25.0" in text


def test_summary_of_nothing_answered():
    s = summarize([outcome(0, "1", None, PyramidError("x", "UNAVAILABLE"))])
    assert s["accuracy"] == 0 and s["oracle_call_rate"] is None and s["latency_ms"]["p50"] is None
    assert "oracle-call rate: n/a" in format_summary(s)


@pytest.mark.parametrize("q", [0, 10, 50, 90, 95, 100])
def test_percentile_matches_numpy(q):
    xs = [5.0, 1.0, 9.0, 3.0, 7.0, 2.5]
    assert percentile(xs, q) == pytest.approx(np.percentile(xs, q))
    assert percentile([], q) is None


def test_table_rows_and_alignment():
    outs = [
        outcome(7, "18", result("18", conf=0.96789)),
        outcome(123, "5", result("1234567890123456789", tier="oracle", conf=0.1, provisional=True, degraded=True)),
        outcome(9, "2", None, PyramidError("x", "NOT_FOUND")),
    ]
    lines = format_table(outs).splitlines()
    assert lines[0].split() == ["idx", "tier", "confidence", "agreement", "answer", "gold", "correct", "flags"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["7", "committee", "0.968", "1.00", "18", "18", "yes"]
    assert lines[3].split() == ["123", "oracle", "0.100", "1.00", "1234567890123~", "5", "no", "DP"]
    assert lines[4].split() == ["9", "error", "NOT_FOUND", "2", "no"]
    assert lines[2].index("0.968") + 5 == lines[0].index("confidence") + len("confidence")  # right-aligned


def test_progress_line_and_bar():
    assert progress_line(0, 4, 0.0) == "[" + "." * 30 + "] 0/4   0%  0.0 q/s"
    assert progress_line(2, 4, 1.0, errors=1, width=10) == "[#####.....] 2/4  50%  2.0 q/s  errors 1"
    off = io.StringIO()  # not a TTY: silent
    p = Progress(3, off)
    p.update()
    p.close()
    assert off.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self):
            return True

    on = Tty()
    p = Progress(2, on)
    p.update()
    p.update(ok=False)
    p.close()
    assert on.getvalue().startswith("\r[") and "2/2 100%" in on.getvalue() and "errors 1" in on.getvalue()
    quiet = Tty()
    p = Progress(2, quiet, enabled=False)
    p.update()
    p.close()
    assert quiet.getvalue() == ""


def test_load_and_select_questions(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text("".join(json.dumps({"idx": i, "question": f"q{i}", "gold": f"{i}.0"}) + "\n" for i in range(10)))
    qs = load_questions(f)
    assert [q.idx for q in qs] == list(range(10)) and qs[3].gold == "3.0"  # as written: the task reads it
    assert grade("3", qs[3].gold) and not grade("4", qs[3].gold)
    assert [q.idx for q in select(qs, 3)] == [0, 1, 2]
    assert [q.idx for q in select(qs, 3, exclude={0, 2})] == [1, 3, 4]
    a, b = select(qs, 4, seed=1), select(qs, 4, seed=1)
    assert a == b and [q.idx for q in a] == sorted(q.idx for q in a)
    assert [q.idx for q in select(qs, None, only=[5, 1], exclude={1})] == [5]
    for bad in (lambda: select(qs, 0), lambda: select(qs, 11), lambda: select(qs, 1, only=[42])):
        with pytest.raises(UsageError):
            bad()
    f.write_text('{"idx": 0, "question": "a"}\n{"idx": "x"}\n')
    with pytest.raises(UsageError, match=r"q.jsonl:2"):
        load_questions(f)
    f.write_text('{"idx": 0, "question": "a"}\n{"idx": 0, "question": "b"}\n')
    with pytest.raises(UsageError, match="duplicate idx 0"):
        load_questions(f)


def test_shipped_questions_load():
    qs = load_questions(ROOT / "data" / "gsm8k" / "questions.jsonl")
    assert len(qs) == 1319 and qs[0].gold == "18"


def test_run_gsm8k_usage_errors_exit_2(tmp_path, capsys):
    from pyramid_cli import main

    assert main(["run-gsm8k", "--n", "0", "--quiet"]) == 2
    assert main(["run-gsm8k", "--n", "2", "--idx", "1,x", "--quiet"]) == 2
    assert main(["run-gsm8k", "--questions", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["run-gsm8k", "--exclude-fitted", str(tmp_path / "missing.json")]) == 2
    assert main(["run-gsm8k", "--n", "2", "--concurrency", "0"]) == 2
    err = capsys.readouterr().err
    assert "--n must be > 0" in err and "missing.jsonl" in err and "--concurrency" in err
    with pytest.raises(SystemExit) as ex:
        main(["run-gsm8k", "--url", "http://h:1", "--protocol", "grpc"])
    assert ex.value.code == 2
    with pytest.raises(SystemExit) as ex:
        main(["ask", "--help"])
    assert ex.value.code == 0


def test_calibrate_and_evaluate_do_not_import_tritonclient():
    code = "import sys, pyramid_moa.cli, pyramid_client; print('tritonclient' in sys.modules)"
    env_path = f"{ROOT / 'python_backend'}:{ROOT / 'client'}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": env_path})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --- HTTP transport against a scripted server ----------------------------------------------------


class Script:
    """Responses the fake server gives, in order: (status, content type, [chunks], delay_s)."""

    def __init__(self):
        self.responses: list[tuple] = []
        self.requests: list[tuple[str, dict]] = []


@pytest.fixture
def fake():
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            script.requests.append((self.path, json.loads(body)))
            status, ctype, chunks, delay = script.responses.pop(0)
            time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.end_headers()
            for c in chunks:
                self.wfile.write(c.encode())
                self.wfile.flush()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    t.start()
    script.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield script
    server.shutdown()
    server.server_close()


def sse(*events):
    return [f"data: {json.dumps(e)}\n\n" for e in events]


def test_http_generate_request_and_response(fake):
    fake.responses.append((200, "application/json", [json.dumps(outputs(model_name="pyramid"))], 0))
    with PyramidClient(fake.url, model="my model") as c:
        r = c.ask("2+2?", escalation_threshold=0.5, deadline_ms=100, strict=True, request_id="abc")
    path, body = fake.requests[0]
    assert path == "/v2/models/my%20model/generate"
    assert body == {"text_input": "2+2?", "escalation_threshold": 0.5, "deadline_ms": 100, "strict": True, "id": "abc"}
    assert r.answer == "18" and r.request_id == "abc" and r.costs["usd"] == 1.25


def test_http_stream_parses_events(fake):
    first, final = outputs(provisional=True, tier="committee"), outputs()
    chunks = ["data: " + json.dumps(first)[:10], json.dumps(first)[10:] + "\n", "\n", ": comment\n", *sse(final)]
    fake.responses.append((200, "text/event-stream", chunks, 0))
    with PyramidClient(fake.url) as c:
        got = list(c.ask_stream("q"))
    assert fake.requests[0][0].endswith("/generate_stream") and fake.requests[0][1]["stream"] is True
    assert [(r.provisional, r.tier) for r in got] == [(True, "committee"), (False, "oracle")]


def test_ask_stream_ends_with_final_even_when_the_oracle_missed_the_deadline(fake, capsys):
    """``pyramid ask --stream --deadline-ms 1``: the committee's answer streamed, then (the oracle late)
    the same answer as the stream's last response: printed as the final one, saying why it is provisional."""
    from pyramid_client.cli import ask_main

    late = outputs(provisional=True, tier="committee")
    fake.responses.append((200, "text/event-stream", sse(late, late), 0))
    assert ask_main(["q", "--url", fake.url, "--stream", "--deadline-ms", "1"]) == 0
    heads = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert heads[0] == "[provisional]" and len(heads) == 2
    assert heads[1].startswith("[final: ") and "deadline" in heads[1]


def test_http_stream_error_mid_stream(fake):
    chunks = sse(outputs(provisional=True), {"error": "[NOT_FOUND] strict: the oracle failed"})
    fake.responses.append((200, "text/event-stream", chunks, 0))
    got = []
    with PyramidClient(fake.url, on_retry=lambda *a: pytest.fail("retried")) as c, pytest.raises(PyramidError) as err:
        for r in c.ask_stream("q"):
            got.append(r)
    assert len(got) == 1 and err.value.code == "NOT_FOUND" and err.value.message == "strict: the oracle failed"


@pytest.mark.parametrize(
    "status,ctype,body,code",
    [
        (400, "application/json", '{"error":"[INVALID_ARG] invalid input \'force_tier\': x"}', "INVALID_ARG"),
        (400, "text/event-stream", 'data: {"error":"[INVALID_ARG] invalid input \'x\': y"}\n\n', "INVALID_ARG"),
        (404, "application/json", '{"error":"Request for unknown model: \'m\' is not found"}', "NOT_FOUND"),
        (500, "application/json", '{"error":"failed to parse the request JSON buffer"}', "INTERNAL"),
        (502, "text/html", "<html>bad gateway</html>", "HTTP_502"),
    ],
)
def test_http_errors_are_not_retried(fake, status, ctype, body, code):
    fake.responses.append((status, ctype, [body], 0))
    sleeps = []
    c = PyramidClient(fake.url, protocol="http")
    c._sleep = sleeps.append
    with pytest.raises(PyramidError) as err:
        c.ask("q")
    assert err.value.code == code and err.value.attempts == 1 and sleeps == []
    assert not err.value.message.startswith("[")


def test_http_503_is_retried_with_backoff_then_succeeds(fake):
    fake.responses += [(503, "application/json", ['{"error":"not ready"}'], 0)] * 2
    fake.responses.append((200, "application/json", [json.dumps(outputs())], 0))
    sleeps, hooks = [], []
    c = PyramidClient(fake.url, retries=3, backoff_s=0.1, on_retry=lambda a, e, d: hooks.append((a, e.code)))
    c._sleep = sleeps.append
    assert c.ask("q").answer == "18"
    assert sleeps == [0.1, 0.2] and hooks == [(1, "UNAVAILABLE"), (2, "UNAVAILABLE")]
    assert len(fake.requests) == 3 and len({b["id"] for _, b in fake.requests}) == 1  # one request id


def test_http_timeout_is_deadline_exceeded_and_not_retried(fake):
    # The server answers only after 3 s; the client gives up at its 0.3 s timeout. The bound is
    # the server's delay, not a guess at this machine's speed.
    fake.responses.append((200, "application/json", [json.dumps(outputs())], 3.0))
    c = PyramidClient(fake.url, timeout_s=0.3, on_retry=lambda *a: pytest.fail("retried"))
    t0 = time.monotonic()
    with pytest.raises(PyramidError) as err:
        c.ask("q")
    assert err.value.code == "DEADLINE_EXCEEDED" and 0.3 <= time.monotonic() - t0 < 3.0


def test_async_http_client_streams_and_retries(fake):
    from pyramid_client import AsyncPyramidClient

    fake.responses.append((503, "application/json", ['{"error":"not ready"}'], 0))
    fake.responses.append((200, "text/event-stream", sse(outputs(provisional=True), outputs()), 0))

    async def run():
        sleeps = []

        async def sleep(d):
            sleeps.append(d)

        async with AsyncPyramidClient(fake.url, backoff_s=0.05) as c:
            c._sleep = sleep
            return [r.provisional async for r in c.ask_stream("q")], sleeps

    got, sleeps = asyncio.run(run())
    assert got == [True, False] and sleeps == [0.05]


def test_retry_gives_up_when_the_timeout_would_pass(fake):
    fake.responses += [(503, "application/json", ['{"error":"not ready"}'], 0)] * 3
    c = PyramidClient(fake.url, timeout_s=1.0, retries=5, backoff_s=0.6)
    c._sleep = lambda d: None
    with pytest.raises(PyramidError) as err:
        c.ask("q")
    assert err.value.code == "UNAVAILABLE" and err.value.attempts == 2  # 0.6 s, then 1.2 s would overrun
    assert math.isclose(c.backoff(1), 0.6) and c.backoff(10) == c.max_backoff_s


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_silent_server_times_out_per_call(protocol):
    """A port that accepts connections but never answers: DEADLINE_EXCEEDED after the call's
    timeout, sync and asyncio, never retried."""
    import socket

    from pyramid_client import AsyncPyramidClient

    if protocol == "grpc":
        pytest.importorskip("tritonclient.grpc")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"127.0.0.1:{s.getsockname()[1]}"
        fail = lambda *a: pytest.fail("retried")  # noqa: E731
        c = PyramidClient(url, protocol=protocol, timeout_s=0.4, on_retry=fail)
        t0 = time.monotonic()
        with pytest.raises(PyramidError) as err:
            c.ask("q")
        c.close()
        # The server never answers: any return at all is the timeout; the upper bound only
        # catches a hang, not this machine's speed.
        assert err.value.code == "DEADLINE_EXCEEDED" and 0.35 < time.monotonic() - t0 < 30

        async def run():
            async with AsyncPyramidClient(url, protocol=protocol, timeout_s=0.4, on_retry=fail) as ac:
                with pytest.raises(PyramidError) as aerr:
                    await ac.ask("q", timeout_s=0.3)
            return aerr.value

        assert asyncio.run(run()).code == "DEADLINE_EXCEEDED"


def test_a_restricted_apis_refusal_is_permission_denied_and_not_retried():
    """tritonserver 2.51 refuses a call without the inference key with gRPC UNAVAILABLE (HTTP 403): the
    client names it PERMISSION_DENIED, which its retry rule leaves alone."""
    from pyramid_client.retry import client_failure
    from pyramid_client.types import error_from_message

    msg = "This protocol is restricted, expecting header 'triton-grpc-protocol-pyramid-inference-key'"
    err = error_from_message(msg, "UNAVAILABLE")
    assert err.code == "PERMISSION_DENIED"
    assert error_from_message("This API is restricted, expecting header 'pyramid-inference-key'").code == err.code
    assert client_failure(err, 1) == (err, False)  # not retried
    gone = error_from_message("failed to connect to all addresses", "UNAVAILABLE")
    assert client_failure(gone, 1) == (gone, True)


def test_pyramid_ask_sends_the_inference_key_from_the_environment(monkeypatch, tmp_path):
    """``pyramid ask`` against a server that keys inference: the key from $PYRAMID_INFERENCE_KEY[_FILE] goes
    to the client; a key file others can read is a usage error (exit 2) naming the file."""
    import pyramid_client.cli as cli
    from pyramid_client.keys import INFERENCE_KEY_ENV, INFERENCE_KEY_FILE_ENV

    seen: dict = {}

    class Recording:
        def __init__(self, *args, **kwargs) -> None:
            seen.update(kwargs)
            raise cli.PyramidError("not connecting in this test", "UNAVAILABLE")

    monkeypatch.setattr(cli, "PyramidClient", Recording)
    monkeypatch.delenv(INFERENCE_KEY_FILE_ENV, raising=False)
    monkeypatch.setenv(INFERENCE_KEY_ENV, "k" * 32)
    assert cli.ask_main(["q"]) == 1 and seen["inference_key"] == "k" * 32
    monkeypatch.delenv(INFERENCE_KEY_ENV)
    assert cli.ask_main(["q"]) == 1 and seen["inference_key"] is None
    loose = tmp_path / "key"
    loose.write_text("k" * 32)
    loose.chmod(0o644)
    monkeypatch.setenv(INFERENCE_KEY_FILE_ENV, str(loose))
    assert cli.ask_main(["q"]) == 2
