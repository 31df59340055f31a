"""Oracle budgets per API key in the gateway (issue 24 item 2; ``pyramid_gateway.budget``): the keys file's budget
options, the lowered threshold as a key's budget runs low, committee-only answers marked ``exhausted`` (or a 429
with ``on_exhausted=refuse``), other keys unaffected, the per-key metrics (labels: configured names or hashes,
never a key), and the state file (atomic, 0600) that a restart reads back. In process, through the app with a
fake router; the real server and the ``openai`` SDK: tests/integration/test_gateway_budget.py."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import stat
import sys
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "client", ROOT / "gateway", ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from test_gateway_unit import USER, parse_exposition  # noqa: E402

from pyramid_client import PyramidResult  # noqa: E402
from pyramid_gateway.auth import KeyAuth, key_label  # noqa: E402
from pyramid_gateway.budget import Budget, BudgetBook, Decision, period_of, spend_of  # noqa: E402

A, B, C = "sk-alpha-0123456789", "sk-beta-0123456789", "sk-gamma-0123456789"
T0 = 1_796_530_000.0  # 2026-12-06T04:06:40Z: an hour ends at 1_796_533_200


def _result(escalated: bool) -> PyramidResult:
    tokens = {"a": [10, 20], "b": [10, 30], **({"o": [10, 40]} if escalated else {})}
    return PyramidResult(
        answer="4", text="4", tier="oracle" if escalated else "committee", escalated=escalated, confidence=0.4,
        agreement=0.5, agent_answers={"a": "4", "b": "5"}, failed_agents=[], calls=list(tokens), degraded=False,
        cost=1.2 if escalated else 0.2, costs={"usd": 1.25 if escalated else 0.25, "flops": None},
        provisional=False, request_id="rid", tokens=tokens,
    )  # fmt: skip


class FakeRouter:
    """Escalates unless forced to the committee or asked with a threshold under 0.3; records each call's options."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def _route(self, options: dict) -> PyramidResult:
        self.calls.append(options)
        t = options.get("escalation_threshold")
        return _result(options.get("force_tier") != "committee" and (t is None or t >= 0.3))

    async def ask(self, question: str, **options) -> PyramidResult:
        return self._route(options)

    async def ask_stream(self, question: str, **options):
        yield self._route(options)

    async def close(self) -> None:
        pass


def _upstream(router: FakeRouter):
    from pyramid_gateway.upstream import Catalog, Deployment, Target, Upstream

    class Fake(Upstream):
        async def catalog(self):
            cat = Catalog("pyramid", ["a", "b"], "o", 512)
            cat.targets["pyramid"] = Target("pyramid", "pyramid", "router")
            for t in ("committee", "oracle"):
                cat.targets[f"pyramid-{t}"] = Target(f"pyramid-{t}", "pyramid", "router", force_tier=t)
            for e, tier in (("a", "committee"), ("b", "committee"), ("o", "oracle")):
                cat.targets[e] = Target(e, e, "engine", tier=tier)
            self._catalog = cat
            return cat

    up = Fake("127.0.0.1:1", deployment=Deployment(("a", "b"), "o"))
    up.router = router  # type: ignore[assignment]
    return up


