"""The GPU deployment specs (deploy/gpu-*.yaml) render into model repositories Triton accepts.

Every rendered config.pbtxt is parsed with Triton's protobuf model-config schema; the router's
engine calls are checked against each engine's ensemble (names, types, shapes), each ensemble's
steps against the models they call, the tensorrt_llm models' GPU placement against the spec
(gpu_device_ids match TP x PP, are disjoint unless every engine on a shared GPU caps its KV
cache), TP against the models' KV heads, and no ``${...}`` placeholder survives. No GPU and no
TensorRT-LLM are needed: nothing here loads the models.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fake_pb_utils as pb  # tests/ is on sys.path (rootdir conftest)
import numpy as np
import pytest
import yaml
from approx import assert_tree_close

from pyramid_deploy import render as render_mod
from pyramid_deploy import trtllm_spec
from pyramid_deploy.render import SpecError, load_trtllm_models, render
from pyramid_triton import tensors
from pyramid_triton.protocol import EngineRequest

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed")
text_format = pytest.importorskip("google.protobuf.text_format")

ROOT = Path(__file__).resolve().parents[1]
COMMITTEE = ["faithfulcot_gpt-3.5-turbo_COT", "reread_gpt-3.5-turbo_re2_cot", "faithfulcot_gpt-3.5-turbo_noNL"]
ORACLE = "faithfulcot_gpt4_COT"
GPU_SPECS = sorted((ROOT / "deploy").glob("gpu-*.yaml"))
NP_TO_TRITON = {
    np.dtype(np.object_): "TYPE_STRING",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.uint64): "TYPE_UINT64",
    np.dtype(np.bool_): "TYPE_BOOL",
}
ROUTER_OUTPUT_TYPES = {"text_output": "TYPE_STRING", "output_tokens": "TYPE_INT32", "cum_log_probs": "TYPE_FP32"}


def test_there_are_gpu_specs():
    names = {p.name for p in GPU_SPECS}
    assert {"gpu-8x80gb.yaml", "gpu-4x80gb-fp8.yaml", "gpu-1gpu-smoke.yaml"} <= names


# --- calibrations for the new models ---------------------------------------------------------


@pytest.fixture(scope="module")
def symmetric_calibration(tmp_path_factory) -> dict:
    """Fitted on the shipped traces with the agent-symmetric features, as the Makefile's llamacpp transfer."""
    out = tmp_path_factory.mktemp("cal") / "symmetric.json"
    subprocess.run(
        [sys.executable, "-m", "pyramid_moa", "calibrate", "--traces", str(ROOT / "data" / "gsm8k"),
         "--committee", ",".join(COMMITTEE), "--oracle", ORACLE, "--cost", "usd", "--features", "symmetric",
         "--no-arbiter", "--out", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return json.loads(out.read_text())


def _relabel_module():
    from pyramid_moa import relabel

    return relabel


@pytest.fixture(scope="module")
def calibration_for(symmetric_calibration, tmp_path_factory):
    """``calibration_for(spec) -> path``: the symmetric calibration relabelled onto the spec's models
    (scripts/relabel_calibration.py; a transfer, as docs/GPU.md describes, not a fit)."""
    from pyramid_moa.artifact import write_json_atomic

    relabel = _relabel_module()
    tmp = tmp_path_factory.mktemp("gpu-cal")

    def make(spec: Path) -> Path:
        d = yaml.safe_load(spec.read_text())
        # the committee onto the spec's first agents (a spec may have more, e.g. an optional middle tier
        # that a transferred calibration does not use), the oracle onto its oracle
        agents = [a["name"] for a in d["agents"]][: len(symmetric_calibration["committee"])]
        new = [*agents, d["oracle"]["name"]]
        old = [*symmetric_calibration["committee"], symmetric_calibration["oracle"]]
        models, _ = load_trtllm_models(spec)
        params = {m.name: [round(m.params_b, 3)] for m in models if m.name in new}
        art = relabel.relabel(symmetric_calibration, dict(zip(old, new)), params, {}, "test", "transfer (tests)")
        path = tmp / f"{spec.stem}.json"
        write_json_atomic(path, art)
        return path

    return make


# --- parsing ----------------------------------------------------------------------------------


def parse_repository(repo: Path) -> dict[str, object]:
    """{model name: ModelConfig} of every model directory; the config's name must be its directory's."""
    configs = {}
    for d in sorted(p for p in repo.iterdir() if p.is_dir()):
        text = (d / "config.pbtxt").read_text()
        cfg = mc.ModelConfig()
        text_format.Parse(text, cfg)
        assert cfg.name == d.name, f"{d}: config name {cfg.name!r}"
        assert (d / "1").is_dir(), f"{d}: no version directory"
        configs[d.name] = cfg
    return configs


def _dtype(t) -> str:
    return mc.DataType.Name(t.data_type)


def _dims_fit(src: list[int], dst: list[int]) -> bool:
    """Tensor dims are compatible where equal or either side is -1 (variable)."""
    return len(src) == len(dst) and all(a == b or a == -1 or b == -1 for a, b in zip(src, dst))


def check_ensemble(name: str, configs: dict) -> None:
    """Every step's model exists; every mapped tensor exists with the same type and compatible dims;
    every required input of a step is fed; every ensemble output is produced exactly once."""
    ens = configs[name]
    assert ens.platform == "ensemble"
    tensors_ = {i.name: (_dtype(i), list(i.dims)) for i in ens.input}  # name -> (type, dims)
    produced: dict[str, str] = {}
    for step in ens.ensemble_scheduling.step:
        assert step.model_name in configs, f"{name}: step model {step.model_name!r} is not in the repository"
        model = configs[step.model_name]
        assert model.max_batch_size >= ens.max_batch_size, f"{step.model_name}: smaller max_batch_size than {name}"
        inputs = {i.name: i for i in model.input}
        outputs = {o.name: o for o in model.output}
        for key, value in step.input_map.items():
            assert key in inputs, f"{name}: {step.model_name} has no input {key!r}"
            assert value in tensors_, f"{name}: {step.model_name}.{key} <- {value!r}, which nothing before produces"
            dtype, dims = tensors_[value]
            assert dtype == _dtype(inputs[key]), (
                f"{name}: {value} is {dtype}, {step.model_name}.{key} wants {_dtype(inputs[key])}"
            )
            assert _dims_fit(dims, list(inputs[key].dims)), f"{name}: {value} {dims} -> {step.model_name}.{key}"
        missing = [i.name for i in model.input if not i.optional and i.name not in step.input_map]
        assert not missing, f"{name}: required input(s) {missing} of {step.model_name} are not mapped"
        for key, value in step.output_map.items():
            assert key in outputs, f"{name}: {step.model_name} has no output {key!r}"
            assert value not in produced, f"{name}: {value} produced twice ({produced.get(value)}, {step.model_name})"
            produced[value] = step.model_name
            tensors_[value] = (_dtype(outputs[key]), list(outputs[key].dims))
    for o in ens.output:
        assert o.name in produced, f"{name}: ensemble output {o.name} is produced by no step"
        dtype, dims = tensors_[o.name]
        assert dtype == _dtype(o) and _dims_fit(dims, list(o.dims)), f"{name}: output {o.name} {dtype} {dims}"


def check_router_calls(engine: str, configs: dict) -> None:
    """The router's engine request (every optional input set) and the outputs it reads fit ``engine``."""
    cfg = configs[engine]
    assert cfg.max_batch_size >= 1  # the router's tensors are [1, 1]: batch 1 x dims [1]
    inputs = {i.name: i for i in cfg.input}
    sent = tensors.engine_request_tensors(pb, EngineRequest("q", 16, 0.5, 7, True))
    for t in sent:
        assert t.name() in inputs, f"{engine}: the router sends {t.name()}, which the engine does not take"
        want = _dtype(inputs[t.name()])
        assert NP_TO_TRITON[t.as_numpy().dtype] == want, f"{engine}.{t.name()}: router sends {t.as_numpy().dtype}"
        assert list(t.as_numpy().shape) == [1, 1] and list(inputs[t.name()].dims) in ([1], [-1])
    required = {i.name for i in cfg.input if not i.optional}
    assert required <= {t.name() for t in tensors.engine_request_tensors(pb, EngineRequest("q", 16))}
    outputs = {o.name: o for o in cfg.output}
    for name in tensors.ENGINE_OUTPUTS:
        assert name in outputs, f"{engine}: no output {name} (the router reads it)"
        assert _dtype(outputs[name]) == ROUTER_OUTPUT_TYPES[name]
        # One element: dims [1]; cum_log_probs is per beam ([-1]) and the engines have one beam.
        assert list(outputs[name].dims) == ([-1] if name == "cum_log_probs" else [1]), f"{engine}.{name}"


def _params(cfg) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


# --- the specs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", GPU_SPECS, ids=lambda p: p.stem)
def test_gpu_spec_renders_a_consistent_repository(spec, tmp_path, calibration_for):
    # the transfer asks three agents; gpu-8x80gb's 32B middle tier is then unused (refused without the
    # override: test_an_engine_no_stage_of_the_calibration_asks_is_refused)
    r = render(spec, tmp_path / "repo", calibration=calibration_for(spec), allow_unused_engines=True)
    for f in r.out.rglob("*"):
        if f.is_file() and f.suffix in (".pbtxt", ".json"):
            assert "${" not in f.read_text(), f"{f}: unfilled placeholder"
    configs = parse_repository(r.out)
    assert sorted(configs) == sorted(r.models)
    models, node = load_trtllm_models(spec)
    by_name = {m.name: m for m in models}
    assert sorted(by_name) == sorted([*r.agents, r.oracle])

    router = _params(configs[r.router_model])
    assert router["agents"].split(",") == r.agents and router["oracle"] == r.oracle
    assert set(router["decoupled_models"].split(",")) == set(by_name)  # ensembles of decoupled engines
    assert router["parsed_answer_models"] == ""
    assert set(router["logprob_models"].split(",")) == set(by_name)  # log_probs: true in every GPU spec

    for name, m in by_name.items():
        pre, eng, post = trtllm_spec.sub_model_names(name)
        check_router_calls(name, configs)
        check_ensemble(name, configs)
        assert [s.model_name for s in configs[name].ensemble_scheduling.step] == [pre, eng, post]
        e = configs[eng]
        assert e.backend == "tensorrtllm" and e.model_transaction_policy.decoupled
        assert [(g.kind, g.count) for g in e.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
        p = _params(e)
        ids = [int(x) for x in p["gpu_device_ids"].split(",")]
        assert ids == list(m.gpu_device_ids) and len(ids) == m.tp_size * m.pp_size
        assert m.arch.num_key_value_heads % m.tp_size == 0 and m.arch.num_attention_heads % m.tp_size == 0
        assert p["gpt_model_path"] == str(m.engine_dir) and p["exclude_input_in_output"] == "true"
        assert p["max_beam_width"] == "1" and p["gpt_model_type"] == "inflight_fused_batching"
        for sub in (pre, post):
            assert configs[sub].backend == "python" and (r.out / sub / "1" / "model.py").is_file()
            assert _params(configs[sub])["tokenizer_dir"] == str(m.tokenizer)
            assert (
                json.loads((r.out / sub / "prompt.json").read_text())["prompt_template"] == m.generation.prompt_template
            )
        assert not (r.out / name / "1" / "model.py").exists() and not (r.out / eng / "1" / "model.py").exists()

    # GPUs: disjoint, except where every engine on a shared GPU caps its KV cache; all on the node.
    placement = trtllm_spec.check_placement(models, node, str(spec))
    for gpu, names in placement.items():
        assert node.gpus is None or gpu < node.gpus
        if len(names) > 1:
            for n in names:
                assert _params(configs[n + trtllm_spec.ENGINE])["max_tokens_in_paged_kv_cache"].isdigit()


def test_eight_gpu_node_layout():
    models, node = load_trtllm_models(ROOT / "deploy" / "gpu-8x80gb.yaml")
    placement = trtllm_spec.check_placement(models, node, "t")
    assert all(len(v) == 1 for v in placement.values())  # strictly disjoint
    oracle = models[-1]
    assert (oracle.hf_model, oracle.tp_size, oracle.quantization) == ("meta-llama/Llama-3.1-70B-Instruct", 4, "none")
    assert oracle.gpu_device_ids == (4, 5, 6, 7)
    assert [m.gpu_device_ids for m in models[:3]] == [(0,), (1,), (2,)]
    assert {m.hf_model for m in models[:3]} == {
        "meta-llama/Llama-3.1-8B-Instruct",
        "mistralai/Mistral-7B-Instruct-v0.3",
        "Qwen/Qwen2.5-7B-Instruct",
    }
    # the optional 32B middle tier on GPU 3: ~61 GiB of BF16 weights plus a capped KV cache fits one 80 GB card
    middle = models[3]
    assert (middle.hf_model, middle.gpu_device_ids, middle.tp_size) == ("Qwen/Qwen2.5-32B-Instruct", (3,), 1)
    assert 60 < middle.weights_gb_per_gpu() < 62
    assert middle.planned_gb_per_gpu() < node.gpu_memory_gb * trtllm_spec.GPU_MEMORY_HEADROOM


def test_the_middle_tier_memory_plan_is_checked(tmp_path):
    """A KV cache cap too large for the 32B's GPU is refused before anything is built, naming the GPU."""

    def edit(d):
        d["agents"][3]["max_tokens_in_paged_kv_cache"] = 131072  # ~32 GiB of KV on top of ~61 GiB of weights

    with pytest.raises(SpecError, match="GPU 3 is planned at"):
        load_trtllm_models(_spec(tmp_path, "gpu-8x80gb.yaml", edit))


def test_four_gpu_fp8_node_layout():
    models, node = load_trtllm_models(ROOT / "deploy" / "gpu-4x80gb-fp8.yaml")
    placement = trtllm_spec.check_placement(models, node, "t")
    assert placement[0] == ["llama-3.1-8b-instruct", "mistral-7b-instruct-v0.3"]
    assert all(len(v) == 1 for g, v in placement.items() if g != 0)
    oracle = models[-1]
    assert (oracle.tp_size, oracle.quantization, oracle.gpu_device_ids) == (2, "fp8", (2, 3))
    # ~35 GiB per GPU: the FP8 layers split over 2 GPUs (~32 GiB), the BF16 embedding table whole (~2 GiB) and
    # half the BF16 lm_head (~1 GiB) on each (tests/test_trtllm_facts.py has the exact layout)
    assert 34 < oracle.weights_gb_per_gpu() < 36
    shared = [m for m in models if 0 in m.gpu_device_ids]
    planned = sum(m.planned_gb_per_gpu() for m in shared)
    assert planned < 80 * trtllm_spec.GPU_MEMORY_HEADROOM


def test_catalog_sizes_match_the_published_parameter_counts():
    size = {k: trtllm_spec.Architecture.from_config(v, k).params_b for k, v in trtllm_spec.CATALOG.items()}
    assert size["meta-llama/Llama-3.1-8B-Instruct"] == pytest.approx(8.03, abs=0.01)
    assert size["meta-llama/Llama-3.1-70B-Instruct"] == pytest.approx(70.55, abs=0.05)
    assert size["mistralai/Mistral-7B-Instruct-v0.3"] == pytest.approx(7.25, abs=0.01)
    assert size["Qwen/Qwen2.5-7B-Instruct"] == pytest.approx(7.62, abs=0.02)
    # 32,763,876,352 counted from its config.json with the QKV biases (the model card rounds to 32.5B)
    assert size["Qwen/Qwen2.5-32B-Instruct"] == pytest.approx(32.76, abs=0.02)


# --- what the renderer refuses ------------------------------------------------------------------


def _spec(tmp_path: Path, base: str, edit) -> Path:
    d = yaml.safe_load((ROOT / "deploy" / base).read_text())
    edit(d)
    # keep relative paths pointing where the shipped spec's do
    d["engine"]["checkpoint_root"] = str(ROOT / "models")
    d["engine"]["engine_root"] = str(ROOT / "out" / "engines")
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["agents"][1].update(gpu_device_ids=[0]), r"GPU 0 is shared by .*cap its KV cache"),
        (lambda d: d["oracle"].update(tp_size=3, gpu_device_ids=[3, 4, 5]), r"tp_size 3 does not divide the model's 8 KV heads \(valid: 1, 2, 4, 8\)"),
        (lambda d: d["agents"][2].update(tp_size=8, gpu_device_ids=list(range(8))), r"tp_size 8 does not divide the model's 4 KV heads"),
        (lambda d: d["oracle"].update(gpu_device_ids=[4, 5, 6]), r"name 3 GPU\(s\); tp_size x pp_size = 4"),
        (lambda d: d["oracle"].update(gpu_device_ids=[5, 6, 7, 8]), r"placed on GPU 8; the node has 8 GPUs"),
        (lambda d: d["oracle"].update(tp_size=1, gpu_device_ids=[4]), r"GPU 4 is planned at .* GiB"),
        (lambda d: d["oracle"].update(gpu_device_ids=[4, 4, 5, 6]), r"lists a GPU twice"),
        (lambda d: d["agents"][0].update(max_tokens_in_paged_kv_cache=1000), r"cannot hold one request"),
        (lambda d: d["agents"][1].update(max_input_len=32768), r"exceeds the model's 32768 positions"),
        (lambda d: d["agents"][0].update(quantization="int4"), r"quantization must be one of none, fp8"),
        (lambda d: d["agents"][0].update(hf_model="someone/unknown-7b"), r"unknown architecture of hf_model"),
        (lambda d: d["agents"][0].update(gguf="x"), r"unknown key.*gguf"),
        (lambda d: d["engine"].pop("gpu_device_ids", None) or d["agents"][0].pop("gpu_device_ids"), "gpu_device_ids is required"),
        (lambda d: d.update(node={"gpus": 8, "gpu_memory": 80}), r"node: unknown key\(s\) gpu_memory"),
        (lambda d: d["agents"][0].update(max_tokens=4096), r"max_tokens 4096 exceeds the engine's max_output_len"),
        (lambda d: d.update(embedder={"device": "tpu"}), r"embedder: device 'tpu' is not cpu or gpu"),
        (lambda d: d.update(embedder={"device": "gpu", "backend": "numpy"}), r"numpy backend runs on the CPU only"),
        (lambda d: d.update(embedder={"gpus": [0]}), r"gpus must be a non-empty list of GPU indices, with device gpu"),
        (lambda d: d.update(embedder={"device": "gpu", "gpus": [3, 8]}), r"embedder: gpus \[8\] are not on this node \(node.gpus: 8\)"),
    ],
)  # fmt: skip
def test_bad_gpu_specs_are_refused_before_anything_is_written(tmp_path, edit, match):
    spec = _spec(tmp_path, "gpu-8x80gb.yaml", edit)
    with pytest.raises(SpecError, match=match):
        render(spec, tmp_path / "repo", engines_only=True)
    assert not (tmp_path / "repo").exists()


