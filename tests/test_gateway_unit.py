"""The gateway's rules that need no server: request validation and what each OpenAI field maps to, how
``messages`` become the question, response shapes and headers, error mapping, API keys, metrics.
(Everything that talks to Triton is in tests/integration/test_gateway*.py, through the openai SDK.)"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "client", ROOT / "gateway"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from pyramid_client import PyramidError, PyramidResult  # noqa: E402
from pyramid_client.wire import cut_at_stop  # noqa: E402
from pyramid_gateway import responses as R  # noqa: E402
from pyramid_gateway.auth import KeyAuth  # noqa: E402
from pyramid_gateway.conversation import question_from_messages  # noqa: E402
from pyramid_gateway.errors import ApiError, from_pyramid  # noqa: E402
from pyramid_gateway.metrics import Metrics  # noqa: E402
from pyramid_gateway.protocol import parse_request, prompt_text  # noqa: E402
from pyramid_gateway.upstream import deployment_from_repository  # noqa: E402

USER = [{"role": "user", "content": "What is 2 + 2?"}]


def err(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as e:
        fn(*args)
    return e.value


# --- protocol -----------------------------------------------------------------------------------------


def test_fields_map_to_the_text_api_and_max_completion_tokens_is_max_tokens():
    r = parse_request(
        "chat",
        {"model": "pyramid", "messages": USER, "max_completion_tokens": 64, "temperature": 0.2, "seed": 3,
         "stop": "\n\n", "n": 1, "top_p": 1, "user": "u1",
         "pyramid": {"escalation_threshold": 0.7, "deadline_ms": 500, "strict": True, "task": "gsm8k"}},
    )  # fmt: skip
    assert (r.max_tokens, r.temperature, r.seed, r.stops()) == (64, 0.2, 3, ["\n\n"])
    o = r.options()
    assert (o.escalation_threshold, o.deadline_ms, o.strict, o.task) == (0.7, 500, True, "gsm8k")
    e = err(parse_request, "chat", {"model": "p", "messages": USER, "max_tokens": 5, "max_completion_tokens": 6})
    assert e.param == "max_completion_tokens"


def test_unknown_fields_and_pyramid_keys_are_named():
    e = err(parse_request, "chat", {"model": "p", "messages": USER, "pyramid": {"treshold": 1, "strict": True, "x": 0}})
    assert (
        e.status == 400 and e.param == "pyramid" and "treshold, x" in e.message and "escalation_threshold" in e.message
    )
    e = err(parse_request, "chat", {"model": "p", "messages": USER, "frequency": 1, "foo": 2})
    assert e.param == "frequency" and "frequency, foo" in e.message and e.code == "unknown_parameter"
    e = err(parse_request, "completion", {"model": "p"})
    assert e.param == "prompt" and e.code == "missing_required_parameter"
    e = err(parse_request, "chat", {"model": "p", "messages": USER, "temperature": "hot"})
    assert e.param == "temperature"
    e = err(parse_request, "chat", {"model": "p", "messages": USER, "pyramid": {"deadline_ms": -1}})
    assert e.param == "pyramid.deadline_ms"


@pytest.mark.parametrize(
    "field,value",
    [("n", 2), ("logprobs", True), ("top_logprobs", 3), ("top_p", 0.9), ("presence_penalty", 0.5),
     ("frequency_penalty", -1.0), ("logit_bias", {"50256": -100}), ("store", True),
     ("response_format", {"type": "json_object"}), ("tools", [{"type": "function"}]), ("tool_choice", "auto"),
     ("functions", [{"name": "f"}])],
)  # fmt: skip
def test_what_cannot_be_honoured_is_a_400_not_a_silent_ignore(field, value):
    e = err(parse_request, "chat", {"model": "p", "messages": USER, field: value})
    assert e.status == 400 and e.param == field


def test_no_op_values_are_accepted():
    body = {"model": "p", "messages": USER, "n": 1, "logprobs": False, "top_p": 1.0, "presence_penalty": 0,
            "frequency_penalty": 0, "logit_bias": {}, "response_format": {"type": "text"}, "store": False,
            "tools": None, "tool_choice": None}  # fmt: skip
    assert parse_request("chat", body).model == "p"
    c = {"model": "p", "prompt": "q", "echo": False, "best_of": 1, "logprobs": None, "suffix": None}
    assert prompt_text(parse_request("completion", c)) == "q"


def test_completion_prompts_and_stop_limits():
    assert prompt_text(parse_request("completion", {"model": "p", "prompt": ["only one"]})) == "only one"
    assert err(prompt_text, parse_request("completion", {"model": "p", "prompt": ["a", "b"]})).param == "prompt"
    assert err(parse_request, "completion", {"model": "p", "prompt": "q", "echo": True}).param == "echo"
    assert err(parse_request, "completion", {"model": "p", "prompt": "q", "best_of": 2}).param == "best_of"
    assert err(parse_request, "completion", {"model": "p", "prompt": [1, 2]}).param.startswith("prompt")
    assert err(parse_request, "completion", {"model": "p", "prompt": "q", "stop": list("abcde")}).param == "stop"
    assert err(parse_request, "chat", ["not", "an", "object"]).param is None


# --- conversation -------------------------------------------------------------------------------------


def test_one_user_turn_is_the_question_verbatim():
    assert question_from_messages(USER) == "What is 2 + 2?"
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "2 + 2?"}]}]
    assert question_from_messages(parts) == "What is\n2 + 2?"


def test_system_prompt_and_history_are_rendered_ahead_of_the_last_user_turn():
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4", "tool_calls": None, "refusal": None},
        {"role": "user", "content": "And times 3?", "name": "ann"},
    ]
    assert question_from_messages(msgs) == (
        "System: Be brief.\n\nUser: What is 2 + 2?\n\nAssistant: 4\n\nUser (ann): And times 3?"
    )


@pytest.mark.parametrize(
    "messages,param",
    [
        ([], "messages"),
        ([{"role": "system", "content": "hi"}], "messages"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "messages[1].role"),
        ([{"role": "tool", "content": "x", "tool_call_id": "1"}, *USER], "messages[0].role"),
        ([{"role": "robot", "content": "x"}], "messages[0].role"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages[0].content[0].type",
        ),
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "messages[0].content[0].type"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "user", "content": "  "}], "messages[0].content"),
        ([{"role": "user", "content": "q", "extra": 1}], "messages[0].extra"),
        ([{"role": "assistant", "content": "a", "tool_calls": [{"id": "1"}]}, *USER], "messages[0].tool_calls"),
        (["just a string"], "messages[0]"),
    ],
)
def test_a_conversation_the_router_cannot_route_is_a_400(messages, param):
    e = err(question_from_messages, messages)
    assert e.status == 400 and e.param == param


# --- responses ----------------------------------------------------------------------------------------


def _result(**kw) -> PyramidResult:
    base = dict(
        answer="4", text="2 + 2 = 4", tier="oracle", escalated=True, confidence=0.4, agreement=0.5,
        agent_answers={"a": "4", "b": "5"}, failed_agents=[], calls=["a", "b", "o"], degraded=False,
        cost=1.2, costs={"usd": 1.2, "flops": None}, provisional=False, request_id="rid",
        tokens={"a": [10, 20], "b": [10, 30], "o": [10, 40]},
    )  # fmt: skip
    base.update(kw)
    return PyramidResult(**base)


def test_router_metadata_per_tier_usage_and_headers():
    meta = R.router_metadata("pyramid", _result(), oracle="o")
    assert meta["usage"] == {
        "committee": {"calls": 2, "prompt_tokens": 20, "completion_tokens": 50},
        "oracle": {"calls": 1, "prompt_tokens": 10, "completion_tokens": 40},
    }
    assert meta["costs"] == {"usd": 1.2, "flops": None}
    h = R.headers(meta)
    assert h["x-pyramid-tier"] == "oracle" and h["x-pyramid-escalated"] == "true"
    assert h["x-pyramid-calls"] == "a,b,o" and h["x-request-id"] == "rid" and h["x-pyramid-cost"] == "1.2"
    assert "x-pyramid-confidence" in h and all(k.startswith("x-") for k in h)
    nan = R.router_metadata("pyramid", _result(cost=float("nan")), oracle="o")
    assert nan["cost"] is None and "x-pyramid-cost" not in R.headers(nan)
    assert "router_budget" not in meta  # the router's budget controller did not hold this request
    held = {"target": 0.2, "window_rate": 0.21, "offset": -0.05, "thresholds": [0.7, 0.8]}
    assert R.router_metadata("pyramid", _result(budget=held), oracle="o")["router_budget"] == held


def test_bodies_and_chunks_have_openais_shapes():
    a = R.Answer("hi", "stop", 3, 4, {"tier": "committee"})
    c = R.chat_completion("chatcmpl-1", "pyramid", 7, a)
    assert c["choices"][0]["message"] == {"role": "assistant", "content": "hi", "refusal": None}
    assert c["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert c["pyramid"] == {"tier": "committee"} and c["object"] == "chat.completion"
    t = R.text_completion("cmpl-1", "pyramid", 7, a)
    assert t["choices"][0]["text"] == "hi" and t["object"] == "text_completion"
    ext = R.chunk(True, "x", "pyramid", 7, pyramid={"provisional": True})
    assert ext["choices"][0]["delta"] == {} and ext["pyramid"] == {"provisional": True}
    assert R.chunk(False, "x", "pyramid", 7, pyramid={})["choices"][0]["text"] == ""
    assert R.chunk(True, "x", "pyramid", 7, choices=False, usage={})["choices"] == []
    first = R.chunk(True, "x", "pyramid", 7, role=True, text="")
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert R.sse({"a": 1}) == b'data: {"a":1}\n\n' and R.DONE == b"data: [DONE]\n\n"


def test_stop_cuts_at_the_earliest_sequence():
    """The router's rule too (Triton's OpenAI frontend sends it stop_words): one home, pyramid_client.wire."""
    assert cut_at_stop("a. b! c.", [".", "!"]) == ("a", True)
    assert cut_at_stop("a b", ["x", ""]) == ("a b", False)
    assert cut_at_stop("abc", []) == ("abc", False)


# --- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code,message,status,param",
    [
        ("INVALID_ARG", "invalid input 'max_tokens': must be <= 8192, got 9000", 400, "max_tokens"),
        ("INVALID_ARG", "invalid input 'text_input': must not be empty", 400, "prompt"),
        (
            "INVALID_ARG",
            "invalid input 'escalation_threshold': must be within [0, 1]",
            400,
            "pyramid.escalation_threshold",
        ),
        ("NOT_FOUND", "every model called failed (no record)", 400, "prompt"),
        ("UNAVAILABLE", "failed to connect to all addresses", 503, None),
        ("DEADLINE_EXCEEDED", "no complete response within 300 s", 504, None),
        ("INVALID_ARG", "invalid input 'task': unknown task 'x'; known: choice, gsm8k, text", 400, "pyramid.task"),
        ("UNSUPPORTED", "task 'text' has no calibration in this deployment (calibrated: gsm8k)", 400, "pyramid.task"),
        ("INTERNAL", "boom", 502, None),
    ],
)
def test_router_errors_map_to_http_statuses(code, message, status, param):
    e = from_pyramid(PyramidError(message, code), retry_after_s=2, text_field="prompt")
    assert e.status == status and e.param == param
    assert set(e.body()["error"]) == {"message", "type", "param", "code"}
    assert (e.headers.get("Retry-After") == "2") == (status == 503)


# --- API keys -----------------------------------------------------------------------------------------


def test_api_keys_from_file_and_env_with_per_key_limits(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# keys\nsk-alpha-0123456789 1\nsk-beta-0123456789  # no own limit\n", encoding="utf-8")
    auth = KeyAuth.load(f, env="sk-env-0123456789", max_concurrent=2, retry_after_s=5)
    assert auth is not None and len(auth.keys) == 3
    assert err(auth.admit, None).status == 401
    assert err(auth.admit, "Bearer sk-wrong").code == "invalid_api_key"
    assert err(auth.admit, "Basic sk-alpha-0123456789").status == 401
    lease = auth.admit("Bearer sk-alpha-0123456789")
    over = err(auth.admit, "Bearer sk-alpha-0123456789")
    assert over.status == 429 and over.headers["Retry-After"] == "5"
    lease.release()
    lease.release()  # idempotent: the slot is freed once
    with auth.admit("Bearer sk-alpha-0123456789"):
        pass
    assert auth.in_flight[b"sk-alpha-0123456789"] == 0
    with auth.admit("Bearer sk-env-0123456789"), auth.admit("Bearer sk-env-0123456789"):
        assert err(auth.admit, "Bearer sk-env-0123456789").status == 429  # the global limit, 2
    assert KeyAuth.load(None, env="") is None
    (tmp_path / "bad").write_text("k1 k2 k3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad:1"):
        KeyAuth.load(tmp_path / "bad", env="")


# --- deployment, metrics --------------------------------------------------------------------------------


def test_deployment_from_a_rendered_router_config(tmp_path):
    (tmp_path / "pyramid").mkdir()
    (tmp_path / "pyramid" / "config.pbtxt").write_text(
        'name: "pyramid"\nparameters { key: "agents" value: { string_value: "a,b" } }\n'
        'parameters { key: "oracle" value: { string_value: "o" } }\n'
        'parameters { key: "default_max_tokens" value: { string_value: "256" } }\n',
        encoding="utf-8",
    )
    d = deployment_from_repository(tmp_path)
    assert (d.committee, d.oracle, d.default_max_tokens) == (("a", "b"), "o", 256)
    with pytest.raises(ValueError, match="config.pbtxt"):
        deployment_from_repository(tmp_path, "missing")


def test_metrics_render_prometheus_text():
    m = Metrics()
    m.observe("/v1/chat/completions", "pyramid", 200, 0.02)
    m.observe("/v1/chat/completions", "pyramid", 400, 0.001)
    m.add_tokens("pyramid", 10, 5)
    text = m.render()
    assert 'pyramid_gateway_requests_total{endpoint="/v1/chat/completions",model="pyramid",status="400"} 1' in text
    assert 'pyramid_gateway_request_seconds_bucket{endpoint="/v1/chat/completions",le="0.025"} 2' in text
    assert 'pyramid_gateway_request_seconds_bucket{endpoint="/v1/chat/completions",le="0.005"} 1' in text
    assert 'pyramid_gateway_tokens_total{model="pyramid",kind="completion"} 5' in text


# --- the app's error contract ---------------------------------------------------------------------------


def test_a_bug_is_a_500_in_openais_format_and_counted():
    """Whatever fails inside the gateway, the client gets OpenAI's error shape, and the metrics see it."""
    import asyncio

    import httpx2 as httpx

    from pyramid_gateway.app import GatewayConfig, create_app
    from pyramid_gateway.upstream import Deployment, Upstream

    class Broken(Upstream):  # a real Upstream (nothing listens at its address) whose discovery has a bug
        async def catalog(self):
            raise KeyError("boom")

    async def run():
        app = create_app(GatewayConfig(), upstream=Broken("127.0.0.1:1", deployment=Deployment(("a",), "o")))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
                body = {"model": "pyramid", "messages": USER}
                r = await c.post("/v1/chat/completions", json=body)
                nf = await c.get("/v1/nowhere")
                m = await c.get("/metrics")
                return r, nf, m.text

    r, nf, metrics = asyncio.run(run())
    assert (
        r.status_code == 500
        and r.json()["error"]["code"] == "internal_error"
        and "boom" in r.json()["error"]["message"]
    )
    assert nf.status_code == 404 and set(nf.json()["error"]) == {"message", "type", "param", "code"}
    assert 'pyramid_gateway_requests_total{endpoint="/v1/chat/completions",model="pyramid",status="500"} 1' in metrics
    assert "pyramid_gateway_in_flight 0" in metrics.splitlines()


