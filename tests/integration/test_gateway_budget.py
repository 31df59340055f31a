"""Oracle budgets per API key (issue 24 items 2 and 4), through the official ``openai`` SDK against a real gateway
process in front of the session's real tritonserver (replay profile): a key with a one-oracle-call budget gets
committee answers marked ``exhausted`` once it has spent it, another key is unaffected, and a restart with the
state file keeps the day's spend (without it, the spend resets and the start log says so)."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "gateway") not in sys.path:
    sys.path.insert(0, str(ROOT / "gateway"))

import openai  # noqa: E402 - after the path set-up, like the conftest's imports

TINY, OTHER = "sk-budget-tiny-0123456789", "sk-budget-other-0123456789"


def _start(deployment, keys: Path, log: Path, state: Path | None):
    from pyramid_gateway.process import GatewayProcess
    from pyramid_ops.server import free_ports

    args = ["--model-repository", str(deployment.repository), "--api-keys-file", str(keys)]
    if state is not None:
        args += ["--budget-state", str(state)]
    return GatewayProcess(deployment.grpc_url, free_ports(1)[0], log_path=log, extra_args=args).start()


def _ask(gw, key: str, question: str, model: str = "pyramid"):
    with openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0, timeout=120) as c:
        raw = c.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": question}])
        return raw.headers, raw.parse()


@pytest.fixture(scope="module")
def escalating(deployment, traces):
    """(a question the router escalates, the gRPC client's forced-committee answer to it)."""
    from pyramid_client import PyramidClient

    with PyramidClient(deployment.grpc_url, timeout_s=60) as c:
        for i in range(40):
            q = traces.questions[i].question
            r = c.ask(q)
            if r.escalated and not r.degraded:
                return q, c.ask(q, force_tier="committee")
    pytest.skip("no escalating question among the first 40")


def test_an_exhausted_key_gets_committee_answers_other_keys_do_not_and_a_restart_keeps_the_spend(
    deployment, escalating, tmp_path
):
    question, committee = escalating
    keys = tmp_path / "keys"
    keys.write_text(f"{TINY} name=tiny budget=calls:1/day\n{OTHER} name=other\n", encoding="utf-8")
    keys.chmod(0o600)
    state = tmp_path / "budget.json"
    gw = _start(deployment, keys, tmp_path / "gw1.log", state)
    try:
        h, r = _ask(gw, TINY, question)  # spends the key's one oracle call
        p = r.model_extra["pyramid"]
        assert p["tier"] == "oracle" and h["x-pyramid-budget"] == "ok"
        assert p["budget"]["spent"] == 1 and p["budget"]["remaining"] == 0 and p["budget"]["limit"] == 1
        for model in ("pyramid", "pyramid-oracle"):  # exhausted: the committee answers, marked so
            h, r = _ask(gw, TINY, question, model)
            p = r.model_extra["pyramid"]
            assert h["x-pyramid-budget"] == "exhausted" and p["budget"]["state"] == "exhausted", model
            assert p["tier"] == "committee" and p["model"] == "pyramid-committee" and not p["escalated"]
            assert r.choices[0].message.content == committee.text and p["calls"] == committee.calls
            assert r.model == model and p["budget"]["spent"] == 1
        h, r = _ask(gw, OTHER, question)  # another key: routed as before, no budget
        assert r.model_extra["pyramid"]["tier"] == "oracle" and "budget" not in r.model_extra["pyramid"]
        assert "x-pyramid-budget" not in h
        with urllib.request.urlopen(gw.root + "/metrics", timeout=10) as m:
            text = m.read().decode()
        assert 'pyramid_gateway_key_budget_state{key="tiny",state="exhausted"} 1' in text
        assert 'pyramid_gateway_key_calls_total{key="tiny",tier="oracle"} 1' in text
        assert 'pyramid_gateway_key_calls_total{key="other",tier="oracle"} 1' in text
        assert TINY not in text and OTHER not in text
    finally:
        gw.stop()
    saved = json.loads(state.read_text())
    assert saved["keys"]["tiny"]["spent"] == 1 and oct(state.stat().st_mode & 0o777) == "0o600"
    log = (tmp_path / "gw1.log").read_text(encoding="utf-8", errors="replace")
    assert TINY not in log and OTHER not in log

    gw = _start(deployment, keys, tmp_path / "gw2.log", state)  # a restart with the state file: still spent
    try:
        h, r = _ask(gw, TINY, question)
        assert h["x-pyramid-budget"] == "exhausted" and r.model_extra["pyramid"]["tier"] == "committee"
    finally:
        gw.stop()
    assert "kept the current period's spend of 1 key(s)" in (tmp_path / "gw2.log").read_text()

    gw = _start(deployment, keys, tmp_path / "gw3.log", None)  # without it: reset, and the log says so
    try:
        h, r = _ask(gw, TINY, question)
        assert h["x-pyramid-budget"] == "ok" and r.model_extra["pyramid"]["tier"] == "oracle"
    finally:
        gw.stop()
    assert "a restart resets it" in (tmp_path / "gw3.log").read_text()