def test_the_embedder_on_a_gpu_is_a_kind_gpu_instance_on_the_gpus_named(tmp_path, calibration_for):
    """``embedder: {device: gpu, gpus: [3]}``: the semantic task's embedder as a KIND_GPU instance on GPU 3
    (ONNX Runtime's CUDA provider in the model, scripts/embedder_gpu_check.py on the node), the router told
    its name; without gpus, Triton's default (every GPU)."""
    base = ROOT / "deploy" / "gpu-8x80gb.yaml"
    for emb, gpus in (({"device": "gpu", "gpus": [3]}, [3]), ({"device": "gpu", "instance_count": 2}, [])):
        spec = _spec(tmp_path, "gpu-8x80gb.yaml", lambda d, emb=emb: d.update(embedder=emb))
        r = render(spec, tmp_path / "repo", calibration=calibration_for(base), allow_unused_engines=True)
        configs = parse_repository(r.out)
        cfg = configs["embedder"]
        assert [(g.kind, g.count, list(g.gpus)) for g in cfg.instance_group] == [
            (mc.ModelInstanceGroup.KIND_GPU, emb.get("instance_count", 1), gpus)
        ]
        assert _params(cfg)["device"] == "gpu" and cfg.backend == "python"
        assert _params(configs[r.router_model])["embedder"] == "embedder"


