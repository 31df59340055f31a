"""Build the TensorRT-LLM engines of a deployment spec: Hugging Face checkpoint -> TensorRT-LLM
checkpoint -> engine (``scripts/build_engines.py``, ``make engines``).

Per engine directory (several spec models may share one engine, e.g. the single-GPU smoke spec):

1. (``--download`` only, needs network) ``huggingface-cli download REPO --local-dir CHECKPOINT``
   (``--download-only`` fetches the spec's missing checkpoints and stops: it needs no TensorRT-LLM, so it
   runs on the host too);
2. convert: ``examples/models/core/<llama|qwen>/convert_checkpoint.py`` (BF16/FP16, ``--tp_size``,
   ``--pp_size``), or for ``quantization: fp8`` ``examples/quantization/quantize.py --qformat fp8
   --kv_cache_dtype fp8`` (ModelOpt; calibrates on ``calib_dataset``), into ``ENGINE.ckpt``;
3. build: ``trtllm-build`` with the serving flags (paged KV cache, packed inputs, fused and paged
   context attention, ``--gemm_plugin auto`` except for FP8, the spec's batch / length / token
   limits) into ``ENGINE``. ``--clean-checkpoints`` removes ``ENGINE.ckpt`` once the engine is built
   (a 70B BF16 checkpoint is another ~140 GB); the engine stays current without it.

The example scripts come from TensorRT-LLM's ``examples/`` at the version of the installed
``tensorrt_llm``: ``--trtllm-src``, else ``$TRTLLM_SRC``, else ``/app`` where ``/app/examples`` exists,
else a checkout at ``./TensorRT-LLM`` (``default_trtllm_src``). ``/app`` first because NVIDIA's Triton
TRT-LLM container is built by upstream's ``dockerfile/Dockerfile.triton.trt_llm_backend``, which
builds the ``tensorrt_llm`` wheel from one clone of TensorRT-LLM and copies that clone's ``examples``
to ``/app/examples`` (triton-inference-server/tensorrtllm_backend r25.06, lines 138, 232-233, 237,
242; r25.05 lines 229, 234): the examples then match the installed package by construction, and FP8
needs no clone. Not seen in a pulled image here. Without examples, unquantized models convert with
the ``tensorrt_llm`` API (``trtllm_convert``: ``from_hugging_face`` + ``save_checkpoint`` per rank);
FP8 needs ``quantize.py``. Engines are specific to the TensorRT-LLM version and GPU: build them in
the container that serves them.

Idempotent: each step writes into ``DIR.partial`` and renames it to ``DIR`` only after it
succeeded, with a stamp ``DIR/pyramid-build.json`` holding a fingerprint of its inputs (the exact
command, the TensorRT-LLM version, the checkpoint's ``config.json`` and weight file names and
sizes, the previous step's fingerprint). A step whose stamp matches is skipped; anything else is
rebuilt. ``tensorrt_llm`` is never imported (its version is read from the package metadata), so
``--dry-run`` works anywhere.

FP8 has prerequisites a multi-hour job should not discover late (``fp8_prerequisites``; the dry run
lists them, ``preflight`` refuses to start without them): the examples at the installed version, a local
calibration set on an offline node, and GPU memory for calibration (NVIDIA states more than 210 GB for
a 70B model).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .trtllm_facts import installed_version
from .trtllm_spec import Node, TrtllmModel

STAMP = "pyramid-build.json"
PARTIAL = ".partial"
CALIB_SIZE = 512
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# quantize.py's calibration set when calib_dataset is not given: a Hugging Face hub data set it downloads.
DEFAULT_CALIB_DATASET = "cnn_dailymail"
# FP8 calibration (examples/quantization/quantize.py, NVIDIA ModelOpt) loads the BF16 model on the visible GPUs
# (--device cuda --device_map auto) and calibrates it: NVIDIA states a peak of "more than 210GB" of GPU memory
# for a 70B model, whose BF16 weights are about 140 GB (examples/models/core/llama/README.md, "FP8 Post-Training
# Quantization": "you need a node with at least 4 H100(A100) to run the quantization command. After
# quantization, 2 GPUs are okay to for building and run"). Estimated here as 1.5 x the BF16 weights.
FP8_CALIBRATION_PEAK_FACTOR = 1.5
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


class BuildError(RuntimeError):
    """A build cannot start; the message says why and how to fix it."""


class StepFailed(BuildError):
    """A command of the build exited with an error."""


def trtllm_version() -> str | None:
    """The installed tensorrt_llm's version (``trtllm_facts.installed_version``), or None."""
    return installed_version()


