"""Shadow sampling and drift alarms in the router, with the fake ``triton_python_backend_utils``
(the real server: tests/integration/test_shadow_reload.py); the shadow directory's format and the
drift statistics on their own."""

from __future__ import annotations

import asyncio
import json
import os
import random
import stat
import sys
import time

import fake_pb_utils as pb
import pytest
from test_triton_glue import AGENTS, ORACLE, Q_AGREE, Q_SPLIT, engine, outputs, request
from test_triton_glue import model as _base_model  # noqa: F401 - the fixture's artifact and engines

from pyramid_moa.traces import SHADOW_MARKER, TraceSet
from pyramid_triton.bls import PyramidModel
from pyramid_triton.drift import DriftMonitor, acceptance, wilson
from pyramid_triton.shadow import SegmentWriter, Shadow, ShadowRecord


@pytest.fixture()
def make(tmp_path, monkeypatch):
    """make(**params): the glue tests' router with more parameters."""
    orig_init = PyramidModel.__init__

    def init(self, pb_, args):
        self._config_json = args["model_config"]
        orig_init(self, pb_, args)

    monkeypatch.setattr(PyramidModel, "__init__", init)

    def build(**params):
        base = _base_model.__wrapped__(tmp_path)
        cfg = json.loads(base._config_json)
        cfg["parameters"].update({k: {"string_value": str(v)} for k, v in params.items()})
        pb.Logger.lines.clear()
        return PyramidModel(pb, {"model_config": json.dumps(cfg), "model_repository": str(tmp_path)})

    return build


def serve(model: PyramidModel, *requests, wait_shadow: bool = True) -> None:
    async def go():
        await model.execute(list(requests))
        if wait_shadow:
            while model._shadow_tasks:
                await asyncio.gather(*list(model._shadow_tasks))

    asyncio.run(go())


def _metric(name: str, **labels) -> pb.Metric:
    fam = pb.MetricFamily.registry[name]
    return [m for m in fam.metrics if all(m.labels.get(k) == v for k, v in labels.items())][-1]


def test_every_model_recorded_after_the_response(make, tmp_path):
    shadow = tmp_path / "shadow"
    model = make(shadow_rate=1.0, shadow_dir=str(shadow))
    pb.calls.clear()
    r1, r2 = request(text_input=Q_AGREE), request(text_input=Q_SPLIT)
    serve(model, r1, r2)
    assert outputs(r1.sender.sent[0][0])["tier"] == "committee"
    # Q_AGREE was accepted without the oracle: the shadow called it; Q_SPLIT escalated: nothing missing.
    assert sum(m == ORACLE for m, _ in pb.calls) == 2
    ts = TraceSet.open(shadow)
    assert sorted(q.question for q in ts.questions.values()) == sorted([Q_AGREE, Q_SPLIT])
    assert all(q.gold is None for q in ts.questions.values())
    idxs, aligned = ts.first_samples([*AGENTS, ORACLE])
    assert all(s is not None and s.answer is not None and s.output_tokens for v in aligned.values() for s in v)
    lines = [
        json.loads(x)
        for seg in shadow.iterdir()
        if seg.is_dir()
        for x in (seg / "questions.jsonl").read_text().splitlines()
    ]
    by_q = {d["question"]: d["shadow"] for d in lines}
    d = by_q[Q_AGREE]["decision"]
    assert (d["tier"], d["escalated"], d["answer"], d["calls"], d["shadow_calls"]) == (
        "committee", False, "4", AGENTS, [ORACLE]
    )  # fmt: skip
    assert by_q[Q_SPLIT]["decision"]["shadow_calls"] == [] and by_q[Q_SPLIT]["decision"]["escalated"]
    assert by_q[Q_AGREE]["calibration"]["id"] == model.calibration["id"] and len(model.calibration["id"]) == 16
    # user data: private directory and files
    assert stat.S_IMODE(shadow.stat().st_mode) == 0o700
    for f in shadow.rglob("*"):
        assert stat.S_IMODE(f.stat().st_mode) == (0o700 if f.is_dir() else 0o600), f
    assert (shadow / SHADOW_MARKER).is_file()
    model._flush_metrics()
    assert _metric("pyramid_shadow_total", outcome="recorded").value == 2
    assert _metric("pyramid_shadow_cost_oracle_calls_total").value == pytest.approx(1.0)  # one oracle call
    assert _metric("pyramid_cost_oracle_calls_total", kind="baseline").value == 2  # shadow cost not in it
    assert _metric("pyramid_live_fidelity").value == 1.0  # the accepted answer agreed with the oracle


