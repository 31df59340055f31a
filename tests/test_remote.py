"""Remote tiers, unit level: the router calling engines of other Triton servers over gRPC
(``pyramid_triton.remote``), with a fake ``tritonclient.grpc.aio`` client (tests/fake_pb_utils.py),
and the spec side (``remote`` entries, ``host_spec``). The real gRPC path against a second real
tritonserver is tests/integration/test_remote_triton.py; across network namespaces,
tests/integration/test_multihost.py."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import fake_pb_utils as pb
import pytest
import yaml

# Helpers (not tests) of the local router's unit tests: the same questions, engines and calls.
from test_triton_glue import AGENTS, ORACLE, Q_AGREE, Q_ALLFAIL, Q_SPLIT, _metric, engine, outputs, request, run

from pyramid_deploy.render import SpecError, host_spec, render
from pyramid_triton.bls import PyramidModel
from pyramid_triton.protocol import INTERNAL, NOT_FOUND, UNAVAILABLE, EngineRequest
from pyramid_triton.remote import (
    CHANNEL_ARGS,
    RemoteEngines,
    RemoteModel,
    call_error,
    parse_remote_map,
    remote_map_json,
)

ROOT = Path(__file__).resolve().parents[1]
ORACLE_HOST, AGENT_HOST = "10.77.0.2:8001", "10.77.0.3:8001"


def _artifact(names: list[str], oracle_b: float = 70.0):
    """The unit tests' calibration: a logistic on vote share (unanimous: accept; 2 of 3: escalate)."""
    from pyramid_moa.artifact import CalibrationArtifact
    from pyramid_moa.calibration import LogisticCalibrator
    from pyramid_moa.cost import CostModel, ModelCost
    from pyramid_moa.features import make_feature_set

    agents, oracle = names[:-1], names[-1]
    fs = make_feature_set("agreement", agents)
    return CalibrationArtifact(
        committee=agents,
        oracle=oracle,
        feature_set="agreement",
        calibrator="logistic",
        stages=[
            {
                "agents": agents,
                "feature_names": fs.names,
                "calibrator": LogisticCalibrator([10.0] + [0.0] * (len(fs.names) - 1), -7.0).to_dict(),
                "threshold": 0.5,
            }
        ],
        target={"kind": "oracle_rate", "value": 0.3, "cost_model": "flops"},
        cost_model=CostModel({m: ModelCost(params_b=oracle_b if m == oracle else 7.0) for m in names}),
        fitted_on={"idx": []},
        fit_summary={"mean_output_tokens": {oracle: 40.0}},
    )


def make_model(tmp_path: Path, remote: dict[str, RemoteModel] | None = None, **params) -> PyramidModel:
    """The unit-test router (as in test_triton_glue), with ``remote`` models reached through the fake
    aio client."""
    _artifact([*AGENTS, ORACLE]).save(tmp_path / "calibration.json")
    values = {"calibration": "calibration.json", "agents": ",".join(AGENTS), "oracle": ORACLE,
              "max_tokens_cap": "256", "max_input_chars": "100", "agent_timeout_s": "5",
              "remote": remote_map_json(remote or {}), **{k: str(v) for k, v in params.items()}}  # fmt: skip
    cfg = {"name": "pyramid", "parameters": {k: {"string_value": v} for k, v in values.items()}}
    m = PyramidModel(pb, {"model_config": json.dumps(cfg), "model_repository": str(tmp_path)})
    m.remote.client_factory = pb.FakeAioClient
    m.remote.grpcclient = pb.grpc_module
    return m


@pytest.fixture(autouse=True)
def _engines():
    pb.engines.clear()
    pb.engines.update({m: engine(m) for m in [*AGENTS, ORACLE]})
    pb.calls.clear()
    pb.remote_servers.clear()
    pb.remote_unavailable.clear()
    pb.remote_calls.clear()
    pb.remote_clients.clear()


@pytest.fixture()
def local_model(tmp_path):
    (tmp_path / "local").mkdir()
    return make_model(tmp_path / "local")


@pytest.fixture()
def model(tmp_path):
    # The oracle lives on ORACLE_HOST (non-decoupled); agents b and c on AGENT_HOST (decoupled).
    pb.remote_servers[ORACLE_HOST] = {ORACLE: engine(ORACLE)}
    pb.remote_servers[AGENT_HOST] = {"b": engine("b"), "c": engine("c")}
    del pb.engines[ORACLE], pb.engines["b"], pb.engines["c"]  # nothing local answers for them
    remote = {
        ORACLE: RemoteModel(ORACLE_HOST, ORACLE),
        "b": RemoteModel(AGENT_HOST, "b", decoupled=True),
        "c": RemoteModel(AGENT_HOST, "c", decoupled=True),
    }
    return make_model(tmp_path, remote)


