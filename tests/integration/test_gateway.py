"""The OpenAI-compatible gateway, through the official ``openai`` SDK (sync and async), against a real
gateway process in front of the session's real tritonserver (replay profile).

Answers must equal the gRPC client's (the same router, the same decisions); streaming sends the final
answer as the text and the committee's provisional answer as an extension chunk with no choices; every
error is OpenAI's format with the right status; 32 concurrent clients get the right answers.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import AGENT_MISSING, COMMITTEE, ORACLE

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "gateway") not in sys.path:
    sys.path.insert(0, str(ROOT / "gateway"))

import openai  # noqa: E402 - after the path set-up, like the conftest's imports

QUESTIONS = list(range(40))  # both tiers; AGENT_MISSING (2, 11) are degraded routes
MODELS = {"pyramid", "pyramid-committee", "pyramid-oracle", *COMMITTEE, ORACLE}


@pytest.fixture(scope="module")
def gateway(deployment, tmp_path_factory):
    from pyramid_gateway.process import GatewayProcess
    from pyramid_ops.server import free_ports

    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    args = ["--model-repository", str(deployment.repository)]
    with GatewayProcess(deployment.grpc_url, free_ports(1)[0], log_path=log, extra_args=args) as gw:
        yield gw


@pytest.fixture(scope="module")
def oa(gateway):
    # max_retries=0: the SDK would otherwise retry 503 / 504 and hide what the gateway answered.
    with openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def grpc_answers(deployment, traces):
    """{idx: the gRPC client's PyramidResult} for QUESTIONS: what every gateway answer must equal."""
    from pyramid_client import PyramidClient

    with PyramidClient(deployment.grpc_url, timeout_s=60) as c:
        return {i: c.ask(traces.questions[i].question) for i in QUESTIONS}


def chat(oa, question: str, model: str = "pyramid", **kw):
    return oa.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **kw)


def meta(obj) -> dict:
    """The ``pyramid`` extension object of an SDK response or chunk."""
    return obj.model_extra["pyramid"]


def assert_same_route(content: str, p: dict, usage, g, where: str) -> None:
    """A gateway answer equals the gRPC client's: text, decision, metadata, tokens."""
    assert content == g.text, where
    for f in ("tier", "escalated", "answer", "agent_answers", "failed_agents", "calls", "degraded", "provisional"):
        assert p[f] == getattr(g, f), f"{where}: {f}"
    assert math.isclose(p["confidence"], g.confidence, abs_tol=1e-5), where
    assert math.isclose(p["cost"], g.cost, rel_tol=1e-5), where
    assert usage.prompt_tokens == sum(t[0] for t in g.tokens.values()) > 0, where
    assert usage.completion_tokens == sum(t[1] for t in g.tokens.values()) > 0, where
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    per_tier = p["usage"]
    # every call made, but a failed one (no output, no tokens)
    assert sum(t["calls"] for t in per_tier.values()) == len(g.tokens) == len(g.calls) - len(g.failed_agents), where
    assert sum(t["completion_tokens"] for t in per_tier.values()) == usage.completion_tokens, where
    assert per_tier["oracle"]["calls"] == (1 if ORACLE in g.tokens else 0), (where, per_tier, g.tokens)


# --- models, health, metrics -------------------------------------------------------------------------


def test_models_list_the_router_its_forced_tiers_and_each_engine(oa, gateway):
    models = {m.id: m for m in oa.models.list()}
    assert set(models) == MODELS
    assert models["pyramid-oracle"].model_extra["pyramid"] == {"kind": "router", "force_tier": "oracle"}
    assert models[ORACLE].model_extra["pyramid"] == {"kind": "engine", "tier": "oracle"}
    assert {models[a].model_extra["pyramid"]["tier"] for a in COMMITTEE} == {"committee"}
    assert oa.models.retrieve("pyramid-committee").model_extra["pyramid"]["force_tier"] == "committee"
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("gpt-4o")
    with urllib.request.urlopen(gateway.root + "/health/ready", timeout=10) as r:
        assert json.loads(r.read()) == {"status": "ready"}


# --- answers equal the gRPC client's -------------------------------------------------------------


