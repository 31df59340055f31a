"""Issue 27 item 1 on Kubernetes: the router's own Triton ports (HTTP, gRPC) can be kept private to the gateway
in the same pod and the peers in ``security.networkPolicy.tritonFrom``; the gateway's port stays open. Rendered
by Helm's own template engine and validated like the rest of the chart (tests/test_helm.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
helm_check = pytest.importorskip("pyramid_ops.helm_check")
pytest.importorskip("helm_python")

from test_remote import _artifact  # noqa: E402

from pyramid_deploy.render import load_spec  # noqa: E402
from pyramid_ops.helm_values import make_values  # noqa: E402

RELEASE, NAMESPACE = "pyramid", "llm"
FULL = "pyramid-pyramid-moa"


@pytest.fixture(scope="module")
def values(tmp_path_factory):
    spec = ROOT / "deploy" / "replay.yaml"
    d = load_spec(spec)
    cal = tmp_path_factory.mktemp("cal") / "c.json"
    _artifact([a["name"] if isinstance(a, dict) else a for a in d["agents"]] + [d["oracle"]["name"]]).save(cal)
    return make_values(spec, cal, image="registry.example/pyramid-moa:0.1.0")


def _policies(values, network_policy: dict) -> tuple[dict, list]:
    v = {**values, "security": {**values.get("security", {}), "networkPolicy": network_policy}}
    docs = helm_check.manifests(helm_check.render_chart(v, RELEASE, NAMESPACE))
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}, docs


def test_by_default_the_router_keeps_its_triton_ports_open(values):
    pols, _ = _policies(values, {"enabled": True})
    assert f"{FULL}-router" not in pols and {f"{FULL}-agents", f"{FULL}-oracle"} <= set(pols)


def test_an_empty_triton_from_closes_the_routers_triton_ports_to_every_pod(values):
    pols, docs = _policies(values, {"enabled": True, "tritonFrom": []})
    spec = pols[f"{FULL}-router"]["spec"]
    deps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    router_labels = deps[f"{FULL}-router"]["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= router_labels.items()
    assert spec["policyTypes"] == ["Ingress"]
    ports = [p["port"] for rule in spec["ingress"] for p in rule["ports"]]
    assert "http" not in ports and "grpc" not in ports  # no rule admits them: closed to every other pod
    assert spec["ingress"] == [
        {"ports": [{"port": "openai", "protocol": "TCP"}]},  # the gateway: the public entry
        {"ports": [{"port": "metrics", "protocol": "TCP"}]},
    ]
    assert helm_check.validate(docs) == []


def test_triton_from_admits_the_routers_own_clients_only(values):
    clients = [{"podSelector": {"matchLabels": {"pyramid-client": "true"}}}]
    scrapers = [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    pols, docs = _policies(values, {"enabled": True, "tritonFrom": clients, "metricsFrom": scrapers})
    triton, openai, metrics = pols[f"{FULL}-router"]["spec"]["ingress"]
    assert triton == {
        "from": clients,
        "ports": [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}],
    }
    assert openai == {"ports": [{"port": "openai", "protocol": "TCP"}]}
    assert metrics == {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": scrapers}
    assert helm_check.validate(docs) == []
    off, _ = _policies(values, {"enabled": False, "tritonFrom": clients})
    assert off == {}
