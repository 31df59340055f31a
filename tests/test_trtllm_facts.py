"""Every rendered TensorRT-LLM repository held against the facts of the backend it targets.

``deploy/trtllm_backend_facts.json`` pins, per TensorRT-LLM version and with the upstream tag, file
and line, what NVIDIA's ``tensorrtllm`` backend reads without a fallback, the request inputs it
reads and in which type, and the outputs it writes. Here every GPU spec is rendered for every
version the facts know, and each ``tensorrt_llm`` / preprocessing / postprocessing / ensemble config
is checked against them twice: with the renderer's own checker (``trtllm_facts``) and, independently,
with Triton's protobuf schema. Templates with one fact broken (a parameter removed, a type or a name
changed) must be refused. No GPU, TensorRT-LLM or container is needed.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import fake_pb_utils as pb  # tests/ is on sys.path (rootdir conftest)
import pytest
import yaml

from pyramid_deploy import render as render_mod
from pyramid_deploy import trtllm_facts, trtllm_spec
from pyramid_deploy.render import SpecError, load_trtllm_models, render
from pyramid_triton import tensors, trtllm
from pyramid_triton.protocol import EngineResponse

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed")
text_format = pytest.importorskip("google.protobuf.text_format")
json_format = pytest.importorskip("google.protobuf.json_format")

ROOT = Path(__file__).resolve().parents[1]
GPU_SPECS = sorted((ROOT / "deploy").glob("gpu-*.yaml"))
FACTS = trtllm_facts.load_facts()
VERSIONS = {b["id"]: b["trtllm_versions"][0] + "0" for b in FACTS["backends"]}  # one version per backend entry
ENGINE_TEMPLATE = Path("trtllm_engine") / "config.pbtxt"
ENSEMBLE_TEMPLATE = Path("trtllm_ensemble") / "config.pbtxt"


@pytest.fixture(autouse=True)
def _no_container(monkeypatch, tmp_path):
    """Render as on a CPU machine, whatever is installed here: no tensorrt_llm, no container template."""
    monkeypatch.setattr(trtllm_facts, "installed_version", lambda: None)
    monkeypatch.setattr(trtllm_facts, "CONTAINER_TEMPLATE", tmp_path / "no-container-template.pbtxt")


def _spec(tmp_path: Path, base: Path, version: str | None = None, edit=None) -> Path:
    d = yaml.safe_load(base.read_text())
    for key in ("checkpoint", "checkpoint_root", "engine_root", "engine_dir"):
        if key in d["engine"]:  # keep relative paths pointing where the shipped spec's do
            d["engine"][key] = str((base.parent / d["engine"][key]).resolve())
    d.pop("calibration", None)
    if version is not None:
        d["engine"]["trtllm_version"] = version
    if edit is not None:
        edit(d)
    p = tmp_path / base.name
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def _pb(path: Path):
    cfg = mc.ModelConfig()
    text_format.Parse(path.read_text(), cfg)
    return cfg


def _mutated(tmp_path: Path, rel: Path, change) -> Path:
    """A copy of deploy/templates with ``change(text) -> text`` applied to one template."""
    templates = tmp_path / "templates"
    shutil.copytree(render_mod.TEMPLATES, templates)
    text = (templates / rel).read_text()
    new = change(text)
    assert new != text, "the mutation changed nothing"
    (templates / rel).write_text(new)
    return templates


# --- the facts file itself ---------------------------------------------------------------------------


def test_every_fact_names_its_upstream_source():
    src = FACTS["attention_head_sizes"]["source"]
    assert re.fullmatch(r"[0-9a-f]{40}", src["commit"]) and src["file"].endswith(".cu") and src["line"] > 0
    ids = set()
    for b in FACTS["backends"]:
        ids.add(b["id"])
        s = b["source"]
        assert s["repo"] and s["ref"] and re.fullmatch(r"[0-9a-f]{40}", s["commit"]), b["id"]
        assert set(b["names"]) == {"seed", "min_tokens"}
        assert not set(b["names"].values()) & {n for v in b["names_elsewhere"].values() for n in v}
        for entry in [*b["parameters_required"], *b["parameters_typed"], *b["inputs"].values(), *b["outputs"].values()]:
            assert entry["file"].startswith("inflight_batcher_llm/src/") and int(entry["line"]) > 0, entry
        assert {p["name"] for p in b["parameters_required"]} >= {
            "gpt_model_type", "gpt_model_path", "tokenizer_dir", "xgrammar_tokenizer_info_path", "guided_decoding_backend"
        }  # fmt: skip
    assert len(ids) == len(FACTS["backends"])
    # The versions do not overlap: each TensorRT-LLM version has one set of facts.
    prefixes = [p for b in FACTS["backends"] for p in b["trtllm_versions"]]
    assert len(prefixes) == len(set(prefixes))


def test_versions_are_pinned_to_their_request_names():
    assert trtllm_facts.facts_for("0.19.0").names == {"seed": "random_seed", "min_tokens": "min_length"}
    assert trtllm_facts.facts_for("0.19.1").names["seed"] == "random_seed"
    assert trtllm_facts.facts_for("0.20.0").names == {"seed": "seed", "min_tokens": "min_tokens"}
    assert trtllm_facts.facts_for("0.20.0rc3").id == trtllm_facts.facts_for("0.20.0").id
    for unknown in ("0.18.2", "0.21.0", "1.0.0", "0.2", "10.19.0"):
        with pytest.raises(ValueError, match="not a version this renderer has backend facts for"):
            trtllm_facts.facts_for(unknown)


# --- every shipped spec, for every version the facts know ------------------------------------------


@pytest.mark.parametrize("version", sorted(VERSIONS.values()))
@pytest.mark.parametrize("base", GPU_SPECS, ids=lambda p: p.stem)
def test_every_rendered_config_holds_against_the_facts_of_its_backend(tmp_path, base, version):
    r = render(_spec(tmp_path, base, version), tmp_path / "repo", engines_only=True)
    models, _ = load_trtllm_models(_spec(tmp_path, base, version))
    facts = trtllm_facts.facts_for(version)
    for m in models:
        assert m.trtllm_version == version and m.backend_facts == facts
        pre, eng, post = trtllm_spec.sub_model_names(m.name)
        texts = {n: (r.out / n / "config.pbtxt").read_text() for n in (m.name, pre, eng, post)}
        assert trtllm_spec.check_rendered(m, texts) == []

        # The same facts, read independently of trtllm_facts' checker, with Triton's own protobuf schema.
        e = _pb(r.out / eng / "config.pbtxt")
        assert e.backend == "tensorrtllm" and e.model_transaction_policy.decoupled
        params = {k: v.string_value for k, v in e.parameters.items()}
        for p in facts.required_parameters.values():
            assert p["name"] in params, f"{eng}: {p['name']} (read without a fallback) is missing"
            if "values" in p:
                assert params[p["name"]] in p["values"]
        assert params["gpt_model_path"] == str(m.engine_dir)
        assert (
            params["tokenizer_dir"] == params["xgrammar_tokenizer_info_path"] == params["guided_decoding_backend"] == ""
        )
        for t in e.input:
            f = facts.inputs[t.name]  # KeyError: an input the backend does not read
            assert mc.DataType.Name(t.data_type) == f["dtype"], t.name
            assert list(t.dims) == f["dims"], t.name
        for name, f in facts.inputs.items():
            if f.get("required"):
                assert any(t.name == name and not t.optional for t in e.input), name
        outputs = {t.name: mc.DataType.Name(t.data_type) for t in e.output}
        assert {n: facts.outputs[n]["dtype"] for n in outputs} == outputs
        declared = {t.name for t in e.input}
        assert facts.names["seed"] in declared and facts.names["min_tokens"] in declared
        other = {n for v in facts.raw["names_elsewhere"].values() for n in v}
        assert not declared & other, f"{eng} declares another version's names: {declared & other}"

        ens = _pb(r.out / m.name / "config.pbtxt")
        (step,) = [s for s in ens.ensemble_scheduling.step if s.model_name == eng]
        assert set(step.input_map) <= set(facts.inputs)
        assert step.input_map[facts.names["seed"]] == "_SEED"
        assert set(facts.required_outputs) <= set(step.output_map)

        for sub, required in ((pre, trtllm_spec.PREPROCESSING_REQUIRED), (post, trtllm_spec.POSTPROCESSING_REQUIRED)):
            c = _pb(r.out / sub / "config.pbtxt")
            assert c.backend == "python"
            assert all(c.parameters[k].string_value for k in required), sub


@pytest.mark.parametrize("base", GPU_SPECS, ids=lambda p: p.stem)
def test_pre_and_postprocessing_models_load_from_every_rendered_config(tmp_path, base):
    """The Python models start from each rendered config (every REQUIRED parameter is there and parses)."""
    r = render(_spec(tmp_path, base), tmp_path / "repo", engines_only=True)
    models, _ = load_trtllm_models(_spec(tmp_path, base))
    from test_trtllm_models import FakeTokenizer

    for m in models:
        pre, _, post = trtllm_spec.sub_model_names(m.name)
        for name, cls in ((pre, trtllm.PreprocessingModel), (post, trtllm.PostprocessingModel)):
            cfg = _pb(r.out / name / "config.pbtxt")
            args = {
                "model_config": json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)),
                "model_repository": str(r.out / name),
                "model_name": name,
            }
            cls(pb, args, tokenizer=FakeTokenizer())


def test_the_python_models_required_parameters_are_the_ones_the_renderer_checks():
    """trtllm_spec's lists of REQUIRED parameters are read off trtllm.py's code, so they cannot drift."""
    tree = ast.parse((ROOT / "python_backend" / "pyramid_triton" / "trtllm.py").read_text())
    found: dict[str, set[str]] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for call in (n for n in ast.walk(cls) if isinstance(n, ast.Call)):
            f = call.func
            if (
                isinstance(f, ast.Attribute) and f.attr.startswith("get_") and len(call.args) == 2
                and isinstance(call.args[1], ast.Name) and call.args[1].id == "REQUIRED"
            ):  # fmt: skip
                found.setdefault(cls.name, set()).add(call.args[0].value)
    assert found["PreprocessingModel"] == set(trtllm_spec.PREPROCESSING_REQUIRED)
    assert found["PostprocessingModel"] == set(trtllm_spec.POSTPROCESSING_REQUIRED)


# --- a template with one fact broken is refused --------------------------------------------------------

REQUIRED = sorted({p["name"] for b in FACTS["backends"] for p in b["parameters_required"]})


@pytest.mark.parametrize("name", REQUIRED)
def test_removing_a_parameter_the_backend_needs_from_the_template_is_refused(tmp_path, name):
    templates = _mutated(
        tmp_path, ENGINE_TEMPLATE, lambda t: "\n".join(ln for ln in t.splitlines() if f'key: "{name}"' not in ln) + "\n"
    )
    spec = _spec(tmp_path, ROOT / "deploy" / "gpu-1gpu-smoke.yaml")
    with pytest.raises(SpecError, match=rf"parameter '{name}' is missing: the backend reads it without a fallback"):
        render(spec, tmp_path / "repo", templates=templates, engines_only=True)
    assert not (tmp_path / "repo").exists()
    # ... and the same check fails the shipped repositories' consistency if the template loses it.
    render(spec, tmp_path / "repo", engines_only=True)


@pytest.mark.parametrize(
    "rel, change, match",
    [
        (ENGINE_TEMPLATE, lambda t: t.replace('"${seed_input}" data_type: TYPE_UINT64', '"${seed_input}" data_type: TYPE_INT64'),
         r"input 'seed' is TYPE_INT64; the backend reads it as TYPE_UINT64"),
        (ENGINE_TEMPLATE, lambda t: t.replace('name: "${min_tokens_input}"', 'name: "min_length"') + "# ${min_tokens_input}\n",
         r"input 'min_length' is not among the request inputs"),
        (ENGINE_TEMPLATE, lambda t: t.replace("decoupled: true", "decoupled: false"),
         r"input 'streaming' is declared but the model is not decoupled"),
        (ENGINE_TEMPLATE, lambda t: t.replace('"max_beam_width" value: { string_value: "1" }', '"max_beam_width" value: { string_value: "one" }'),
         r"parameter 'max_beam_width' = 'one' is not a int"),
        (ENGINE_TEMPLATE, lambda t: t.replace('string_value: "inflight_fused_batching"', 'string_value: "ifb"'),
         r"parameter 'gpt_model_type' is 'ifb'"),
        (ENGINE_TEMPLATE, lambda t: t.replace('{ name: "sequence_length" data_type: TYPE_INT32 dims: [ -1 ] },\n', ""),
         r"output 'sequence_length' is not declared"),
        (ENGINE_TEMPLATE, lambda t: t.replace('{ name: "request_output_len" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } }',
                                              '{ name: "request_output_len" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } optional: true }'),
         r"input 'request_output_len' is declared optional"),
        (ENSEMBLE_TEMPLATE, lambda t: t.replace('input_map { key: "${seed_input}" value: "_SEED" }', 'input_map { key: "random_seed" value: "_SEED" }  # not ${seed_input}'),
         r"feeds 'random_seed'"),
        (ENSEMBLE_TEMPLATE, lambda t: t.replace('      output_map { key: "sequence_length" value: "_SEQUENCE_LENGTH" }\n', ""),
         r"does not ask for 'sequence_length'"),
    ],
    ids=["seed-type", "other-version-name", "not-decoupled", "param-type", "model-type", "required-output",
         "required-input-optional", "ensemble-name", "ensemble-output"],
)  # fmt: skip
def test_a_template_breaking_a_fact_is_refused(tmp_path, rel, change, match):
    templates = _mutated(tmp_path, rel, change)
    with pytest.raises(SpecError, match=match):
        render(_spec(tmp_path, ROOT / "deploy" / "gpu-1gpu-smoke.yaml", "0.20.0"), tmp_path / "repo",
               templates=templates, engines_only=True)  # fmt: skip


def test_a_python_model_config_losing_a_required_parameter_is_refused(tmp_path):
    rel = Path("trtllm_preprocessing") / "config.pbtxt"
    templates = _mutated(
        tmp_path, rel, lambda t: t.replace('parameters { key: "max_seq_len"', '# parameters { key: "max_seq_len"')
    )
    with pytest.raises(SpecError, match=r"_preprocessing: parameter 'max_seq_len' is missing"):
        render(_spec(tmp_path, ROOT / "deploy" / "gpu-1gpu-smoke.yaml"), tmp_path / "repo", templates=templates,
               engines_only=True)  # fmt: skip


# --- versions ------------------------------------------------------------------------------------------


def _engine_inputs(repo: Path, model: str) -> set[str]:
    return {t.name for t in _pb(repo / f"{model}_tensorrt_llm" / "config.pbtxt").input}


def test_the_request_names_follow_the_targeted_version(tmp_path):
    smoke = ROOT / "deploy" / "gpu-1gpu-smoke.yaml"
    r19 = render(_spec(tmp_path, smoke, "0.19.0"), tmp_path / "r19", engines_only=True)
    assert {"random_seed", "min_length"} <= _engine_inputs(r19.out, "tiny-oracle")
    assert not {"seed", "min_tokens"} & _engine_inputs(r19.out, "tiny-oracle")
    assert _pb(r19.out / "tiny-oracle" / "config.pbtxt").ensemble_scheduling.step[1].input_map["random_seed"] == "_SEED"
    # the ensemble's own text API keeps "seed" for every version (the router sends it)
    assert "seed" in {t.name for t in _pb(r19.out / "tiny-oracle" / "config.pbtxt").input}
    r20 = render(smoke, tmp_path / "r20", engines_only=True)  # default: the default image's 0.20
    assert {"seed", "min_tokens"} <= _engine_inputs(r20.out, "tiny-oracle")
    assert "TensorRT-LLM 0.20.0" in (r20.out / "tiny-oracle_tensorrt_llm" / "config.pbtxt").read_text()


@pytest.mark.parametrize(
    "version, match",
    [("0.21.0", "not a version this renderer has backend facts for"), (0.2, "must be a version string")],
)
def test_an_unknown_version_is_refused(tmp_path, version, match):
    spec = _spec(
        tmp_path, ROOT / "deploy" / "gpu-8x80gb.yaml", edit=lambda d: d["engine"].update(trtllm_version=version)
    )
    with pytest.raises(SpecError, match=match):
        render(spec, tmp_path / "repo", engines_only=True)


def test_one_server_one_version(tmp_path):
    spec = _spec(tmp_path, ROOT / "deploy" / "gpu-8x80gb.yaml", "0.20.0",
                 edit=lambda d: d["oracle"].update(trtllm_version="0.19.0"))  # fmt: skip
    with pytest.raises(SpecError, match="different TensorRT-LLM versions"):
        render(spec, tmp_path / "repo", engines_only=True)


def test_the_installed_version_is_the_target_and_a_contradicting_spec_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(trtllm_facts, "installed_version", lambda: "0.19.0")
    smoke = ROOT / "deploy" / "gpu-1gpu-smoke.yaml"
    r = render(smoke, tmp_path / "repo", engines_only=True)
    assert "random_seed" in _engine_inputs(r.out, "tiny-agent-1")
    with pytest.raises(
        SpecError, match="the spec targets TensorRT-LLM 0.20.0, but this environment has tensorrt_llm 0.19.0"
    ):
        render(_spec(tmp_path, smoke, "0.20.0"), tmp_path / "repo2", engines_only=True)
    monkeypatch.setattr(trtllm_facts, "installed_version", lambda: "0.22.1")
    with pytest.raises(SpecError, match="TensorRT-LLM 0.22.1 is not a version"):
        render(smoke, tmp_path / "repo3", engines_only=True)


# --- inside the container: its own template ---------------------------------------------------------------


def _container_template(
    facts: trtllm_facts.BackendFacts, drop_param: str | None = None, rename: dict | None = None
) -> str:
    """A stand-in for /app/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt, written from the facts
    (the real one is NVIDIA's; only its shape matters here), with ${placeholders} as upstream has them."""
    rename = rename or {}
    ins = ",\n".join(
        f'  {{ name: "{rename.get(n, n)}" data_type: {f["dtype"]} dims: {f["dims"]} optional: true }}'
        for n, f in facts.inputs.items()
    )
    params = "\n".join(
        f'parameters: {{ key: "{p}" value: {{ string_value: "${{{p}}}" }} }}'
        for p in [*facts.required_parameters, *facts.typed_parameters]
        if p != drop_param
    )
    return (
        'name: "tensorrt_llm"\nbackend: "${triton_backend}"\nmax_batch_size: ${triton_max_batch_size}\n'
        f"input [\n{ins}\n]\n{params}\n"
    )


def test_inside_the_container_its_own_template_is_checked_too(tmp_path, monkeypatch):
    tpl = tmp_path / "container.pbtxt"
    monkeypatch.setattr(trtllm_facts, "CONTAINER_TEMPLATE", tpl)
    smoke = ROOT / "deploy" / "gpu-1gpu-smoke.yaml"
    f20 = trtllm_facts.facts_for("0.20.0")
    tpl.write_text(_container_template(f20))
    render(smoke, tmp_path / "ok", engines_only=True)
    # A container whose backend still says random_seed while the facts say seed: caught before serving.
    tpl.write_text(_container_template(f20, rename={"seed": "random_seed"}))
    with pytest.raises(SpecError, match=r"input 'seed' is not in the container's template"):
        render(smoke, tmp_path / "bad1", engines_only=True)
    tpl.write_text(_container_template(f20, drop_param="tokenizer_dir"))
    with pytest.raises(SpecError, match=r"has no parameter 'tokenizer_dir'.*facts do not describe this container"):
        render(smoke, tmp_path / "bad2", engines_only=True)
    assert trtllm_facts.main(["--version", "0.20.0"]) == 1  # the CLI gpu_check.sh runs says the same
    tpl.write_text(_container_template(f20))
    assert trtllm_facts.main(["--version", "0.20.0"]) == 0


def test_the_pbtxt_reader_reads_nvidias_template_shapes():
    cfg = trtllm_facts.parse_pbtxt(
        '# comment\nname: "t"\nmax_batch_size: ${n}\nmodel_transaction_policy {\n  decoupled: ${d}\n}\n'
        'input [\n  {\n    name: "x"\n    data_type: TYPE_INT32\n    dims: [ 1 ]\n    reshape: { shape: [ ] }\n  },\n'
        '  { name: "y" data_type: TYPE_FP32 dims: [ -1, -1 ] optional: true }\n]\n'
        'parameters: { key: "k" value: { string_value: "a \\"q\\"" } }\nparameters { key: "e" value: { string_value: "" } }\n'
    )
    assert trtllm_facts.first(cfg, "max_batch_size") == "${n}"
    assert trtllm_facts.tensors(cfg, "input") == {
        "x": {"dtype": "TYPE_INT32", "dims": [1], "reshape": [], "optional": False},
        "y": {"dtype": "TYPE_FP32", "dims": [-1, -1], "reshape": None, "optional": True},
    }
    assert trtllm_facts.parameters(cfg) == {"k": 'a "q"', "e": ""}
    with pytest.raises(trtllm_facts.PbtxtError):
        trtllm_facts.parse_pbtxt("input [ { name: }")


# --- shapes TensorRT-LLM refuses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, match",
    [
        ({"hidden_size": 64}, r"head_dim 16 \(hidden_size 64 / 4 attention heads\) is not a head size .*unsupported head_size"),
        ({"hidden_size": 80, "num_attention_heads": 4, "intermediate_size": 160}, r"head_dim 20 "),
        ({"head_dim": 40}, r"head_dim 40 .*or head_dim in config.json"),
    ],
)  # fmt: skip
def test_an_unsupported_head_size_is_refused(tmp_path, arch, match):
    spec = _spec(
        tmp_path, ROOT / "deploy" / "gpu-1gpu-smoke.yaml", edit=lambda d: d["engine"]["architecture"].update(arch)
    )
    with pytest.raises(SpecError, match=match):
        render(spec, tmp_path / "repo", engines_only=True)
    assert not (tmp_path / "repo").exists()