def keys_file(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "keys"
    f.write_text(text, encoding="utf-8")
    return f


KEYS = f"""# a tiny budget, one without, one that refuses
{A} name=alpha budget=calls:2/hour
{B} 4
{C} name=gamma budget=calls:1/hour on_exhausted=refuse
"""


def chat(key: str, model: str = "pyramid", stream: bool = False, **pyramid) -> tuple:
    body = {"model": model, "messages": USER, "stream": stream, **({"pyramid": pyramid} if pyramid else {})}
    return ("POST", "/v1/chat/completions", {"json": body, "headers": {"Authorization": f"Bearer {key}"}})


async def _run(config, router, requests, clock):
    import httpx2 as httpx

    from pyramid_gateway.app import create_app

    # the book reads its state file at startup: it must see the test's clock from the start, not the real one
    # (whose hour is not T0's, except in the hour this test was written)
    with mock.patch("pyramid_gateway.state.BudgetBook", functools.partial(BudgetBook, clock=clock)):
        app = create_app(config, upstream=_upstream(router))  # in a loop: the upstream's gRPC channels need one
        async with app.router.lifespan_context(app):
            if app.state.pyramid.book is not None:
                assert app.state.pyramid.book.clock is clock
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
                out = [await c.request(m, p, **kw) for m, p, kw in requests]
                return out, (await c.get("/metrics")).text


def serve(tmp_path, requests, keys=KEYS, state=None, clock=lambda: T0, **config):
    """A gateway with ``keys`` (a keys file's text; None: no keys) in front of a FakeRouter: the responses, the
    /metrics text, the router."""
    from pyramid_gateway.app import GatewayConfig

    router = FakeRouter()
    auth = KeyAuth.load(keys_file(tmp_path, keys), env="") if keys is not None else None
    cfg = GatewayConfig(auth=auth, budget_state=str(state) if state else None, **config)
    rs, text = asyncio.run(_run(cfg, router, requests, clock))
    return rs, text, router


# --- the keys file ------------------------------------------------------------------------------------


def test_the_keys_file_takes_budget_options_and_old_lines_still_parse(tmp_path):
    auth = KeyAuth.load(
        keys_file(tmp_path, f"{A} 3 name=alpha budget=cost:2.5/day low=0.3 threshold=0.6\n{B}\n{C} 2\n"), env=""
    )
    assert auth is not None and auth.keys == {A.encode(): 3, B.encode(): 0, C.encode(): 2}
    assert auth.budgets == {"alpha": Budget("cost", 2.5, "day", "committee", 0.3, 0.6)}
    assert auth.label(A.encode()) == "alpha" and auth.label(B.encode()) == key_label(B.encode())
    assert key_label(B.encode()).startswith("key-") and len(key_label(B.encode())) == 12
    assert B not in key_label(B.encode()) and key_label(B.encode()) == key_label(B.encode())  # stable
    bad = {
        f"{A} budget=calls:10/week": "calls:N/hour",
        f"{A} budget=calls:0/day": "> 0",
        f"{A} budget=usd:1/day": "calls:N/hour",
        f"{A} budget=calls:1/day on_exhausted=drop": "committee or refuse",
        f"{A} budget=calls:1/day low=2": "low=",
        f"{A} on_exhausted=refuse": "without budget=",
        f"{A} name=x y": "field 3",
        f"{A} 3 {B}": "field 3",
        f"{A} name=a/b": "letters, digits",
        f"{A} name=x\n{B} name=x": "names two keys",
        f"{A} name=x name=y": "field 3",
    }
    for text, why in bad.items():
        with pytest.raises(ValueError, match="keys:[12]: ") as e:
            KeyAuth.load(keys_file(tmp_path, text + "\n"), env="")
        assert why in str(e.value), (text, str(e.value))
        assert B not in str(e.value)  # a misplaced field is never quoted: it may be a key


def test_spend_is_read_from_the_routing_metadata():
    from pyramid_gateway.responses import router_metadata

    up, down = router_metadata("pyramid", _result(True), "o"), router_metadata("pyramid", _result(False), "o")
    assert (spend_of("calls", up), spend_of("calls", down)) == (1.0, 0.0)
    assert (spend_of("cost", up), spend_of("cost", down)) == (1.25, 0.25)  # costs.usd where reported
    up["costs"] = {"usd": None}
    assert spend_of("cost", up) == 1.2  # else the router's cost
    direct = {"usage": {"oracle": {"calls": 1}}}
    assert spend_of("cost", direct) == 1.0 and spend_of("calls", direct) == 1.0  # a direct oracle engine call


# --- low, exhausted, refuse ---------------------------------------------------------------------------


def test_the_threshold_goes_down_with_what_remains_and_exhausted_is_committee_only():
    now = [T0]
    book = BudgetBook({"k": Budget("calls", 10, "hour")}, base_threshold=0.5, clock=lambda: now[0])
    assert book.decide("k") == Decision("k", "ok") and book.decide("other") is None and book.decide(None) is None
    seen = []
    for spent in (8.1, 8.5, 9.0, 9.5, 9.99):
        book.current("k").spent = spent
        d = book.decide("k")
        assert d.state == "low" and not d.committee_only
        seen.append(d.threshold)
    assert seen == sorted(seen, reverse=True) and all(0 < t < 0.5 for t in seen)
    assert seen[1] == pytest.approx(0.5 * 1.5 / 2)
    book.current("k").spent = 10
    assert book.decide("k") == Decision("k", "exhausted", committee_only=True)
    now[0] = period_of("hour", T0)[1]  # the next hour starts from zero
    assert book.decide("k").state == "ok" and book.current("k").spent == 0
    own = BudgetBook({"k": Budget("calls", 10, "hour", threshold=0.8)}, base_threshold=0.5, clock=lambda: T0)
    own.current("k").spent = 9
    assert own.decide("k").threshold == pytest.approx(0.8 * 1 / 2)  # the key's threshold= overrides the base


def test_a_low_key_routes_with_a_lower_threshold_never_above_the_clients_own(tmp_path):
    keys = f"{A} name=alpha budget=calls:10/hour\n"
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"format": "pyramid-gateway/budget-state", "version": 1, "keys": {
        "alpha": {"unit": "calls", "period_kind": "hour", "period": period_of("hour", T0)[0], "spent": 9}}}))  # fmt: skip
    rs, _, router = serve(tmp_path, [chat(A), chat(A, escalation_threshold=0.05), chat(A, model="pyramid-oracle")],
                          keys=keys, state=state)  # fmt: skip
    assert [r.status_code for r in rs] == [200, 200, 200]
    assert [c["escalation_threshold"] for c in router.calls] == [pytest.approx(0.25), 0.05, None]
    assert rs[1].json()["pyramid"]["budget"]["escalation_threshold"] == 0.05  # the one applied: the client's
    b = rs[0].json()["pyramid"]["budget"]
    assert rs[0].headers["x-pyramid-budget"] == "low"
    assert b == {"unit": "calls", "period": period_of("hour", T0)[0], "spent": 9, "limit": 10, "remaining": 1,
                 "state": "low", "escalation_threshold": pytest.approx(0.25)}  # fmt: skip
    assert router.calls[2]["force_tier"] == "oracle"  # a forced tier is the client's choice: spent, not changed
    assert rs[2].json()["pyramid"]["budget"] == {"unit": "calls", "period": period_of("hour", T0)[0], "spent": 10,
                                                 "limit": 10, "remaining": 0, "state": "low"}  # fmt: skip