def test_the_gateway_reads_the_inference_key_and_sends_it_with_every_inference_call(monkeypatch, tmp_path):
    """$PYRAMID_INFERENCE_KEY[_FILE] (a server that keys inference): the router client and the direct
    engine calls carry it as gRPC metadata under Triton's prefix; a key file others can read is refused."""
    import asyncio

    from pyramid_client.keys import INFERENCE_KEY_ENV, INFERENCE_KEY_FILE_ENV
    from pyramid_gateway.__main__ import config_from, parser
    from pyramid_gateway.upstream import Upstream

    monkeypatch.delenv(INFERENCE_KEY_FILE_ENV, raising=False)
    monkeypatch.delenv(INFERENCE_KEY_ENV, raising=False)
    assert config_from(parser().parse_args([])).inference_key is None
    monkeypatch.setenv(INFERENCE_KEY_ENV, "k" * 32)
    config = config_from(parser().parse_args([]))
    assert config.inference_key == "k" * 32
    want = {"triton-grpc-protocol-pyramid-inference-key": "k" * 32}

    async def headers() -> tuple:
        up = Upstream("127.0.0.1:1", inference_key=config.inference_key)  # its gRPC clients need a loop
        try:
            return up._inference_headers, up.router._transport.headers
        finally:
            await up.close()

    assert asyncio.run(headers()) == (want, want)
    loose = tmp_path / "key"
    loose.write_text("k" * 32)
    loose.chmod(0o644)
    monkeypatch.setenv(INFERENCE_KEY_FILE_ENV, str(loose))
    with pytest.raises(ValueError, match="readable by others"):
        config_from(parser().parse_args([]))


