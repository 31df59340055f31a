"""What Triton's own OpenAI frontend sends a non-vLLM model, sent as it sends it (names, datatypes, shapes:
deploy/triton_openai_frontend_facts.json) to the real ``pyramid`` router on the session's tritonserver: it
is accepted, ``stop_words`` cut the returned text, the token counts it reads for ``usage`` are the sums of
every call the route made, sampling fields the engines lack are refused unless at their no-op value, and an
input the router does not take (guided decoding) is refused by Triton, naming it."""

from __future__ import annotations

import queue

import numpy as np
import pytest


def send(url: str, inputs: dict[str, tuple[str, np.ndarray]], timeout_s: float = 60.0) -> list[dict]:
    """One request on a gRPC stream (the router is decoupled, as the frontend finds it); every response
    until Triton's final flag as ``{output: value}`` (or ``{"error": message}``)."""
    import tritonclient.grpc as grpcclient

    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    tensors = []
    for name, (datatype, arr) in inputs.items():
        t = grpcclient.InferInput(name, list(arr.shape), datatype)
        t.set_data_from_numpy(arr)
        tensors.append(t)
    out: list[dict] = []
    try:
        client.start_stream(callback=lambda result, error: got.put((result, error)))
        client.async_stream_infer("pyramid", tensors, enable_empty_final_response=True)
        while True:
            result, error = got.get(timeout=timeout_s)
            if error is not None:
                out.append({"error": str(error)})
                break
            params = result.get_response().parameters
            if result.get_response().outputs:
                row = {}
                for o in result.get_response().outputs:
                    v = result.as_numpy(o.name).reshape(-1)[0]
                    row[o.name] = v.decode() if isinstance(v, bytes) else v.item()
                out.append(row)
            if "triton_final_response" in params and params["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream(cancel_requests=False)
        client.close()
    return out


def frontend_request(question: str, stop: list[str] | None = None, **extra) -> dict[str, tuple[str, np.ndarray]]:
    """The inputs of _create_trtllm_generate_request (v2.69.0) for a chat request with these fields."""
    inputs = {
        "text_input": ("BYTES", np.array([[question.encode()]], dtype=np.object_)),
        "stream": ("BOOL", np.array([[False]])),
        "max_tokens": ("INT32", np.array([[512]], dtype=np.int32)),
        "seed": ("UINT64", np.array([[7]], dtype=np.uint64)),
        "temperature": ("FP32", np.array([[0.0]], dtype=np.float32)),
        "top_p": ("FP32", np.array([[1.0]], dtype=np.float32)),
        "frequency_penalty": ("FP32", np.array([[0.0]], dtype=np.float32)),
        "presence_penalty": ("FP32", np.array([[0.0]], dtype=np.float32)),
        "return_num_input_tokens": ("BOOL", np.array([[True]])),
        "return_num_output_tokens": ("BOOL", np.array([[True]])),
    }
    if stop:
        inputs["stop_words"] = ("BYTES", np.array([[s.encode() for s in stop]], dtype=np.object_))  # [1, n]
    inputs.update(extra)
    return inputs


@pytest.fixture(scope="module")
def grpc_answer(deployment, traces):
    from pyramid_client import PyramidClient

    q = traces.questions[0].question
    with PyramidClient(deployment.grpc_url, timeout_s=60) as c:
        return q, c.ask(q)


def test_the_frontends_inputs_are_accepted_and_stop_words_cut_the_text(deployment, grpc_answer):
    q, g = grpc_answer
    (plain,) = send(deployment.grpc_url, frontend_request(q))
    assert plain["text_output"] == g.text and plain["tier"] == g.tier and plain["answer"] == (g.answer or "")
    assert plain["num_input_tokens"] == sum(t[0] for t in g.tokens.values()) > 0
    assert plain["num_output_tokens"] == sum(t[1] for t in g.tokens.values()) > 0
    word = g.text.split()[4]
    (cut,) = send(deployment.grpc_url, frontend_request(q, stop=["\u2603", word]))
    assert cut["text_output"] == g.text[: g.text.index(word)]
    assert cut["answer"] == plain["answer"], "the answer is read from the engines' whole text"
    # Triton 2.52-2.58's frontends call seed random_seed
    (old,) = send(deployment.grpc_url, {**frontend_request(q), "random_seed": ("UINT64", np.array([[7]], np.uint64))})
    assert old["text_output"] == g.text


@pytest.mark.parametrize("name,value", [("top_p", 0.5), ("presence_penalty", 1.0), ("frequency_penalty", -0.5)])
def test_sampling_fields_the_engines_lack_are_refused_naming_them(deployment, grpc_answer, name, value):
    q, _ = grpc_answer
    (err,) = send(deployment.grpc_url, frontend_request(q, **{name: ("FP32", np.array([[value]], np.float32))}))
    assert "[INVALID_ARG]" in err["error"] and f"'{name}'" in err["error"]


def test_guided_decoding_is_refused_by_triton_naming_the_input(deployment, grpc_answer):
    q, _ = grpc_answer
    guide = {"guided_decoding_guide_type": ("BYTES", np.array([[b"json_schema"]], dtype=np.object_))}
    (err,) = send(deployment.grpc_url, frontend_request(q, **guide))
    assert "guided_decoding_guide_type" in err["error"]