def test_chat_answers_equal_the_grpc_clients_on_40_questions(oa, traces, grpc_answers):
    for i in QUESTIONS:
        raw = oa.chat.completions.with_raw_response.create(
            model="pyramid", messages=[{"role": "user", "content": traces.questions[i].question}]
        )
        c, g = raw.parse(), grpc_answers[i]
        assert c.object == "chat.completion" and c.model == "pyramid" and len(c.choices) == 1
        assert c.choices[0].finish_reason == "stop" and c.choices[0].message.role == "assistant"
        assert_same_route(c.choices[0].message.content, meta(c), c.usage, g, f"idx {i}")
        h = raw.headers
        assert h["x-pyramid-tier"] == g.tier and h["x-pyramid-escalated"] == str(g.escalated).lower()
        assert h["x-pyramid-degraded"] == str(g.degraded).lower() and h["x-pyramid-calls"] == ",".join(g.calls)
        assert h["x-request-id"] == meta(c)["request_id"] and c.id == "chatcmpl-" + h["x-request-id"]
    routes = list(grpc_answers.values())
    assert any(g.escalated for g in routes) and any(not g.escalated for g in routes)
    assert {i for i in QUESTIONS if grpc_answers[i].degraded} >= set(AGENT_MISSING)


def test_async_sdk_and_completions_endpoint_give_the_same_answers(gateway, traces, grpc_answers):
    async def run():
        async with openai.AsyncOpenAI(base_url=gateway.url, api_key="unused", max_retries=0, timeout=120) as c:
            qs = [traces.questions[i].question for i in QUESTIONS]
            chats = await asyncio.gather(
                *(c.chat.completions.create(model="pyramid", messages=[{"role": "user", "content": q}]) for q in qs)
            )
            texts = await asyncio.gather(*(c.completions.create(model="pyramid", prompt=q) for q in qs[:10]))
            return chats, texts

    chats, texts = asyncio.run(run())
    for i, c in zip(QUESTIONS, chats):
        assert_same_route(c.choices[0].message.content, meta(c), c.usage, grpc_answers[i], f"async idx {i}")
    for i, t in zip(QUESTIONS, texts):
        assert t.object == "text_completion" and t.id.startswith("cmpl-")
        assert_same_route(t.choices[0].text, meta(t), t.usage, grpc_answers[i], f"completion idx {i}")


def test_32_concurrent_clients(gateway, traces, grpc_answers):
    """32 clients, each its own connection pool, 3 questions each, all at once: every answer right."""

    async def client(k: int):
        async with openai.AsyncOpenAI(base_url=gateway.url, api_key="unused", max_retries=0, timeout=120) as c:
            out = []
            for j in range(3):
                i = QUESTIONS[(k * 3 + j) % len(QUESTIONS)]
                r = await c.chat.completions.create(
                    model="pyramid", messages=[{"role": "user", "content": traces.questions[i].question}]
                )
                out.append((i, r))
            return out

    async def run():
        return await asyncio.gather(*(client(k) for k in range(32)))

    results = [x for per_client in asyncio.run(run()) for x in per_client]
    assert len(results) == 96
    for i, r in results:
        assert_same_route(r.choices[0].message.content, meta(r), r.usage, grpc_answers[i], f"concurrent idx {i}")
    with urllib.request.urlopen(gateway.root + "/metrics", timeout=10) as m:
        text = m.read().decode()
    assert "pyramid_gateway_in_flight 0" in text.splitlines()
    assert 'pyramid_gateway_requests_total{endpoint="/v1/chat/completions",model="pyramid",status="200"}' in text


# --- forced tiers and direct engines --------------------------------------------------------------


def test_the_default_task_named_is_the_same_route(oa, traces, grpc_answers):
    c = chat(oa, traces.questions[3].question, extra_body={"pyramid": {"task": "gsm8k"}})
    assert_same_route(c.choices[0].message.content, meta(c), c.usage, grpc_answers[3], "task=gsm8k")


def test_forced_tiers_equal_the_grpc_clients_force_tier(oa, deployment, traces):
    from pyramid_client import PyramidClient

    q = traces.questions[5].question
    with PyramidClient(deployment.grpc_url, timeout_s=60) as g:
        for tier in ("committee", "oracle"):
            c = chat(oa, q, model=f"pyramid-{tier}")
            want = g.ask(q, force_tier=tier)
            assert meta(c)["tier"] == tier and c.model == f"pyramid-{tier}"
            assert_same_route(c.choices[0].message.content, meta(c), c.usage, want, tier)


def test_an_engine_by_name_is_called_directly(oa, traces):
    idx = 7
    for engine in (ORACLE, COMMITTEE[1]):
        rec = traces.samples(engine)[idx][0]
        c = chat(oa, traces.questions[idx].question, model=engine)
        assert c.choices[0].message.content == rec.text
        want_tokens = rec.output_tokens if rec.output_tokens is not None else round(len(rec.text) / 4)
        assert c.usage.completion_tokens == want_tokens
        p = meta(c)
        assert p["direct"] and p["calls"] == [engine] and not p["escalated"]
        assert p["tier"] == ("oracle" if engine == ORACLE else "committee")
        t = oa.completions.create(model=engine, prompt=traces.questions[idx].question)
        assert t.choices[0].text == rec.text