def test_make_serve_hands_the_inference_key_to_the_gateway(tmp_path, monkeypatch):
    """``make serve`` with a keyed spec (here: the key in the environment) starts the gateway with the key in
    its environment (as a value: a key file of the caller's is not passed on), so it can send it."""
    import pyramid_ops.server as server
    from pyramid_ops import access

    monkeypatch.setenv(access.INFERENCE_KEY_ENV, "k" * 32)
    monkeypatch.delenv(access.INFERENCE_KEY_FILE_ENV, raising=False)
    started: list = []
    monkeypatch.setattr(server, "run_foreground", lambda children, on_ready: started.extend(children) or 0)
    assert server.main([str(tmp_path), "--openai-port", "9000"]) == 0
    tritonserver, gateway = started
    assert tritonserver.inference_key.value == "k" * 32
    assert gateway.env[access.INFERENCE_KEY_ENV] == "k" * 32 and access.INFERENCE_KEY_FILE_ENV not in gateway.env


# --- hostile and careless clients (issue 27 items 2-5, issue 26 item 2; docs/SECURITY.md "Hostile clients") ------

FORGED_MODEL = 'x"}\npyramid_gateway_in_flight 31337\nfake{a="b'
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_exposition(text: str) -> list[tuple[str, dict[str, str], float]]:
    """A strict parser of Prometheus' text format 0.0.4 (prometheus_client is not a dependency here): every
    line is a comment (HELP / TYPE) or one sample ``name{label="value",...} number``; label values unescaped;
    anything else fails the test."""
    samples = []
    assert text.endswith("\n")
    for n, line in enumerate(text[:-1].split("\n"), 1):
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = _SAMPLE.fullmatch(line)
        assert m, f"line {n} is not a sample: {line!r}"
        labels: dict[str, str] = {}
        if m.group(2) is not None:
            rest = m.group(2)
            while rest:
                lm = _LABEL.match(rest)
                assert lm, f"line {n}: bad labels {m.group(2)!r}"
                raw = lm.group(2)
                labels[lm.group(1)] = re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), raw)
                rest = rest[lm.end() :]
                assert rest == "" or rest.startswith(","), f"line {n}: bad labels {m.group(2)!r}"
                rest = rest[1:]
        samples.append((m.group(1), labels, float(m.group(3))))
    return samples