def test_sub_model_name_clash_is_refused(tmp_path):
    spec = _spec(
        tmp_path, "gpu-8x80gb.yaml", lambda d: d["agents"][1].update(name="llama-3.1-8b-instruct_preprocessing")
    )
    with pytest.raises(SpecError, match="rendered twice"):
        render(spec, tmp_path / "repo", engines_only=True)


def test_gpu_spec_needs_a_calibration_or_engines_only(tmp_path):
    spec = ROOT / "deploy" / "gpu-8x80gb.yaml"
    with pytest.raises(SpecError, match="pyramid record"):
        render(spec, tmp_path / "repo")
    r = render(spec, tmp_path / "repo", engines_only=True)
    assert not (r.out / "pyramid").exists() and len(r.models) == 20  # 5 engines x (ensemble + 3 models)
    parse_repository(r.out)


def test_architecture_from_the_checkpoint_config(tmp_path):
    ckpt = tmp_path / "my-model"
    ckpt.mkdir()
    cfg = dict(trtllm_spec.CATALOG["Qwen/Qwen2.5-7B-Instruct"], architectures=["Qwen2ForCausalLM"], rope_theta=1e6)
    (ckpt / "config.json").write_text(json.dumps(cfg))

    def edit(d):
        d["agents"][2] = {"name": "my-model", "checkpoint": str(ckpt), "gpu_device_ids": [2]}

    models, _ = load_trtllm_models(_spec(tmp_path, "gpu-8x80gb.yaml", edit))
    m = next(m for m in models if m.name == "my-model")
    assert m.arch.num_key_value_heads == 4 and m.arch.convert_example == "qwen" and m.tokenizer == ckpt