def test_the_response_goes_out_before_any_shadow_call(make, tmp_path):
    async def slow_oracle(req):
        await asyncio.sleep(0.2)
        return engine(ORACLE)(req)

    model = make(shadow_rate=1.0, shadow_dir=str(tmp_path / "s"))
    pb.engines[ORACLE] = slow_oracle
    r = request(text_input=Q_AGREE)

    async def go():
        await model.execute([r])
        sent_before = list(r.sender.sent)
        pending = list(model._shadow_tasks)
        await asyncio.gather(*pending)
        return sent_before, pending

    sent_before, pending = asyncio.run(go())
    assert len(sent_before) == 1 and outputs(sent_before[0][0])["answer"] == "4" and pending


def test_a_full_shadow_bound_skips_and_counts_never_queues(make, tmp_path):
    async def slow_oracle(req):
        await asyncio.sleep(0.2)
        return engine(ORACLE)(req)

    model = make(shadow_rate=1.0, shadow_dir=str(tmp_path / "s"), shadow_max_concurrent=1)
    pb.engines[ORACLE] = slow_oracle
    serve(model, *(request(text_input=Q_AGREE) for _ in range(4)))
    model._flush_metrics()
    assert _metric("pyramid_shadow_total", outcome="recorded").value == 1
    assert _metric("pyramid_shadow_total", outcome="skipped").value == 3
    assert model.shadow.in_flight == 0


def test_off_by_default_and_refused_without_a_directory(make, tmp_path):
    model = make()
    assert model.shadow is None
    serve(model, request(text_input=Q_AGREE))
    assert not (tmp_path / "shadow").exists()
    with pytest.raises(ValueError, match="shadow_dir is not set"):
        make(shadow_rate=0.5)
    with pytest.raises(ValueError, match="shadow_rate must be within"):
        make(shadow_rate=1.5, shadow_dir=str(tmp_path / "s"))


def test_sampling_is_a_uniform_share():
    s = Shadow.__new__(Shadow)
    s.rate, s.rng = 0.1, random.Random(7)
    share = sum(s.sampled() for _ in range(20000)) / 20000
    assert share == pytest.approx(0.1, abs=0.01)


def _rec(idx: int, text: str = "x" * 200) -> ShadowRecord:
    q = {"idx": idx, "question": f"q{idx}", "gold": None, "shadow": {}}
    return ShadowRecord(idx, q, {m: {"text": text, "answer": str(idx), "output_tokens": 5} for m in ("a", "o")})


def test_segments_rotate_and_the_directory_stays_bounded(tmp_path):
    sources = [{"name": "a", "params_b": 7}, {"name": "o", "params_b": 70}]
    w = SegmentWriter(tmp_path / "s", "pyramid", sources, max_bytes=8 * 2000)  # segments of ~2000 bytes
    for i in range(200):
        w.write(_rec(i))
    segs = [p for p in (tmp_path / "s").iterdir() if p.is_dir()]
    total = sum(f.stat().st_size for f in (tmp_path / "s").rglob("*") if f.is_file())
    assert len(segs) >= 5 and total <= 8 * 2000 + 2 * 2000  # the bound, plus at most the open segment
    ts = TraceSet.open(tmp_path / "s")
    kept = sorted(ts.questions)
    assert kept[-1] == 199 and kept == list(range(kept[0], 200))  # the newest records, none missing
    assert set(ts.samples("o")) == set(kept)