def test_label_values_are_escaped_so_the_scrape_parses_back():
    m = Metrics()
    m.observe("/v1/chat/completions", 'a"b\\c\nd', 404, 0.01)
    samples = parse_exposition(m.render())
    req = [s for s in samples if s[0] == "pyramid_gateway_requests_total"]
    assert [s[1]["model"] for s in req] == ['a"b\\c\nd']  # one sample, its value exactly what was labelled
    assert {s[0] for s in samples} <= {
        "pyramid_gateway_requests_total", "pyramid_gateway_request_seconds_bucket", "pyramid_gateway_request_seconds_sum",
        "pyramid_gateway_request_seconds_count", "pyramid_gateway_in_flight", "pyramid_gateway_client_disconnects_total",
    }  # fmt: skip


def _fake_upstream(**kw):
    """A real Upstream whose catalog is the given deployment (nothing listens at its address: no route runs)."""
    from pyramid_gateway.upstream import Catalog, Deployment, Target, Upstream

    class Offline(Upstream):
        async def catalog(self):
            d = self.deployment
            cat = Catalog("pyramid", list(d.committee), d.oracle, 512)
            for name in ("pyramid", "pyramid-committee", "pyramid-oracle"):
                cat.targets[name] = Target(name, "pyramid", "router")
            for e in (*d.committee, d.oracle):
                cat.targets[e] = Target(e, e, "engine")
            self._catalog = cat
            return cat

    return Offline("127.0.0.1:1", deployment=Deployment(("a", "b"), "o"), **kw)


