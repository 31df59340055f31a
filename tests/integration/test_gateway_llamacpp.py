"""The gateway in front of real LLM engines (the llamacpp profile's Gemma 3 270M, decoupled llama.cpp models:
tests/integration/test_triton_llamacpp.py's deployment), through the official openai SDK: an engine called by
name streams its generated pieces as deltas whose concatenation is the non-streamed text, usage counts the
engine's own tokens, finish_reason says when the budget cut it, and the router over those engines answers
with every call's tokens in usage."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .test_triton_llamacpp import AGENTS, BUDGET, GEMMA_ORACLE, LONG, QUESTION, gemma  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "gateway") not in sys.path:
    sys.path.insert(0, str(ROOT / "gateway"))

import openai  # noqa: E402


@pytest.fixture(scope="module")
def oa(gemma, tmp_path_factory):  # noqa: F811 - the imported fixture
    from pyramid_gateway.process import GatewayProcess
    from pyramid_ops.server import free_ports

    log = tmp_path_factory.mktemp("gateway-gemma") / "gateway.log"
    engines = ["--committee", ",".join(AGENTS), "--oracle", GEMMA_ORACLE, "--default-max-tokens", str(BUDGET)]
    with GatewayProcess(gemma.grpc_url, free_ports(1)[0], log_path=log, extra_args=engines) as gw:
        with openai.OpenAI(base_url=gw.url, api_key="unused", max_retries=0, timeout=120) as c:
            yield c


def ask(oa, model: str, **kw):
    return oa.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], temperature=0.0, seed=1, **kw
    )


def test_an_engine_streams_its_pieces_and_they_make_the_whole_text(oa):
    whole = ask(oa, AGENTS[0])
    text = whole.choices[0].message.content
    assert text and 0 < whole.usage.completion_tokens <= BUDGET
    assert whole.model_extra["pyramid"]["calls"] == [AGENTS[0]]
    chunks = list(ask(oa, AGENTS[0], stream=True, stream_options={"include_usage": True}))
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) >= 2, "a decoupled engine's pieces arrive as separate deltas"
    assert "".join(pieces) == text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_finish_reason_length_when_the_budget_cut_the_text(oa):
    r = ask(oa, LONG, max_tokens=8)  # this engine never stops on its own here
    assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"


def test_the_router_over_real_engines_counts_every_calls_tokens(oa):
    r = ask(oa, "pyramid")
    p = r.model_extra["pyramid"]
    assert p["tier"] in ("committee", "oracle") and p["calls"]
    per_tier = p["usage"]
    assert sum(t["calls"] for t in per_tier.values()) == len(p["calls"]) - len(p["failed_agents"])
    assert r.usage.completion_tokens == sum(t["completion_tokens"] for t in per_tier.values()) > 0
    assert r.usage.completion_tokens <= BUDGET * len(p["calls"])  # the engines' own counts, within budget
