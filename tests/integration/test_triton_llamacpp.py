"""The llamacpp profile on a real tritonserver: Gemma 3 270M in decoupled llama.cpp models, and the
pyramid router over them. Rendered from deploy/llamacpp.yaml with 16-token budgets and one thread
per model, so the whole file takes well under a minute on 2 cores.

Skips (with the reason) only when tritonserver, llama-cpp-python or the GGUF is not installed
(scripts/install_triton.sh, scripts/install_llamacpp.sh); any other failure to start is an error.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "deploy" / "llamacpp.yaml"
SHIPPED = ROOT / "data" / "gsm8k"
COMMITTEE = ["faithfulcot_gpt-3.5-turbo_COT", "reread_gpt-3.5-turbo_re2_cot", "faithfulcot_gpt-3.5-turbo_noNL"]
ORACLE = "faithfulcot_gpt4_COT"
AGENTS = ["gemma3-270m-agent-1", "gemma3-270m-agent-2", "gemma3-270m-agent-3"]
GEMMA_ORACLE = "gemma3-270m-oracle"
LONG = "gemma3-270m-agent-3"  # never stops on its own in this test deployment (cancellation test)
BUDGET = 16
QUESTION = "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?"


@dataclass
class Gemma:
    grpc_url: str
    log: Path
    calibration: Path


@pytest.fixture(scope="session")
def gemma(tmp_path_factory) -> Gemma:
    try:
        import tritonclient.grpc  # noqa: F401

        from pyramid_ops.server import ServerError, TritonServer, find_tritonserver

        find_tritonserver()
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"tritonserver is not installed ({exc}); run scripts/install_triton.sh")
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"llama-cpp-python is not installed ({exc}); run scripts/install_llamacpp.sh")
    import yaml

    from pyramid_deploy.render import render
    from pyramid_triton.llamacpp import default_gguf_path

    if not default_gguf_path().is_file():
        pytest.skip(f"the Gemma GGUF is not at {default_gguf_path()}; run scripts/install_llamacpp.sh")

    tmp = tmp_path_factory.mktemp("gemma")
    source, calibration = tmp / "source.json", tmp / "calibration.json"
    subprocess.run(
        [sys.executable, "-m", "pyramid_moa", "calibrate", "--traces", str(SHIPPED), "--committee", ",".join(COMMITTEE),
         "--oracle", ORACLE, "--cost", "usd", "--features", "symmetric", "--no-arbiter", "--out", str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    mapping = ",".join(f"{a}={b}" for a, b in zip([*COMMITTEE, ORACLE], [*AGENTS, GEMMA_ORACLE]))
    prices = [x for m in [*AGENTS, GEMMA_ORACLE] for x in ("--params", f"{m}=0.27", "--price", f"{m}=0.00001,0.00002")]
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "relabel_calibration.py"), str(source), str(calibration),
         "--map", mapping, *prices],
        check=True, capture_output=True,
    )  # fmt: skip

    d = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    d.pop("calibration")
    for entry in [*d["agents"], d["oracle"]]:
        entry.update(max_tokens=BUDGET, n_threads=1, n_ctx=1024)
    next(a for a in d["agents"] if a["name"] == LONG).update(max_tokens=1000, stop=["<never>"])
    d["router"]["default_max_tokens"] = BUDGET
    spec = tmp / "llamacpp.yaml"
    spec.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    repo = render(spec, tmp / "model_repository", calibration=calibration).out
    log = tmp / "tritonserver.log"
    server = TritonServer(repo, log_path=log)
    try:
        server.start(timeout_s=180)
    except ServerError as exc:
        pytest.fail(str(exc))
    try:
        yield Gemma(server.grpc_url, log, calibration)
    finally:
        server.stop()


def _inputs(text: str, max_tokens: int | None = None, **kw) -> list:
    import tritonclient.grpc as grpcclient

    arrays = {"text_input": (np.array([[text.encode()]], dtype=object), "BYTES")}
    if max_tokens is not None:
        arrays["max_tokens"] = (np.array([[max_tokens]], dtype=np.int32), "INT32")
    types = {"temperature": (np.float32, "FP32"), "seed": (np.uint64, "UINT64")}
    for k, v in kw.items():
        dtype, name = types.get(k, (np.bool_, "BOOL"))
        arrays[k] = (np.array([[v]], dtype=dtype), name)
    out = []
    for name, (arr, dt) in arrays.items():
        t = grpcclient.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def _stream(url: str, model: str, inputs: list, timeout_s: float = 60.0) -> list[dict]:
    """Every response of one request over a gRPC stream, up to its FINAL flag:
    {"error": str} or {"text", "tokens", "final", "result"}."""
    import tritonclient.grpc as grpcclient

    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        out: list[dict] = []
        while True:
            result, error = got.get(timeout=timeout_s)
            if error is not None:
                out.append({"error": str(error), "final": True})
                return out
            final = result.get_response().parameters["triton_final_response"].bool_param
            if result.as_numpy("text_output") is not None:
                out.append(
                    {
                        "text": result.as_numpy("text_output").reshape(-1)[0].decode(),
                        "tokens": _scalar(result, "output_tokens"),
                        "final": final,
                        "result": result,
                    }
                )
            elif final:
                out.append({"final": True})
            if final:
                return out
    finally:
        client.stop_stream()
        client.close()


def test_engine_answers_a_direct_request(gemma):
    out = _stream(gemma.grpc_url, AGENTS[0], _inputs(QUESTION, BUDGET, return_log_probs=True))
    assert len(out) == 1 and out[0]["final"], out
    assert out[0]["text"].strip() and 0 < out[0]["tokens"] <= BUDGET
    assert out[0]["result"].as_numpy("cum_log_probs").reshape(-1)[0] < 0


def test_streaming_concatenates_to_the_greedy_text(gemma):
    kw = {"temperature": 0.0, "seed": 5}
    whole = _stream(gemma.grpc_url, GEMMA_ORACLE, _inputs(QUESTION, BUDGET, **kw))
    pieces = _stream(gemma.grpc_url, GEMMA_ORACLE, _inputs(QUESTION, BUDGET, stream=True, **kw))
    assert len(whole) == 1 and "error" not in whole[0], whole
    assert len(pieces) >= 2 and all("error" not in p for p in pieces), pieces
    assert [p["final"] for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert "".join(p["text"] for p in pieces) == whole[0]["text"]
    assert sum(p["tokens"] for p in pieces) == whole[0]["tokens"]
    again = _stream(gemma.grpc_url, GEMMA_ORACLE, _inputs(QUESTION, BUDGET, **kw))
    assert again[0]["text"] == whole[0]["text"]  # greedy and independent of what ran before


def test_bad_input_is_invalid_arg_and_the_model_still_answers(gemma):
    for inputs, field in [
        (_inputs(QUESTION, 0), "max_tokens"),
        (_inputs("   ", BUDGET), "text_input"),
        (_inputs(QUESTION, BUDGET, temperature=-1.0), "temperature"),
    ]:
        out = _stream(gemma.grpc_url, AGENTS[1], inputs)
        assert len(out) == 1 and "INVALID_ARG" in out[0]["error"] and f"'{field}'" in out[0]["error"], out
    out = _stream(gemma.grpc_url, AGENTS[1], _inputs(QUESTION, 4))
    assert out[0]["text"] and out[0]["tokens"] <= 4


def test_cancelled_stream_stops_generating(gemma):
    import tritonclient.grpc as grpcclient

    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(gemma.grpc_url)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    client.async_stream_infer(LONG, _inputs(QUESTION, 1000, stream=True, temperature=0.0))
    for _ in range(3):
        result, error = got.get(timeout=60)
        assert error is None, error
    client.stop_stream(cancel_requests=True)
    client.close()
    deadline = time.monotonic() + 30
    stopped = None
    while stopped is None and time.monotonic() < deadline:
        stopped = re.search(rf"{LONG}: request cancelled .* after (\d+) tokens", gemma.log.read_text(errors="replace"))
        time.sleep(0.2)
    assert stopped is not None, "the engine did not report the cancellation"
    assert int(stopped.group(1)) < 1000
    out = _stream(gemma.grpc_url, LONG, _inputs(QUESTION, 4))  # and the instance is free again
    assert out[0]["tokens"] == 4


def test_router_answers_end_to_end_through_gemma(gemma):
    from pyramid_moa.artifact import load_artifact

    t0 = time.perf_counter()
    out = _stream(gemma.grpc_url, "pyramid", _inputs(QUESTION), timeout_s=120)
    elapsed = time.perf_counter() - t0
    assert len(out) >= 1 and "error" not in out[-1], out
    r = out[-1]["result"]
    details = json.loads(r.as_numpy("agent_answers").reshape(-1)[0])
    tier = r.as_numpy("tier").reshape(-1)[0].decode()
    assert tier in ("committee", "oracle") and out[-1]["text"].strip()
    assert details["failed"] == [] and not r.as_numpy("degraded").reshape(-1)[0]
    first_stage = load_artifact(gemma.calibration).stages[0]["agents"]
    assert set(first_stage) <= set(details["calls"]) <= {*AGENTS, GEMMA_ORACLE}
    assert (GEMMA_ORACLE in details["calls"]) == bool(r.as_numpy("escalated").reshape(-1)[0])
    print(f"routed in {elapsed:.2f} s: tier {tier}, calls {details['calls']}")


def _scalar(result, name: str) -> int | None:
    arr = result.as_numpy(name)
    return None if arr is None else int(arr.reshape(-1)[0])