async def _asgi(requests, **config_kw):
    """[(method, path, kwargs)] through the app in process; the responses, then the /metrics text."""
    import httpx2 as httpx

    from pyramid_gateway.app import GatewayConfig, create_app

    app = create_app(GatewayConfig(**config_kw), upstream=_fake_upstream())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
            out = [await c.request(method, path, **kw) for method, path, kw in requests]
            return out, (await c.get("/metrics")).text


def test_a_forged_model_name_adds_no_line_and_no_label_to_the_metrics():
    """Issue 27 item 2: the request counter was labelled with the client's model string, unescaped, even on a 404."""
    import asyncio

    body = {"model": FORGED_MODEL, "messages": USER}
    many = [("POST", "/v1/chat/completions", {"json": {"model": f"m{i}" * 500, "messages": USER}}) for i in range(50)]
    rs, text = asyncio.run(_asgi([("POST", "/v1/chat/completions", {"json": body}), *many]))
    assert {r.status_code for r in rs} == {404}
    samples = parse_exposition(text)  # every line parses: nothing was injected
    assert not [s for s in samples if s[0] == "fake"]
    assert [s[2] for s in samples if s[0] == "pyramid_gateway_in_flight"] == [0]
    models = {s[1]["model"] for s in samples if "model" in s[1]}
    assert models == {"unknown"}  # no value a client chose; one series for 51 unknown names
    assert ("pyramid_gateway_requests_total", {"endpoint": "/v1/chat/completions", "model": "unknown",
            "status": "404"}, 51.0) in samples  # fmt: skip
    assert len(text) < 5000  # bounded, whatever the names


