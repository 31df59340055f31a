"""The OpenAI gateway in the Helm chart: a second container of the router pods only, in front of that pod's
tritonserver, on the router Service's port "openai"; API keys always (a Secret of the user's, else one the chart
makes), none only with gateway.insecureNoKeys; off when disabled. Rendered by Helm's own template engine and
validated against the Kubernetes schemas (as tests/test_helm.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_helm import FULL, NAMESPACE, RELEASE, _names, by_kind
from test_remote import _artifact

from pyramid_ops import helm_check
from pyramid_ops.helm_values import make_values

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def values(tmp_path_factory):
    spec = ROOT / "deploy" / "replay.yaml"
    cal = tmp_path_factory.mktemp("cal") / "cal.json"
    _artifact(_names(spec)).save(cal)
    return make_values(spec, cal, image="registry.example/pyramid-moa:0.1.0")


def render(values: dict) -> list[dict]:
    return helm_check.manifests(helm_check.render_chart(values, RELEASE, NAMESPACE))


def test_the_router_pods_run_the_gateway_beside_tritonserver(values):
    docs = render(values)
    deps = by_kind(docs, "Deployment")
    router = deps[f"{FULL}-router"]["spec"]["template"]["spec"]
    triton, gw = router["containers"]
    assert triton["name"] == "tritonserver" and gw["name"] == "openai-gateway"
    cmd = gw["command"]
    assert cmd[:3] == ["python3", "-m", "pyramid_gateway"]
    assert cmd[cmd.index("--triton") + 1] == "127.0.0.1:8001"  # its own pod's server, no network hop
    assert cmd[cmd.index("--port") + 1] == "9000" and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--model-repository") + 1] == "/repository"  # the router's engines, rendered in the pod
    # keys by default (issue 26 item 2): the chart's own random key, mounted as the keys file
    assert cmd[cmd.index("--api-keys-file") + 1] == "/config/api-keys/api-keys" and "--insecure-no-keys" not in cmd
    assert {"name": "api-keys", "mountPath": "/config/api-keys", "readOnly": True} in gw["volumeMounts"]
    assert {"name": "api-keys", "secret": {"secretName": f"{FULL}-openai-keys"}} in router["volumes"]
    assert gw["ports"] == [{"name": "openai", "containerPort": 9000, "protocol": "TCP"}]
    assert gw["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "openai"}
    assert gw["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "openai"}
    assert {"name": "repository", "mountPath": "/repository", "readOnly": True} in gw["volumeMounts"]
    assert gw["securityContext"] == triton["securityContext"]
    for tier in ("agents", "oracle"):  # engines: tritonserver alone
        assert [c["name"] for c in deps[f"{FULL}-{tier}"]["spec"]["template"]["spec"]["containers"]] == ["tritonserver"]
    svcs = by_kind(docs, "Service")
    assert {"name": "openai", "port": 9000, "targetPort": "openai", "protocol": "TCP"} in svcs[f"{FULL}-router"][
        "spec"
    ]["ports"]
    assert all(p["name"] != "openai" for p in svcs[f"{FULL}-agents"]["spec"]["ports"])
    assert helm_check.validate(docs, versions=("1.33.0",)) == []


def test_the_chart_makes_a_random_api_key_unless_told_to_run_without(values):
    """Issue 26 item 2: the chart enabled the gateway, on the pod's address, with no keys. Now it makes a Secret
    with one random key (48 characters; a new one per render, since helm template cannot look the old one up),
    and runs without keys only with gateway.insecureNoKeys, which passes --insecure-no-keys (the gateway refuses
    a non-loopback address without keys otherwise)."""
    import base64

    secrets = by_kind(render(values), "Secret")
    key = base64.b64decode(secrets[f"{FULL}-openai-keys"]["data"]["api-keys"]).decode()
    assert len(key) == 48 and key.isalnum()
    again = base64.b64decode(by_kind(render(values), "Secret")[f"{FULL}-openai-keys"]["data"]["api-keys"]).decode()
    assert again != key
    assert key not in str(by_kind(render(values), "Deployment"))  # only the Secret holds it

    docs = render({**values, "gateway": {"insecureNoKeys": True}})
    pod = by_kind(docs, "Deployment")[f"{FULL}-router"]["spec"]["template"]["spec"]
    cmd = pod["containers"][1]["command"]
    assert "--insecure-no-keys" in cmd and "--api-keys-file" not in cmd
    assert all(v["name"] != "api-keys" for v in pod["volumes"])
    assert f"{FULL}-openai-keys" not in by_kind(docs, "Secret")
    assert helm_check.validate(docs, versions=("1.33.0",)) == []
    # a Secret of the user's wins over insecureNoKeys; the chart makes none then
    docs = render({**values, "gateway": {"insecureNoKeys": True, "apiKeys": {"existingSecret": "mine"}}})
    cmd = by_kind(docs, "Deployment")[f"{FULL}-router"]["spec"]["template"]["spec"]["containers"][1]["command"]
    assert "--insecure-no-keys" not in cmd and "--api-keys-file" in cmd
    assert f"{FULL}-openai-keys" not in by_kind(docs, "Secret")
    # the gateway disabled: no key to make
    assert f"{FULL}-openai-keys" not in by_kind(render({**values, "gateway": {"enabled": False}}), "Secret")


def test_the_rendered_gateway_command_passes_the_gateways_own_check(values, tmp_path, monkeypatch):
    """The rendered command as pyramid-gateway reads it: --host 0.0.0.0 with the keys file starts; with
    insecureNoKeys it starts without keys; the same command without --insecure-no-keys would be refused."""
    sys.path.insert(0, str(ROOT / "gateway"))
    from pyramid_gateway.__main__ import config_from, parser
    from pyramid_gateway.auth import ENV_VAR

    monkeypatch.delenv(ENV_VAR, raising=False)
    keys = tmp_path / "keys"
    keys.write_text("k" * 48 + "\n")

    def args_of(v: dict) -> list[str]:
        pod = by_kind(render(v), "Deployment")[f"{FULL}-router"]["spec"]["template"]["spec"]
        cmd = pod["containers"][1]["command"]
        args = list(cmd[3:])  # after python3 -m pyramid_gateway
        if "--api-keys-file" in args:
            args[args.index("--api-keys-file") + 1] = str(keys)  # the mounted file, here
        i = args.index("--model-repository")
        del args[i : i + 2]  # /repository exists only in the pod
        return args

    keyed = config_from(parser().parse_args(args_of(values)))
    assert keyed.auth is not None and parser().parse_args(args_of(values)).host == "0.0.0.0"
    insecure = args_of({**values, "gateway": {"insecureNoKeys": True}})
    assert config_from(parser().parse_args(insecure)).auth is None
    insecure.remove("--insecure-no-keys")
    with pytest.raises(ValueError, match="--insecure-no-keys"):
        config_from(parser().parse_args(insecure))


def test_api_keys_from_a_secret_and_extra_flags(values):
    v = {**values, "gateway": {"port": 9100, "args": ["--max-concurrent-per-key", "8"],
                               "apiKeys": {"existingSecret": "openai-keys", "secretKey": "keys"}}}  # fmt: skip
    docs = render(v)
    pod = by_kind(docs, "Deployment")[f"{FULL}-router"]["spec"]["template"]["spec"]
    gw = pod["containers"][1]
    cmd = gw["command"]
    assert cmd[cmd.index("--api-keys-file") + 1] == "/config/api-keys/keys"
    assert cmd[-2:] == ["--max-concurrent-per-key", "8"] and cmd[cmd.index("--port") + 1] == "9100"
    assert {"name": "api-keys", "mountPath": "/config/api-keys", "readOnly": True} in gw["volumeMounts"]
    assert {"name": "api-keys", "secret": {"secretName": "openai-keys"}} in pod["volumes"]
    assert helm_check.validate(docs, versions=("1.33.0",)) == []


def test_disabled_means_no_container_and_no_port(values):
    docs = render({**values, "gateway": {"enabled": False}})
    pod = by_kind(docs, "Deployment")[f"{FULL}-router"]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["tritonserver"]
    assert all(p["name"] != "openai" for p in by_kind(docs, "Service")[f"{FULL}-router"]["spec"]["ports"])


def test_a_keyed_inference_gives_the_gateway_the_key(values, tmp_path):
    """Where the spec keys inference, the gateway container gets the inference key from the chart's Secret
    (the same Secret key as its tritonserver), and sends it on every inference call; without, it has none."""
    spec = tmp_path / "replay.yaml"
    text = (ROOT / "deploy" / "replay.yaml").read_text(encoding="utf-8").replace("calibration: ../", "calibration: ")
    spec.write_text(text + "security:\n  inference_key: true\n", encoding="utf-8")
    cal = tmp_path / "cal.json"
    _artifact(_names(spec)).save(cal)
    keyed = make_values(spec, cal, image="registry.example/pyramid-moa:0.1.0")
    assert "gateway" not in keyed  # the chart's default: on
    pod = by_kind(render(keyed), "Deployment")[f"{FULL}-router"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert list(containers) == ["tritonserver", "openai-gateway"]

    def key_env(c: dict) -> dict:
        return {
            e["name"]: e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if e["name"] == "PYRAMID_INFERENCE_KEY"
        }

    assert key_env(containers["openai-gateway"]) == key_env(containers["tritonserver"]) != {}
    open_pod = by_kind(render(values), "Deployment")[f"{FULL}-router"]["spec"]["template"]["spec"]
    assert all(not key_env(c) for c in open_pod["containers"])


@pytest.mark.parametrize(
    "gateway",
    [{"port": 8001}, {"enabled": "yes"}, {"apiKeys": {"secret": "x"}}, {"bogus": 1}, {"insecureNoKeys": "yes"}],
)
def test_the_values_schema_refuses_bad_gateway_settings(values, gateway):
    with pytest.raises(Exception, match="schema"):
        render({**values, "gateway": gateway})
