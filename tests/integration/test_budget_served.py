"""The oracle budget on a real tritonserver (replay engines, the committed 2-stage calibration): on a short
difficulty-shift replay (easier half of the questions first, then the harder half; scripts/bench_budget.py
at full size, BENCHMARKS.md) the controlled oracle-call rate per window stays closer to the target than the
uncontrolled one; each controlled response says which thresholds were applied; the gauges are exported;
a reload (as a restart) starts the window empty."""

from __future__ import annotations

import asyncio
import importlib.util
import time

import pytest

from .conftest import ROOT, scrape

N, WINDOW, TARGET = 400, 100, 0.2


def _bench():
    spec = importlib.util.spec_from_file_location("bench_budget", ROOT / "scripts" / "bench_budget.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        import tritonclient.grpc  # noqa: F401

        from pyramid_ops.server import find_tritonserver

        find_tritonserver()
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"tritonserver is not installed ({exc}); run scripts/install_triton.sh")
    srv = _bench().serve(tmp_path_factory.mktemp("budget"))
    try:
        yield srv
    finally:
        srv.stop()


def test_controlled_rate_is_held_closer_to_the_target_than_uncontrolled(server):
    from pyramid_moa.traces import TraceSet

    b = _bench()
    traces = TraceSet.open(b.SHIPPED)
    questions = [(i, traces.questions[i].question) for i in b.shifted_order(N)]
    misses, last = {}, None
    for name, rate in (("uncontrolled", 0.0), ("controlled", TARGET)):
        b.reload(server, budget_oracle_rate=rate, budget_window=WINDOW)
        got = asyncio.run(b.ask_all(server.grpc_url, questions, 2))
        assert len(got) == N
        ws = b.windows([(bool(r.escalated), True) for _, r in got], WINDOW)
        misses[name] = max(abs(w["rate"] - TARGET) for w in ws[1:])
        if rate:
            budgets = [r.budget for _, r in got]
            assert all(x is not None and len(x["thresholds"]) == 2 for x in budgets)
            assert all(0.0 <= t <= 1.0 for x in budgets for t in x["thresholds"])
            last = budgets[-1]
        else:
            assert all(r.budget is None for _, r in got)  # off: the response is as before
    assert misses["uncontrolled"] > 0.15  # the easier half escalates almost never, the harder one twice the target
    assert misses["controlled"] <= 0.05 and misses["controlled"] < misses["uncontrolled"] / 3, misses
    assert last is not None and last["target"] == TARGET and last["offset"] < 0  # the hard half: lowered
    time.sleep(1.0)  # the gauges are flushed within 0.5 s
    m = scrape(server.metrics_url)
    assert m['pyramid_budget_target_oracle_rate{model="pyramid"}'] == TARGET
    assert m['pyramid_budget_threshold_offset{model="pyramid"}'] == pytest.approx(last["offset"], abs=0.3)
    # a reload (a changed config: Triton keeps a model whose config is unchanged) starts the window empty, as a
    # restart does: the offset is 0 until it has scores
    b.reload(server, budget_oracle_rate=TARGET, budget_window=WINDOW + 1)
    first = asyncio.run(b.ask_all(server.grpc_url, questions[:1], 1))[0][1]
    assert first.budget["offset"] == 0.0 and first.budget["window_rate"] == pytest.approx(float(first.escalated))