def fp8_calibration_peak_gb(m: TrtllmModel) -> float:
    """Estimated peak GPU memory (GB) of quantize.py calibrating ``m`` to FP8 (see FP8_CALIBRATION_PEAK_FACTOR)."""
    return m.params_b * 2 * FP8_CALIBRATION_PEAK_FACTOR


def checkout_version(src: Path | None) -> str | None:
    """``__version__`` of a TensorRT-LLM source checkout (``tensorrt_llm/version.py``), or None."""
    if src is None:
        return None
    try:
        text = (src / "tensorrt_llm" / "version.py").read_text(encoding="utf-8")
    except OSError:
        return None
    m = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text)
    return m.group(1) if m else None


def offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0", "false", "False") for v in OFFLINE_ENV)


def visible_gpu_memory_gb() -> tuple[int, float] | None:
    """(GPUs, total GB) that nvidia-smi sees here, or None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
        mib = [float(x) for x in out.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return len(mib), sum(mib) * 2**20 / 1e9


def fp8_prerequisites(m: TrtllmModel, version: str | None, src: Path | None, node: Node | None = None) -> list[str]:
    """What an FP8 quantization of ``m`` needs before it starts, as lines for the dry run and the log."""
    need = fp8_calibration_peak_gb(m)
    have = checkout_version(src)
    lines = [
        f"FP8 quantization of {m.name} ({m.hf_model or m.checkpoint}) runs the checkout's examples/quantization/"
        "quantize.py (NVIDIA ModelOpt) and needs, before it starts:",
        f"  - TensorRT-LLM's examples at the container's version: NVIDIA's container has them at "
        f"{CONTAINER_EXAMPLES_ROOT / 'examples'} (used by default); elsewhere "
        f"git clone -b v{version or '<installed version>'} https://github.com/NVIDIA/TensorRT-LLM, then "
        f"--trtllm-src DIR or TRTLLM_SRC (now: {src or 'none'}" + (f", version {have}" if have else "") + ")",
        f"  - a calibration data set: {m.calib_dataset!r} (calib_dataset)"
        if m.calib_dataset
        else f"  - a calibration data set: none given, so quantize.py downloads {DEFAULT_CALIB_DATASET!r} from the "
        "Hugging Face hub; an offline node needs a local copy named by calib_dataset in the spec",
        f"  - GPU memory for calibration: the BF16 model is loaded on every visible GPU; NVIDIA states a peak of "
        f"more than 210 GB for a 70B model (examples/models/core/llama/README.md); estimate for this model: about "
        f"{need:.0f} GB, all GPUs of the node with nothing else running on them",
    ]
    if node is not None and node.gpus and node.gpu_memory_gb:
        total = node.gpus * node.gpu_memory_gb
        verdict = "enough" if total >= need else "NOT enough"
        lines.append(f"    (the spec's node: {node.gpus} x {node.gpu_memory_gb:g} GB = {total:g} GB: {verdict})")
    lines.append(
        f"  - time: calibration of {CALIB_SIZE} samples and the export take tens of minutes to hours for a 70B model"
    )
    return lines


def hf_cli() -> list[str]:
    """Hugging Face's command line: ``hf`` (huggingface_hub 1.x), else ``huggingface-cli`` (0.x), on PATH,
    else beside this interpreter (``.venv/bin/pip install huggingface_hub`` without activating the venv)."""
    names = ("hf", "huggingface-cli")
    for name in names:
        if shutil.which(name):
            return [name]
    for name in names:
        if (Path(sys.executable).parent / name).is_file():
            return [str(Path(sys.executable).parent / name)]
    return ["huggingface-cli"]


# Where NVIDIA's Triton TRT-LLM container keeps TensorRT-LLM's examples: upstream's Dockerfile copies the
# examples of the clone its tensorrt_llm wheel is built from to /app/examples (module docstring).
CONTAINER_EXAMPLES_ROOT = Path("/app")


def default_trtllm_src() -> Path | None:
    """Where TensorRT-LLM's examples are when ``--trtllm-src`` is not given: ``$TRTLLM_SRC``, else the
    container's ``/app`` (its ``examples/`` match the installed package), else ``./TensorRT-LLM`` if it is
    there, else None (the API converter; no FP8)."""
    if os.environ.get("TRTLLM_SRC"):
        return Path(os.environ["TRTLLM_SRC"])
    if (CONTAINER_EXAMPLES_ROOT / "examples").is_dir():
        return CONTAINER_EXAMPLES_ROOT
    return Path("TensorRT-LLM") if Path("TensorRT-LLM").is_dir() else None


def example_script(src: Path, *candidates: str) -> Path:
    """The first existing ``src/<candidate>`` (example layouts moved between releases), else the first."""
    for c in candidates:
        if (src / c).is_file():
            return src / c
    return src / candidates[0]


API_CONVERTER = Path(__file__).resolve().parent / "trtllm_convert.py"
NO_SRC = Path("<no TensorRT-LLM examples: pass --trtllm-src>")


def convert_script(src: Path | None, m: TrtllmModel) -> Path:
    """The example's convert_checkpoint.py (quantize.py for FP8) in the checkout ``src``; without a
    checkout an unquantized model converts with the tensorrt_llm API instead (``trtllm_convert``)."""
    if m.quantization == "fp8":
        return example_script(src or NO_SRC, "examples/quantization/quantize.py")
    if src is None:
        return API_CONVERTER
    ex = m.arch.convert_example
    return example_script(
        src, f"examples/models/core/{ex}/convert_checkpoint.py", f"examples/{ex}/convert_checkpoint.py"
    )


def convert_argv(m: TrtllmModel, python: str, src: Path | None, out: Path) -> list[str]:
    script = convert_script(src, m)
    argv = [python, str(script), "--model_dir", str(m.checkpoint), "--output_dir", str(out)]
    argv += ["--dtype", m.dtype, "--tp_size", str(m.tp_size), "--pp_size", str(m.pp_size)]
    if script == API_CONVERTER:
        return argv + ["--family", m.arch.convert_example] + list(m.convert_args)
    if m.quantization == "fp8":
        argv += ["--qformat", "fp8", "--kv_cache_dtype", "fp8", "--calib_size", str(CALIB_SIZE)]
        if m.calib_dataset:
            argv += ["--calib_dataset", m.calib_dataset]
    elif m.world_size > 1:
        argv += ["--workers", str(m.world_size)]
    return argv + list(m.convert_args)


def build_argv(m: TrtllmModel, trtllm_build: str, checkpoint: Path, out: Path) -> list[str]:
    argv = [trtllm_build, "--checkpoint_dir", str(checkpoint), "--output_dir", str(out)]
    if m.quantization != "fp8":  # FP8 GEMMs run best as TensorRT's own kernels (add it in build_args if not)
        argv += ["--gemm_plugin", "auto"]
    argv += ["--max_batch_size", str(m.max_batch_size), "--max_input_len", str(m.max_input_len)]
    argv += ["--max_seq_len", str(m.max_seq_len), "--max_num_tokens", str(m.max_num_tokens), "--max_beam_width", "1"]
    argv += ["--kv_cache_type", "paged", "--remove_input_padding", "enable", "--context_fmha", "enable"]
    argv += ["--use_paged_context_fmha", "enable", "--workers", str(m.world_size)]
    return argv + list(m.build_args)


def checkpoint_digest(checkpoint: Path) -> dict[str, Any]:
    """What identifies a Hugging Face checkpoint cheaply: config.json's hash, weight names and sizes."""
    cfg = checkpoint / "config.json"
    weights = sorted(
        (p.name, p.stat().st_size) for p in checkpoint.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES
    )
    return {
        "config_sha256": hashlib.sha256(cfg.read_bytes()).hexdigest() if cfg.is_file() else None,
        "weights": weights,
    }


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Step:
    kind: str  # download | convert | build
    argv: list[str]
    output: Path  # final directory (the command writes OUTPUT.partial, renamed when it succeeded)
    fingerprint: str | None = None  # None: not comparable (tensorrt_llm not installed here)
    current: bool = False  # an up-to-date output exists: skipped

    def partial(self) -> Path:
        return self.output.parent / (self.output.name + PARTIAL)

    def shell(self) -> list[str]:
        """The exact shell lines this step runs."""
        if self.kind == "download":
            return [shlex.join(self.argv)]
        p = self.partial()
        return [
            f"rm -rf {shlex.quote(str(p))}",
            shlex.join(self.argv),
            f"mv {shlex.quote(str(p))} {shlex.quote(str(self.output))}",
        ]


