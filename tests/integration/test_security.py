"""Model control only with the admin key, against a real tritonserver (docs/SECURITY.md).

One supervised deployment (explicit model control, as ``make serve`` runs it). Without the key, over
HTTP and over gRPC, each of these is refused and every model stays ready: unload, load, load with a
config override, load of a new model with an uploaded ``model.py`` (that model.py would write a marker
file when it runs: the marker proves it never ran). With the key they work (the uploaded code runs),
and the supervisor, which holds the key, still reloads an engine whose stub was SIGKILLed. Inference,
health, metadata and metrics need no key. The key appears neither in the server's log nor in the
wrapper's output.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from .conftest import COMMITTEE, ORACLE, SPEC, serve

MODELS = ["pyramid", *COMMITTEE, ORACLE]
VICTIM = COMMITTEE[1]
UPLOADED = "uploaded_echo"
MODEL_PY = """
import pathlib
import triton_python_backend_utils as pb_utils

MARKER = {marker!r}


class TritonPythonModel:
    def initialize(self, args):
        pathlib.Path(MARKER).write_text("this code ran on the server")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN")
                .as_numpy())]) for r in requests]
"""
UPLOADED_CONFIG = {
    "name": UPLOADED,
    "backend": "python",
    "max_batch_size": 0,
    "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [1]}],
    "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [1]}],
    "instance_group": [{"kind": "KIND_CPU", "count": 1}],
}


@pytest.fixture(scope="module")
def secured(deployment, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secured")
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    spec.pop("calibration")
    spec["engine"]["traces"] = str(deployment.traces)
    spec["router"].update(request_log="file", request_log_file=str(tmp / "requests.jsonl"))
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    with serve(spec_path, deployment.calibration, tmp / "repo", tmp / "tritonserver.log", supervise=True) as server:
        yield server


def _http(server, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(
        f"http://{server.http_url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method=method,
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _uploaded_files(marker) -> dict[str, bytes]:
    return {"file:1/model.py": MODEL_PY.format(marker=str(marker)).encode()}


def _all_ready(server) -> list[str]:
    return [m for m in MODELS if _http(server, "GET", f"/v2/models/{m}/ready")[0] != 200]


def _wait_not_ready(client, model: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while client.is_model_ready(model):
        assert time.monotonic() < deadline, f"{model} still ready {timeout_s} s after its unload"
        time.sleep(0.1)


def _override(server, model: str) -> dict:
    from pyramid_ops.supervisor import admin_request

    cfg = admin_request(server.http_url, f"/v2/models/{model}/config", server.admin_key)
    cfg.setdefault("parameters", {})["security_test_override"] = {"string_value": "1"}
    return cfg


def test_model_control_over_http_is_refused_without_the_key(secured, tmp_path):
    marker = tmp_path / "ran"
    files = {k: base64.b64encode(v).decode() for k, v in _uploaded_files(marker).items()}
    attempts = {
        "unload": ("POST", f"/v2/repository/models/{VICTIM}/unload", {}),
        "load": ("POST", f"/v2/repository/models/{VICTIM}/load", {}),
        "load with a config override": (
            "POST",
            f"/v2/repository/models/{VICTIM}/load",
            {"parameters": {"config": json.dumps(_override(secured, VICTIM))}},
        ),
        "load with an uploaded model.py": (
            "POST",
            f"/v2/repository/models/{UPLOADED}/load",
            {"parameters": {"config": json.dumps(UPLOADED_CONFIG), **files}},
        ),
        "repository index": ("POST", "/v2/repository/index", {}),
        "model config": ("GET", f"/v2/models/{VICTIM}/config", None),
        "logging settings": ("POST", "/v2/logging", {"log_verbose_level": 1}),
        "trace settings": ("POST", "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]}),
        "shared-memory registration": (
            "POST",
            "/v2/systemsharedmemory/region/x/register",
            {"key": "/x", "offset": 0, "byte_size": 8},
        ),
    }
    for what, (method, path, body) in attempts.items():
        for headers in ({}, {"pyramid-admin-key": "not-the-key-0123456789"}):
            status, text = _http(secured, method, path, body, headers)
            assert status == 403, f"{what} ({headers or 'no key'}): {status} {text}"
            assert "restricted" in text
    assert _all_ready(secured) == []
    assert _http(secured, "GET", f"/v2/models/{UPLOADED}/ready")[0] != 200
    assert not marker.exists()


def test_model_control_over_grpc_is_refused_without_the_key(secured, tmp_path):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    marker = tmp_path / "ran"
    c = grpcclient.InferenceServerClient(secured.grpc_url)
    attempts = {
        "unload": lambda h: c.unload_model(VICTIM, headers=h),
        "load": lambda h: c.load_model(VICTIM, headers=h),
        "load with a config override": lambda h: c.load_model(
            VICTIM, headers=h, config=json.dumps(_override(secured, VICTIM))
        ),
        "load with an uploaded model.py": lambda h: c.load_model(
            UPLOADED, headers=h, config=json.dumps(UPLOADED_CONFIG), files=_uploaded_files(marker)
        ),
        "repository index": lambda h: c.get_model_repository_index(headers=h),
        "model config": lambda h: c.get_model_config(VICTIM, headers=h),
        "logging settings": lambda h: c.update_log_settings({"log_verbose_level": 1}, headers=h),
        "trace settings": lambda h: c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}, headers=h),
        "shared-memory status": lambda h: c.get_system_shared_memory_status(headers=h),
    }
    wrong = {"triton-grpc-protocol-pyramid-admin-key": "not-the-key-0123456789"}
    for what, call in attempts.items():
        for headers in (None, wrong):
            with pytest.raises(InferenceServerException) as err:
                call(headers)
            # tritonserver 2.51 refuses with UNAVAILABLE (not PERMISSION_DENIED); the message says why
            assert "restricted" in err.value.message(), f"{what}: {err.value}"
    assert all(c.is_model_ready(m) for m in MODELS)
    assert not c.is_model_ready(UPLOADED)
    assert not marker.exists()
    c.close()


def test_inference_health_metadata_and_metrics_need_no_key(secured, traces):
    status, text = _http(secured, "POST", "/v2/models/pyramid/generate", {"text_input": traces.questions[0].question})
    assert status == 200, text
    assert json.loads(text)["tier"] in ("committee", "oracle")
    assert _http(secured, "GET", "/v2/health/ready")[0] == 200
    assert _http(secured, "GET", f"/v2/models/{VICTIM}")[0] == 200
    with urllib.request.urlopen(f"http://{secured.metrics_url}/metrics", timeout=10) as m:
        assert b"nv_inference_request_success" in m.read()


def test_with_the_key_model_control_works_over_http_and_grpc(secured, tmp_path):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from pyramid_ops import access

    key = secured.admin_key
    h = access.http_headers(key)
    assert _http(secured, "POST", f"/v2/repository/models/{VICTIM}/unload", {}, h)[0] == 200
    assert _http(secured, "GET", f"/v2/models/{VICTIM}/ready")[0] != 200
    time.sleep(2 * secured.supervisor.interval_s)  # a supervisor round: it must not undo an unload on purpose
    assert _http(secured, "GET", f"/v2/models/{VICTIM}/ready")[0] != 200
    assert _http(secured, "POST", f"/v2/repository/models/{VICTIM}/load", {}, h)[0] == 200
    assert _all_ready(secured) == []

    # a config override (HTTP), then back to the repository's config (gRPC)
    g = grpcclient.InferenceServerClient(secured.grpc_url)
    gh = access.grpc_headers(key)
    hc = httpclient.InferenceServerClient(secured.http_url)
    hc.load_model(VICTIM, headers=h, config=json.dumps(_override(secured, VICTIM)))
    got = g.get_model_config(VICTIM, headers=gh, as_json=True)["config"]
    assert got["parameters"]["security_test_override"]["string_value"] == "1"
    g.unload_model(VICTIM, headers=gh)  # a plain load would keep the override (2.51): unload first
    _wait_not_ready(g, VICTIM)
    g.load_model(VICTIM, headers=gh)
    assert "security_test_override" not in g.get_model_config(VICTIM, headers=gh, as_json=True)["config"]["parameters"]

    # a new model with an uploaded model.py: it runs (the marker appears) and serves
    marker = tmp_path / "ran"
    g.load_model(UPLOADED, headers=gh, config=json.dumps(UPLOADED_CONFIG), files=_uploaded_files(marker))
    assert g.is_model_ready(UPLOADED) and marker.exists()
    x = grpcclient.InferInput("IN", [1], "FP32")
    x.set_data_from_numpy(np.array([2.5], dtype=np.float32))
    assert g.infer(UPLOADED, [x]).as_numpy("OUT").tolist() == [2.5]
    g.unload_model(UPLOADED, headers=gh)
    assert not g.is_model_ready(UPLOADED)
    assert all(g.is_model_ready(m) for m in MODELS)
    assert secured.supervisor.restarts == []  # none of this looked like a dead engine to the supervisor
    g.close()
    hc.close()


def test_the_supervisor_still_recovers_a_killed_engine_stub(secured):
    """With a wrong key the supervisor's reload is refused and retried; with the server's key it recovers."""
    from pyramid_ops import access
    from pyramid_ops.supervisor import stub_processes

    sup = secured.supervisor
    before, right, sup.log = len(sup.restarts), sup.admin_key, io.StringIO()
    sup.admin_key = access.Key("not-the-key-0123456789", "test")
    victim = next(pid for model, pid in stub_processes(secured.proc.pid).values() if model == VICTIM)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while sup.log.getvalue().count("reload failed") < 2:  # refused, then refused again on the retry
        assert time.monotonic() < deadline, sup.log.getvalue()
        time.sleep(0.2)
    assert "403" in sup.log.getvalue() and len(sup.restarts) == before
    sup.admin_key = right
    while time.monotonic() < deadline and len(sup.restarts) == before:
        time.sleep(0.2)
    assert [m for _, m in secured.supervisor.restarts[before:]] == [VICTIM]
    now = {model: pid for model, pid in stub_processes(secured.proc.pid).values()}
    assert now[VICTIM] != victim
    assert _all_ready(secured) == []


def test_the_key_is_not_in_the_servers_log(secured):
    text = secured.log_path.read_text(encoding="utf-8", errors="replace")
    assert "Started HTTPService" in text  # the server's own log
    assert secured.admin_key.value not in text
    assert secured.admin_key.value not in repr(secured.admin_key)
    assert oct(secured.log_path.stat().st_mode & 0o777) == "0o600"
    # the documented limit (docs/SECURITY.md): tritonserver 2.51 takes the key on its command line only, so
    # whoever may read this process's /proc/PID/cmdline (same user or root, unless /proc has hidepid) sees it
    assert secured.admin_key.value in Path(f"/proc/{secured.proc.pid}/cmdline").read_text()


def test_an_inference_key_puts_inference_behind_it_too(secured, traces, tmp_path):
    """What ``security: {inference_key: true}`` in a spec turns on (server.resolve_inference_key)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from pyramid_ops import access
    from pyramid_ops.server import TritonServer

    key = access.generate()
    body = {"text_input": traces.questions[0].question}
    with TritonServer(secured.model_repository, log_path=tmp_path / "keyed.log", inference_key=key) as keyed:
        assert _http(keyed, "POST", "/v2/models/pyramid/generate", body)[0] == 403
        status, text = _http(
            keyed, "POST", "/v2/models/pyramid/generate", body, access.http_headers(key, "pyramid-inference-key")
        )
        assert status == 200, text
        assert _http(keyed, "GET", "/v2/health/ready")[0] == 200  # health stays open
        g = grpcclient.InferenceServerClient(keyed.grpc_url)
        x = grpcclient.InferInput("text_input", [1, 1], "BYTES")
        with pytest.raises(InferenceServerException, match="restricted"):
            g.infer(VICTIM, [x])
        # with the key the call passes the gate (this empty input is then refused for what it is)
        with pytest.raises(InferenceServerException) as err:
            g.infer(VICTIM, [x], headers=access.grpc_headers(key, "pyramid-inference-key"))
        assert "restricted" not in err.value.message()
        assert g.is_server_ready()
        g.close()
        # the admin key is a different key: it does not open inference
        assert _http(keyed, "POST", "/v2/models/pyramid/generate", body, access.http_headers(keyed.admin_key))[0] == 403