def test_a_known_model_keeps_its_label_and_a_request_without_one_is_question_mark():
    import asyncio

    from pyramid_gateway.serving import Gateway

    gw = Gateway(_fake_upstream_sync())
    assert [gw.model_label(m) for m in ("pyramid", "pyramid-oracle", "a", "o", "pyramid-x", "")] == [
        "pyramid", "pyramid-oracle", "a", "o", "unknown", "unknown",
    ]  # fmt: skip
    rs, text = asyncio.run(_asgi([("POST", "/v1/chat/completions", {"content": b"{"})]))
    assert rs[0].status_code == 400
    assert 'pyramid_gateway_requests_total{endpoint="/v1/chat/completions",model="?",status="400"} 1' in text


def _fake_upstream_sync():
    """The deployment-only view of _fake_upstream, without gRPC clients (model_label reads no more)."""
    from types import SimpleNamespace

    from pyramid_gateway.upstream import Deployment

    return SimpleNamespace(_catalog=None, router_name="pyramid", deployment=Deployment(("a",), "o"))


@pytest.mark.parametrize(
    "raw, param",
    [
        (b'{"model": "pyramid", "messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
        (b'{"model": "pyramid", "messages": [{"role": "user", "content": "a"}], "user": "\\udfff x"}', "user"),
        (b'{"model": "pyramid", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}", "messages"),
        (b"[" * 100_000 + b"]" * 100_000, None),
        (b'{"model": "pyramid", "messages": [{"role": "user", "content": "a"}], "temperature": NaN}', None),
        (b'{"model": "pyramid", "messages": [{"role": "user", "content": "a"}], "seed": ' + b"9" * 5000 + b"}", None),
        (b'{"model": "pyramid", "messages": [{"role": "user", "content": "a"}], "max_tokens": true}', "max_tokens"),
        (b'{"model": "pyramid", "messages": [{"role": "user", "content": "a"}], "stream": "yes"}', "stream"),
        (b'{"model": "pyramid", "messages": [{"role": "user", "content": "a"}], "max_tokens": 5.0}', "max_tokens"),
        (b'{"model": "pyramid", "messages": [{"role": {}, "content": "a"}]}', "messages[0].role"),
        (b'{"model": "pyramid", "messages": [{"role": "user", "content": "a"}], "\\ud800": 1}', None),
        (b'\xff\xfe{"model": 1}', None),
    ],
)
def test_malformed_bodies_are_a_400_naming_the_field_never_a_500(raw, param):
    """Issue 27 item 4: a lone surrogate was a UnicodeEncodeError, JSON 1,000 deep a RecursionError (500s);
    max_tokens: true and stream: "yes" were coerced."""
    import asyncio

    rs, _ = asyncio.run(_asgi([("POST", "/v1/chat/completions", {"content": raw})]))
    r = rs[0]
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert len(r.text) < 1500


def test_strict_types_no_coercion():
    for field, value in (("max_tokens", True), ("stream", "yes"), ("stream", 1), ("temperature", "0.5"),
                         ("seed", "3"), ("max_tokens", "64")):  # fmt: skip
        e = err(parse_request, "chat", {"model": "p", "messages": USER, field: value})
        assert e.status == 400 and e.param == field, (field, value)
    r = parse_request("chat", {"model": "p", "messages": USER, "temperature": 1, "top_p": 1, "stream": False})
    assert r.temperature == 1.0  # an int for a float field is still fine


def test_error_bodies_quote_a_short_prefix_and_never_a_server_path():
    """Issue 27 item 5 / issue 26 item 5: a 1 MB model name came back whole; a replay NOT_FOUND carried the
    server's trace directory."""
    import asyncio

    from pyramid_gateway.errors import CLIP_CHARS, MAX_MESSAGE_CHARS, clip, scrub_paths

    huge = "m" * 1_000_000
    keys = {f"k{i}" * 100: 1 for i in range(100)}
    rs, _ = asyncio.run(
        _asgi([
            ("POST", "/v1/chat/completions", {"json": {"model": huge, "messages": USER}}),
            ("POST", "/v1/chat/completions", {"json": {"model": "pyramid", "messages": USER, **keys}}),
            ("POST", "/v1/chat/completions", {"json": {"model": "pyramid", "messages": USER, "n": [huge]}}),
            ("POST", "/v1/chat/completions", {"json": {"model": "pyramid", "messages": [{"role": huge, "content": "a"}]}}),
            ("GET", "/v1/models/" + "z" * 10_000, {}),
            ("GET", "/" + "q" * 10_000, {}),
        ], max_body_bytes=8 * 1024 * 1024)
    )  # fmt: skip
    assert [r.status_code for r in rs] == [404, 400, 400, 400, 404, 404]
    for r in rs:
        e = r.json()["error"]
        assert len(e["message"]) <= MAX_MESSAGE_CHARS + 3 and "m" * (CLIP_CHARS + 1) not in e["message"]
        assert e["param"] is None or len(e["param"]) <= CLIP_CHARS + 3
    assert "m" * CLIP_CHARS + "..." in rs[0].json()["error"]["message"]  # a prefix, marked as cut
    assert "and 95 more" in rs[1].json()["error"]["message"]
    assert clip("abc") == "abc" and clip("x" * 100) == "x" * 64 + "..."
    # a message from Triton / the router: the server's paths replaced, a URL path a client sent kept
    nf = from_pyramid(
        PyramidError(
            "replay engine 'a': question not found in traces /tmp/pytest-of-x/triton0/traces: 'What is 2 + 2?'",
            "NOT_FOUND",
        ),
        1,
    )
    assert "/tmp" not in nf.message and "traces <path>: 'What is 2 + 2?'" in nf.message
    assert scrub_paths("GET /v1/models/x: Not Found") == "GET /v1/models/x: Not Found"
    assert scrub_paths("open '/usr/lib/x.so' and /work/main/out/a.json failed") == "open '<path>' and <path> failed"
    bug = ApiError(500, "internal error: OSError: [Errno 2] No such file or directory: '/etc/pyramid/x' \ud800")
    assert "/etc" not in bug.message and bug.message.encode("utf-8")  # and encodable, surrogate or not


def test_a_body_over_the_limit_is_a_413_before_it_is_read():
    import asyncio

    big = {"model": "pyramid", "messages": [{"role": "user", "content": "x" * 5000}]}

    async def chunks():
        for _ in range(10):
            yield b" " * 1000  # no Content-Length: counted as it arrives

    rs, text = asyncio.run(
        _asgi(
            [("POST", "/v1/chat/completions", {"json": big}), ("POST", "/v1/completions", {"content": chunks()})],
            max_body_bytes=4096,
        )  # fmt: skip
    )
    for r in rs:
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text
        assert "4096" in r.json()["error"]["message"] and r.headers["connection"] == "close"
    assert 'model="?",status="413"} 1' in text


def test_the_gateway_listens_on_loopback_and_refuses_to_listen_beyond_it_without_keys(monkeypatch, tmp_path):
    """Issue 26 item 2: --host defaulted to 0.0.0.0 with no keys, and --help did not say so."""
    from pyramid_gateway.__main__ import config_from, is_loopback, main, parser
    from pyramid_gateway.auth import ENV_VAR

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert parser().parse_args([]).host == "127.0.0.1"
    help_text = " ".join(parser().format_help().split())
    for shown in ("(default: 127.0.0.1)", "(default: 4194304)", "(default: 10.0)", "(default: 30.0)"):
        assert shown in help_text
    assert [is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "0.0.0.0", "::",
                                     "10.0.0.5", "example.org")] == [True] * 5 + [False] * 4  # fmt: skip
    for host in ("0.0.0.0", "::", "10.0.0.5"):
        with pytest.raises(ValueError, match="--insecure-no-keys"):
            config_from(parser().parse_args(["--host", host]))
        assert main(["--host", host]) == 2  # refused before anything listens
        assert config_from(parser().parse_args(["--host", host, "--insecure-no-keys"])).auth is None
    keys = tmp_path / "keys"
    keys.write_text("k" * 32 + "\n")
    assert config_from(parser().parse_args(["--host", "0.0.0.0", "--api-keys-file", str(keys)])).auth is not None
    monkeypatch.setenv(ENV_VAR, "k" * 32)
    assert config_from(parser().parse_args(["--host", "0.0.0.0"])).auth is not None
    monkeypatch.setenv("PYRAMID_GATEWAY_MAX_BODY_BYTES", "1000")
    assert config_from(parser().parse_args([])).max_body_bytes == 1000
    with pytest.raises(ValueError, match="--body-timeout-s"):
        config_from(parser().parse_args(["--body-timeout-s", "0"]))


# --- slow and vanishing clients, against uvicorn with the gateway's protocol (in this process, loopback) ------


class _Served:
    """The app served by uvicorn (``limits.protocol_class``) on 127.0.0.1 in a thread, stopped on exit."""

    def __init__(self, header_timeout_s=0.5, **config_kw):
        import threading

        import uvicorn

        from pyramid_gateway.app import GatewayConfig, create_app
        from pyramid_gateway.limits import protocol_class
        from pyramid_gateway.upstream import Deployment

        config = GatewayConfig(triton_url="127.0.0.1:1", deployment=Deployment(("a",), "o"), **config_kw)
        uc = uvicorn.Config(create_app(config), host="127.0.0.1", port=0, log_config=None, lifespan="on",
                            http=protocol_class(header_timeout_s, max_header_bytes=8192, drain_timeout_s=1.0))  # fmt: skip
        self.server = uvicorn.Server(uc)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        import time

        self.thread.start()
        deadline = time.monotonic() + 20
        while not (self.server.started and self.server.servers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started, "uvicorn did not start"
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)

    def connect(self):
        import socket

        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return s

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()


def _reply(sock, timeout_s=5.0) -> bytes:
    """Everything the server sends until it closes the connection (bounded by ``timeout_s``)."""
    import time

    sock.settimeout(timeout_s)
    out = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            return out
        out += chunk
    raise AssertionError(f"the connection was not closed within {timeout_s} s; got {out[:200]!r}")


def test_slow_headers_a_body_that_never_comes_and_huge_headers_time_out_or_are_refused():
    """Issue 27 item 3: clients that sent headers and never a body were held for good (1,000 in flight)."""
    import time

    with _Served(header_timeout_s=0.5, body_timeout_s=0.5) as srv:
        idle = srv.connect()  # connects, sends nothing
        partial = srv.connect()
        partial.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        nobody = srv.connect()
        nobody.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                       b"content-length: 100\r\n\r\n{\"model\"")  # fmt: skip
        huge = srv.connect()
        huge.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nx-big: " + b"a" * 20_000 + b"\r\n\r\n")
        t0 = time.monotonic()
        assert _reply(idle).startswith(b"HTTP/1.1 408 ")
        assert _reply(partial).startswith(b"HTTP/1.1 408 ")
        body_reply = _reply(nobody)
        assert body_reply.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in body_reply
        assert _reply(huge).startswith(b"HTTP/1.1 431 ")
        assert time.monotonic() - t0 < 5
        for s in (idle, partial, nobody, huge):
            s.close()
        # a kept-alive connection serves its requests as before
        ok = srv.connect()
        ok.settimeout(5)
        for _ in range(2):
            ok.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while not got.endswith(b'{"status":"live"}'):
                chunk = ok.recv(65536)
                assert chunk, got
                got += chunk
            assert got.startswith(b"HTTP/1.1 200 ")
        ok.close()
        samples = parse_exposition(srv.metrics())
        assert ("pyramid_gateway_requests_total", {"endpoint": "/v1/chat/completions", "model": "?", "status": "408"},
                1.0) in samples  # fmt: skip
        assert [s[2] for s in samples if s[0] == "pyramid_gateway_in_flight"] == [0]