def rpcs(model_name: str | None = None) -> list[tuple[str, str, str]]:
    return [c for c in pb.remote_calls if model_name is None or c[1] == model_name]


# --- routing through remote engines ------------------------------------------------------------------


def test_routed_answers_equal_the_local_ones(model):
    for q, want in ((Q_AGREE, ("4", "committee", False)), (Q_SPLIT, ("6", "oracle", True))):
        r = request(text_input=q)
        run(model, r)
        out = outputs(r.sender.sent[0][0])
        assert (out["answer"], out["tier"], bool(out["escalated"])) == want
        assert not out["degraded"] and out["failed"] == []
    # a (BLS, local), b and c over gRPC streams, the oracle once over unary gRPC
    assert [m for m, _ in pb.calls] == ["a", "a"]
    assert sorted(rpcs()) == sorted(
        [(AGENT_HOST, "b", "stream"), (AGENT_HOST, "c", "stream")] * 2 + [(ORACLE_HOST, ORACLE, "infer")]
    )


def test_clients_are_reused_within_one_event_loop(model):
    async def go():
        await model.execute([request(text_input=q) for q in (Q_AGREE, Q_SPLIT, Q_SPLIT)])
        await model.execute([request(text_input=Q_SPLIT)])

    asyncio.run(go())
    # one client (one gRPC channel) per URL: b and c share AGENT_HOST's; later requests reuse them
    assert sorted(c.url for c in pb.remote_clients) == sorted([AGENT_HOST, ORACLE_HOST])
    assert len(rpcs(ORACLE)) == 3 and len(rpcs("b")) == 4


def test_unavailable_is_retried_within_bounds(model):
    pb.remote_unavailable[ORACLE_HOST] = 2  # the oracle's server refuses twice, then answers
    r = request(text_input=Q_SPLIT)
    run(model, r)
    out = outputs(r.sender.sent[0][0])
    assert out["tier"] == "oracle" and not out["degraded"]
    assert len(rpcs(ORACLE)) == 3 and model.remote.attempts[ORACLE] == 3


def test_unavailable_past_the_retries_is_a_failed_oracle_degraded_and_counted(model):
    model.breaker_s = 0.0
    pb.remote_unavailable[ORACLE_HOST] = 3  # 1 try + 2 retries all refused
    r = request(text_input=Q_SPLIT)
    run(model, r)
    out = outputs(r.sender.sent[0][0])
    assert out["degraded"] and out["failed"] == [ORACLE] and out["answer"] == "6"  # the committee's answer
    assert len(rpcs(ORACLE)) == 3
    model.metrics.flush()  # the router batches its metric updates
    assert _metric("pyramid_model_failures_total", target=ORACLE).value == 1
    assert _metric("pyramid_degraded_total").value == 1


def test_strict_makes_a_remote_oracle_failure_an_error(model):
    del pb.remote_servers[ORACLE_HOST]
    r = request(text_input=Q_SPLIT, strict=True)
    run(model, r)
    resp = r.sender.sent[0][0]
    assert resp.has_error() and resp.error().message().startswith("[UNAVAILABLE] strict: the oracle")


def test_engine_errors_are_not_retried_and_keep_their_code(model):
    """A NOT_FOUND from a remote engine (unknown question) is one call, not a breaker trip."""
    model.breaker_s = 60
    r = request(text_input="unknown question")
    run(model, r)
    assert len(rpcs("b")) == 1 and len(rpcs("c")) == 1
    assert "b" not in model._down_until
    r = request(text_input=Q_AGREE)
    run(model, r)
    assert outputs(r.sender.sent[0][0])["failed"] == []


def test_a_dead_remote_opens_the_circuit_then_is_probed_again(model):
    model.breaker_s = 0.2
    del pb.remote_servers[ORACLE_HOST]
    for _ in range(3):
        run(model, request(text_input=Q_SPLIT))
    assert len(rpcs(ORACLE)) == 3  # one call (and its 2 retries), then skipped while the circuit is open
    pb.remote_servers[ORACLE_HOST] = {ORACLE: engine(ORACLE)}  # the host is back
    time.sleep(0.25)
    r = request(text_input=Q_SPLIT)
    run(model, r)
    out = outputs(r.sender.sent[0][0])
    assert out["tier"] == "oracle" and not out["degraded"]