def test_a_torn_or_uncommitted_record_is_skipped_by_readers(tmp_path):
    w = SegmentWriter(tmp_path / "s", "pyramid", [{"name": "a"}, {"name": "o"}], max_bytes=10**6)
    for i in range(3):
        w.write(_rec(i))
    seg = w.segment
    # a crash after a trace line of record 3 and in the middle of record 4's trace line
    with open(seg / "traces" / "a.jsonl", "a") as f:
        f.write(json.dumps({"idx": 3, "samples": [{"text": "t", "answer": "3"}]}) + "\n")
        f.write('{"idx": 4, "samp')
    ts = TraceSet.open(tmp_path / "s")
    assert sorted(ts.questions) == [0, 1, 2] and sorted(ts.samples("a")) == [0, 1, 2]
    os.remove(seg / "questions.jsonl")  # a segment with no complete record yet
    with pytest.raises(ValueError, match="no complete record"):
        TraceSet.open(tmp_path / "s")


def test_binomial_interval():
    lo, hi = acceptance(100, 0.3, 0.99)
    assert (lo, hi) == (19, 42)
    assert acceptance(50, 0.0, 0.99) == (0, 0) and acceptance(50, 1.0, 0.99) == (50, 50)
    a, b = wilson(0.3, 1000, 0.99)
    assert a < 0.3 < b and b - a == pytest.approx(0.075, abs=0.005)


def test_drift_turns_on_after_a_shift_and_off_again_with_one_line_each():
    m = DriftMonitor({"oracle_call_rate": 0.3, "n_questions": 1000}, window=100, confidence=0.99)
    rng = random.Random(3)
    lines = [m.observe_route(rng.random() < 0.3) for _ in range(1000)]
    assert not any(lines) and not m.drifting  # honest traffic: no alarm
    lines = [m.observe_route(rng.random() < 0.9) for _ in range(200)]
    on = [x for x in lines if x]
    assert len(on) == 1 and "escalation_rate left its 99% binomial interval: expected 0.3000" in on[0]
    assert "observed 0.4" in on[0] and m.drifting
    lines = [m.observe_route(rng.random() < 0.3) for _ in range(300)]
    off = [x for x in lines if x]
    assert len(off) == 1 and "is back within" in off[0] and not m.drifting
    assert DriftMonitor(None).observe_route(True) is None  # no expectation: never an alarm


def test_the_router_exports_drift_and_logs_the_transition(make, tmp_path):
    """An artifact expecting no escalations, a window of 5: five escalated requests turn the gauge on."""
    model = make(drift_window=5)
    model.drift.figures["escalation_rate"].expected = 0.0
    model.drift.figures["escalation_rate"].n_expected = 1000
    serve(model, *(request(text_input=Q_SPLIT) for _ in range(5)))
    model._flush_metrics()
    assert _metric("pyramid_drift", figure="escalation_rate").value == 1.0
    assert _metric("pyramid_drift", figure="fidelity").value == 0.0
    assert _metric("pyramid_live_escalation_rate").value == 1.0
    assert _metric("pyramid_expected_escalation_rate").value == 0.0
    warn = [m for lvl, m in pb.Logger.lines if lvl == "warn" and "drift" in m]
    assert len(warn) == 1 and "escalation_rate left" in warn[0] and "observed 1.0000" in warn[0]
    # per-request thresholds are not the artifact's: they do not count
    serve(model, *(request(text_input=Q_AGREE, escalation_threshold=0.0) for _ in range(5)))
    assert len(model.drift.figures["escalation_rate"].window) == 5


# ---- hot reload: the watched calibration file ---------------------------------------------------------