def test_known_limit_the_backends_shm_regions_are_readable_by_local_users(secured):
    """docs/SECURITY.md: the Python backend's /dev/shm regions (requests and responses in flight) are created
    with mode 0644 by tritonserver 2.51 itself (a umask does not change it), so local users can read them."""
    from pyramid_ops.server import mapped_shm_files
    from pyramid_ops.supervisor import stub_processes

    pids = [secured.proc.pid, *(pid for _, pid in stub_processes(secured.proc.pid).values())]
    regions = [r for r in mapped_shm_files(pids) if "triton_python_backend_shm_region_" in r]
    assert regions
    assert {oct(Path(r).stat().st_mode & 0o777) for r in regions} == {"0o644"}


def test_the_request_log_file_is_private_and_holds_no_prompt(secured, traces):
    """request_log: file, written by the router inside the real server (request_log.py)."""
    question = traces.questions[3].question
    status, text = _http(secured, "POST", "/v2/models/pyramid/generate", {"text_input": question, "id": "rl-1"})
    assert status == 200, text
    log = secured.model_repository.parent / "requests.jsonl"
    deadline = time.monotonic() + 30
    while '"rl-1"' not in (log.read_text(encoding="utf-8") if log.exists() else ""):
        assert time.monotonic() < deadline, "no request-log line for the request"
        time.sleep(0.1)
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    lines = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines()]
    line = next(d for d in lines if d["request_id"] == "rl-1")
    assert line["event"] == "pyramid.request" and line["outcome"] == "ok"
    assert question not in log.read_text(encoding="utf-8") and "text_input" not in line


