"""The gateway's rules that need no server: request validation and what each OpenAI field maps to, how
``messages`` become the question, response shapes and headers, error mapping, API keys, metrics.
(Everything that talks to Triton is in tests/integration/test_gateway*.py, through the openai SDK.)"""

from __future__ import annotations

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
    import pyramid_triton.server as server
    from pyramid_triton import access

    monkeypatch.setenv(access.INFERENCE_KEY_ENV, "k" * 32)
    monkeypatch.delenv(access.INFERENCE_KEY_FILE_ENV, raising=False)
    started: list = []
    monkeypatch.setattr(server, "run_foreground", lambda children, on_ready: started.extend(children) or 0)
    assert server.main([str(tmp_path), "--openai-port", "9000"]) == 0
    tritonserver, gateway = started
    assert tritonserver.inference_key.value == "k" * 32
    assert gateway.env[access.INFERENCE_KEY_ENV] == "k" * 32 and access.INFERENCE_KEY_FILE_ENV not in gateway.env
