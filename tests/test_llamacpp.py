"""The llama.cpp profile without llama.cpp or a server: prompt formatting, stop strings, seeds, the
engine loop and the decoupled Triton model over a scripted stand-in for ``llama_cpp.Llama``
(with tests/fake_pb_utils.py), the renderer's llamacpp kind, the agent-symmetric feature set and
the calibration relabelling. The real model and server: tests/integration/test_triton_llamacpp.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fake_pb_utils as pb  # tests/ is on sys.path (rootdir conftest)
import numpy as np
import pytest
import yaml

from pyramid_moa.artifact import load_artifact
from pyramid_moa.features import AgentOutput, make_feature_set
from pyramid_triton import llamacpp
from pyramid_triton.llamacpp import (
    DEFAULT_STOP,
    LlamaCppEngine,
    LlamaCppSettings,
    PromptFormat,
    RequestCancelled,
    TextAssembler,
    effective_seed,
)
from pyramid_triton.protocol import EngineRequest, InvalidArgument

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "deploy" / "llamacpp.yaml"
GEMMA = ["gemma3-270m-agent-1", "gemma3-270m-agent-2", "gemma3-270m-agent-3"]
GEMMA_ORACLE = "gemma3-270m-oracle"
COMMITTEE = ["faithfulcot_gpt-3.5-turbo_COT", "reread_gpt-3.5-turbo_re2_cot", "faithfulcot_gpt-3.5-turbo_noNL"]
ORACLE = "faithfulcot_gpt4_COT"


# --- prompt, stop strings, seeds --------------------------------------------------------------


def test_prompt_template_and_split():
    p = PromptFormat("Q: {question}\nA:", ("\n",))
    assert p.render("  2+2?  ") == "Q: 2+2?\nA:"
    prefix, rest = p.split("2+2?")
    assert (prefix, rest) == ("Q:", " 2+2?\nA:")  # the space goes with the question
    assert prefix + rest == p.render("2+2?")
    braces = PromptFormat("{x} {question}")  # replace, not str.format: other braces are text
    assert braces.render("q") == "{x} q"
    default = PromptFormat()
    assert default.stop == DEFAULT_STOP and default.render("Q?").endswith("Question: Q?\nAnswer:")
    with pytest.raises(ValueError, match="must contain"):
        PromptFormat("no placeholder")
    with pytest.raises(ValueError, match="non-empty"):
        PromptFormat("{question}", ("",))


def test_prompt_file_round_trip(tmp_path):
    p = PromptFormat('Say "{question}"\n', ("\n\n", "END"))
    f = tmp_path / "prompt.json"
    f.write_text(json.dumps(p.to_dict()))
    assert PromptFormat.load(f) == p
    with pytest.raises(ValueError, match="not found"):
        PromptFormat.load(tmp_path / "missing.json")


def _deltas(pieces: list[bytes], stop=("\n\n", "\nQuestion:")) -> tuple[list[str], TextAssembler]:
    t = TextAssembler(stop)
    out = [t.feed(p) for p in pieces]
    out.append(t.finish())
    return [d for d in out if d], t


def test_stop_string_across_pieces_is_never_sent():
    deltas, t = _deltas([b" The", b" answer", b" is", b" 5", b".", b"\n", b"\n", b"Question", b":"])
    assert "".join(deltas) == " The answer is 5."
    assert t.stopped and all("\n" not in d for d in deltas)
    # a held-back newline that does not become a stop string is sent after all
    deltas, t = _deltas([b"a", b"\n", b"b"])
    assert deltas == ["a", "\nb"] and not t.stopped
    deltas, _ = _deltas([b"a", b"\n"])  # generation ended: the held-back text is released
    assert "".join(deltas) == "a\n"


def test_utf8_split_across_tokens():
    euro = "€".encode()  # 3 bytes
    deltas, _ = _deltas([b"cost ", euro[:1], euro[1:2], euro[2:], b"5"], stop=())
    assert "".join(deltas) == "cost €5" and all("\ufffd" not in d for d in deltas)


def test_effective_seed():
    assert effective_seed(7, None) == 7
    assert effective_seed(1, 42) == effective_seed(1, 42)
    assert effective_seed(1, 42) != effective_seed(2, 42)  # agents stay independent under one client seed
    assert all(0 <= effective_seed(s, r) < llamacpp.LLAMA_DEFAULT_SEED for s in range(5) for r in range(50))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="n_threads"):
        LlamaCppSettings(n_threads=0)
    with pytest.raises(ValueError, match="temperature"):
        LlamaCppSettings(temperature=-1)


def test_missing_gguf_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match=r"nope\.gguf.*install_llamacpp\.sh"):
        LlamaCppEngine.load(LlamaCppSettings(model_path=missing))


def test_default_gguf_follows_pyramid_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRAMID_CACHE", str(tmp_path))
    assert llamacpp.default_gguf_path() == tmp_path / "models" / llamacpp.GGUF_NAME


# --- the engine loop over a scripted Llama ------------------------------------------------------


class ScriptedLlama:
    """A stand-in for ``llama_cpp.Llama``: one token per byte (ids 256+), BOS 1, EOS 2; ``generate``
    yields the bytes of ``script(prompt_text, temperature, seed)``, then EOS."""

    BOS, EOS = 1, 2

    def __init__(self, script, n_ctx: int = 4096, fail_after: int | None = None) -> None:
        self.script, self._n_ctx, self.fail_after = script, n_ctx, fail_after
        self.n_tokens, self.seed, self.generations, self.closed_generators = 0, None, [], 0
        self.input_ids: list[int] = []

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return ([self.BOS] if add_bos else []) + [256 + b for b in text]

    def detokenize(self, tokens: list[int]) -> bytes:
        return bytes(t - 256 for t in tokens if t >= 256)

    def n_ctx(self) -> int:
        return self._n_ctx

    def token_eos(self) -> int:
        return self.EOS

    def set_seed(self, seed: int) -> None:
        self.seed = seed

    def reset(self) -> None:
        self.n_tokens = 0

    def eval(self, tokens: list[int]) -> None:
        self.input_ids = self.input_ids[: self.n_tokens] + list(tokens)
        self.n_tokens = len(self.input_ids)

    def generate(self, tokens, temp: float, **kw):
        kept = self.n_tokens  # what the engine left in the "KV cache"
        assert self.input_ids[:kept] == list(tokens[:kept])
        self.generations.append({"kept": kept, "temp": temp, "seed": self.seed})
        self.eval(tokens[kept:])
        text = self.script(self.detokenize(list(tokens)).decode(), temp, self.seed)
        try:
            for i, b in enumerate([*text.encode(), None]):
                if self.fail_after is not None and i >= self.fail_after:
                    raise RuntimeError("decode failed")
                tok = self.EOS if b is None else 256 + b
                self.eval([tok])
                yield tok
        finally:
            self.closed_generators += 1


def scripted_engine(
    answer: str = " The answer is 5.\n\nQuestion: more", n_ctx: int = 4096, fail_after: int | None = None
) -> LlamaCppEngine:
    llama = ScriptedLlama(lambda prompt, temp, seed: answer, n_ctx, fail_after)
    engine = LlamaCppEngine(LlamaCppSettings(), llama)
    engine._pin_prefix()
    return engine


def test_stream_concatenates_to_generate_and_counts_sum():
    e = scripted_engine()
    req = EngineRequest("What is 2+3?", 64, return_log_probs=False)
    deltas = list(e.stream(req))
    full = e.generate(req)
    assert full.text_output == " The answer is 5."
    assert "".join(d.text_output for d in deltas) == full.text_output and len(deltas) >= 2
    # every byte up to and including the stop string "\n\n" was a generated token
    assert full.output_tokens == len(" The answer is 5.\n\n") == sum(d.output_tokens for d in deltas)
    assert full.cum_log_prob is None


def test_budget_eos_and_template_prefix_kept_in_cache():
    e = scripted_engine(" 12345")
    prefix_len = len(e._prefix_tokens)
    r = e.generate(EngineRequest("q", 3))
    assert (r.text_output, r.output_tokens) == (" 12", 3)
    r = e.generate(EngineRequest("another q", 100))
    assert (r.text_output, r.output_tokens) == (" 12345", 6)  # EOS ends it and is not counted
    assert [g["kept"] for g in e.llama.generations] == [prefix_len, prefix_len]  # the pinned prefix only
    e.settings = LlamaCppSettings(max_tokens=2, prompt=e.settings.prompt)  # the engine's own budget
    assert e.generate(EngineRequest("q", 100)).output_tokens == 2


def test_temperature_and_seed_defaults_and_overrides():
    e = scripted_engine()
    e.settings = LlamaCppSettings(temperature=0.7, seed=3, prompt=e.settings.prompt)
    e.generate(EngineRequest("q", 4))
    e.generate(EngineRequest("q", 4, temperature=0.0, seed=9))
    g1, g2 = e.llama.generations
    assert (g1["temp"], g1["seed"]) == (0.7, 3)
    assert (g2["temp"], g2["seed"]) == (0.0, effective_seed(3, 9))


def test_prompt_longer_than_the_context_is_invalid_text_input():
    e = scripted_engine(n_ctx=400)
    with pytest.raises(InvalidArgument, match="text_input"):
        e.generate(EngineRequest("x" * 500, 4))


def test_cancellation_stops_generation():
    e = scripted_engine()
    polls = []

    def cancelled() -> bool:
        polls.append(1)
        return len(polls) >= 3

    with pytest.raises(RequestCancelled, match="after 3 tokens"):
        list(e.stream(EngineRequest("q", 64), cancelled))
    assert e.llama.closed_generators == 1


# --- the decoupled Triton model (fake triton_python_backend_utils) -----------------------------


def _model(monkeypatch, tmp_path, engine: LlamaCppEngine, **params):
    from pyramid_triton import engines

    (tmp_path / "prompt.json").write_text(json.dumps(PromptFormat().to_dict()))
    monkeypatch.setattr(engines.LlamaCppEngine, "load", classmethod(lambda cls, settings: engine))
    values = {"gguf": str(tmp_path / "m.gguf"), "prompt": "prompt.json", **{k: str(v) for k, v in params.items()}}
    config = {"name": "gemma", "parameters": {k: {"string_value": v} for k, v in values.items()}}
    return engines.LlamaCppModel(pb, {"model_config": json.dumps(config), "model_repository": str(tmp_path)})


def _request(text="What is 2+3?", max_tokens=64, **kw) -> pb.Request:
    inputs = {"text_input": np.array([[text.encode()]], dtype=object), "max_tokens": np.array([[max_tokens]], np.int32)}
    for k, v in kw.items():
        inputs[k] = np.array([[v]], dtype=np.float32 if k == "temperature" else bool)
    return pb.Request(inputs)


def _sent(req: pb.Request) -> list[tuple[str | None, int | None, bool]]:
    """(text or None, output_tokens, final) of every response sent, or ("ERROR: msg", None, final)."""
    out = []
    for resp, flags in req.sender.sent:
        final = bool(flags & pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if resp is None:
            out.append((None, None, final))
        elif resp.has_error():
            out.append(("ERROR: " + resp.error().message(), None, final))
        else:
            text = pb.get_output_tensor_by_name(resp, "text_output").as_numpy().reshape(-1)[0].decode()
            tokens = int(pb.get_output_tensor_by_name(resp, "output_tokens").as_numpy().reshape(-1)[0])
            out.append((text, tokens, final))
    return out


def test_model_one_response_or_a_stream_each_ending_final(monkeypatch, tmp_path):
    m = _model(monkeypatch, tmp_path, scripted_engine())
    plain, streamed, with_input = _request(), _request(stream=True), _request(exclude_input_in_output=False)
    m.execute([plain, streamed, with_input])
    assert _sent(plain) == [(" The answer is 5.", 19, True)]
    s = _sent(streamed)
    assert len(s) >= 2 and [f for *_, f in s] == [False] * (len(s) - 1) + [True]
    assert "".join(t for t, _, _ in s) == " The answer is 5." and sum(n for _, n, _ in s) == 19
    assert s[-1][0] != ""  # the dropped stop string's tokens ride on the last piece
    assert _sent(with_input) == [("What is 2+3? The answer is 5.", 19, True)]


def test_model_bad_input_is_invalid_arg_then_it_still_answers(monkeypatch, tmp_path):
    m = _model(monkeypatch, tmp_path, scripted_engine())
    bad, empty, good = _request(max_tokens=0), _request(text="   "), _request()
    m.execute([bad, empty, good])
    assert _sent(bad) == [("ERROR: [INVALID_ARG] invalid input 'max_tokens': must be > 0, got 0", None, True)]
    assert _sent(empty)[0][0].startswith("ERROR: [INVALID_ARG] invalid input 'text_input'")
    assert _sent(good) == [(" The answer is 5.", 19, True)]


def test_model_engine_failure_mid_stream_ends_with_an_error_and_final(monkeypatch, tmp_path):
    m = _model(monkeypatch, tmp_path, scripted_engine(fail_after=6))
    req = _request(stream=True)
    m.execute([req])
    s = _sent(req)
    assert s[-1][0].startswith("ERROR: [INTERNAL]") and s[-1][2] and not any(f for *_, f in s[:-1])


def test_model_cancelled_request_stops_and_is_closed(monkeypatch, tmp_path):
    e = scripted_engine()
    m = _model(monkeypatch, tmp_path, e)
    req = _request(stream=True)
    req.sender.is_cancelled = lambda: True
    m.execute([req])
    s = _sent(req)
    assert s[-1][0].startswith("ERROR: [CANCELLED]") and s[-1][2]
    assert e.llama.closed_generators == 1


# --- rendering the llamacpp kind ---------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_calibration(tmp_path_factory) -> Path:
    """A calibration fitted on the shipped traces (symmetric features) and relabelled to Gemma."""
    tmp = tmp_path_factory.mktemp("cal")
    src, out = tmp / "source.json", tmp / "gemma.json"
    subprocess.run(
        [sys.executable, "-m", "pyramid_moa", "calibrate", "--traces", str(ROOT / "data" / "gsm8k"),
         "--committee", ",".join(COMMITTEE), "--oracle", ORACLE, "--cost", "usd", "--features", "symmetric",
         "--no-arbiter", "--out", str(src)],
        check=True, capture_output=True,
    )  # fmt: skip
    mapping = ",".join(f"{a}={b}" for a, b in zip([*COMMITTEE, ORACLE], [*GEMMA, GEMMA_ORACLE]))
    prices = [x for m in [*GEMMA, GEMMA_ORACLE] for x in ("--params", f"{m}=0.27", "--price", f"{m}=0.00001,0.00002")]
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "relabel_calibration.py"), str(src), str(out), "--map", mapping, *prices],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def _spec(tmp_path: Path, edit=None) -> Path:
    d = yaml.safe_load(SPEC.read_text())
    if edit:
        edit(d)
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def test_render_llamacpp_profile(tmp_path, gemma_calibration, monkeypatch):
    from pyramid_deploy.render import render

    monkeypatch.setenv("PYRAMID_CACHE", str(tmp_path / "cache"))
    r = render(_spec(tmp_path), tmp_path / "repo", calibration=gemma_calibration)
    router = (r.out / "pyramid" / "config.pbtxt").read_text()
    assert f'"decoupled_models" value: {{ string_value: "{",".join([*GEMMA, GEMMA_ORACLE])}" }}' in router
    assert '"parsed_answer_models" value: { string_value: "" }' in router
    for name in [*GEMMA, GEMMA_ORACLE]:
        cfg = (r.out / name / "config.pbtxt").read_text()
        assert "${" not in cfg and "decoupled: true" in cfg
        assert str(tmp_path / "cache" / "models" / llamacpp.GGUF_NAME) in cfg  # the default GGUF
        assert PromptFormat.load(r.out / name / "prompt.json") == PromptFormat()
        assert (r.out / name / "1" / "model.py").is_file()
    oracle = (r.out / GEMMA_ORACLE / "config.pbtxt").read_text()
    assert (
        '"n_threads" value: { string_value: "2" }' in oracle
        and '"temperature" value: { string_value: "0.0" }' in oracle
    )
    agent = (r.out / GEMMA[0] / "config.pbtxt").read_text()
    assert '"temperature" value: { string_value: "0.7" }' in agent and '"seed" value: { string_value: "1" }' in agent


def test_render_custom_prompt_and_relative_gguf(tmp_path, gemma_calibration):
    from pyramid_deploy.render import render

    def edit(d):
        d["engine"].update(gguf="models/g.gguf", prompt_template='Q: "{question}"\nA:', stop="\n")

    r = render(_spec(tmp_path, edit), tmp_path / "repo", calibration=gemma_calibration)
    assert PromptFormat.load(r.out / GEMMA[0] / "prompt.json") == PromptFormat('Q: "{question}"\nA:', ("\n",))
    assert str(tmp_path / "models" / "g.gguf") in (r.out / GEMMA[0] / "config.pbtxt").read_text()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["agents"][0].update(traces="x"), "unknown key.*traces"),  # a replay key on a llamacpp model
        (lambda d: d["engine"].update(seconds_per_token=0.1), "engine: unknown key.*seconds_per_token"),
        (lambda d: d["oracle"].update(n_thread=2), "unknown key.*n_thread"),
        (lambda d: d["agents"][1].update(temperature=-0.5), "temperature must be"),
        (lambda d: d["engine"].update(prompt_template="no placeholder"), "must contain"),
        (lambda d: d["agents"][2].update(kind="vllm"), "engine kind 'vllm'"),
    ],
)
def test_render_rejects_bad_llamacpp_specs(tmp_path, gemma_calibration, edit, match):
    from pyramid_deploy.render import SpecError, render

    with pytest.raises(SpecError, match=match):
        render(_spec(tmp_path, edit), tmp_path / "repo", calibration=gemma_calibration)
    assert not (tmp_path / "repo").exists()  # checked before anything is written


def test_render_mixed_kinds(tmp_path, gemma_calibration):
    """A replay model among llamacpp ones: only it is a parsed-answer model, only the others decoupled."""
    from pyramid_deploy.render import render

    def edit(d):
        d["agents"][0] = {"name": GEMMA[0], "kind": "replay", "traces": str(ROOT / "data" / "gsm8k"), "source": ORACLE}

    r = render(_spec(tmp_path, edit), tmp_path / "repo", calibration=gemma_calibration)
    router = (r.out / "pyramid" / "config.pbtxt").read_text()
    assert f'"parsed_answer_models" value: {{ string_value: "{GEMMA[0]}" }}' in router
    assert f'"decoupled_models" value: {{ string_value: "{",".join([*GEMMA[1:], GEMMA_ORACLE])}" }}' in router
    assert "decoupled" not in (r.out / GEMMA[0] / "config.pbtxt").read_text()


# --- the transferred calibration ---------------------------------------------------------------


def test_symmetric_features_do_not_depend_on_agents():
    a = make_feature_set("symmetric", ["x", "y", "z"])
    b = make_feature_set("symmetric", ["p", "q", "r"])
    assert a.names == b.names and not any("[" in n for n in a.names)
    outs = [AgentOutput(n, f"#### {v}", v, 10) for n, v in zip("xyz", ["7", "7", "12"])]
    x, _ = a("Tom has 3 apples and 4 pears.", outs)
    y, _ = b("Tom has 3 apples and 4 pears.", [AgentOutput(n, o.text, o.answer, 10) for n, o in zip("pqr", outs)])
    named = dict(zip(a.names, x))
    assert x == y and named["vote_share"] == pytest.approx(2 / 3) and named["top_integral"] == 1.0


def _relabel_module():
    from pyramid_moa import relabel

    return relabel


def test_relabelled_calibration(gemma_calibration):
    art = load_artifact(gemma_calibration, known_agents=[*GEMMA, GEMMA_ORACLE])
    assert art.committee == GEMMA and art.oracle == GEMMA_ORACLE and art.arbiter is None
    assert all(set(st["agents"]) <= set(GEMMA) for st in art.stages)
    assert art.cost_model.models[GEMMA_ORACLE].params_b == 0.27
    rec = art.fit_summary["relabelled"]
    assert rec["map"][ORACLE] == GEMMA_ORACLE and rec["price_usd_per_1k"][GEMMA[0]] == [0.00001, 0.00002]
    assert set(art.fit_summary["mean_output_tokens"]) == {*GEMMA, GEMMA_ORACLE}
    art.router()  # the feature names still match the code


def test_relabel_refuses_per_agent_features_and_partial_maps(gemma_calibration):
    relabel = _relabel_module()
    d = json.loads(gemma_calibration.read_text())
    mapping = {a: f"new-{i}" for i, a in enumerate([*d["committee"], d["oracle"]])}
    with pytest.raises(relabel.RelabelError, match="per-agent features"):
        relabel.relabel({**d, "feature_set": "agreement"}, mapping, {}, {}, "in", None)
    with pytest.raises(relabel.RelabelError, match="unmapped"):
        relabel.relabel(d, dict(list(mapping.items())[:2]), {}, {}, "in", None)
    with pytest.raises(relabel.RelabelError, match="distinct"):
        relabel.parse_map("a=x,b=x")
    with pytest.raises(relabel.RelabelError, match="not one of the new names"):
        relabel.relabel(d, mapping, {"nope": [1.0]}, {}, "in", None)