@dataclass
class EnginePlan:
    model: TrtllmModel  # the first spec model served by this engine
    served_as: list[str]
    steps: list[Step] = field(default_factory=list)

    @property
    def engine_dir(self) -> Path:
        return self.model.engine_dir

    @property
    def current(self) -> bool:
        return all(s.current for s in self.steps if s.kind != "download")


def _stamp_matches(directory: Path, fp: str | None) -> bool:
    if fp is None:
        return False
    try:
        return json.loads((directory / STAMP).read_text(encoding="utf-8")).get("fingerprint") == fp
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def group_engines(models: Sequence[TrtllmModel]) -> list[EnginePlan]:
    """One plan per engine directory; models sharing one must agree on everything that builds it."""
    plans: dict[Path, EnginePlan] = {}
    for m in models:
        p = plans.get(m.engine_dir)
        if p is None:
            plans[m.engine_dir] = EnginePlan(m, [m.name])
            continue
        a, b = p.model, m
        if (a.checkpoint, a.build_identity()) != (b.checkpoint, b.build_identity()):
            raise BuildError(
                f"models {a.name!r} and {b.name!r} share engine_dir {m.engine_dir} but differ in how it is built "
                "(checkpoint, dtype, quantization, parallelism or limits): give them separate engine_dir values"
            )
        p.served_as.append(m.name)
    return list(plans.values())


