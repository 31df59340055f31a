"""The client library and the ``pyramid ask`` / ``run-gsm8k`` commands against a real tritonserver.

gRPC (the bidirectional stream) and HTTP (Triton's generate extension) must give the same
decisions; streaming yields the committee's provisional answer, then the oracle's; errors carry
the server's code; only UNAVAILABLE is retried.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import AGENT_MISSING, ORACLE

SAMPLE = [0, 1, *AGENT_MISSING, 5, 33, 101, 214, 301, 577, 707, 858, 1137]  # both tiers, degraded ones too
SAME_FIELDS = ("answer", "text", "tier", "escalated", "agent_answers", "failed_agents", "calls", "degraded")
SAME_NUMBERS = ("confidence", "agreement", "cost")


@pytest.fixture(scope="module")
def grpc_client(deployment):
    from pyramid_client import PyramidClient

    with PyramidClient(deployment.grpc_url, timeout_s=60) as c:
        yield c


@pytest.fixture(scope="module")
def http_client(deployment):
    from pyramid_client import PyramidClient

    with PyramidClient(deployment.http_url, timeout_s=60, protocol="http") as c:
        assert c.protocol == "http"
        yield c


def assert_same(a, b, where: str) -> None:
    for f in SAME_FIELDS:
        assert getattr(a, f) == getattr(b, f), f"{where}: {f}"
    for f in SAME_NUMBERS:
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None and y is None) or math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9), f"{where}: {f}"
    assert a.costs.keys() == b.costs.keys(), where
    assert a.provisional == b.provisional, where


def escalating(router, traces, offline_route, n: int, start: int, exclude=()) -> list:
    """The first ``n`` question ids from ``start`` whose offline route escalates (oracle record present)."""
    found = []
    for idx in range(start, len(traces.questions)):
        if idx in exclude or not traces.samples(ORACLE).get(idx):
            continue
        want = offline_route(router, traces, idx)
        if want.escalated:
            found.append((idx, want))
            if len(found) == n:
                return found
    raise AssertionError("not enough escalating questions")


# --- HTTP == gRPC ---------------------------------------------------------------------------------


def test_http_ask_equals_grpc_ask_and_the_offline_router(
    deployment, grpc_client, http_client, router, traces, offline_route
):
    tiers = set()
    for idx in sorted(set(SAMPLE) | set(deployment.oracle_missing)):
        q = traces.questions[idx].question
        g, h = grpc_client.ask(q), http_client.ask(q)
        assert_same(g, h, f"idx {idx}")
        want = offline_route(router, traces, idx)
        assert (h.tier, h.answer, h.calls) == (want.tier, want.answer, want.calls), f"idx {idx}"
        assert math.isclose(h.confidence, want.confidence, abs_tol=1e-6)
        assert h.costs.get("usd") is not None and h.costs["usd"] == pytest.approx(h.cost, rel=1e-4, abs=1e-6)
        tiers.add(h.tier)
    assert tiers == {"committee", "oracle"}


def test_async_clients_over_both_protocols_agree(deployment, traces):
    from pyramid_client import AsyncPyramidClient

    idxs = list(range(300, 1300, 53))[:16]

    async def run(url, protocol):
        async with AsyncPyramidClient(url, timeout_s=120, protocol=protocol) as c:
            return await asyncio.gather(*(c.ask(traces.questions[i].question, request_id=f"r{i}") for i in idxs))

    g = asyncio.run(run(deployment.grpc_url, "grpc"))
    h = asyncio.run(run(f"http://{deployment.http_url}", None))
    for idx, a, b in zip(idxs, g, h):
        assert a.request_id == b.request_id == f"r{idx}"
        assert_same(a, b, f"idx {idx}")


def test_one_sync_client_shared_between_threads(deployment, grpc_client, http_client, traces):
    """The sync client may be shared: gRPC keeps one tritonclient stream client per thread, HTTP
    opens a connection per request."""
    from concurrent.futures import ThreadPoolExecutor

    idxs = list(range(40, 1300, 97))[:12]
    want = {i: grpc_client.ask(traces.questions[i].question) for i in idxs}
    for c in (grpc_client, http_client):
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda i, c=c: c.ask(traces.questions[i].question), idxs))
        for i, r in zip(idxs, got):
            assert_same(r, want[i], f"{c.protocol} idx {i}")


# --- errors and retries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"question": ""}, "text_input"),
        ({"escalation_threshold": 1.5}, "escalation_threshold"),
        ({"escalation_threshold": float("nan")}, "escalation_threshold"),
        ({"force_tier": "gpu"}, "force_tier"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"deadline_ms": -5}, "deadline_ms"),
    ],
)
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_input_is_invalid_arg_naming_the_field_and_not_retried(deployment, traces, protocol, kwargs, field):
    from pyramid_client import PyramidClient, PyramidError

    retried = []
    kwargs = dict(kwargs)  # the parametrized dict is shared between the protocols
    url = deployment.http_url if protocol == "http" else deployment.grpc_url
    with PyramidClient(url, protocol=protocol, on_retry=lambda *a: retried.append(a)) as c:
        question = kwargs.pop("question", traces.questions[0].question)
        with pytest.raises(PyramidError) as err:
            c.ask(question, timeout_s=20, **kwargs)
        assert err.value.code == "INVALID_ARG", err.value
        assert f"'{field}'" in err.value.message
        assert not err.value.message.startswith("[")  # the code prefix is parsed off
        assert err.value.attempts == 1 and retried == []
        assert c.ask(traces.questions[1].question).answer is not None  # still healthy


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_strict_oracle_failure_is_an_error_lenient_is_degraded(deployment, traces, protocol):
    from pyramid_client import PyramidClient, PyramidError

    url = deployment.http_url if protocol == "http" else deployment.grpc_url
    with PyramidClient(url, protocol=protocol) as c:
        for idx in deployment.oracle_missing:
            q = traces.questions[idx].question
            lenient = c.ask(q)
            assert lenient.degraded and lenient.failed_agents == [ORACLE] and not lenient.provisional
            with pytest.raises(PyramidError) as err:
                c.ask(q, strict=True)
            assert err.value.code == "NOT_FOUND" and ORACLE in err.value.message
            assert err.value.attempts == 1


def test_unknown_model_is_not_found_over_both_protocols(deployment, traces):
    from pyramid_client import PyramidClient, PyramidError

    for url in (deployment.grpc_url, f"http://{deployment.http_url}"):
        with PyramidClient(url, model="no_such_model") as c, pytest.raises(PyramidError) as err:
            c.ask(traces.questions[0].question)
        assert err.value.code == "NOT_FOUND" and "no_such_model" in err.value.message
        assert err.value.attempts == 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("retries", [0, 2])
def test_unavailable_is_retried_exactly_retries_times_with_backoff(protocol, retries):
    from pyramid_client import AsyncPyramidClient, PyramidClient, PyramidError
    from pyramid_ops.server import free_ports

    port = free_ports(1)[0]  # nothing listens there
    url = f"{protocol}://127.0.0.1:{port}"
    hooks, sleeps = [], []
    c = PyramidClient(url, retries=retries, backoff_s=0.5, on_retry=lambda a, e, d: hooks.append((a, e.code, d)))
    c._sleep = sleeps.append  # no real waiting; records each backoff
    with pytest.raises(PyramidError) as err:
        c.ask("What is 1 + 1?")
    c.close()
    assert err.value.code == "UNAVAILABLE" and err.value.attempts == retries + 1
    assert sleeps == [0.5 * 2**k for k in range(retries)]
    assert hooks == [(k + 1, "UNAVAILABLE", 0.5 * 2**k) for k in range(retries)]

    async def run():
        asleeps = []

        async def fake_sleep(d):
            asleeps.append(d)

        async with AsyncPyramidClient(url, retries=retries, backoff_s=0.5) as ac:
            ac._sleep = fake_sleep
            with pytest.raises(PyramidError) as aerr:
                await ac.ask("What is 1 + 1?")
        return aerr.value, asleeps

    aerr, asleeps = asyncio.run(run())
    assert aerr.code == "UNAVAILABLE" and aerr.attempts == retries + 1
    assert asleeps == [0.5 * 2**k for k in range(retries)]


# --- streaming -----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ask_stream_yields_provisional_then_final(deployment, router, traces, offline_route, protocol):
    from pyramid_client import AsyncPyramidClient, PyramidClient

    url = deployment.http_url if protocol == "http" else deployment.grpc_url
    found = escalating(router, traces, offline_route, 2, start=300, exclude=deployment.oracle_missing)
    with PyramidClient(url, protocol=protocol) as c:
        for idx, want in found:
            q = traces.questions[idx].question
            got = list(c.ask_stream(q))
            assert [r.provisional for r in got] == [True, False], f"idx {idx}"
            first, final = got
            assert first.tier == "committee" and first.answer == want.committee_answer and ORACLE not in first.calls
            assert (final.tier, final.answer, final.calls) == (want.tier, want.answer, want.calls)
            assert first.request_id == final.request_id and first.latency_s <= final.latency_s
            assert_same(final, c.ask(q), f"idx {idx}: streamed final vs plain ask")
        idx = next(i for i in range(50) if not offline_route(router, traces, i).escalated)
        got = list(c.ask_stream(traces.questions[idx].question))
        assert len(got) == 1 and not got[0].provisional and got[0].tier == "committee"

    async def run():
        async with AsyncPyramidClient(url, protocol=protocol) as ac:
            return [r async for r in ac.ask_stream(traces.questions[found[0][0]].question)]

    got = asyncio.run(run())
    assert [r.provisional for r in got] == [True, False]
    assert got[1].answer == found[0][1].answer


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_call_while_a_stream_is_open_on_the_same_thread(deployment, router, traces, offline_route, protocol):
    from pyramid_client import PyramidClient

    url = deployment.http_url if protocol == "http" else deployment.grpc_url
    (idx, want), (idx2, want2) = escalating(
        router, traces, offline_route, 2, start=600, exclude=deployment.oracle_missing
    )
    with PyramidClient(url, protocol=protocol) as c:
        it = c.ask_stream(traces.questions[idx].question)
        first = next(it)
        other = c.ask(traces.questions[idx2].question)  # the stream above is still open
        rest = list(it)
        assert first.provisional and [r.provisional for r in rest] == [False]
        assert rest[0].answer == want.answer and other.answer == want2.answer
        it = c.ask_stream(traces.questions[idx].question)
        assert next(it).provisional
        it.close()  # abandoned after the provisional answer: the request is cancelled
        assert c.ask(traces.questions[idx2].question).answer == want2.answer


def test_deadline_the_oracle_meets_is_not_provisional(deployment, http_client, router, traces, offline_route):
    idx, want = escalating(router, traces, offline_route, 1, start=400, exclude=deployment.oracle_missing)[0]
    r = http_client.ask(traces.questions[idx].question, deadline_ms=60_000)
    assert not r.provisional and (r.tier, r.answer) == (want.tier, want.answer)


# --- the commands --------------------------------------------------------------------------------


def test_pyramid_ask_json_both_protocols(deployment, grpc_client, traces, capsys):
    from pyramid_cli import main

    q = traces.questions[5].question
    want = grpc_client.ask(q)
    for url, proto in ((deployment.grpc_url, "grpc"), (deployment.http_url, "http")):
        assert main(["ask", q, "--url", url, "--protocol", proto, "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert (got["answer"], got["tier"], got["calls"]) == (want.answer, want.tier, want.calls)
        assert got["confidence"] == pytest.approx(want.confidence) and got["provisional"] is False
    # an error from the server: exit 1, the code and the field on stderr
    assert main(["ask", q, "--url", deployment.grpc_url, "--threshold", "2"]) == 1
    assert "INVALID_ARG" in capsys.readouterr().err
    # usage error: exit 2
    with pytest.raises(SystemExit) as ex:
        main(["ask", q, "--url", f"http://{deployment.http_url}", "--protocol", "grpc"])
    assert ex.value.code == 2


def test_pyramid_ask_stream_prints_provisional_then_final(deployment, router, traces, offline_route, capsys):
    from pyramid_cli import main

    idx, want = escalating(router, traces, offline_route, 1, start=500, exclude=deployment.oracle_missing)[0]
    assert main(["ask", traces.questions[idx].question, "--url", deployment.grpc_url, "--stream", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["provisional"] for x in lines] == [True, False]
    assert lines[1]["answer"] == want.answer


def test_console_script_ask(deployment, traces):
    exe = Path(sys.executable).parent / "pyramid"
    if not exe.is_file():
        pytest.skip("the pyramid console script is not installed in this environment")
    q = traces.questions[0].question
    p = subprocess.run(
        [str(exe), "ask", q, "--url", deployment.http_url, "--protocol", "http", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["answer"] == "18"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_run_gsm8k_summary_is_what_the_results_imply(deployment, router, traces, offline_route, tmp_path, protocol):
    from pyramid_cli import main
    from pyramid_cli.gsm8k import grade

    out = tmp_path / "run.json"
    url = deployment.http_url if protocol == "http" else deployment.grpc_url
    argv = ["run-gsm8k", "--n", "10", "--questions", str(deployment.traces / "questions.jsonl"), "--url", url,
            "--protocol", protocol, "--concurrency", "3", "--json", str(out), "--quiet", "--table"]  # fmt: skip
    assert main(argv) == 0
    d = json.loads(out.read_text())
    s, rows = d["summary"], d["results"]
    assert [r["idx"] for r in rows] == list(range(10))  # the first 10 in file order
    assert s["n"] == s["answered"] == 10 and s["errors"] == 0
    for r in rows:
        want = offline_route(router, traces, r["idx"])
        assert (r["tier"], r["answer"], r["calls"]) == (want.tier, want.answer, want.calls)
        assert r["correct"] == grade(r["answer"], traces.questions[r["idx"]].gold)
    assert s["correct"] == sum(r["correct"] for r in rows)
    assert s["accuracy"] == pytest.approx(s["correct"] / 10)
    assert s["oracle_calls"] == sum(r["escalated"] for r in rows)
    assert s["oracle_call_rate"] == pytest.approx(s["oracle_calls"] / 10)
    assert s["degraded"] == sum(r["degraded"] for r in rows) >= 1  # idx 2 lost an agent's record
    assert s["mean_cost"]["usd"] == pytest.approx(sum(r["costs"]["usd"] for r in rows) / 10)
    assert s["mean_cost"]["flops"] is None  # closed models: no parameter counts
    lat = sorted(r["latency_ms"] for r in rows)
    assert lat[0] <= s["latency_ms"]["p50"] <= s["latency_ms"]["p95"] <= lat[-1]


def test_run_gsm8k_prints_table_and_summary_and_exits_1_on_errors(deployment, traces, tmp_path, capsys):
    from pyramid_cli import main

    # The fixture's copy of the traces knows every question; a question file with one unknown
    # question makes that request fail (NOT_FOUND) while the others succeed.
    qfile = tmp_path / "q.jsonl"
    lines = [json.dumps({"idx": i, "question": traces.questions[i].question, "gold": traces.questions[i].gold})
             for i in (0, 1, 3)]  # fmt: skip
    lines.append(json.dumps({"idx": 9999, "question": "What is the airspeed of an unladen swallow?", "gold": "24"}))
    qfile.write_text("\n".join(lines) + "\n")
    rc = main(["run-gsm8k", "--questions", str(qfile), "--url", deployment.grpc_url, "--table", "--quiet"])
    out = capsys.readouterr()
    assert rc == 1
    assert "idx" in out.out.splitlines()[0] and "9999" in out.out and "NOT_FOUND" in out.out
    assert "accuracy: 0.7500 (3/4)" in out.out and "errors: 1 (NOT_FOUND x1)" in out.out
    assert "error on idx 9999: NOT_FOUND" in out.err