def test_replay_and_llamacpp_kinds_are_unchanged():
    assert {"replay", "llamacpp", "trtllm"} == set(render_mod.ENGINE_KINDS)
    assert render_mod.DECOUPLED_KINDS == {"llamacpp", "trtllm"}


def test_the_shipped_smoke_calibration_is_the_documented_transfer(symmetric_calibration):
    shipped = json.loads((ROOT / "deploy" / "gpu-1gpu-smoke.calibration.json").read_text())
    new = ["tiny-agent-1", "tiny-agent-2", "tiny-agent-3", "tiny-oracle"]
    old = [*symmetric_calibration["committee"], symmetric_calibration["oracle"]]
    again = _relabel_module().relabel(
        symmetric_calibration,
        dict(zip(old, new)),
        {m: [0.00014] for m in new},
        {m: [0.00001, 0.00002] for m in new},
        "x",
        None,
    )
    # Fitted floats differ in their last digits between machines (BLAS, CPU): numbers within a
    # tolerance, names, feature lists and structure exactly.
    for key in ("committee", "oracle", "feature_set", "calibrator", "stages", "arbiter", "cost_model"):
        assert_tree_close(shipped[key], again[key], rel=1e-6, abs_=1e-9)
    assert shipped["fitted_on"]["idx"] == again["fitted_on"]["idx"]
    spec = yaml.safe_load((ROOT / "deploy" / "gpu-1gpu-smoke.yaml").read_text())
    assert spec["calibration"] == "gpu-1gpu-smoke.calibration.json"