def test_a_client_that_leaves_mid_body_is_one_499_log_line_not_a_traceback(caplog):
    import logging
    import time

    caplog.set_level(logging.INFO)
    with _Served(header_timeout_s=5, body_timeout_s=5) as srv:
        s = srv.connect()
        s.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-length: 1000\r\n\r\n{"mo')
        time.sleep(0.2)
        s.close()
        deadline = time.monotonic() + 5
        while "client_disconnects_total 1" not in srv.metrics() and time.monotonic() < deadline:
            time.sleep(0.05)
        text = srv.metrics()
    assert 'pyramid_gateway_requests_total{endpoint="/v1/chat/completions",model="?",status="499"} 1' in text
    assert 'status="500"' not in text
    lines = [r for r in caplog.records if "499" in r.getMessage()]
    assert len(lines) == 1 and "went away" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_a_gateway_process_beyond_loopback_without_keys_does_not_start(tmp_path, monkeypatch):
    """The refusal as ``make serve HOST=0.0.0.0`` or a script meets it: the process exits (code 2) before it
    listens, and the error says what to do."""
    from pyramid_gateway.auth import ENV_VAR
    from pyramid_gateway.process import GatewayError, GatewayProcess

    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    gw = GatewayProcess("127.0.0.1:1", 1, host="0.0.0.0", log_path=tmp_path / "gw.log", env=env)
    with pytest.raises(GatewayError, match="exited with code 2") as e:
        gw.start(timeout_s=60, wait_ready=False)
    assert "--insecure-no-keys" in str(e.value) and "PYRAMID_GATEWAY_API_KEYS" in str(e.value)


def test_make_serve_starts_the_gateway_on_its_host_with_the_callers_api_keys(tmp_path, monkeypatch):
    """``make serve HOST=...`` hands HOST to the gateway, and its environment: $PYRAMID_GATEWAY_API_KEYS (what a
    non-loopback HOST needs, else the gateway refuses to start) reaches it."""
    import pyramid_ops.server as server
    from pyramid_gateway.auth import ENV_VAR

    monkeypatch.setenv(ENV_VAR, "k" * 32)
    started: list = []
    monkeypatch.setattr(server, "run_foreground", lambda children, on_ready: started.extend(children) or 0)
    assert server.main([str(tmp_path), "--openai-port", "9000", "--host", "0.0.0.0"]) == 0
    gateway = started[-1]
    assert gateway.host == "0.0.0.0" and gateway.env[ENV_VAR] == "k" * 32
    assert gateway.command()[gateway.command().index("--host") + 1] == "0.0.0.0"