def test_clients_and_the_gateway_send_the_inference_key(secured, traces, tmp_path):
    """A server that keys inference: ``PyramidClient(inference_key=...)`` gets answers over gRPC and HTTP
    (without the key, refused), and the OpenAI gateway, given the key in its environment, answers a chat
    completion through the router and a direct engine call."""
    from pyramid_client import PyramidClient, PyramidError
    from pyramid_gateway.process import GatewayProcess
    from pyramid_ops import access
    from pyramid_ops.server import TritonServer, free_ports

    key = access.generate()
    q = traces.questions[0].question
    with TritonServer(secured.model_repository, log_path=tmp_path / "keyed.log", inference_key=key) as keyed:
        for url in (keyed.grpc_url, f"http://{keyed.http_url}"):
            with PyramidClient(url, timeout_s=60, retries=0, inference_key=key.value) as c:
                assert c.ask(q).answer is not None
            # without it: refused, and not retried (a missing key stays missing) even with retries left
            with PyramidClient(url, timeout_s=60, retries=3) as c, pytest.raises(PyramidError, match="restricted") as e:
                c.ask(q)
            assert e.value.code == "PERMISSION_DENIED", (url, e.value.code, e.value.message)
        env = {**os.environ, access.INFERENCE_KEY_ENV: key.value}
        env.pop(access.INFERENCE_KEY_FILE_ENV, None)
        args = ["--model-repository", str(secured.model_repository)]
        gw = GatewayProcess(keyed.grpc_url, free_ports(1)[0], log_path=tmp_path / "gw.log", extra_args=args, env=env)
        with gw:
            for path, body in (
                ("/chat/completions", {"model": "pyramid", "messages": [{"role": "user", "content": q}]}),
                ("/completions", {"model": COMMITTEE[0], "prompt": q}),  # a direct engine call
            ):
                req = urllib.request.Request(
                    gw.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(req, timeout=60) as r:
                    out = json.loads(r.read())
                choice = out["choices"][0]
                assert (choice.get("message") or {}).get("content") or choice.get("text"), (path, out)