def test_per_call_timeout_cancels_the_remote_call(tmp_path):
    state = {"cancelled": False}

    async def slow(req):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise
        return engine(ORACLE)(req)

    pb.remote_servers[ORACLE_HOST] = {ORACLE: slow}
    m = make_model(tmp_path, {ORACLE: RemoteModel(ORACLE_HOST, ORACLE)}, oracle_timeout_s=0.2)
    r = request(text_input=Q_SPLIT)
    t0 = time.monotonic()
    run(m, r)
    assert time.monotonic() - t0 < 10, "back long before the 30 s call: the 0.2 s timeout ended it"
    out = outputs(r.sender.sent[0][0])
    assert out["degraded"] and out["failed"] == [ORACLE] and out["answer"] == "6"  # the committee's answer
    assert state["cancelled"], "an abandoned remote call is cancelled (its RPC ends), not left running"


def test_deadline_gives_the_provisional_committee_answer_with_a_slow_remote_oracle(tmp_path):
    async def slow(req):
        await asyncio.sleep(30)
        return engine(ORACLE)(req)

    pb.remote_servers[ORACLE_HOST] = {ORACLE: slow}
    m = make_model(tmp_path, {ORACLE: RemoteModel(ORACLE_HOST, ORACLE)})
    r = request(text_input=Q_SPLIT, deadline_ms=300)
    t0 = time.monotonic()
    run(m, r)
    assert time.monotonic() - t0 < 10, "back long before the 30 s oracle: the 300 ms deadline ended it"
    out = outputs(r.sender.sent[0][0])
    assert out["provisional"] and out["answer"] == "6" and out["tier"] == "committee"


def test_retries_stop_when_the_call_timeout_leaves_no_room():
    eng = RemoteEngines({ORACLE: RemoteModel(ORACLE_HOST, ORACLE)}, retries=5, backoff_s=0.2)
    eng.client_factory, eng.grpcclient = pb.FakeAioClient, pb.grpc_module
    t0 = time.monotonic()
    with pytest.raises(Exception) as e:
        asyncio.run(eng.call(ORACLE, EngineRequest("q", 8), False, timeout_s=0.5))
    # Without the rule, five retries would back off 0.2+0.4+0.8+1.6+3.2 s; the bound is loose
    # enough for a slow machine and still far below that.
    assert time.monotonic() - t0 < 3.0
    assert e.value.code == UNAVAILABLE and "attempts" in e.value.message
    assert 1 < len(rpcs()) <= 3  # 0.2 + 0.4 s of back-off fit in 0.5 s at most once or twice


def test_remote_model_must_be_an_agent_or_the_oracle(tmp_path):
    with pytest.raises(ValueError, match="neither agents nor the oracle"):
        make_model(tmp_path, {"zz": RemoteModel(ORACLE_HOST, "zz")})


def test_local_and_remote_routing_agree_on_every_question(local_model, model):
    for q in (Q_AGREE, Q_SPLIT, Q_ALLFAIL):
        pb.engines.update({m: engine(m) for m in [*AGENTS, ORACLE]})
        a, b = request(text_input=q), request(text_input=q)
        run(local_model, a)
        pb.remote_servers[AGENT_HOST] = {"b": engine("b"), "c": engine("c")}
        run(model, b)
        pa, pb_ = outputs(a.sender.sent[0][0]), outputs(b.sender.sent[0][0])
        for key in ("answer", "tier", "escalated", "confidence", "degraded", "calls", "failed", "cost"):
            assert pa[key] == pb_[key], (q, key)


# --- error mapping, the parameter, channel options ----------------------------------------------------


class _Rpc(Exception):
    def __init__(self, code: str, details: str) -> None:
        self._code, self._details = code, details

    def code(self):
        return type("C", (), {"name": self._code})()

    def details(self):
        return self._details