def plan_builds(
    models: Sequence[TrtllmModel],
    trtllm_src: Path | None,
    python: str = "python3",
    trtllm_build: str = "trtllm-build",
    version: str | None = None,
    download: bool = False,
    force: bool = False,
) -> list[EnginePlan]:
    """The steps of every engine, each marked current (skipped) or not."""
    plans = group_engines(models)
    for p in plans:
        m = p.model
        have_checkpoint = (m.checkpoint / "config.json").is_file()
        if not have_checkpoint:
            if not m.hf_model:
                raise BuildError(
                    f"model {m.name!r}: checkpoint {m.checkpoint} has no config.json and no hf_model to fetch"
                )
            if download:
                p.steps.append(
                    Step(
                        "download",
                        [*hf_cli(), "download", m.hf_model, "--local-dir", str(m.checkpoint)],
                        m.checkpoint,
                    )
                )
        ckpt = m.checkpoint_dir
        conv = convert_argv(m, python, trtllm_src, ckpt.parent / (ckpt.name + PARTIAL))
        inputs = checkpoint_digest(m.checkpoint) if have_checkpoint else None
        final = convert_argv(m, python, trtllm_src, ckpt)
        converter = "api" if final[1] == str(API_CONVERTER) else Path(final[1]).name
        conv_fp = None if version is None or inputs is None else fingerprint(
            {"step": "convert", "converter": converter, "argv": final[2:], "version": version, "inputs": inputs}
        )  # fmt: skip
        # The interpreter and source checkout paths do not change the output; the version does.
        build = build_argv(m, trtllm_build, ckpt, m.engine_dir.parent / (m.engine_dir.name + PARTIAL))
        build_fp = None if conv_fp is None else fingerprint(
            {"step": "build", "argv": build_argv(m, "trtllm-build", ckpt, m.engine_dir), "convert": conv_fp, "version": version}
        )  # fmt: skip
        conv_step = Step("convert", conv, ckpt, conv_fp, not force and _stamp_matches(ckpt, conv_fp))
        build_step = Step("build", build, m.engine_dir, build_fp, not force and _stamp_matches(m.engine_dir, build_fp))
        if build_step.current:
            conv_step.current = True  # the engine is current: its checkpoint is not needed again
        p.steps += [conv_step, build_step]
    return plans