# --- engines the calibration never asks ---------------------------------------------------------------


def test_an_engine_no_stage_of_the_calibration_asks_is_refused(tmp_path, calibration_for, capsys):
    """A calibration whose stages never ask gpu-8x80gb's 32B middle tier (the three-agent transfer) would leave
    a 61 GiB engine on GPU 3 that the router never calls: refused before anything is written, naming the
    engine, its GPU and the fixes; served with the explicit override."""
    from test_remote import _artifact  # the unit tests' one-stage calibration over the names given

    spec = ROOT / "deploy" / "gpu-8x80gb.yaml"
    models, _ = load_trtllm_models(spec)
    names = [m.name for m in models]  # agents, then the oracle
    transfer = calibration_for(spec)
    refused = r"qwen2\.5-32b-instruct \(GPU 3, 6\d GiB of weights per GPU\).*--allow-unused-engines"
    with pytest.raises(SpecError, match=refused) as err:
        render(spec, tmp_path / "repo", calibration=transfer)
    assert "llama-3.1-8b-instruct (" not in str(err.value) and "--committee " + ",".join(names[:-1]) in str(err.value)
    assert not (tmp_path / "repo").exists()
    r = render(spec, tmp_path / "repo", calibration=transfer, allow_unused_engines=True)
    assert "qwen2.5-32b-instruct" in r.agents

    # the command line: refused (exit 2, the reason on stderr), then rendered with --allow-unused-engines
    argv = [str(spec), "--out", str(tmp_path / "cli"), "--calibration", str(transfer)]
    assert render_mod.main(argv) == 2 and "qwen2.5-32b-instruct (GPU 3" in capsys.readouterr().err
    assert render_mod.main([*argv, "--allow-unused-engines"]) == 0

    # the 32B in the committee but asked at no stage (what the schedule search may decide): still refused
    art = _artifact([n for n in names if n != "qwen2.5-32b-instruct"])
    art.committee = names[:-1]
    art.save(tmp_path / "no-32b-stage.json")
    with pytest.raises(SpecError, match=refused):
        render(spec, tmp_path / "repo", calibration=tmp_path / "no-32b-stage.json")
    # every engine asked at some stage: rendered as it is
    _artifact(names).save(tmp_path / "all.json")
    assert render(spec, tmp_path / "repo", calibration=tmp_path / "all.json").agents == names[:-1]
