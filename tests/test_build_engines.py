"""scripts/build_engines.py: command construction, --dry-run, idempotence, failure handling.

TensorRT-LLM is not installed here (PyPI has only stubs): the convert / quantize scripts and
``trtllm-build`` are small fakes that write their output directory and log their argv, so the
real build driver runs end to end without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pyramid_deploy import engine_build, trtllm_spec
from pyramid_deploy.engine_build import BuildError, StepFailed, execute, plan_builds
from pyramid_deploy.render import load_trtllm_models

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "build_engines.py"

FAKE_TOOL = textwrap.dedent(
    """\
    import json, os, sys
    from pathlib import Path
    argv = sys.argv[1:]
    log = os.environ["FAKE_LOG"]
    with open(log, "a") as f:
        f.write(json.dumps([Path(sys.argv[0]).name, *argv]) + "\\n")
    if os.environ.get("FAKE_FAIL") == Path(sys.argv[0]).name:
        sys.exit(3)
    out = Path(argv[argv.index("--output_dir") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"argv": argv}))
    (out / "rank0.bin").write_bytes(b"x")
    """
)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A TensorRT-LLM source tree and trtllm-build that are fakes, a tiny HF checkpoint, a spec using them."""
    src = tmp_path / "TensorRT-LLM"
    for rel in ("examples/models/core/llama/convert_checkpoint.py", "examples/quantization/quantize.py"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(FAKE_TOOL)
    build = tmp_path / "bin" / "trtllm-build"
    build.parent.mkdir()
    build.write_text(f"#!{sys.executable}\n" + FAKE_TOOL)
    build.chmod(0o755)
    ckpt = tmp_path / "models" / "tiny"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (ckpt / "model.safetensors").write_bytes(b"0" * 64)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    d = yaml.safe_load((ROOT / "deploy" / "gpu-1gpu-smoke.yaml").read_text())
    d["engine"].update(checkpoint=str(ckpt), engine_dir=str(tmp_path / "engines" / "tiny"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(d, sort_keys=False))

    class Env:
        pass

    e = Env()
    e.src, e.build, e.ckpt, e.log, e.spec, e.tmp, e.doc = src, build, ckpt, log, spec, tmp_path, d
    e.calls = lambda: [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return e


def _plans(env, version="0.20.0", spec=None, **kw):
    models, _ = load_trtllm_models(spec or env.spec)
    return plan_builds(models, env.src, sys.executable, str(env.build), version, **kw)


def _run(plans, version="0.20.0"):
    return execute(plans, version, log=lambda s: None)


# --- command construction ------------------------------------------------------------------------


def test_dry_run_prints_the_exact_commands_for_the_shipped_specs():
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "deploy/gpu-8x80gb.yaml", "deploy/gpu-4x80gb-fp8.yaml", "--dry-run",
         "--trtllm-src", "/opt/TensorRT-LLM", "--python", "python3"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = r.stdout
    eng = ROOT / "out" / "engines"
    ckpt70 = eng / "llama-3.1-70b-instruct.ckpt"
    assert (
        f"python3 /opt/TensorRT-LLM/examples/models/core/llama/convert_checkpoint.py --model_dir "
        f"{ROOT / 'models' / 'Llama-3.1-70B-Instruct'} --output_dir {ckpt70}.partial --dtype bfloat16 --tp_size 4 "
        "--pp_size 1 --workers 4"
    ) in out
    assert (
        f"trtllm-build --checkpoint_dir {ckpt70} --output_dir {eng / 'llama-3.1-70b-instruct'}.partial --gemm_plugin "
        "auto --max_batch_size 64 --max_input_len 2048 --max_seq_len 3072 --max_num_tokens 8192 --max_beam_width 1 "
        "--kv_cache_type paged --remove_input_padding enable --context_fmha enable --use_paged_context_fmha enable "
        "--workers 4"
    ) in out
    assert f"mv {eng / 'llama-3.1-70b-instruct'}.partial {eng / 'llama-3.1-70b-instruct'}" in out
    fp8 = [ln for ln in out.splitlines() if "llama-3.1-70b-instruct-fp8" in ln and not ln.startswith(("#", "rm", "mv"))]
    assert "/opt/TensorRT-LLM/examples/quantization/quantize.py" in fp8[0]
    assert "--qformat fp8 --kv_cache_dtype fp8 --calib_size 512" in fp8[0] and "--tp_size 2" in fp8[0]
    assert fp8[1].startswith("trtllm-build") and "--gemm_plugin" not in fp8[1] and "--workers 2" in fp8[1]
    assert "examples/models/core/qwen/convert_checkpoint.py" in out  # Qwen converts with its own example
    # the agents are in both specs with the same engine: listed once
    assert out.count(f"# engine {eng / 'llama-3.1-8b-instruct'} ") == 1
    assert "huggingface-cli download meta-llama/Llama-3.1-8B-Instruct" in out  # checkpoints are not here


def test_fp8_calibration_data_and_extra_args_reach_the_commands(env):
    d = env.doc
    d["engine"].update(
        quantization="fp8", calib_dataset="/data/cnn_dailymail", build_args=["--use_fp8_context_fmha", "enable"]
    )
    env.spec.write_text(yaml.safe_dump(d, sort_keys=False))
    (p,) = _plans(env)
    conv, build = p.steps
    assert conv.argv[1].endswith("examples/quantization/quantize.py")
    assert conv.argv[-2:] == ["--calib_dataset", "/data/cnn_dailymail"]
    assert build.argv[-2:] == ["--use_fp8_context_fmha", "enable"]


# --- idempotence -----------------------------------------------------------------------------------


def test_build_once_then_skip_then_rebuild_what_changed(env):
    (p,) = _plans(env)
    assert p.served_as == ["tiny-agent-1", "tiny-agent-2", "tiny-agent-3", "tiny-oracle"]  # one engine, four models
    assert _run([p]) == [p.engine_dir]
    assert [c[0] for c in env.calls()] == ["convert_checkpoint.py", "trtllm-build"]
    stamp = json.loads((p.engine_dir / engine_build.STAMP).read_text())
    assert stamp["tensorrt_llm"] == "0.20.0" and stamp["models"] == p.served_as
    assert not list(env.tmp.glob("engines/*.partial"))

    # The same inputs again: nothing runs.
    (p2,) = _plans(env)
    assert p2.current and _run([p2]) == [] and len(env.calls()) == 2

    # A build limit changed: the checkpoint is reused, the engine rebuilt.
    env.doc["engine"]["max_batch_size"] = 4
    env.spec.write_text(yaml.safe_dump(env.doc, sort_keys=False))
    (p3,) = _plans(env)
    assert [s.current for s in p3.steps] == [True, False]
    _run([p3])
    assert [c[0] for c in env.calls()][2:] == ["trtllm-build"]

    # The checkpoint's weights changed: convert and build again. So does another TensorRT-LLM version.
    (env.ckpt / "model.safetensors").write_bytes(b"0" * 65)
    (p4,) = _plans(env)
    assert not any(s.current for s in p4.steps)
    _run([p4])
    (p5,) = _plans(env, version="0.21.0")
    assert not p5.current
    (p6,) = _plans(env, force=True)
    assert not p6.current


def test_a_failed_step_leaves_no_partial_output_and_keeps_the_old_engine(env, monkeypatch):
    (p,) = _plans(env)
    _run([p])
    env.doc["engine"]["max_input_len"] = 256
    env.spec.write_text(yaml.safe_dump(env.doc, sort_keys=False))
    monkeypatch.setenv("FAKE_FAIL", "trtllm-build")
    (p2,) = _plans(env)
    with pytest.raises(StepFailed, match="build failed with exit code 3: .*trtllm-build"):
        _run([p2])
    assert not list(env.tmp.glob("engines/*.partial"))
    assert (p.engine_dir / "rank0.bin").is_file()  # the earlier engine is untouched
    assert not _plans(env)[0].current  # and still out of date


def test_models_sharing_an_engine_must_agree_on_how_it_is_built(env):
    env.doc["agents"][1]["max_input_len"] = 256
    env.spec.write_text(yaml.safe_dump(env.doc, sort_keys=False))
    with pytest.raises(BuildError, match="share engine_dir .* differ"):
        _plans(env)


def test_clean_checkpoints_removes_the_converted_checkpoint_and_the_engine_stays_current(env):
    (p,) = _plans(env)
    execute([p], "0.20.0", log=lambda s: None, clean_checkpoints=True)
    assert not p.model.checkpoint_dir.exists() and p.engine_dir.is_dir()
    assert _plans(env)[0].current


# --- preflight and the command line ------------------------------------------------------------------


def test_preflight_names_what_is_missing(env, tmp_path):
    (p,) = _plans(env)
    with pytest.raises(BuildError, match="trtllm-build-nope not found"):
        engine_build.preflight([p], env.src, "trtllm-build-nope")
    (p,) = plan_builds(load_trtllm_models(env.spec)[0], tmp_path / "no-src", "python3", str(env.build), "0.20.0")
    with pytest.raises(BuildError, match="clone TensorRT-LLM at the installed version's tag"):
        engine_build.preflight([p], tmp_path / "no-src", str(env.build))
    env.doc["engine"]["checkpoint"] = str(tmp_path / "missing")
    env.spec.write_text(yaml.safe_dump(env.doc, sort_keys=False))
    with pytest.raises(BuildError, match="no config.json and no hf_model"):
        _plans(env)


def test_cli_without_tensorrt_llm_refuses_to_build_but_dry_runs(env, capsys):
    if engine_build.trtllm_version() is not None:
        pytest.skip("tensorrt_llm is installed here")
    assert engine_build.main([str(env.spec), "--trtllm-src", str(env.src)]) == 2
    assert "NVIDIA's Triton TRT-LLM container" in capsys.readouterr().err
    assert engine_build.main([str(env.spec), "--dry-run", "--trtllm-src", str(env.src)]) == 0
    out = capsys.readouterr().out
    assert f"--model_dir {env.ckpt} " in out and env.calls() == []  # nothing ran
    assert engine_build.main([str(env.spec), "--dry-run", "--only", "nope"]) == 2


def test_without_a_checkout_unquantized_models_convert_with_the_api(env, capsys):
    models, _ = load_trtllm_models(env.spec)
    (p,) = plan_builds(models, None, "python3", "trtllm-build", "0.20.0")
    conv = p.steps[0]
    assert conv.argv[1] == str(engine_build.API_CONVERTER)
    assert conv.argv[-2:] == ["--family", "llama"] and "--tp_size" in conv.argv
    env.doc["engine"]["quantization"] = "fp8"
    env.spec.write_text(yaml.safe_dump(env.doc, sort_keys=False))
    (p8,) = plan_builds(load_trtllm_models(env.spec)[0], None, "python3", "trtllm-build", "0.20.0")
    with pytest.raises(BuildError, match="quantize.py not found: NVIDIA's Triton TRT-LLM container has TensorRT-LLM's"):
        engine_build.preflight([p8], None, str(env.build))


def test_the_api_converter_needs_tensorrt_llm(tmp_path):
    if engine_build.trtllm_version() is not None:
        pytest.skip("tensorrt_llm is installed here")
    r = subprocess.run(
        [sys.executable, str(engine_build.API_CONVERTER), "--model_dir", str(tmp_path), "--output_dir",
         str(tmp_path / "o"), "--family", "llama"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode != 0 and "tensorrt_llm is not importable" in r.stderr


# --- FP8 prerequisites ---------------------------------------------------------------------------------


def _fp8(env, **engine):
    env.doc["engine"].update(quantization="fp8", **engine)
    env.spec.write_text(yaml.safe_dump(env.doc, sort_keys=False))
    return _plans(env)


def test_dry_run_states_the_fp8_prerequisites_of_the_70b(capsys):
    assert engine_build.main(["deploy/gpu-4x80gb-fp8.yaml", "--dry-run", "--only", "llama-3.1-70b-instruct-fp8"]) == 0
    out = capsys.readouterr().out
    assert "TensorRT-LLM's examples at the container's version: NVIDIA's container has them at /app/examples" in out
    assert "downloads 'cnn_dailymail' from the Hugging Face hub; an offline node needs a local copy" in out
    assert "more than 210 GB for a 70B model" in out and "about 212 GB" in out
    assert "4 x 80 GB = 320 GB: enough" in out
    # the BF16 agents have no FP8 block
    assert engine_build.main(["deploy/gpu-8x80gb.yaml", "--dry-run"]) == 0
    assert "FP8 quantization" not in capsys.readouterr().out


def test_fp8_offline_without_a_local_calibration_set_is_refused(env, monkeypatch):
    monkeypatch.setattr(engine_build, "visible_gpu_memory_gb", lambda: None)
    (p,) = _fp8(env)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BuildError, match="offline .* set calib_dataset in the spec to a local copy"):
        engine_build.preflight([p], env.src, str(env.build))
    (p,) = _fp8(env, calib_dataset=str(env.tmp / "no-such-dir"))
    with pytest.raises(BuildError, match="calib_dataset .*no-such-dir does not exist"):
        engine_build.preflight([p], env.src, str(env.build))
    (env.tmp / "calib").mkdir()
    (p,) = _fp8(env, calib_dataset=str(env.tmp / "calib"))
    engine_build.preflight([p], env.src, str(env.build))  # a local copy: fine offline


def test_fp8_needs_the_gpu_memory_nvidia_states(env, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    env.doc["engine"]["architecture"] = dict(trtllm_spec.CATALOG["meta-llama/Llama-3.1-70B-Instruct"])
    (p,) = _fp8(env)
    assert engine_build.fp8_calibration_peak_gb(p.model) == pytest.approx(211.7, abs=0.5)
    monkeypatch.setattr(engine_build, "visible_gpu_memory_gb", lambda: (2, 160.0))
    with pytest.raises(BuildError, match=r"needs about 212 GB of GPU memory .*2 visible GPU\(s\) have 160 GB"):
        engine_build.preflight([p], env.src, str(env.build))
    monkeypatch.setattr(engine_build, "visible_gpu_memory_gb", lambda: (4, 320.0))
    engine_build.preflight([p], env.src, str(env.build))


def test_a_checkout_at_another_version_is_refused(env, monkeypatch):
    (env.src / "tensorrt_llm").mkdir()
    (env.src / "tensorrt_llm" / "version.py").write_text('__version__ = "0.19.0"\n')
    assert engine_build.checkout_version(env.src) == "0.19.0"
    monkeypatch.setattr(engine_build, "trtllm_version", lambda: "0.20.0")
    (p,) = _plans(env)
    with pytest.raises(BuildError, match=r"checkout at .* is version 0.19.0, the installed tensorrt_llm 0.20.0"):
        engine_build.preflight([p], env.src, str(env.build))
    assert "WARNING: the checkout at" in engine_build.describe([p], "0.20.0", env.src)


# --- where the examples come from; fetching the checkpoints -------------------------------------------------


def test_the_containers_examples_come_first(env, tmp_path, monkeypatch):
    """NVIDIA's container has TensorRT-LLM's examples at /app/examples (upstream's Dockerfile copies them there
    from the clone its wheel is built from): used before a ./TensorRT-LLM clone, after an explicit TRTLLM_SRC;
    with them, FP8 needs no clone."""
    app = tmp_path / "app"
    for rel in ("examples/models/core/llama/convert_checkpoint.py", "examples/quantization/quantize.py"):
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        (app / rel).write_text(FAKE_TOOL)
    monkeypatch.chdir(tmp_path)  # where the fixture's fake checkout is, as ./TensorRT-LLM
    monkeypatch.delenv("TRTLLM_SRC", raising=False)
    monkeypatch.setattr(engine_build, "CONTAINER_EXAMPLES_ROOT", app)
    assert engine_build.default_trtllm_src() == app
    monkeypatch.setenv("TRTLLM_SRC", str(env.src))
    assert engine_build.default_trtllm_src() == env.src
    monkeypatch.delenv("TRTLLM_SRC")
    monkeypatch.setattr(engine_build, "CONTAINER_EXAMPLES_ROOT", tmp_path / "no-app")
    assert engine_build.default_trtllm_src() == Path("TensorRT-LLM")

    monkeypatch.setattr(engine_build, "visible_gpu_memory_gb", lambda: None)
    (p,) = _fp8(env, calib_dataset=str(env.tmp))
    (p,) = plan_builds([p.model], app, sys.executable, str(env.build), "0.20.0")
    assert p.steps[0].argv[1] == str(app / "examples" / "quantization" / "quantize.py")
    engine_build.preflight([p], app, str(env.build))  # the container's quantize.py: nothing to clone
    _run([p])
    assert [c[0] for c in env.calls()] == ["quantize.py", "trtllm-build"]


FAKE_HF = """#!/usr/bin/env bash
printf '%s\\n' "$(basename "$0") $*" >> "$FAKE_HF_LOG"
"""


def fake_hf(tmp_path: Path, monkeypatch) -> Path:
    """``hf`` and ``huggingface-cli`` first on PATH, appending their command lines to the returned file."""
    bin_dir = tmp_path / "hf-bin"
    bin_dir.mkdir()
    for name in ("hf", "huggingface-cli"):
        (bin_dir / name).write_text(FAKE_HF)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "hf.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_HF_LOG", str(log))
    return log


def test_download_only_fetches_each_missing_checkpoint_of_the_specs_once(tmp_path, monkeypatch, capsys):
    """The two 80 GB specs share their agents' and the 70B's checkpoints: each is fetched once, into the
    directory the spec reads it from, without TensorRT-LLM; one already there is not fetched."""
    log = fake_hf(tmp_path, monkeypatch)
    specs = []
    for name in ("gpu-8x80gb.yaml", "gpu-4x80gb-fp8.yaml"):
        d = yaml.safe_load((ROOT / "deploy" / name).read_text())
        d["engine"].update(checkpoint_root=str(tmp_path / "models"), engine_root=str(tmp_path / "engines"))
        specs.append(tmp_path / name)
        specs[-1].write_text(yaml.safe_dump(d, sort_keys=False))
    models = [m for s in specs for m in load_trtllm_models(s)[0]]
    present = models[0].checkpoint
    present.mkdir(parents=True)
    (present / "config.json").write_text("{}")
    assert engine_build.main([*map(str, specs), "--download-only"]) == 0
    fetched = [line.split() for line in log.read_text().splitlines()]
    assert all(f[:2] == ["hf", "download"] and f[3] == "--local-dir" for f in fetched), fetched
    want = {(m.hf_model, str(m.checkpoint)) for m in models if m.checkpoint != present}
    assert sorted((f[2], f[4]) for f in fetched) == sorted(want)  # each once, none already there
    assert f"{len(want)} checkpoint(s) downloaded, 1 already there" in capsys.readouterr().out
