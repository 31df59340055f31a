"""The real perf_analyzer against the session deployment, through scripts/perf.py's runner (pyramid_bench.perf).

Skips, with the reason, when perf_analyzer is not installed (``make setup`` installs it without
genai-perf, non-fatally; ``make setup-perf`` / ``scripts/install_perf_analyzer.sh``). Short: a
two-level sweep of the router over gRPC streaming (the router is decoupled) and one fixed-count
run of an engine over unary gRPC, each CSV checked for every row it asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import COMMITTEE, scrape

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def perf():
    from pyramid_bench import perf

    return perf


@pytest.fixture(scope="module")
def pa_binary(perf):
    binary = perf.find_perf_analyzer()
    if binary is None:
        pytest.skip(
            "perf_analyzer (the real 2.60 binary) is not installed: run 'make setup-perf' or "
            "'scripts/install_perf_analyzer.sh --no-genai-perf' (it needs apt access to Debian 13 packages)"
        )
    return binary


def _successes(metrics_url: str, model: str) -> float:
    m = scrape(metrics_url, "nv_inference_request_success")
    return sum(v for k, v in m.items() if f'model="{model}"' in k)


def test_perf_analyzer_sweeps_the_router_and_runs_an_engine(deployment, perf, pa_binary, tmp_path):
    from pyramid_moa.traces import TraceSet

    ts = TraceSet.open(deployment.traces)
    engine = COMMITTEE[0]
    idx = [i for i in range(300, 400) if ts.samples(engine).get(i)][:30]  # clear of the fault-injected ones
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps(perf.input_data([ts.questions[i].question for i in idx])), encoding="utf-8")
    from pyramid_ops import access

    # perf_analyzer reads the model's config, which is behind the admin key (docs/SECURITY.md)
    pa = perf.PerfAnalyzer(
        pa_binary, deployment.grpc_url, tmp_path, inputs, headers=access.grpc_headers(deployment.admin_key)
    )
    before = _successes(deployment.metrics_url, "pyramid")

    rows = pa.sweep("sweep_pyramid", "pyramid", "1:2", streaming=True, window_ms=500, stability=50, max_trials=6)
    assert [r.concurrency for r in rows] == [1, 2]
    assert all(r.throughput > 0 and 0 < r.p50_us <= r.p99_us for r in rows)
    log = (tmp_path / "logs" / "sweep_pyramid.log").read_text(encoding="utf-8")
    assert "--streaming" in log and "Detected decoupled model" in log
    assert _successes(deployment.metrics_url, "pyramid") > before  # the server answered them

    row = pa.count_run("engine_unary_c1", engine, 1, streaming=False, n=60)
    assert row.concurrency == 1 and row.throughput > 0 and row.p50_us > 0
    assert "Request count: 60" in (tmp_path / "logs" / "engine_unary_c1.log").read_text(encoding="utf-8")