def test_an_exhausted_key_gets_committee_answers_marked_so_and_other_keys_are_unaffected(tmp_path):
    reqs = [chat(A), chat(A), chat(A), chat(A, model="pyramid-oracle"), chat(A, model="o"), chat(A, stream=True),
            chat(B), chat(B, escalation_threshold=0.9)]  # fmt: skip
    rs, text, router = serve(tmp_path, reqs)
    assert [r.status_code for r in rs] == [200] * 8
    alpha = [r.json()["pyramid"] for r in rs[:5]]
    assert [m["budget"]["state"] for m in alpha] == ["ok", "ok", "exhausted", "exhausted", "exhausted"]
    assert [m["budget"]["spent"] for m in alpha] == [1, 2, 2, 2, 2]
    assert [r.headers["x-pyramid-budget"] for r in rs[:6]] == ["ok", "ok"] + ["exhausted"] * 4
    for r, m in zip(rs[2:5], alpha[2:]):
        assert m["model"] == "pyramid-committee" and m["tier"] == "committee" and m["budget"]["committee_only"]
        assert r.json()["model"] in ("pyramid", "pyramid-oracle", "o")  # the model asked, answered by the committee
    assert [c.get("force_tier") for c in router.calls[2:6]] == ["committee"] * 4
    final = [json.loads(x[6:]) for x in rs[5].text.split("\n\n") if x.startswith("data: {")][-1]
    assert final["pyramid"]["budget"]["state"] == "exhausted" and final["pyramid"]["tier"] == "committee"
    # key B has no budget: routed as it asked, no budget header or field
    assert router.calls[6].get("force_tier") is None and router.calls[7]["escalation_threshold"] == 0.9
    for r in rs[6:]:
        assert "x-pyramid-budget" not in r.headers and "budget" not in r.json()["pyramid"]
        assert r.json()["pyramid"]["tier"] == "oracle"


def test_refuse_mode_is_a_429_with_retry_after_until_the_period_resets(tmp_path):
    rs, _, router = serve(tmp_path, [chat(C), chat(C), chat(A)])
    assert [r.status_code for r in rs] == [200, 429, 200]
    e = rs[1].json()["error"]
    assert (
        e["type"] == "insufficient_quota" and e["code"] == "budget_exhausted" and "on_exhausted=refuse" in e["message"]
    )
    assert rs[1].headers["retry-after"] == str(int(period_of("hour", T0)[1] - T0)) == "3200"
    assert rs[1].headers["x-pyramid-budget"] == "exhausted" and len(router.calls) == 2


def test_without_keys_or_budgets_nothing_changes(tmp_path):
    rs, text, router = serve(tmp_path, [chat("any")], keys=None)
    assert (
        rs[0].status_code == 200 and "budget" not in rs[0].json()["pyramid"] and "x-pyramid-budget" not in rs[0].headers
    )
    assert "key_" not in text and router.calls[0]["escalation_threshold"] is None