@pytest.mark.parametrize(
    ("exc", "code", "retryable"),
    [
        (pb.InferenceServerException("failed to connect", "StatusCode.UNAVAILABLE"), UNAVAILABLE, True),
        (pb.InferenceServerException("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED"), UNAVAILABLE, False),
        (pb.InferenceServerException("[NOT_FOUND] no record", "StatusCode.NOT_FOUND"), NOT_FOUND, False),
        (pb.InferenceServerException("[NOT_FOUND] no record (stream)"), NOT_FOUND, False),
        (pb.InferenceServerException("Stub process is not healthy"), INTERNAL, False),
        (_Rpc("UNAVAILABLE", "Socket closed"), UNAVAILABLE, True),
        (_Rpc("INVALID_ARGUMENT", "bad"), "INVALID_ARG", False),
        (RuntimeError("boom"), INTERNAL, False),
    ],
)
def test_call_error_mapping(exc, code, retryable):
    err = call_error(exc)
    assert (err.code, err.retryable) == (code, retryable)
    assert not err.message.startswith("[")


def test_remote_map_round_trip_and_validation():
    m = {"o": RemoteModel("h:8001", "gpt4", decoupled=True, return_answer=True)}
    assert parse_remote_map(remote_map_json(m)) == m
    assert parse_remote_map("") == {}
    with pytest.raises(ValueError, match="host:port"):
        parse_remote_map('{"o": {"url": "http://h"}}')
    with pytest.raises(ValueError, match="unknown key"):
        parse_remote_map('{"o": {"url": "h:1", "retries": 3}}')
    with pytest.raises(ValueError, match="true or false"):
        parse_remote_map('{"o": {"url": "h:1", "decoupled": "yes"}}')
    with pytest.raises(ValueError, match="JSON"):
        parse_remote_map("{o}")


def test_channel_args_make_dead_links_visible_and_reconnects_quick():
    args = dict(CHANNEL_ARGS)
    assert args["grpc.keepalive_time_ms"] <= 10_000 and args["grpc.keepalive_permit_without_calls"] == 1
    assert args["grpc.max_reconnect_backoff_ms"] <= 2_000


# --- the spec: remote entries, host_spec ---------------------------------------------------------------


def _spec(tmp_path, **changes) -> Path:
    d = yaml.safe_load((ROOT / "deploy" / "replay.yaml").read_text())
    d["calibration"] = str(ROOT / "out" / "calibration" / "replay.json")
    d["engine"]["traces"] = str(ROOT / "data" / "gsm8k")
    d.update(changes)
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(d), encoding="utf-8")
    return p


@pytest.fixture()
def calibration(tmp_path):
    """A calibration artifact for the replay spec's models."""
    d = yaml.safe_load((ROOT / "deploy" / "replay.yaml").read_text())
    path = tmp_path / "cal.json"
    _artifact([a["name"] for a in d["agents"]] + [d["oracle"]["name"]]).save(path)
    return path


def _router_params(repo: Path) -> dict[str, str]:
    text = (repo / "pyramid" / "config.pbtxt").read_text()
    out = {}
    for line in text.splitlines():
        if line.startswith("parameters {"):
            key = line.split('key: "', 1)[1].split('"', 1)[0]
            raw = line.split('string_value: "', 1)[1].rsplit('" } }', 1)[0]
            out[key] = raw.encode().decode("unicode_escape")
    return out


def test_a_remote_oracle_renders_no_local_model_and_a_remote_map(tmp_path, calibration):
    oracle = {"name": "faithfulcot_gpt4_COT", "remote": {"url": ORACLE_HOST, "return_answer": True}}
    r = render(_spec(tmp_path, oracle=oracle), tmp_path / "repo", calibration=calibration)
    assert "faithfulcot_gpt4_COT" not in r.models and not (tmp_path / "repo" / "faithfulcot_gpt4_COT").exists()
    params = _router_params(tmp_path / "repo")
    assert parse_remote_map(params["remote"]) == {
        "faithfulcot_gpt4_COT": RemoteModel(ORACLE_HOST, "faithfulcot_gpt4_COT", False, True)
    }
    assert params["oracle"] == "faithfulcot_gpt4_COT" and "faithfulcot_gpt4_COT" in params["parsed_answer_models"]
    assert params["remote_retries"] == "2"