def describe(
    plans: Sequence[EnginePlan],
    version: str | None,
    trtllm_src: Path | None,
    nodes: dict[str, Node] | None = None,
) -> str:
    """The dry-run listing: per engine, what is current and the exact commands of the rest, and what an FP8
    quantization needs before it starts (``nodes``: model name -> the spec's node, for the memory check)."""
    lines = [f"# tensorrt_llm: {version or 'not installed here (the commands run in NVIDIA Triton TRT-LLM container)'}"]
    have = checkout_version(trtllm_src)
    if have is not None and version is not None and have != version:
        lines.append(f"# WARNING: the checkout at {trtllm_src} is TensorRT-LLM {have}, the installed one {version}")
    if trtllm_src is None:
        lines.append(
            "# no TensorRT-LLM checkout: unquantized models convert with the tensorrt_llm API (trtllm_convert)"
        )
    else:
        lines.append(
            f"# TensorRT-LLM examples from: {trtllm_src}" + ("" if trtllm_src.is_dir() else " (not present here)")
        )
    for p in plans:
        m = p.model
        q = m.quantization if m.quantization != "none" else m.dtype
        lines.append(
            f"\n# engine {m.engine_dir} for {', '.join(p.served_as)}: {m.hf_model or m.checkpoint} {q} "
            f"TP={m.tp_size} PP={m.pp_size} on GPU(s) {','.join(map(str, m.gpu_device_ids))}"
        )
        if p.current:
            lines.append("# up to date: skipped")
            continue
        if m.quantization == "fp8":
            lines += [f"# {x}" for x in fp8_prerequisites(m, version, trtllm_src, (nodes or {}).get(m.name))]
        if not (m.checkpoint / "config.json").is_file() and not any(s.kind == "download" for s in p.steps):
            lines.append(
                f"# checkpoint {m.checkpoint} is missing; fetch it (needs network): "
                f"huggingface-cli download {m.hf_model} --local-dir {m.checkpoint}  (or --download)"
            )
        if version is None and any(
            (s.output / STAMP).is_file() for s in p.steps if s.kind != "download"
        ):  # a stamp exists but cannot be compared
            lines.append(
                "# (an earlier build exists; whether it is current is decided where tensorrt_llm is installed)"
            )
        for s in p.steps:
            if s.current:
                lines.append(f"# {s.kind}: up to date, skipped")
            else:
                lines += s.shell()
    return "\n".join(lines)


Runner = Callable[[list[str]], int]


def _default_runner(argv: list[str]) -> int:
    return subprocess.run(argv, check=False).returncode