def test_the_smoke_model_has_a_supported_head_size():
    (m, *_), _ = load_trtllm_models(ROOT / "deploy" / "gpu-1gpu-smoke.yaml")
    assert m.arch.head_dim in trtllm_facts.head_sizes() and m.arch.head_dim == 64
    assert set(trtllm_facts.head_sizes()) == {32, 48, 64, 80, 96, 104, 112, 128, 144, 160, 192, 224, 256}


def test_other_shapes_tensorrt_llm_refuses(tmp_path):
    smoke = ROOT / "deploy" / "gpu-1gpu-smoke.yaml"

    def tp2(d):  # 2 GPUs, TP=2, and an MLP width TP cannot split evenly
        d["node"] = {"gpus": 2}
        d["engine"].update(tp_size=2, gpu_device_ids=[0, 1])
        d["engine"]["architecture"].update(intermediate_size=513)

    with pytest.raises(SpecError, match=r"tp_size 2 does not divide intermediate_size 513"):
        render(_spec(tmp_path, smoke, edit=tp2), tmp_path / "r1", engines_only=True)

    def tp4(d):  # 2 KV heads cannot be split over 4 GPUs
        d["node"] = {"gpus": 4}
        d["engine"].update(tp_size=4, gpu_device_ids=[0, 1, 2, 3])

    with pytest.raises(SpecError, match=r"tp_size 4 does not divide the model's 2 KV heads \(valid: 1, 2\)"):
        render(_spec(tmp_path, smoke, edit=tp4), tmp_path / "r2", engines_only=True)

    fp8_on_a100 = _spec(
        tmp_path, ROOT / "deploy" / "gpu-4x80gb-fp8.yaml", edit=lambda d: d["node"].update(gpu="A100 80GB")
    )
    with pytest.raises(SpecError, match=r"FP8, which needs compute capability 8.9"):
        render(fp8_on_a100, tmp_path / "r3", engines_only=True)


