"""The TensorRT-LLM pre/postprocessing models, with a fake tokenizer and a fake triton_python_backend_utils.

What they send is checked against the rendered config.pbtxt of the smoke spec (names, types, dims),
so the Python code and the ensemble cannot drift apart. No transformers, TensorRT-LLM or GPU needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import fake_pb_utils as pb  # tests/ is on sys.path (rootdir conftest)
import numpy as np
import pytest

from pyramid_deploy.render import render
from pyramid_triton import trtllm
from pyramid_triton.protocol import InvalidArgument, Limits
from pyramid_triton.trtllm import (
    Postprocessor,
    Preprocessor,
    PromptSpec,
    Sampling,
    mix_seed,
    resolve_sampling,
    to_word_list,
)

ROOT = Path(__file__).resolve().parents[1]
BOS, EOS, EOT = 1, 2, 3


class FakeTokenizer:
    """Characters are tokens (id = code point + 10); <s>=1, </s>=2, <eot>=3 are special."""

    eos_token_id = EOT
    pad_token_id = None
    chat_template = "{{ messages }}"  # anything truthy: the tokenizer has a chat template
    SPECIAL = {BOS: "<s>", EOS: "</s>", EOT: "<eot>"}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = []
        i = 0
        while i < len(text):
            for tid, tok in self.SPECIAL.items():
                if text.startswith(tok, i):
                    ids.append(tid)
                    i += len(tok)
                    break
            else:
                ids.append(ord(text[i]) + 10)
                i += 1
        return ([BOS] if add_special_tokens else []) + ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(
            ("" if skip_special_tokens else self.SPECIAL[t]) if t in self.SPECIAL else chr(t - 10) for t in ids
        )

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False) -> str:
        assert not tokenize and add_generation_prompt
        body = "".join(f"[{m['role']}]{m['content']}<eot>" for m in messages)
        return f"<s>{body}[assistant]"


def _pre(**kw) -> Preprocessor:
    args = dict(
        tokenizer=FakeTokenizer(),
        prompt=PromptSpec("Q: {question}", "Be brief.", True, ("\n\nQ:",)),
        max_input_len=200,
        max_seq_len=260,
        max_tokens=40,
        sampling=Sampling(0.0, 0, 1.0, 5),
        extra_eos_ids=[EOS, EOT],
    )
    args.update(kw)
    return Preprocessor(**args)


def test_prompt_goes_through_the_chat_template():
    p = _pre()
    assert p.prompt_text("  2+2?  ") == "<s>[system]Be brief.<eot>[user]Q: 2+2?<eot>[assistant]"
    ids = p.input_ids("2+2?")
    assert ids[0] == BOS and ids.count(BOS) == 1  # the template's BOS, not a second one
    plain = _pre(prompt=PromptSpec("Q: {question}", None, False))
    assert plain.prompt_text("x") == "Q: x" and plain.input_ids("x")[0] == BOS  # the tokenizer's own BOS


def test_stop_words_and_end_ids():
    p = _pre()
    assert p.end_id == EOT and p.pad_id == EOT
    stop = p.stop_words
    words = [FakeTokenizer().encode("\n\nQ:", add_special_tokens=False), [EOS]]  # EOT is end_id, not a stop word
    flat = [t for w in words for t in w]
    assert stop.shape == (2, len(flat)) and stop.dtype == np.int32
    assert list(stop[0]) == flat and list(stop[1]) == [4, 5] + [-1] * (len(flat) - 2)
    assert to_word_list([]).shape == (2, 0)
    assert _pre(end_id=EOS).end_id == EOS


def test_budget_sampling_and_seed():
    p = _pre()
    r = p.process("2+2?", 500)
    assert r["REQUEST_OUTPUT_LEN"] == 40  # the engine's budget
    assert p.output_len(30, 250) == 10  # what max_seq_len leaves after a long prompt
    assert (r["OUT_TEMPERATURE"], r["OUT_TOP_K"], r["OUT_TOP_P"], r["OUT_SEED"]) == (1.0, 1, 1.0, 5)  # greedy
    assert resolve_sampling(Sampling(0.0, 0, 1.0, 5), 0.7, 40, 0.9, 11) == (0.7, 40, 0.9, mix_seed(5, 11))
    assert mix_seed(5, 11) != mix_seed(6, 11) and 0 <= mix_seed(5, 11) < 2**64 and mix_seed(5, None) == 5
    with pytest.raises(InvalidArgument, match="'top_p'"):
        resolve_sampling(Sampling(), None, None, 0.0, None)
    with pytest.raises(InvalidArgument, match="'temperature'"):
        p.process("q", 5, temperature=-1.0)
    with pytest.raises(InvalidArgument, match="'max_tokens'"):
        p.process("q", 0)


def test_long_or_empty_prompts_are_invalid_text_input():
    with pytest.raises(InvalidArgument, match="'text_input'.*at most 50"):
        _pre(max_input_len=50, max_seq_len=60).process("x" * 60, 5)
    with pytest.raises(InvalidArgument, match="'text_input'.*must not be empty"):
        _pre().process("   ", 5)
    with pytest.raises(InvalidArgument, match="'text_input'.*limit is 10"):
        _pre(limits=Limits(max_input_chars=10)).process("x" * 11, 5)


def test_postprocessor_decodes_the_first_beam_and_cuts_a_stop_string():
    tok = FakeTokenizer()
    post = Postprocessor(tok, ("\n\nQ:",))
    ids = tok.encode("The answer is 4.\n\nQ:", add_special_tokens=False) + [EOT, 0, 0]
    tokens = np.array([ids], dtype=np.int32)
    text, n = post.process(tokens, np.array([len(ids) - 2]))
    assert text == "The answer is 4." and n == len(ids) - 2


def test_generation_config_eos_ids(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128008, 128009]}))
    assert trtllm.eos_ids_from_generation_config(tmp_path) == [128001, 128008, 128009]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert trtllm.eos_ids_from_generation_config(tmp_path) == [2]
    assert trtllm.eos_ids_from_generation_config(tmp_path / "none") == []


# --- the Python-backend models against their rendered configs ----------------------------------


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory) -> Path:
    return render(ROOT / "deploy" / "gpu-1gpu-smoke.yaml", tmp_path_factory.mktemp("r") / "repo", engines_only=True).out


def _args(repo: Path, model: str) -> dict:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = mc.ModelConfig()
    text_format.Parse((repo / model / "config.pbtxt").read_text(), cfg)
    return {
        "model_config": json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)),
        "model_repository": str(repo / model),
        "model_name": model,
    }, cfg


def _declared(cfg, which: str) -> dict[str, tuple[type, list[int]]]:
    from tritonclient.grpc import model_config_pb2 as mc

    np_types = {"TYPE_STRING": np.object_, "TYPE_INT32": np.int32, "TYPE_FP32": np.float32, "TYPE_UINT64": np.uint64}
    return {t.name: (np_types[mc.DataType.Name(t.data_type)], list(t.dims)) for t in getattr(cfg, which)}


def _fits(arr: np.ndarray, dims: list[int], batch: int) -> bool:
    shape = list(arr.shape)
    return shape[0] == batch and len(shape) == len(dims) + 1 and all(d in (-1, s) for d, s in zip(dims, shape[1:]))


def test_preprocessing_model_sends_what_its_config_declares(smoke_repo):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    args, cfg = _args(smoke_repo, "tiny-agent-2_preprocessing")
    model = trtllm.PreprocessingModel(pb, args, tokenizer=FakeTokenizer())
    req = pb.Request(
        {
            "text_input": np.array([[b"Tom has 3 apples."], [b"2+2?"]], dtype=np.object_),
            "max_tokens": np.array([[16], [100]], dtype=np.int32),
            "seed": np.array([[9], [9]], dtype=np.uint64),
        }
    )
    (resp,) = model.execute([req])
    assert not resp.has_error()
    out = {t.name(): t.as_numpy() for t in resp.output_tensors()}
    declared = _declared(cfg, "output")
    assert set(out) == set(declared)
    for name, arr in out.items():
        dtype, dims = declared[name]
        assert arr.dtype == np.dtype(dtype) and _fits(arr, dims, 2), f"{name}: {arr.dtype} {arr.shape} vs {dims}"
    lens = out["REQUEST_INPUT_LEN"].reshape(-1)
    assert out["INPUT_ID"].shape[1] == max(lens) and list(out["REQUEST_OUTPUT_LEN"].reshape(-1)) == [16, 32]
    # tiny-agent-2 samples (temperature 0.7 in the spec) with its seed (2) mixed into the request's
    assert out["OUT_TEMPERATURE"][0, 0] == pytest.approx(0.7) and out["OUT_SEED"][0, 0] == mix_seed(2, 9)


def test_preprocessing_model_bad_input_is_an_invalid_arg_error(smoke_repo):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    args, _ = _args(smoke_repo, "tiny-agent-1_preprocessing")
    model = trtllm.PreprocessingModel(pb, args, tokenizer=FakeTokenizer())
    req = pb.Request(
        {"text_input": np.array([[b"x" * 2000]], dtype=np.object_), "max_tokens": np.array([[4]], np.int32)}
    )
    good = pb.Request({"text_input": np.array([[b"ok?"]], dtype=np.object_), "max_tokens": np.array([[4]], np.int32)})
    bad, ok = model.execute([req, good])
    assert bad.has_error() and bad.error().message().startswith("[INVALID_ARG] invalid input 'text_input'")
    assert not ok.has_error()  # one bad request does not fail the others in the batch


def test_postprocessing_model_returns_text_and_token_counts(smoke_repo):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    args, cfg = _args(smoke_repo, "tiny-oracle_postprocessing")
    model = trtllm.PostprocessingModel(pb, args, tokenizer=FakeTokenizer())
    tok = FakeTokenizer()
    a, b = tok.encode("So 18.", False), tok.encode("The answer is 7.", False)
    width = max(len(a), len(b))
    tokens = np.zeros((2, 1, width), dtype=np.int32)
    tokens[0, 0, : len(a)], tokens[1, 0, : len(b)] = a, b
    req = pb.Request({"TOKENS_BATCH": tokens, "SEQUENCE_LENGTH": np.array([[len(a)], [len(b)]], dtype=np.int32)})
    (resp,) = model.execute([req])
    out = {t.name(): t.as_numpy() for t in resp.output_tensors()}
    declared = _declared(cfg, "output")
    assert set(out) == set(declared)
    for name, arr in out.items():
        assert arr.dtype == np.dtype(declared[name][0]) and _fits(arr, declared[name][1], 2)
    assert [x.decode() for x in out["text_output"].reshape(-1)] == ["So 18.", "The answer is 7."]
    assert list(out["output_tokens"].reshape(-1)) == [len(a), len(b)]


def test_missing_tokenizer_or_transformers_names_the_fix(tmp_path):
    with pytest.raises(RuntimeError, match="(transformers is not installed|tokenizer directory)"):
        trtllm.load_tokenizer(tmp_path / "nope")
