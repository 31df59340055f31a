"""The bare-BLS floor on a real tritonserver (make perf's yardstick): for each question it calls exactly
the engines the router's offline route calls, as Triton's own per-model counters show."""

from __future__ import annotations

import queue

import numpy as np
import pytest

from .conftest import SHIPPED, SPEC, scrape, yaml_spec

ROOT = SPEC.parents[1]


def _successes(metrics_url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in scrape(metrics_url, "nv_inference_request_success").items():
        model = k.split('model="', 1)[1].split('"', 1)[0]
        out[model] = out.get(model, 0.0) + v
    return out


def test_the_floor_makes_the_routes_calls(tmp_path):
    import tritonclient.grpc as grpcclient

    from pyramid_bench.perf import FLOOR_MODEL, add_floor
    from pyramid_deploy.render import render
    from pyramid_moa.artifact import load_artifact
    from pyramid_moa.traces import TraceSet
    from pyramid_ops.server import ServerError, TritonServer

    calibration = ROOT / "deploy" / "replay.calibration.json"
    spec = tmp_path / "replay.yaml"
    spec.write_text(yaml_spec(SPEC, SHIPPED), encoding="utf-8")
    repo = render(spec, tmp_path / "repo", calibration=calibration).out
    assert add_floor(repo, calibration, SHIPPED) == FLOOR_MODEL
    router = load_artifact(calibration).router()
    ts = TraceSet.open(SHIPPED)
    models = [*router.agents, router.oracle]
    idx = [i for i in sorted(ts.questions) if all(ts.samples(m).get(i) for m in models)][:40]

    server = TritonServer(repo, log_path=tmp_path / "tritonserver.log")
    try:
        server.start(timeout_s=120)
    except ServerError as exc:
        pytest.fail(str(exc))
    try:
        metrics = f"127.0.0.1:{server.metrics_port}"
        before = _successes(metrics)
        got: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.start_stream(callback=lambda result, error: got.put((result, error)))
        want_calls = {m: 0 for m in models}
        for i in idx:
            q = ts.questions[i].question
            result = router.route(q, lambda m, i=i: ts.output(m, i))
            for m in result.calls:
                want_calls[m] += 1
            t = grpcclient.InferInput("text_input", [1, 1], "BYTES")
            t.set_data_from_numpy(np.array([[q.encode()]], dtype=np.object_))
            client.async_stream_infer(FLOOR_MODEL, [t])
            res, err = got.get(timeout=60)
            assert err is None, err
            last = result.calls[-1]
            assert res.as_numpy("text_output").reshape(-1)[0].decode() == ts.samples(last)[i][0].text
        client.stop_stream()
        client.close()
        after = _successes(metrics)
        made = {m: after.get(m, 0.0) - before.get(m, 0.0) for m in models}
        assert made == {m: float(n) for m, n in want_calls.items()}, (made, want_calls)
        assert want_calls[router.oracle] > 0 and min(want_calls.values()) < len(idx)  # some escalate, some stop early
    finally:
        server.stop()