# --- metrics ------------------------------------------------------------------------------------------


def test_per_key_metrics_are_labelled_by_name_or_hash_never_the_key(tmp_path):
    rs, text, _ = serve(tmp_path, [chat(A), chat(A), chat(A), chat(B), chat("sk-wrong}x"), chat(C), chat(C)])
    assert [r.status_code for r in rs] == [200, 200, 200, 200, 401, 200, 429]
    samples = parse_exposition(text)  # strict: every line parses
    for k in (A, B, C, "sk-wrong"):
        assert k not in text
    keyed = [s for s in samples if "key" in s[1]]
    assert {s[1]["key"] for s in keyed} == {"alpha", "gamma", key_label(B.encode())}  # configured keys only
    got = {(s[0], tuple(sorted(s[1].items()))): s[2] for s in keyed}

    def v(name, **labels):
        return got[(f"pyramid_gateway_{name}", tuple(sorted(labels.items())))]

    assert (
        v("key_calls_total", key="alpha", tier="oracle") == 2
        and v("key_calls_total", key="alpha", tier="committee") == 6
    )
    assert v("key_calls_total", key=key_label(B.encode()), tier="oracle") == 1
    assert v("key_oracle_cost_total", key="alpha") == pytest.approx(1.25 * 2 + 0.25)
    assert (
        v("key_budget_spent", key="alpha", unit="calls") == 2 and v("key_budget_limit", key="alpha", unit="calls") == 2
    )
    assert (
        v("key_budget_state", key="alpha", state="exhausted") == 1
        and v("key_budget_state", key="alpha", state="ok") == 0
    )
    assert v("key_budget_state", key="gamma", state="exhausted") == 1
    assert not [s for s in samples if s[0] == "pyramid_gateway_key_budget_spent" and s[1]["key"].startswith("key-")]


# --- restart ------------------------------------------------------------------------------------------


def test_the_state_file_is_atomic_0600_holds_no_key_and_a_restart_keeps_the_periods_spend(tmp_path, caplog):
    state = tmp_path / "budget.json"
    rs, _, _ = serve(tmp_path, [chat(A)], state=state)
    assert rs[0].json()["pyramid"]["budget"]["spent"] == 1
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    raw = state.read_text()
    assert A not in raw and B not in raw and C not in raw
    assert json.loads(raw)["keys"]["alpha"] == {"unit": "calls", "period_kind": "hour",
                                                "period": period_of("hour", T0)[0], "spent": 1.0}  # fmt: skip
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".budget")] == []  # no temporary file left
    # a restart with the file: the hour's spend is kept, so the next answer exhausts it
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        rs, _, router = serve(tmp_path, [chat(A), chat(A)], state=state)
    assert [r.json()["pyramid"]["budget"]["state"] for r in rs] == ["ok", "exhausted"]
    assert router.calls[1]["force_tier"] == "committee"
    assert "kept the current period's spend of 1 key(s)" in caplog.text
    # the next hour starts from zero, file or not
    rs, _, _ = serve(tmp_path, [chat(A)], state=state, clock=lambda: T0 + 3600)
    assert rs[0].json()["pyramid"]["budget"]["state"] == "ok" and rs[0].json()["pyramid"]["budget"]["spent"] == 1


def test_without_a_state_file_a_restart_resets_the_spend_and_the_log_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="uvicorn.error"):
        serve(tmp_path, [chat(A), chat(A)])
        rs, _, _ = serve(tmp_path, [chat(A)])
    assert rs[0].json()["pyramid"]["budget"]["spent"] == 1  # reset by the restart
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "budget" in r.getMessage()]
    assert len(warned) == 2 and "a restart resets it" in warned[0].getMessage()


def test_a_bad_state_file_stops_the_start_with_what_to_do(tmp_path):
    from pyramid_gateway.__main__ import main

    keys = keys_file(tmp_path, KEYS)
    for content in ("{not json", '{"format": "other", "keys": {}}'):
        (tmp_path / "s.json").write_text(content)
        with pytest.raises(ValueError, match="budget state"):
            serve(tmp_path, [], state=tmp_path / "s.json")
    assert main(["--api-keys-file", str(keys), "--budget-state", str(tmp_path / "s.json")]) == 2
    assert main(["--api-keys-file", str(keys), "--budget-state", str(tmp_path / "no" / "s.json")]) == 2
    assert main(["--api-keys-file", str(keys), "--budget-base-threshold", "1.5"]) == 2