# --- memory plan ----------------------------------------------------------------------------------------------


def test_the_70b_memory_plan_counts_embeddings_as_tensorrt_llm_lays_them_out():
    """The embedding table is whole on every GPU (use_parallel_embedding off by default); lm_head is split over
    TP; under FP8 both stay BF16. The earlier plan (params x bytes / GPUs) was 1.5-2 GiB per GPU low."""
    GiB = 2**30
    (*_, bf16), _ = load_trtllm_models(ROOT / "deploy" / "gpu-8x80gb.yaml")
    (*_, fp8), _ = load_trtllm_models(ROOT / "deploy" / "gpu-4x80gb-fp8.yaml")
    a = bf16.arch
    layers = a.num_hidden_layers * a.layer_params
    table = a.vocab_size * a.hidden_size
    assert bf16.weights_gb_per_gpu() == pytest.approx((layers * 2 / 4 + table * 2 + table * 2 / 4) / GiB, rel=1e-3)
    assert fp8.weights_gb_per_gpu() == pytest.approx((layers * 1 / 2 + table * 2 + table * 2 / 2) / GiB, rel=1e-3)
    old_bf16 = a.params_b * 1e9 * 2 / 4 / GiB
    old_fp8 = a.params_b * 1e9 * 1 / 2 / GiB
    assert 1.4 < bf16.weights_gb_per_gpu() - old_bf16 < 1.6  # 34.3 vs 32.9 GiB
    assert 1.9 < fp8.weights_gb_per_gpu() - old_fp8 < 2.0  # 34.8 vs 32.9 GiB
    # An 8B model on one GPU: everything on that GPU, as before.
    (small, *_), _ = load_trtllm_models(ROOT / "deploy" / "gpu-8x80gb.yaml")
    assert small.weights_gb_per_gpu() == pytest.approx(small.params_b * 1e9 * 2 / GiB, rel=1e-3)