def test_sampling_fields_and_stop_are_honoured(oa, traces, grpc_answers):
    i = 0
    g = grpc_answers[i]
    q = traces.questions[i].question
    # temperature / seed reach the engines (the replay engines accept and ignore them: same text)
    c = chat(oa, q, temperature=0.0, seed=7, max_tokens=512)
    assert c.choices[0].message.content == g.text
    # stop: the text is cut before the first stop sequence, which is not returned
    word = g.text.split()[3]
    c = chat(oa, q, stop=[word, "\u2603"])
    assert c.choices[0].message.content == g.text[: g.text.index(word)]
    assert c.choices[0].finish_reason == "stop"


# --- streaming -----------------------------------------------------------------------------------


def first_escalating(grpc_answers) -> int:
    return next(i for i in QUESTIONS if grpc_answers[i].escalated and not grpc_answers[i].degraded)


def test_streaming_sends_the_final_answer_and_the_provisional_one_as_an_extension(oa, traces, grpc_answers):
    i = first_escalating(grpc_answers)
    g = grpc_answers[i]
    chunks = list(chat(oa, traces.questions[i].question, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == g.text, "a plain client's concatenated deltas are the oracle's final answer"
    assert chunks[0].choices[0].delta.role == "assistant"
    provisional = [ch for ch in chunks if (ch.model_extra or {}).get("pyramid", {}).get("provisional")]
    assert len(provisional) == 1
    (choice,) = provisional[0].choices
    assert choice.delta.content is None and choice.finish_reason is None, "no text in the extension chunk"
    p = meta(provisional[0])
    assert p["provisional"] and p["tier"] == "committee" and ORACLE not in p["calls"]
    assert p["text"] and p["text"] != g.text, "the committee's text travels only in the extension"
    finish = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    assert_same_route(text, meta(finish[0]), chunks[-1].usage, g, "stream")
    assert not chunks[-1].choices and chunks[-1].usage is not None


def test_streaming_a_committee_answer_and_completions_and_async(gateway, oa, traces, grpc_answers):
    i = next(j for j in QUESTIONS if not grpc_answers[j].escalated)
    g = grpc_answers[i]
    chunks = list(chat(oa, traces.questions[i].question, stream=True))
    assert not any((ch.model_extra or {}).get("pyramid", {}).get("provisional") for ch in chunks), "not escalated"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == g.text
    assert all(ch.usage is None for ch in chunks), "usage only with stream_options.include_usage"

    j = first_escalating(grpc_answers)
    parts = list(oa.completions.create(model="pyramid", prompt=traces.questions[j].question, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == grpc_answers[j].text

    async def run():
        async with openai.AsyncOpenAI(base_url=gateway.url, api_key="unused", max_retries=0, timeout=120) as c:
            stream = await c.chat.completions.create(
                model="pyramid", messages=[{"role": "user", "content": traces.questions[j].question}], stream=True
            )
            return [ch async for ch in stream]

    got = asyncio.run(run())
    assert "".join(ch.choices[0].delta.content or "" for ch in got if ch.choices) == grpc_answers[j].text


# --- conversations -----------------------------------------------------------------------------------


def test_a_conversation_is_rendered_not_truncated(oa, traces):
    """System prompt and history are rendered ahead of the last user turn: the replay engines have no
    record for that text and say so (a 400 from the router's NOT_FOUND), which shows nothing was dropped."""
    q = traces.questions[0].question
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(
            model="pyramid",
            messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q}],
        )
    assert e.value.body["code"] == "not_found" and e.value.body["param"] == "messages"
    # text parts of one user turn are joined: the same question, the same answer
    c = oa.chat.completions.create(
        model="pyramid", messages=[{"role": "user", "content": [{"type": "text", "text": q}]}]
    )
    assert meta(c)["tier"] in ("committee", "oracle")


# --- errors ------------------------------------------------------------------------------------------


def bad(oa, **kw) -> dict:
    """The error body of a request that must fail with 400."""
    kw.setdefault("model", "pyramid")
    kw.setdefault("messages", [{"role": "user", "content": "What is 2 + 2?"}])
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(**kw)
    assert e.value.status_code == 400
    return e.value.body


def test_invalid_requests_get_a_400_naming_the_field(oa):
    b = bad(oa, extra_body={"pyramid": {"strict": True, "thresold": 0.5, "deadline": 9}})
    assert b["param"] == "pyramid" and "thresold" in b["message"] and "deadline" in b["message"]
    assert bad(oa, extra_body={"frobnicate": 1})["param"] == "frobnicate"
    assert bad(oa, n=2)["param"] == "n"
    assert bad(oa, logprobs=True)["param"] == "logprobs"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert bad(oa, tools=tools)["param"] == "tools"
    assert bad(oa, top_p=0.5)["param"] == "top_p"
    assert bad(oa, extra_body={"pyramid": {"escalation_threshold": 1.5}})["param"] == "pyramid.escalation_threshold"
    # the router's task: an unknown one is its INVALID_ARG, a known one it has no calibration for UNSUPPORTED
    b = bad(oa, extra_body={"pyramid": {"task": "astrology"}})
    assert b["param"] == "pyramid.task" and "astrology" in b["message"]
    b = bad(oa, extra_body={"pyramid": {"task": "choice"}})
    assert b["param"] == "pyramid.task" and b["code"] == "unsupported" and "gsm8k" in b["message"]
    assert bad(oa, messages=[{"role": "system", "content": "hi"}])["param"] == "messages"
    b = bad(oa, messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    assert b["param"] == "messages[1].role"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    b = bad(oa, messages=[{"role": "user", "content": [{"type": "text", "text": "q"}, image]}])
    assert b["param"] == "messages[0].content[1].type" and b["code"] == "unsupported_content"
    # the router's own INVALID_ARG (max_tokens over the deployment's cap), with the OpenAI field name
    b = bad(oa, max_tokens=100_000)
    assert b["param"] == "max_tokens" and "max_tokens" in b["message"] and "8192" in b["message"]
    with pytest.raises(openai.BadRequestError) as e:
        oa.completions.create(model="pyramid", prompt=["a", "b"])
    assert e.value.body["param"] == "prompt"


def test_unknown_model_is_a_404(oa):
    with pytest.raises(openai.NotFoundError) as e:
        chat(oa, "What is 2 + 2?", model="gpt-4o")
    assert e.value.body["code"] == "model_not_found" and "pyramid-oracle" in e.value.body["message"]


def test_deadline_under_strict_is_a_504_and_without_strict_a_provisional_answer(oa, traces, grpc_answers):
    """deadline_ms=1 has passed by the time the committee has answered: the oracle is not awaited."""
    i = first_escalating(grpc_answers)
    q = traces.questions[i].question
    c = chat(oa, q, extra_body={"pyramid": {"deadline_ms": 1}})
    assert meta(c)["provisional"] and meta(c)["tier"] == "committee"
    assert c.choices[0].message.content != grpc_answers[i].text
    with pytest.raises(openai.APIStatusError) as e:
        chat(oa, q, extra_body={"pyramid": {"deadline_ms": 1, "strict": True}})
    assert e.value.status_code == 504 and e.value.body["code"] == "deadline_exceeded"
    # streaming: the 200 is sent with the provisional answer; the strict refusal is an error event
    with pytest.raises(openai.APIError, match="deadline_ms"):
        list(chat(oa, q, stream=True, extra_body={"pyramid": {"deadline_ms": 1, "strict": True}}))


def test_triton_unreachable_is_a_503_with_retry_after(deployment, tmp_path):
    from pyramid_gateway.process import GatewayProcess
    from pyramid_ops.server import free_ports

    dead, port = free_ports(2)
    args = ["--model-repository", str(deployment.repository), "--retries", "0", "--retry-after-s", "3"]
    gw = GatewayProcess(f"127.0.0.1:{dead}", port, log_path=tmp_path / "gw.log", extra_args=args)
    gw.start(wait_ready=False)  # it answers, but is not ready: nothing behind it
    try:
        with openai.OpenAI(base_url=gw.url, api_key="unused", max_retries=0, timeout=60) as c:
            for call in (lambda: chat(c, "What is 2 + 2?"), lambda: c.models.list()):
                with pytest.raises(openai.APIStatusError) as e:
                    call()
                assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "3"
                assert e.value.body["code"] == "unavailable"
        with pytest.raises(urllib.error.HTTPError) as h:
            urllib.request.urlopen(gw.root + "/health/ready", timeout=10)
        assert h.value.code == 503 and h.value.headers["Retry-After"] == "3"
    finally:
        gw.stop()
