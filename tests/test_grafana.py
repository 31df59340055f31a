"""The Grafana dashboard (deploy/grafana/pyramid-moa.json, in the Helm chart as a ConfigMap): it parses,
covers what issue 13 asks for, and every query names only metrics the router or Triton exports (the
router's from its own metric families; Triton's as a tritonserver 2.51 serving this project exports
them; tests/integration/test_shadow_reload.py checks both against a real server's /metrics), or the OpenAI gateway's
own /metrics exports (its per-key usage and budgets: the names its renderer writes, with a budgeted key)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import fake_pb_utils as pb
import pytest

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "pyramid-moa.json"
CHART_COPY = ROOT / "deploy" / "helm" / "pyramid-moa" / "dashboards" / "pyramid-moa.json"
# /metrics of tritonserver 2.51 (nvidia-pytriton 0.7.0) serving model_repository/ on this project's CPU VM, 2026-12-01.
TRITON_METRICS = {
    "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes", "nv_cpu_utilization",
    "nv_inference_compute_infer_duration_us", "nv_inference_compute_input_duration_us",
    "nv_inference_compute_output_duration_us", "nv_inference_count", "nv_inference_exec_count",
    "nv_inference_pending_request_count", "nv_inference_queue_duration_us", "nv_inference_request_duration_us",
    "nv_inference_request_failure", "nv_inference_request_success", "nv_pinned_memory_pool_total_bytes",
    "nv_pinned_memory_pool_used_bytes",
}  # fmt: skip
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "increase", "irate", "histogram_quantile",
    "label_values", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool", "abs",
    "clamp_min", "clamp_max", "topk", "bottomk", "delta", "deriv", "time", "vector", "scalar", "e",
}  # fmt: skip


def router_metrics() -> set[str]:
    """Every series name the router's metrics make (histograms as _bucket, _sum, _count too)."""
    from pyramid_triton.metrics import RouterMetrics

    pb.MetricFamily.registry.clear()
    RouterMetrics(pb, "pyramid", ["a", "o"])
    out = set()
    for name, fam in pb.MetricFamily.registry.items():
        out.add(name)
        if fam.kind == pb.MetricFamily.HISTOGRAM:
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return out


def gateway_metrics() -> set[str]:
    """Every series name the gateway's /metrics has with API keys, one of them budgeted (read from its renderer)."""
    import sys

    for sub in ("client", "gateway"):
        if str(ROOT / sub) not in sys.path:
            sys.path.insert(0, str(ROOT / sub))
    from pyramid_gateway.budget import Budget, BudgetBook
    from pyramid_gateway.metrics import Metrics

    m = Metrics()
    m.key_labels = ("k",)
    m.book = BudgetBook({"k": Budget("calls", 1, "day")})
    return {line.split("{")[0].split(" ")[0] for line in m.render().splitlines() if not line.startswith("#")}


def queries(d: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in the dashboard, the template variables' included."""
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            out.append((f"variable {v['name']}", v["query"]["query"]))
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, ranges, grouping labels, strings and
    functions left out)."""
    e = re.sub(r'"[^"]*"', "", expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", e)
    e = re.sub(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*[A-Za-z_]+\s*\)", r"\1", e)
    tokens = set(re.findall(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", e))
    return {t for t in tokens if t not in PROMQL_WORDS and not re.fullmatch(r"\d+e\d+", t)}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def test_every_query_names_an_exported_metric(dashboard):
    exported = router_metrics() | gateway_metrics() | TRITON_METRICS
    qs = queries(dashboard)
    assert len(qs) >= 20
    for title, expr in qs:
        names = metric_names(expr)
        assert names, f"{title}: {expr!r} names no metric"
        unknown = names - exported
        assert not unknown, (
            f"{title}: {expr!r} names {sorted(unknown)}, which neither the router, the gateway nor Triton exports"
        )


def test_the_metric_name_parser():
    got = metric_names(
        'histogram_quantile(0.5, sum by (le, tier) (rate(pyramid_tier_request_duration_seconds_bucket{model=~"$m"}'
        "[$__rate_interval]))) / 1e6"
    )
    assert got == {"pyramid_tier_request_duration_seconds_bucket"}
    assert metric_names("label_values(pyramid_requests_total, model)") == {"pyramid_requests_total"}


def test_it_covers_what_the_issue_asks_for(dashboard):
    text = " ".join(expr for _, expr in queries(dashboard))
    for needed in (
        "pyramid_requests_total", "pyramid_escalations_total", "pyramid_confidence_bucket",
        "pyramid_tier_request_duration_seconds_bucket", "pyramid_tier_cost_oracle_calls_total",
        "pyramid_live_fidelity", "pyramid_drift", "pyramid_model_failures_total", "pyramid_breaker_open",
        "pyramid_shadow_total", "pyramid_shadow_cost_oracle_calls_total", "nv_inference_request_success",
        "pyramid_gateway_key_budget_spent",
    ):  # fmt: skip
        assert needed in text, needed
    titles = [p["title"] for p in dashboard["panels"]]
    assert len(titles) == len(set(titles))
    grid = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard["panels"]]
    assert len(grid) == len(set(grid))  # no two panels on the same spot


def test_the_chart_carries_the_same_dashboard_as_a_configmap():
    assert CHART_COPY.read_bytes() == DASHBOARD.read_bytes(), "copy deploy/grafana/pyramid-moa.json into the chart"
    helm_check = pytest.importorskip("pyramid_ops.helm_check")
    pytest.importorskip("helm_python")
    from test_remote import _artifact

    from pyramid_deploy.render import load_spec
    from pyramid_ops.helm_values import make_values

    spec = ROOT / "deploy" / "replay.yaml"
    d = load_spec(spec)
    names = [a["name"] if isinstance(a, dict) else a for a in d["agents"]] + [d["oracle"]["name"]]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cal = Path(tmp) / "cal.json"
        _artifact(names).save(cal)
        values = make_values(spec, cal, image="registry.example/pyramid-moa:0.1.0")
    docs = helm_check.manifests(helm_check.render_chart(values))
    cms = {x["metadata"]["name"]: x for x in docs if x["kind"] == "ConfigMap"}
    cm = cms["pyramid-pyramid-moa-grafana-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["pyramid-moa.json"]) == json.loads(DASHBOARD.read_text())
    assert helm_check.validate([cm]) == []
    values["monitoring"] = {"grafanaDashboard": {"enabled": False}}
    docs = helm_check.manifests(helm_check.render_chart(values))
    assert not any(x["metadata"]["name"].endswith("-grafana-dashboard") for x in docs)