def test_pipeline_parallel_puts_the_table_and_lm_head_on_different_gpus():
    m = load_trtllm_models(ROOT / "deploy" / "gpu-8x80gb.yaml")[0][-1]
    from dataclasses import replace

    pp2 = replace(m, tp_size=2, pp_size=2)
    a = m.arch
    want = (a.num_hidden_layers / 2 * a.layer_params * 2 / 2 + a.vocab_size * a.hidden_size * 2) / 2**30
    assert pp2.weights_gb_per_gpu() == pytest.approx(want, rel=1e-3)


# --- streamed log-probabilities ---------------------------------------------------------------------------------


def test_streamed_cum_log_probs_are_the_last_running_value_not_a_sum():
    # A streaming TensorRT-LLM engine: each response has its new tokens and the running cum_log_probs.
    parts = [EngineResponse("The", 1, -0.5), EngineResponse(" answer", 1, -1.25), EngineResponse(" is 4.", 3, -2.0)]
    merged = tensors.merge_engine_responses(parts)
    assert merged.text_output == "The answer is 4." and merged.output_tokens == 5
    assert merged.cum_log_prob == -2.0  # not -3.75
    assert tensors.merge_engine_responses([*parts, EngineResponse("", 0, None)]).cum_log_prob == -2.0
    assert tensors.merge_engine_responses([EngineResponse("a", 1), EngineResponse("b", 1)]).cum_log_prob is None
    single = EngineResponse("x", 2, -1.0)
    assert tensors.merge_engine_responses([single]) is single


