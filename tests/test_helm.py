"""The Helm chart (deploy/helm/pyramid-moa): values from every deployment spec (scripts/helm_values.py), rendered
by Helm's own template engine (helm-python-sdk: Helm v4's Go SDK), every manifest valid against the Kubernetes
schemas of kubernetes-validate (strict), and each tier's spec renderable into its model repository."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_remote import _artifact

from pyramid_deploy.render import SpecError, load_spec
from pyramid_ops import helm_check
from pyramid_ops.helm_values import make_values
from pyramid_triton.remote import parse_remote_map

ROOT = Path(__file__).resolve().parents[1]

SPECS = ["replay.yaml", "llamacpp.yaml", "gpu-1gpu-smoke.yaml", "gpu-8x80gb.yaml", "gpu-4x80gb-fp8.yaml"]
RELEASE, NAMESPACE = "pyramid", "llm"
FULL = "pyramid-pyramid-moa"


def _names(spec: Path) -> list[str]:
    d = load_spec(spec)
    return [a["name"] if isinstance(a, dict) else a for a in d["agents"]] + [d["oracle"]["name"]]


@pytest.fixture(scope="module")
def calibrations(tmp_path_factory) -> dict[str, Path]:
    """A calibration artifact with each spec's model names (the router's render checks them)."""
    tmp = tmp_path_factory.mktemp("cal")
    out = {}
    for name in SPECS:
        path = tmp / f"{name}.json"
        _artifact(_names(ROOT / "deploy" / name)).save(path)
        out[name] = path
    return out


@pytest.fixture(scope="module")
def rendered(calibrations):
    """spec name -> (values, manifests) with the ServiceMonitor on."""
    out = {}
    for name in SPECS:
        values = make_values(ROOT / "deploy" / name, calibrations[name], image="registry.example/pyramid-moa:0.1.0")
        values["monitoring"] = {"podAnnotations": True, "serviceMonitor": {"enabled": True, "interval": "15s"}}
        out[name] = (values, helm_check.manifests(helm_check.render_chart(values, RELEASE, NAMESPACE)))
    return out


def by_kind(docs, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_helm_lint_is_clean():
    assert helm_check.lint() == []


@pytest.mark.parametrize("name", SPECS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(rendered, name):
    _, docs = rendered[name]
    assert helm_check.validate(docs) == []
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == [
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget", "Secret",
        "Service", "ServiceMonitor",
    ]  # fmt: skip


@pytest.mark.parametrize("name", SPECS)
def test_each_tier_spec_renders_its_repository(rendered, calibrations, name, tmp_path):
    values, docs = rendered[name]
    tiers = helm_check.render_tier_specs(docs, values, calibrations[name], tmp_path)
    names = _names(ROOT / "deploy" / name)
    got = dict(line.split(": ", 1) for line in tiers)
    # the router tier: the router, and the embedder where the spec has one (the router calls it over BLS)
    embedder = load_spec(ROOT / "deploy" / name).get("embedder")
    assert got["router"] == ("embedder, pyramid" if embedder is not None else "pyramid")
    assert set(names[:-1]) <= set(got["agents"].split(", ")) and names[-1] not in got["agents"]
    assert got["oracle"].split(", ")[0] == names[-1]
    # the router calls every engine at its tier's headless Service, round-robin over the pods
    cfg = (tmp_path / "repo-router" / "pyramid" / "config.pbtxt").read_text()
    raw = next(ln for ln in cfg.splitlines() if 'key: "remote"' in ln)
    remote = parse_remote_map(raw.split('string_value: "', 1)[1].rsplit('" } }', 1)[0].replace('\\"', '"'))
    assert set(remote) == set(names)
    for m, rm in remote.items():
        tier = "oracle" if m == names[-1] else "agents"
        assert rm.url == f"dns:///{FULL}-{tier}-headless.{NAMESPACE}.svc.cluster.local:8001"


def test_gpu_tiers_get_their_gpus_shm_node_selection_and_model_store(rendered):
    values, docs = rendered["gpu-8x80gb.yaml"]
    deps = by_kind(docs, "Deployment")
    assert set(deps) == {f"{FULL}-router", f"{FULL}-agents", f"{FULL}-oracle"}
    spec = load_spec(ROOT / "deploy" / "gpu-8x80gb.yaml")  # each engine tier: the GPUs its engines use
    agent_gpus = {g for a in spec["agents"] for g in a["gpu_device_ids"]}
    want_gpus = {"router": None, "agents": len(agent_gpus), "oracle": len(spec["oracle"]["gpu_device_ids"])}
    for tier, gpus in want_gpus.items():
        pod = deps[f"{FULL}-{tier}"]["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["resources"]["limits"].get("nvidia.com/gpu") == gpus
        shm = next(v for v in pod["volumes"] if v["name"] == "shm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        live = c["livenessProbe"]["exec"]["command"]  # stub processes alive (tests/integration/test_helm_liveness)
        assert live[:2] == ["python3", f"{values['projectRoot']}/scripts/liveness.py"]
        assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert {p["containerPort"] for p in c["ports"]} == {8000, 8001, 8002}
        init = pod["initContainers"][0]
        assert init["command"][1].endswith("scripts/render_repository.py")
        if gpus:
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
            assert c["command"][1].endswith("scripts/serve_gpu.sh")  # orchestrator mode, as make serve-gpu
            assert "--engines-only" in init["command"]
            claim = next(v for v in pod["volumes"] if v["name"] == "model-store")
            assert claim["persistentVolumeClaim"]["claimName"] == values["modelStore"]["claimName"]
        else:
            assert "nodeSelector" not in pod and "model-store" not in {v["name"] for v in pod["volumes"]}
            assert c["command"][0] == "tritonserver" and "--calibration" in init["command"]
    # GPU ids renumbered per pod: the oracle's TP=4 engine sees GPUs 0-3 of its own pod
    oracle_spec = yaml.safe_load(by_kind(docs, "ConfigMap")[f"{FULL}-oracle-spec"]["data"]["spec.yaml"])
    assert oracle_spec["oracle"]["gpu_device_ids"] == [0, 1, 2, 3] and oracle_spec["node"]["gpus"] == 4


def test_services_pdbs_and_scraping(rendered):
    _, docs = rendered["gpu-8x80gb.yaml"]
    svcs = by_kind(docs, "Service")
    for tier in ("router", "agents", "oracle"):
        openai = {9000} if tier == "router" else set()  # the OpenAI gateway (tests/test_gateway_helm.py)
        assert {p["port"] for p in svcs[f"{FULL}-{tier}"]["spec"]["ports"]} == {8000, 8001, 8002} | openai
        assert svcs[f"{FULL}-{tier}-headless"]["spec"]["clusterIP"] == "None"
        sel = svcs[f"{FULL}-{tier}"]["spec"]["selector"]
        assert sel["app.kubernetes.io/component"] == tier
        pod = by_kind(docs, "Deployment")[f"{FULL}-{tier}"]["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8002"
        assert sel.items() <= pod["metadata"]["labels"].items()
    pdbs = by_kind(docs, "PodDisruptionBudget")
    assert pdbs[f"{FULL}-router"]["spec"] == {
        "minAvailable": 1,
        "selector": {"matchLabels": svcs[f"{FULL}-router"]["spec"]["selector"]},
    }
    assert pdbs[f"{FULL}-oracle"]["spec"]["maxUnavailable"] == 1  # a single GPU pod can still be drained
    sm = by_kind(docs, "ServiceMonitor")[FULL]
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"


def test_autoscalers_use_metrics_the_adapter_rules_define(rendered):
    rules = yaml.safe_load((ROOT / "deploy" / "helm" / "prometheus-adapter-values.yaml").read_text())
    defined = {r["name"]["as"] for r in rules["rules"]["custom"]}
    for name in SPECS:
        _, docs = rendered[name]
        hpas = by_kind(docs, "HorizontalPodAutoscaler")
        assert set(hpas) == {f"{FULL}-{t}" for t in ("router", "agents", "oracle")}
        for hpa in hpas.values():
            assert hpa["spec"]["scaleTargetRef"]["name"] == hpa["metadata"]["name"]
            pods = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
            assert pods and pods <= defined
    oracle = by_kind(rendered["gpu-8x80gb.yaml"][1], "HorizontalPodAutoscaler")[f"{FULL}-oracle"]
    names = {m["pods"]["metric"]["name"] for m in oracle["spec"]["metrics"]}
    assert names == {"triton_queue_time_avg_us", "trtllm_waiting_requests"}
    # the deployments an HPA drives leave replicas to it
    assert all("replicas" not in d["spec"] for d in by_kind(rendered["gpu-8x80gb.yaml"][1], "Deployment").values())


def test_values_schema_rejects_bad_values(rendered):
    values, _ = rendered["replay.yaml"]
    bad = yaml.safe_load(yaml.safe_dump(values))
    bad["tiers"]["oracle"]["gpus"] = -1
    with pytest.raises(helm_check.ChartError, match="gpus"):
        helm_check.render_chart(bad)
    bad = yaml.safe_load(yaml.safe_dump(values))
    bad["tiers"]["router"]["shmSize"] = "lots"
    with pytest.raises(helm_check.ChartError, match="shmSize"):
        helm_check.render_chart(bad)
    with pytest.raises(helm_check.ChartError, match="replicaCount"):
        helm_check.render_chart({**values, "replicaCount": 3})


def test_no_tiers_renders_nothing_but_the_notes():
    out = helm_check.render_chart({})
    assert helm_check.manifests(out) == []
    assert "helm_values.py" in next(v for k, v in out.items() if k.endswith("NOTES.txt"))


def test_long_release_names_keep_object_names_valid(rendered):
    values, _ = rendered["replay.yaml"]
    docs = helm_check.manifests(helm_check.render_chart(values, release="x" * 60, namespace=NAMESPACE))
    assert helm_check.validate(docs, versions=("1.33.0",)) == []
    assert max(len(d["metadata"]["name"]) for d in docs) <= 63


def test_values_script_engines_only_and_calibration_checks(tmp_path):
    spec = ROOT / "deploy" / "gpu-8x80gb.yaml"
    v = make_values(spec, engines_only=True)
    assert set(v["tiers"]) == {"agents", "oracle"} and v["calibration"]["json"] == ""
    with pytest.raises(SpecError, match="no calibration"):
        make_values(spec)
    with pytest.raises(ValueError, match="does not have"):
        make_values(spec, ROOT / "deploy" / "gpu-1gpu-smoke.calibration.json")  # another deployment's models
    v = make_values(spec, calibration_configmap="pyramid-calibration")
    docs = helm_check.manifests(helm_check.render_chart(v))
    router = by_kind(docs, "Deployment")["pyramid-pyramid-moa-router"]["spec"]["template"]["spec"]
    assert {"name": "calibration", "configMap": {"name": "pyramid-calibration"}} in router["volumes"]
    assert not any(d["metadata"]["name"].endswith("-calibration") for d in by_kind(docs, "ConfigMap").values())


def test_helm_check_cli(tmp_path, capsys):
    assert helm_check.main([str(ROOT / "deploy" / "gpu-1gpu-smoke.yaml"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "valid against Kubernetes" in out and (tmp_path / "gpu-1gpu-smoke.yaml").is_file()


def test_admin_key_secret_restricts_model_control_on_the_router(rendered):
    """The chart makes a random admin key Secret; every pod reads it; tritonserver tiers restrict model control
    (repository, config, shared memory, logging, trace) with it, over HTTP and gRPC, and leave inference open."""
    import base64

    values, docs = rendered["replay.yaml"]
    secret = by_kind(docs, "Secret")[f"{FULL}-admin-key"]
    key = base64.b64decode(secret["data"]["admin-key"]).decode()
    assert len(key) == 48 and key.isalnum()
    again = by_kind(helm_check.manifests(helm_check.render_chart(values, RELEASE, NAMESPACE)), "Secret")
    assert base64.b64decode(again[f"{FULL}-admin-key"]["data"]["admin-key"]).decode() != key  # random per install
    for dep in by_kind(docs, "Deployment").values():
        c = dep["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in c["env"]}
        ref = env["PYRAMID_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"{FULL}-admin-key", "key": "admin-key"}
        restricted = [a for a in c["command"] if "restricted" in a]
        apis = "model-repository,model-config,shared-memory,logging,trace"
        assert restricted == [
            f"--http-restricted-api={apis}:pyramid-admin-key=$(PYRAMID_ADMIN_KEY)",
            f"--grpc-restricted-protocol={apis}:pyramid-admin-key=$(PYRAMID_ADMIN_KEY)",
        ]
    # a Secret of the user's instead: the chart makes none and points the pods at it (the one Secret left is the
    # OpenAI gateway's API key: tests/test_gateway_helm.py)
    own = {**values, "security": {"adminKey": {"existingSecret": "my-key", "secretKey": "k"}}}
    docs = helm_check.manifests(helm_check.render_chart(own, RELEASE, NAMESPACE))
    assert set(by_kind(docs, "Secret")) == {f"{FULL}-openai-keys"}
    c = by_kind(docs, "Deployment")[f"{FULL}-router"]["spec"]["template"]["spec"]["containers"][0]
    assert c["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "my-key", "key": "k"}
    assert helm_check.validate(docs, versions=("1.33.0",)) == []


@pytest.mark.parametrize("name", ["replay.yaml", "gpu-8x80gb.yaml"])
def test_engines_take_grpc_from_the_router_alone_and_only_the_router_is_exposed(rendered, name):
    values, docs = rendered[name]
    pols = by_kind(docs, "NetworkPolicy")
    assert set(pols) == {f"{FULL}-agents", f"{FULL}-oracle"}  # none on the router: its clients must reach it
    deps = by_kind(docs, "Deployment")
    router_labels = deps[f"{FULL}-router"]["spec"]["template"]["metadata"]["labels"]
    for tier in ("agents", "oracle"):
        spec = pols[f"{FULL}-{tier}"]["spec"]
        pod_labels = deps[f"{FULL}-{tier}"]["spec"]["template"]["metadata"]["labels"]
        assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
        assert spec["policyTypes"] == ["Ingress"]
        grpc, metrics = spec["ingress"]
        assert grpc["ports"] == [{"port": "grpc", "protocol": "TCP"}]
        (peer,) = grpc["from"]
        assert peer["podSelector"]["matchLabels"].items() <= router_labels.items()
        assert not peer["podSelector"]["matchLabels"].items() <= pod_labels.items()  # not the engines themselves
        assert metrics == {"ports": [{"port": "metrics", "protocol": "TCP"}]}
    # asking for a LoadBalancer exposes the router only
    exposed = yaml.safe_load(yaml.safe_dump(values))
    for t in exposed["tiers"].values():
        t["service"]["type"] = "LoadBalancer"
    svcs = by_kind(helm_check.manifests(helm_check.render_chart(exposed, RELEASE, NAMESPACE)), "Service")
    assert {n for n, s in svcs.items() if s["spec"].get("type") == "LoadBalancer"} == {f"{FULL}-router"}
    off = {**values, "security": {"networkPolicy": {"enabled": False}}}
    assert by_kind(helm_check.manifests(helm_check.render_chart(off, RELEASE, NAMESPACE)), "NetworkPolicy") == {}


def test_pods_run_as_non_root(rendered):
    _, docs = rendered["gpu-8x80gb.yaml"]
    for dep in by_kind(docs, "Deployment").values():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        for c in pod["containers"] + pod["initContainers"]:
            assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_a_spec_with_an_inference_key_keys_the_routers_inference_only(calibrations, tmp_path):
    import base64

    spec = tmp_path / "replay.yaml"
    text = (ROOT / "deploy" / "replay.yaml").read_text(encoding="utf-8").replace("calibration: ../", "calibration: ")
    spec.write_text(text + "security:\n  inference_key: true\n", encoding="utf-8")
    values = make_values(spec, calibrations["replay.yaml"], image="registry.example/pyramid-moa:0.1.0")
    docs = helm_check.manifests(helm_check.render_chart(values, RELEASE, NAMESPACE))
    assert helm_check.validate(docs, versions=("1.33.0",)) == []
    secret = by_kind(docs, "Secret")[f"{FULL}-admin-key"]["data"]
    assert len(base64.b64decode(secret["inference-key"])) == 48 and secret["inference-key"] != secret["admin-key"]
    for name, dep in by_kind(docs, "Deployment").items():
        c = dep["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
        inference = [
            a
            for a in c["command"]
            if a.startswith(("--http-restricted-api=inference:", "--grpc-restricted-protocol=inference:"))
        ]
        if name.endswith("-router"):
            assert env["PYRAMID_INFERENCE_KEY"] == {"name": f"{FULL}-admin-key", "key": "inference-key"}
            assert inference == [
                "--http-restricted-api=inference:pyramid-inference-key=$(PYRAMID_INFERENCE_KEY)",
                "--grpc-restricted-protocol=inference:pyramid-inference-key=$(PYRAMID_INFERENCE_KEY)",
            ]
        else:  # the router calls the engines without it; the NetworkPolicy guards them
            assert "PYRAMID_INFERENCE_KEY" not in env and inference == []


def test_gpu_tiers_pass_the_restricted_flags_through_serve_gpu_without_printing_the_key(rendered, tmp_path):
    """The TensorRT-LLM tiers' rendered command (scripts/serve_gpu.sh), run with stand-ins for mpirun and
    tritonserver (no GPU here): tritonserver gets the restricted-API flags; the printed command line masks the key."""
    import os
    import subprocess

    values = make_values(ROOT / "deploy" / "gpu-8x80gb.yaml", engines_only=True, project_root=str(ROOT))
    docs = helm_check.manifests(helm_check.render_chart(values, RELEASE, NAMESPACE))
    c = by_kind(docs, "Deployment")[f"{FULL}-agents"]["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:3] == ["bash", f"{ROOT}/scripts/serve_gpu.sh", "/repository"]
    key = "k" * 48
    (tmp_path / "repository").mkdir()
    cmd = [a.replace("$(PYRAMID_ADMIN_KEY)", key) for a in c["command"]]
    cmd[2] = str(tmp_path / "repository")
    (tmp_path / "backends" / "tensorrtllm").mkdir(parents=True)
    (tmp_path / "bin").mkdir()
    fake_triton, fake_mpirun = tmp_path / "bin" / "tritonserver", tmp_path / "bin" / "mpirun"
    fake_triton.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    fake_mpirun.write_text('#!/bin/sh\nshift 3\nexec "$@"\n')  # --allow-run-as-root -n 1 TRITONSERVER ARGS...
    for f in (fake_triton, fake_mpirun):
        f.chmod(0o755)
    env = {
        **os.environ,
        "TRITONSERVER": str(fake_triton),
        "MPIRUN": str(fake_mpirun),
        "ARGS_OUT": str(tmp_path / "args"),
    }
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = (tmp_path / "args").read_text().splitlines()
    apis = "model-repository,model-config,shared-memory,logging,trace"
    assert got[-2:] == [
        f"--http-restricted-api={apis}:pyramid-admin-key={key}",
        f"--grpc-restricted-protocol={apis}:pyramid-admin-key={key}",
    ]
    assert key not in r.stdout + r.stderr and "pyramid-admin-key=****" in r.stderr
