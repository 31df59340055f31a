"""Property-based fuzzing of the router's inputs through the real server (hypothesis).

Every request is built from arbitrary values for every input the router takes (right and wrong
dtypes and shapes, invalid UTF-8, out-of-range numbers, NaN, oversized text). Whatever comes in,
the router answers within the client's timeout: a routing result when the request is valid (or
NOT_FOUND when the replay engines have no record of the text), an INVALID_ARG error naming one of
the inputs that are wrong when it is not. Afterwards the server is still healthy.
"""

from __future__ import annotations

import math
import queue

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MAX_CHARS = 20000  # deploy/replay.yaml router limits
MAX_TOKENS_CAP = 8192
INT32 = st.integers(-(2**31), 2**31 - 1)


@pytest.fixture(scope="module")
def questions(deployment):
    from pyramid_moa.traces import TraceSet

    return [q.question for q in list(TraceSet.open(deployment.traces).questions.values())[:50]]


@pytest.fixture(scope="module")
def stream(deployment):
    """send(inputs: {name: (numpy array, dtype)}) -> ('ok', final outputs) | ('error', message); one open
    stream. A streamed request that escalates gets a provisional response before its final one, so each
    request is read up to the response that carries Triton's final flag; a response of another request
    (a leftover) fails the test."""
    import itertools

    import tritonclient.grpc as grpcclient

    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(deployment.grpc_url)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    ids = itertools.count()

    def send(inputs):
        tensors = []
        for name, (arr, dtype) in inputs.items():
            t = grpcclient.InferInput(name, list(arr.shape), dtype)
            t.set_data_from_numpy(arr)
            tensors.append(t)
        rid = f"fuzz-{next(ids)}"
        client.async_stream_infer("pyramid", tensors, request_id=rid, enable_empty_final_response=True)
        while True:
            result, error = got.get(timeout=30)  # a hang fails here
            if error is not None:  # the router and Triton send an error as the request's last response
                return "error", str(error)
            response = result.get_response()
            assert response.id == rid, f"a response of {response.id!r} arrived while reading {rid!r}"
            if response.parameters["triton_final_response"].bool_param:
                outputs = {n: result.as_numpy(n) for n in ("answer", "tier", "provisional")}
                assert all(v is not None for v in outputs.values()), f"{rid}: a final response without outputs"
                return "ok", outputs

    yield send
    client.stop_stream(cancel_requests=False)
    client.close()


def _bytes(values: list[bytes]) -> tuple[np.ndarray, str]:
    return np.array([values], dtype=np.object_), "BYTES"


@st.composite
def requests(draw, questions):
    """(inputs, invalid input names, rejected_by_triton): the last is the input whose dtype or shape
    the model config does not declare, which Triton itself rejects before the router sees it."""
    inputs, invalid, rejected_by_triton = {}, set(), None
    kind = draw(st.sampled_from(["question", "text", "empty", "huge", "utf8", "two"]))
    if kind == "question":
        text = draw(st.sampled_from(questions))
        inputs["text_input"] = _bytes([text.encode()])
    elif kind == "text":
        text = draw(st.text(max_size=200))
        inputs["text_input"] = _bytes([text.encode()])
        if not text.strip():
            invalid.add("text_input")
    elif kind == "empty":
        inputs["text_input"] = _bytes([draw(st.sampled_from([b"", b" ", b"\n\t"]))])
        invalid.add("text_input")
    elif kind == "huge":
        inputs["text_input"] = _bytes([b"x" * (MAX_CHARS + draw(st.integers(1, 100)))])
        invalid.add("text_input")
    elif kind == "utf8":
        raw = draw(st.binary(min_size=1, max_size=50))
        try:
            ok = bool(raw.decode("utf-8").strip())
        except UnicodeDecodeError:
            ok = False
        inputs["text_input"] = _bytes([raw])
        if not ok:
            invalid.add("text_input")
    else:  # a shape the model config does not declare: Triton itself refuses, naming the input
        inputs["text_input"] = _bytes([b"a", b"b"])
        rejected_by_triton = "text_input"

    if draw(st.booleans()):
        v = draw(INT32)
        inputs["max_tokens"] = (np.array([[v]], dtype=np.int32), "INT32")
        if not 0 < v <= MAX_TOKENS_CAP:
            invalid.add("max_tokens")
    if draw(st.booleans()):
        v = draw(st.floats(width=32, allow_nan=True, allow_infinity=True))
        inputs["escalation_threshold"] = (np.array([[v]], dtype=np.float32), "FP32")
        if not (math.isfinite(v) and 0 <= v <= 1):
            invalid.add("escalation_threshold")
    if draw(st.booleans()):
        v = draw(st.one_of(st.sampled_from(["committee", "oracle", "", " oracle "]), st.text(max_size=12)))
        inputs["force_tier"] = _bytes([v.encode()])
        if v.strip() not in ("", "committee", "oracle"):
            invalid.add("force_tier")
    if draw(st.booleans()):
        v = draw(INT32)
        inputs["deadline_ms"] = (np.array([[v]], dtype=np.int32), "INT32")
        if v < 0:
            invalid.add("deadline_ms")
    for name in ("stream", "strict"):
        if draw(st.booleans()):
            inputs[name] = (np.array([[draw(st.booleans())]], dtype=np.bool_), "BOOL")
    if rejected_by_triton is None and draw(st.integers(0, 9)) == 0:  # a dtype the config does not declare
        rejected_by_triton = draw(st.sampled_from(["max_tokens", "escalation_threshold", "text_input"]))
        inputs[rejected_by_triton] = (np.array([[1.5]], dtype=np.float64), "FP64")
    return inputs, invalid, rejected_by_triton


def test_fuzzed_requests_get_a_result_or_a_named_invalid_arg(deployment, stream, questions):
    from pyramid_client import PyramidClient

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
    @given(requests(questions))
    def check(case):
        inputs, invalid, rejected_by_triton = case
        status, got = stream(inputs)
        if rejected_by_triton is not None:
            assert status == "error" and f"input '{rejected_by_triton}'" in got, got
        elif invalid:
            assert status == "error", (inputs, got)
            assert "[INVALID_ARG] invalid input '" in got, got
            named = got.split("invalid input '", 1)[1].split("'", 1)[0]
            assert named in invalid, (named, invalid, got)
        elif status == "error":
            assert "[NOT_FOUND]" in got, got  # valid text the replay engines never saw
        else:
            assert got["tier"].reshape(-1)[0] in (b"committee", b"oracle")
            deadline = inputs.get("deadline_ms", (np.zeros((1, 1)), ""))[0].reshape(-1)[0]
            if not deadline:  # with no deadline the final answer is never provisional
                assert not got["provisional"].reshape(-1)[0], inputs

    check()
    with PyramidClient(deployment.grpc_url) as c:  # still healthy
        assert c.ask(questions[0]).tier in ("committee", "oracle")