def execute(
    plans: Sequence[EnginePlan],
    version: str,
    runner: Runner = _default_runner,
    log: Callable[[str], None] = print,
    clean_checkpoints: bool = False,
) -> list[Path]:
    """Run every step that is not current; returns the engine directories built."""
    built = []
    for p in plans:
        if p.current:
            log(f"engine {p.engine_dir} ({', '.join(p.served_as)}): up to date, skipped")
            continue
        for s in p.steps:
            if s.current:
                log(f"{s.kind} {s.output}: up to date, skipped")
                continue
            if s.kind == "download":
                _run(s, runner, log)
                continue
            partial = s.partial()
            shutil.rmtree(partial, ignore_errors=True)
            t0 = time.monotonic()
            _run(s, runner, log)
            if not partial.is_dir():
                raise BuildError(f"{s.kind} of {', '.join(p.served_as)} exited 0 but wrote nothing to {partial}")
            stamp = {
                "fingerprint": s.fingerprint,
                "step": s.kind,
                "command": s.argv,
                "tensorrt_llm": version,
                "models": p.served_as,
                "seconds": round(time.monotonic() - t0, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (partial / STAMP).write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
            if s.output.exists():
                shutil.rmtree(s.output)
            partial.rename(s.output)
            log(f"{s.kind} {s.output}: done in {stamp['seconds']} s")
        if clean_checkpoints:
            shutil.rmtree(p.model.checkpoint_dir, ignore_errors=True)
            log(f"removed {p.model.checkpoint_dir}")
        built.append(p.engine_dir)
    return built


def _run(s: Step, runner: Runner, log: Callable[[str], None]) -> None:
    log(f"$ {shlex.join(s.argv)}")
    rc = runner(s.argv)
    if rc != 0:
        shutil.rmtree(s.partial(), ignore_errors=True)
        raise StepFailed(f"{s.kind} failed with exit code {rc}: {shlex.join(s.argv)}")


def preflight(plans: Sequence[EnginePlan], trtllm_src: Path | None, trtllm_build: str) -> None:
    """What a real build needs before anything runs (not checked for --dry-run)."""
    todo = [s for p in plans for s in p.steps if not s.current]
    if any(s.kind == "build" for s in todo) and shutil.which(trtllm_build) is None and not Path(trtllm_build).is_file():
        raise BuildError(f"{trtllm_build} not found: build inside NVIDIA's Triton TRT-LLM container (make engines)")
    for s in todo:
        if s.kind == "convert" and not Path(s.argv[1]).is_file():
            raise BuildError(
                f"{s.argv[1]} not found: NVIDIA's Triton TRT-LLM container has TensorRT-LLM's examples at "
                f"{CONTAINER_EXAMPLES_ROOT / 'examples'} (used when present); elsewhere clone TensorRT-LLM at the "
                f"installed version's tag (git clone -b v<version> https://github.com/NVIDIA/TensorRT-LLM) and pass "
                f"--trtllm-src (now {trtllm_src}) or set TRTLLM_SRC"
            )
    version = trtllm_version()
    have = checkout_version(trtllm_src)
    if todo and have is not None and version is not None and have != version:
        raise BuildError(
            f"the TensorRT-LLM checkout at {trtllm_src} is version {have}, the installed tensorrt_llm {version}: its "
            f"example scripts must match the container (git -C {trtllm_src} checkout v{version})"
        )
    gpus = None
    for p in plans:
        m = p.model
        if m.quantization != "fp8" or not any(s.kind == "convert" and not s.current for s in p.steps):
            continue
        if m.calib_dataset is None and offline():
            raise BuildError(
                f"model {m.name}: FP8 calibration would download {DEFAULT_CALIB_DATASET!r} from the Hugging Face hub, "
                f"but this node is offline ({'/'.join(OFFLINE_ENV)}): set calib_dataset in the spec to a local copy"
            )
        if m.calib_dataset and m.calib_dataset.startswith(("/", "./", "../")) and not Path(m.calib_dataset).exists():
            raise BuildError(f"model {m.name}: calib_dataset {m.calib_dataset} does not exist")
        gpus = gpus or visible_gpu_memory_gb()
        need = fp8_calibration_peak_gb(m)
        if gpus is not None and gpus[1] < need:
            raise BuildError(
                f"model {m.name}: FP8 calibration needs about {need:.0f} GB of GPU memory (NVIDIA states more than "
                f"210 GB for a 70B model); the {gpus[0]} visible GPU(s) have {gpus[1]:.0f} GB in all"
            )
    for p in plans:
        m = p.model
        downloading = any(s.kind == "download" for s in p.steps)
        if not p.current and not downloading and not (m.checkpoint / "config.json").is_file():
            raise BuildError(
                f"model {', '.join(p.served_as)}: no Hugging Face checkpoint at {m.checkpoint}; fetch it with "
                f"'huggingface-cli download {m.hf_model} --local-dir {m.checkpoint}' (network; gated models need "
                "HF_TOKEN) or pass --download"
            )


def download_checkpoints(plans: Sequence[EnginePlan], runner: Runner = _default_runner) -> int:
    """Fetch each missing checkpoint the plans need, once (engines may share one, e.g. the BF16 and FP8
    oracles): what ``--download-only`` does, so that the checkpoints fetched are exactly the spec's."""
    steps = list({s.output: s for p in plans for s in p.steps if s.kind == "download"}.values())
    if steps and shutil.which(steps[0].argv[0]) is None:
        raise BuildError(
            f"{steps[0].argv[0]} not found: pip install -U huggingface_hub (it has the hf / huggingface-cli command)"
        )
    for s in steps:
        _run(s, runner, print)
    have = len({p.model.checkpoint for p in plans}) - len(steps)
    print(f"{len(steps)} checkpoint(s) downloaded, {have} already there")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="build_engines.py",
        description="Build the TensorRT-LLM engines of deployment specs (HF checkpoint -> TRT-LLM checkpoint -> engine)",
    )
    ap.add_argument("specs", nargs="+", help="deployment specs, e.g. deploy/gpu-8x80gb.yaml")
    ap.add_argument("--dry-run", action="store_true", help="print the exact commands; run nothing")
    ap.add_argument("--only", help="comma-separated model names: build only their engines")
    ap.add_argument("--trtllm-src", type=Path, help="TensorRT-LLM source checkout with examples/ (default $TRTLLM_SRC)")
    ap.add_argument("--python", default=sys.executable or "python3", help="interpreter for the example scripts")
    ap.add_argument("--trtllm-build", default="trtllm-build", help="the trtllm-build command")
    ap.add_argument("--download", action="store_true", help="fetch missing checkpoints with huggingface-cli")
    ap.add_argument(
        "--download-only",
        action="store_true",
        help="fetch the missing Hugging Face checkpoints of every engine the specs deploy, then stop "
        "(needs no TensorRT-LLM: runs on the host; HF_TOKEN for gated models)",
    )
    ap.add_argument("--force", action="store_true", help="rebuild even when an engine is up to date")
    ap.add_argument("--clean-checkpoints", action="store_true", help="remove ENGINE.ckpt after the engine is built")
    a = ap.parse_args(argv)
    from .render import SpecError, load_trtllm_models

    src = a.trtllm_src or default_trtllm_src()
    try:
        models: list[TrtllmModel] = []
        nodes: dict[str, Node] = {}
        for spec in a.specs:
            ms, node = load_trtllm_models(spec)
            nodes.update({m.name: node for m in ms})
            if not ms:
                raise BuildError(f"{spec}: no trtllm models in this spec")
            seen = {(x.name, x.engine_dir) for x in models}  # specs may share models (and engines)
            models += [m for m in ms if (m.name, m.engine_dir) not in seen]
        if a.only:
            want = {x.strip() for x in a.only.split(",") if x.strip()}
            unknown = want - {m.name for m in models}
            if unknown:
                raise BuildError(f"--only: no trtllm model named {', '.join(sorted(unknown))}")
            models = [m for m in models if m.name in want]
        version = trtllm_version()
        plans = plan_builds(models, src, a.python, a.trtllm_build, version, a.download or a.download_only, a.force)
        if a.download_only and not a.dry_run:
            return download_checkpoints(plans)
        if a.dry_run:
            print(describe(plans, version, src, nodes))
            return 0
        if version is None:
            raise BuildError(
                "tensorrt_llm is not installed here (PyPI has only stubs): run in NVIDIA's Triton TRT-LLM container "
                "(make engines does), or --dry-run to see the commands"
            )
        if any(s.kind == "download" for p in plans for s in p.steps):
            for p in plans:  # fetch first; then plan again, now that the checkpoints can be fingerprinted
                for s in p.steps:
                    if s.kind == "download":
                        _run(s, _default_runner, print)
            plans = plan_builds(models, src, a.python, a.trtllm_build, version, False, a.force)
        preflight(plans, src, a.trtllm_build)
        for p in plans:
            if p.model.quantization == "fp8" and not p.current:
                print("\n".join(fp8_prerequisites(p.model, version, src, nodes.get(p.model.name))))
        built = execute(plans, version, clean_checkpoints=a.clean_checkpoints)
    except (SpecError, BuildError) as exc:
        print(f"build_engines: error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, StepFailed) else 2
    print(f"{len(built)} engine(s) built, {len(plans) - len(built)} up to date")
    return 0