def test_rendered_router_config_parses_with_tritons_schema(tmp_path, calibration):
    pytest.importorskip("tritonclient.grpc")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    oracle = {"name": "faithfulcot_gpt4_COT", "remote": {"url": ORACLE_HOST, "decoupled": True}}
    render(_spec(tmp_path, oracle=oracle), tmp_path / "repo", calibration=calibration)
    cfg = text_format.Parse(
        (tmp_path / "repo" / "pyramid" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    remote = parse_remote_map(cfg.parameters["remote"].string_value)
    assert remote["faithfulcot_gpt4_COT"].decoupled


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"name": "faithfulcot_gpt4_COT", "remote": {"url": "nohost"}}, "host:port"),
        ({"name": "faithfulcot_gpt4_COT", "remote": {"url": "h:1"}, "seconds_per_token": 1}, "remote model"),
        ({"name": "faithfulcot_gpt4_COT", "remote": "h:1"}, "mapping"),
    ],
)
def test_bad_remote_entries_are_spec_errors(tmp_path, calibration, entry, match):
    with pytest.raises(SpecError, match=match):
        render(_spec(tmp_path, oracle=entry), tmp_path / "repo", calibration=calibration)


def test_host_spec_splits_one_spec_into_hosts(tmp_path, calibration):
    spec = _spec(tmp_path)
    d = yaml.safe_load(spec.read_text())
    agents, oracle = [a["name"] for a in d["agents"]], d["oracle"]["name"]
    router_host = host_spec(spec, set(agents), {oracle: ORACLE_HOST})
    assert router_host["oracle"] == {
        "name": oracle,
        "remote": {"url": ORACLE_HOST, "model": oracle, "decoupled": False, "return_answer": True},
    }
    (tmp_path / "router.yaml").write_text(yaml.safe_dump(router_host))
    r = render(tmp_path / "router.yaml", tmp_path / "router-repo", calibration=calibration)
    assert set(r.models) == {*agents, "pyramid"} and set(r.remote) == {oracle}
    oracle_host = host_spec(spec, {oracle}, {a: AGENT_HOST for a in agents})
    (tmp_path / "oracle.yaml").write_text(yaml.safe_dump(oracle_host))
    r = render(tmp_path / "oracle.yaml", tmp_path / "oracle-repo", engines_only=True)
    assert r.models == [oracle]
    with pytest.raises(SpecError, match="no url"):
        host_spec(spec, set(agents), {})


def test_host_spec_compacts_gpus_per_tier():
    spec = ROOT / "deploy" / "gpu-8x80gb.yaml"
    d = yaml.safe_load(spec.read_text())
    oracle = d["oracle"]["name"]
    agents = [a["name"] for a in d["agents"]]
    tier = host_spec(spec, {oracle}, {a: "agents:8001" for a in agents}, paths={"engine_root": "/models/engines"})
    assert tier["oracle"]["gpu_device_ids"] == [0, 1, 2, 3] and tier["node"]["gpus"] == 4
    assert tier["engine"]["engine_root"] == "/models/engines"
    assert all(a["remote"]["decoupled"] and a.get("log_probs") for a in tier["agents"])
    tier = host_spec(spec, set(agents), {oracle: "oracle:8001"})
    assert [a["gpu_device_ids"] for a in tier["agents"]] == [[0], [1], [2], [3]] and tier["node"]["gpus"] == 4


def test_dns_urls_balance_round_robin_and_are_renewed(monkeypatch):
    """A dns:/// URL (a Kubernetes headless Service) gets round-robin balancing and a fresh client every
    RENEW_DNS_S, so replicas an autoscaler adds receive calls; the old client is closed later."""
    from pyramid_triton import remote

    assert ("grpc.lb_policy_name", "round_robin") in remote.channel_args("dns:///svc.ns.svc:8001")
    assert ("grpc.lb_policy_name", "round_robin") not in remote.channel_args("10.0.0.2:8001")
    assert RemoteModel.from_spec("o", {"url": "dns:///o-headless.llm.svc.cluster.local:8001"}, "x").url.startswith(
        "dns:///"
    )
    clock = {"t": 1000.0}
    monkeypatch.setattr(remote.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(remote, "OLD_CLIENT_GRACE_S", 0.0)
    eng = RemoteEngines({ORACLE: RemoteModel("dns:///o:8001", ORACLE), "a": RemoteModel("h:8001", "a")})
    eng.client_factory = pb.FakeAioClient

    async def go():
        first, plain = eng.client("dns:///o:8001"), eng.client("h:8001")
        clock["t"] += remote.RENEW_DNS_S / 2
        assert eng.client("dns:///o:8001") is first
        clock["t"] += remote.RENEW_DNS_S
        second = eng.client("dns:///o:8001")
        assert second is not first and eng.client("h:8001") is plain  # host:port clients are kept
        for _ in range(3):
            await asyncio.sleep(0)
        return first, second

    first, second = asyncio.run(go())
    assert first.closed and not second.closed