# --- scripts/gpu_check.sh ------------------------------------------------------------------------------------


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_gpu_check_stops_at_the_first_failing_stage_with_its_cause_not_a_stack_trace(tmp_path):
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "nvidia-smi", "#!/bin/sh\necho 'NVIDIA H200, 143771 MiB, 570.00'\n")
    # A Python whose CUDA probe dies with a traceback, as one without libcuda does.
    python = _executable(
        tmp_path / "python",
        "#!/bin/sh\ncat >/dev/null\necho 'Traceback (most recent call last):'\n"
        "echo '  File \"<stdin>\", line 3, in <module>'\necho '    lib = ctypes.CDLL(\"libcuda.so.1\")'\n"
        "echo 'OSError: libcuda.so.1: cannot open shared object file: No such file or directory'\nexit 1\n",
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(python),
           "GPU_CHECK_OUT": str(tmp_path / "out")}  # fmt: skip
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "PASS  driver: nvidia-smi sees 1 GPU(s): NVIDIA H200" in out
    assert "FAIL  cuda: the CUDA driver API does not initialise" in out
    assert "cause: OSError: libcuda.so.1: cannot open shared object file" in out
    assert "Traceback" not in out and "ctypes.CDLL" not in out
    assert "stopped at stage 'cuda'" in out and "specs" not in out.split("FAIL  cuda")[1].split("== summary")[0]
    assert (tmp_path / "out" / "cuda.log").is_file()