def test_the_watch_reports_each_change_once(tmp_path):
    from pyramid_triton.hot_reload import Watch, signature

    f = tmp_path / "c.json"
    f.write_text("1")
    seen = []
    w = Watch(f, 0.02, signature(f)).start(seen.append)
    try:
        (tmp_path / "t").write_text("2")
        os.replace(tmp_path / "t", f)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert seen == [f]
        os.remove(f)  # gone: waited for, not reported
        time.sleep(0.1)
        assert seen == [f]
    finally:
        w.stop()


def test_a_changed_calibration_goes_live_between_requests_and_a_bad_one_is_refused(make, tmp_path):
    model = make(calibration_watch_s=0)  # no thread: the test calls the watch's callback itself
    cal = tmp_path / "calibration.json"
    old = json.loads(cal.read_text())
    old_id = model.calibration["id"]
    strict = {**old, "stages": [{**old["stages"][0], "threshold": 0.99}]}  # Q_AGREE now escalates

    async def slow_c(req):
        await asyncio.sleep(0.2)
        return engine("c")(req)

    pb.engines["c"] = slow_c
    first, second = request(text_input=Q_AGREE), request(text_input=Q_AGREE)

    async def go():
        t = asyncio.ensure_future(model.execute([first]))
        await asyncio.sleep(0.05)  # the first request is in flight, waiting for agent c
        (tmp_path / "new.json").write_text(json.dumps(strict))
        os.replace(tmp_path / "new.json", cal)
        model._reload(cal)  # as the watch thread would: the switch is scheduled on this loop
        await asyncio.sleep(0)
        await model.execute([second])
        await t

    asyncio.run(go())
    assert outputs(first.sender.sent[0][0])["tier"] == "committee"  # under the artifact it started with
    assert outputs(second.sender.sent[0][0])["tier"] == "oracle"  # under the new one
    new_id = model.calibration["id"]
    assert new_id != old_id
    model._flush_metrics()
    assert _metric("pyramid_calibration_reloads_total", outcome="ok").value == 1
    assert _metric("pyramid_calibration_info", id=new_id).value == 1.0
    assert _metric("pyramid_calibration_info", id=old_id).value == 0.0
    # A bad file: refused, logged, the new one keeps serving.
    cal.write_text(json.dumps({**strict, "oracle": "someone_else"}))
    pb.Logger.lines.clear()
    model._reload(cal)
    assert model.calibration["id"] == new_id
    errors = [m for lvl, m in pb.Logger.lines if lvl == "error"]
    assert len(errors) == 1 and "refused" in errors[0] and f"calibration {new_id} keeps serving" in errors[0]
    model._flush_metrics()
    assert _metric("pyramid_calibration_reloads_total", outcome="refused").value == 1


def test_an_unloaded_router_waits_for_its_requests_in_flight(make):
    model = make()
    model._in_flight = 1
    assert model.drain(timeout_s=0.05) == 1
    model._in_flight = 0
    assert model.drain(timeout_s=0.05) == 0


def test_the_redaction_hook_sees_every_shadow_record(make, tmp_path, monkeypatch):
    import types

    seen = []

    def hook(d):
        seen.append(d["event"])
        if "3+3" in d["question"]:
            return None  # dropped
        d["question"] = d["question"].replace("2+2", "[redacted]")
        return d

    monkeypatch.setitem(sys.modules, "shadow_hook_mod", types.SimpleNamespace(hook=hook))
    shadow = tmp_path / "s"
    model = make(shadow_rate=1.0, shadow_dir=str(shadow), request_log_redact="shadow_hook_mod:hook")
    serve(model, request(text_input=Q_AGREE), request(text_input=Q_SPLIT))
    assert seen.count("pyramid.shadow") == 2
    ts = TraceSet.open(shadow)
    assert [q.question for q in ts.questions.values()] == ["What is [redacted]?"]
    model._flush_metrics()
    assert _metric("pyramid_shadow_total", outcome="dropped").value == 1
