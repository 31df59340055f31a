"""TensorRT-LLM engines in a deployment spec: model catalog, settings, GPU placement, repository plan.

The ``trtllm`` engine kind of a deployment spec (``render``) and the engine builder
(``engine_build``, ``scripts/build_engines.py``) read the same entries through ``parse_model``,
so the engine that is built is the engine the rendered repository points at. Nothing here
imports TensorRT-LLM (PyPI has only stubs; it runs in NVIDIA's Triton TRT-LLM container):
the model architectures come from a small catalog of Hugging Face configs, from an inline
``architecture`` mapping, or from the checkpoint's own ``config.json``.

Per engine ``NAME`` the repository gets NVIDIA's ``inflight_batcher_llm`` layout, one set per
model (so each model has its own tokenizer and chat template, and its own GPUs):

- ``NAME``: an ensemble with the text API the router calls (``text_input``, ``max_tokens``,
  optional ``temperature``, ``top_k``, ``top_p``, ``seed``, ``return_log_probs``, ``stream``,
  ``exclude_input_in_output`` -> ``text_output``, ``output_tokens``, ``cum_log_probs``);
- ``NAME_preprocessing``: chat template + tokenizer, sampling defaults, token budget (Python);
- ``NAME_tensorrt_llm``: the engine (``backend: "tensorrtllm"``, decoupled, in-flight batching,
  ``gpu_device_ids``, ``exclude_input_in_output``, KV-cache cap);
- ``NAME_postprocessing``: detokenization and the output token count (Python).

Each repository is rendered for one TensorRT-LLM version (``trtllm_version``: the installed one inside
the container, else the spec's, else the default image's) and its configs are held against the facts
of that version's backend (``trtllm_facts``, ``deploy/trtllm_backend_facts.json``): the parameters it
reads without a fallback, the request names and types it reads. ``check_model`` refuses shapes
TensorRT-LLM cannot build or run (head sizes without attention kernels, uneven TP splits).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import trtllm_facts

# --- architectures ----------------------------------------------------------------------------

# model_type -> the TensorRT-LLM example whose convert_checkpoint.py converts it
# (Mistral 7B converts with the Llama example).
CONVERT_EXAMPLE = {"llama": "llama", "mistral": "llama", "qwen2": "qwen"}

ARCH_FIELDS = (
    "model_type",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_size",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "tie_word_embeddings",
    "head_dim",
)

# Hugging Face config.json fields of the default models (copied from their config.json files), one row each:
# the first eight ARCH_FIELDS; none ties its word embeddings.
_CATALOG_ROWS = (
    ("meta-llama/Llama-3.1-8B-Instruct", "llama", 32, 32, 8, 4096, 14336, 128256, 131072),
    ("meta-llama/Llama-3.1-70B-Instruct", "llama", 80, 64, 8, 8192, 28672, 128256, 131072),
    ("mistralai/Mistral-7B-Instruct-v0.3", "mistral", 32, 32, 8, 4096, 14336, 32768, 32768),
    ("Qwen/Qwen2.5-7B-Instruct", "qwen2", 28, 28, 4, 3584, 18944, 152064, 32768),
    ("Qwen/Qwen2.5-32B-Instruct", "qwen2", 64, 40, 8, 5120, 27648, 152064, 32768),  # gpu-8x80gb's middle tier
)
CATALOG: dict[str, dict[str, Any]] = {
    row[0]: {**dict(zip(ARCH_FIELDS[:8], row[1:])), "tie_word_embeddings": False} for row in _CATALOG_ROWS
}


@dataclass(frozen=True)
class Architecture:
    """What placement and memory checks need to know about a decoder-only transformer."""

    model_type: str
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    head_dim: int = 0  # 0: hidden_size / num_attention_heads

    def __post_init__(self) -> None:
        if self.model_type not in CONVERT_EXAMPLE:
            raise ValueError(
                f"model_type {self.model_type!r} is not one this project builds engines for "
                f"({', '.join(sorted(CONVERT_EXAMPLE))})"
            )
        for name in ARCH_FIELDS[1:8]:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"architecture field {name} must be > 0, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], where: str) -> Architecture:
        """From a Hugging Face ``config.json`` (or the same fields written in a spec)."""
        if not isinstance(cfg, dict):
            raise ValueError(f"{where}: architecture must be a mapping of config.json fields")
        unknown = sorted(set(cfg) - set(ARCH_FIELDS))
        d = {k: cfg[k] for k in ARCH_FIELDS if k in cfg}
        if "num_key_value_heads" not in d and "num_attention_heads" in d:
            d["num_key_value_heads"] = d["num_attention_heads"]  # multi-head attention
        missing = [k for k in ARCH_FIELDS[:8] if k not in d]
        if missing:
            raise ValueError(f"{where}: architecture lacks {', '.join(missing)}")
        del unknown  # a real config.json has many more fields; they are not needed here
        try:
            return cls(
                str(d["model_type"]),
                *(int(d[k]) for k in ARCH_FIELDS[1:8]),
                bool(d.get("tie_word_embeddings", False)),
                int(d.get("head_dim") or 0),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    @property
    def convert_example(self) -> str:
        return CONVERT_EXAMPLE[self.model_type]

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer: attention with GQA (q, k, v, o) and the gated MLP (norms omitted)."""
        h, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size

    @property
    def embedding_params(self) -> int:
        """One vocabulary x hidden table (the input embedding; lm_head is another unless tied)."""
        return self.vocab_size * self.hidden_size

    @property
    def params_b(self) -> float:
        """Parameters in billions, from the shapes (embeddings, attention with GQA, gated MLP)."""
        embeddings = self.embedding_params * (1 if self.tie_word_embeddings else 2)
        return (self.num_hidden_layers * self.layer_params + embeddings) / 1e9


# --- engine settings ---------------------------------------------------------------------------

QUANTIZATIONS = ("none", "fp8")
DTYPES = ("bfloat16", "float16")
SCHEDULER_POLICIES = ("guaranteed_no_evict", "max_utilization")
# GiB per model per GPU that is neither weights nor KV cache: CUDA context, TensorRT activations
# and workspace, the executor's buffers. An estimate for the placement check, not a measurement.
RUNTIME_OVERHEAD_GB = 3.0
GPU_MEMORY_HEADROOM = 0.95  # plan at most this fraction of a GPU's memory
# GPUs (node.gpu) without FP8 tensor cores: Volta, Turing, Ampere.
NO_FP8_GPUS = r"(?i)\b(V100|T4|A100|A800|A10G?|A16|A30|A40|A2|RTX ?A\d+|A\d000)\b"

DEFAULT_PROMPT_TEMPLATE = (
    "{question}\n\nSolve the problem step by step. "
    'Finish with a last line of the form "The answer is N." where N is the final number.'
)

# Keys of a trtllm engine entry in a spec (besides render's common keys) and their defaults.
TRTLLM_KEYS = {
    # where things are
    "hf_model", "architecture", "checkpoint", "checkpoint_root", "tokenizer", "engine_dir", "engine_root",
    # engine build
    "dtype", "quantization", "calib_dataset", "tp_size", "pp_size", "max_batch_size", "max_input_len",
    "max_output_len", "max_num_tokens", "convert_args", "build_args",
    # serving (tensorrt_llm model parameters)
    "gpu_device_ids", "max_tokens_in_paged_kv_cache", "kv_cache_free_gpu_mem_fraction", "batch_scheduler_policy",
    "enable_chunked_context", "enable_kv_cache_reuse", "max_queue_delay_microseconds", "max_queue_size",
    # prompt and generation defaults (pre- and postprocessing)
    "prompt_template", "system_prompt", "chat_template", "stop", "end_id", "temperature", "top_k", "top_p", "seed",
    "max_tokens",
    # the TensorRT-LLM version the repository is rendered for (default: the installed one, else the default image's)
    "trtllm_version",
}  # fmt: skip
TRTLLM_DEFAULTS: dict[str, Any] = {
    "instance_count": 1,  # of the pre/postprocessing models (the engine model has one instance per GPU set)
    "checkpoint_root": "../models",
    "engine_root": "../out/engines",
    "dtype": "bfloat16",
    "quantization": "none",
    "tp_size": 1,
    "pp_size": 1,
    "max_batch_size": 64,
    "max_input_len": 2048,
    "max_output_len": 1024,
    "max_num_tokens": 8192,
    "convert_args": [],
    "build_args": [],
    "kv_cache_free_gpu_mem_fraction": 0.9,
    "batch_scheduler_policy": "guaranteed_no_evict",
    "enable_chunked_context": True,
    "enable_kv_cache_reuse": False,
    "max_queue_delay_microseconds": 0,
    "max_queue_size": 0,
    "prompt_template": DEFAULT_PROMPT_TEMPLATE,
    "system_prompt": None,
    "chat_template": True,
    "stop": [],
    "end_id": None,
    "temperature": 0.0,
    "top_k": 0,
    "top_p": 1.0,
    "seed": 0,
    "max_tokens": 512,
    "trtllm_version": None,
}


@dataclass(frozen=True)
class Generation:
    """Prompt and sampling defaults applied by the preprocessing model (a request's own
    ``temperature`` / ``top_k`` / ``top_p`` win; its ``seed`` is mixed with ``seed``)."""

    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    system_prompt: str | None = None
    chat_template: bool = True  # apply the tokenizer's chat template
    stop: tuple[str, ...] = ()
    end_id: int | None = None  # None: the tokenizer's eos token
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_tokens: int = 512  # the engine's budget: a request's max_tokens above it is lowered to it

    def __post_init__(self) -> None:
        if not isinstance(self.prompt_template, str) or "{question}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {question}")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise ValueError("system_prompt must be a string or null")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(self.stop)!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {self.max_tokens}")
        if self.end_id is not None and self.end_id < 0:
            raise ValueError(f"end_id must be >= 0, got {self.end_id}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_template": self.prompt_template,
            "system_prompt": self.system_prompt,
            "chat_template": self.chat_template,
            "stop": list(self.stop),
        }


@dataclass(frozen=True)
class TrtllmModel:
    """One TensorRT-LLM engine of a deployment: what to build, where it runs, how it is served."""

    name: str
    hf_model: str | None
    arch: Architecture
    checkpoint: Path  # Hugging Face checkpoint directory (weights, config.json, tokenizer)
    tokenizer: Path
    engine_dir: Path
    dtype: str = "bfloat16"
    quantization: str = "none"
    calib_dataset: str | None = None
    tp_size: int = 1
    pp_size: int = 1
    gpu_device_ids: tuple[int, ...] = ()
    max_batch_size: int = 64
    max_input_len: int = 2048
    max_output_len: int = 1024
    max_num_tokens: int = 8192
    convert_args: tuple[str, ...] = ()
    build_args: tuple[str, ...] = ()
    max_tokens_in_paged_kv_cache: int | None = None
    kv_cache_free_gpu_mem_fraction: float = 0.9
    batch_scheduler_policy: str = "guaranteed_no_evict"
    enable_chunked_context: bool = True
    enable_kv_cache_reuse: bool = False
    max_queue_delay_microseconds: int = 0
    max_queue_size: int = 0
    instance_count: int = 1
    generation: Generation = field(default_factory=Generation)
    trtllm_version: str = trtllm_facts.DEFAULT_TRTLLM_VERSION  # the backend the repository is rendered for

    @property
    def backend_facts(self) -> trtllm_facts.BackendFacts:
        return trtllm_facts.facts_for(self.trtllm_version)

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def max_seq_len(self) -> int:
        return self.max_input_len + self.max_output_len

    @property
    def checkpoint_dir(self) -> Path:
        """Where the TensorRT-LLM checkpoint (converted or quantized weights) is written."""
        return self.engine_dir.parent / f"{self.engine_dir.name}.ckpt"

    @property
    def params_b(self) -> float:
        return self.arch.params_b

    def weights_gb_per_gpu(self) -> float:
        """GiB of weights on the most loaded GPU, laid out as TensorRT-LLM's converters do by default: the
        decoder layers split over TP x PP (FP8: one byte per weight), the whole embedding table on every
        GPU of the first pipeline stage (``use_parallel_embedding`` is off by default: convert_checkpoint.py,
        ``PretrainedConfig``), lm_head split over TP (vocabulary padded to a multiple of TP) on the last
        stage; embedding and lm_head stay in the model dtype under FP8 (quantize.py quantizes lm_head only
        with ``--quantize_lm_head``). Norms and FP8 scales are left out (well under 0.1%)."""
        a = self.arch
        layer_bytes = 1 if self.quantization == "fp8" else 2
        layers = math.ceil(a.num_hidden_layers / self.pp_size) * a.layer_params * layer_bytes / self.tp_size
        embedding = a.embedding_params * 2
        lm_head = math.ceil(a.vocab_size / self.tp_size) * a.hidden_size * 2
        ends = embedding + lm_head if self.pp_size == 1 else max(embedding, lm_head)
        return (layers + ends) / 2**30

    def kv_bytes_per_token_per_gpu(self) -> int:
        kv_bytes = 1 if self.quantization == "fp8" else 2  # the fp8 path also quantizes the KV cache
        layers = math.ceil(self.arch.num_hidden_layers / self.pp_size)
        heads = max(1, self.arch.num_key_value_heads // self.tp_size)
        return 2 * layers * heads * self.arch.head_dim * kv_bytes

    def kv_gb_per_gpu(self, tokens: int) -> float:
        return tokens * self.kv_bytes_per_token_per_gpu() / 2**30

    def planned_gb_per_gpu(self) -> float | None:
        """Weights + capped KV cache + runtime overhead on each of its GPUs (None: KV uncapped)."""
        if self.max_tokens_in_paged_kv_cache is None:
            return None
        return self.weights_gb_per_gpu() + self.kv_gb_per_gpu(self.max_tokens_in_paged_kv_cache) + RUNTIME_OVERHEAD_GB

    def build_identity(self) -> dict[str, Any]:
        """Everything that decides the engine's bytes (besides the checkpoint and TRT-LLM version)."""
        return {
            "arch": self.arch.model_type,
            "convert_example": self.arch.convert_example,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "calib_dataset": self.calib_dataset,
            "tp_size": self.tp_size,
            "pp_size": self.pp_size,
            "max_batch_size": self.max_batch_size,
            "max_input_len": self.max_input_len,
            "max_seq_len": self.max_seq_len,
            "max_num_tokens": self.max_num_tokens,
            "convert_args": list(self.convert_args),
            "build_args": list(self.build_args),
        }


@dataclass(frozen=True)
class Node:
    """The GPU node a spec is planned for (optional ``node`` block of a spec)."""

    gpus: int | None = None
    gpu_memory_gb: float | None = None
    gpu: str = ""

    @classmethod
    def from_spec(cls, d: Any, where: str) -> Node:
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError(f"{where}: node must be a mapping")
        unknown = sorted(set(d) - {"gpus", "gpu_memory_gb", "gpu"})
        if unknown:
            raise ValueError(f"{where}: node: unknown key(s) {', '.join(unknown)}; allowed: gpu, gpu_memory_gb, gpus")
        gpus = d.get("gpus")
        mem = d.get("gpu_memory_gb")
        if gpus is not None and (not isinstance(gpus, int) or gpus <= 0):
            raise ValueError(f"{where}: node.gpus must be a positive integer, got {gpus!r}")
        if mem is not None and (not isinstance(mem, (int, float)) or mem <= 0):
            raise ValueError(f"{where}: node.gpu_memory_gb must be > 0, got {mem!r}")
        return cls(gpus, None if mem is None else float(mem), str(d.get("gpu", "")))


def _int(e: dict[str, Any], key: str, where: str, minimum: int = 1) -> int:
    v = e[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{where}: {key} must be an integer >= {minimum}, got {v!r}")
    return v


def _bool(e: dict[str, Any], key: str, where: str) -> bool:
    v = e[key]
    if not isinstance(v, bool):
        raise ValueError(f"{where}: {key} must be true or false, got {v!r}")
    return v


def _str_list(v: Any, key: str, where: str) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or any(not isinstance(x, (str, int, float)) for x in v):
        raise ValueError(f"{where}: {key} must be a list of strings")
    return tuple(str(x) for x in v)


def _device_ids(v: Any, where: str) -> tuple[int, ...]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    elif isinstance(v, str):
        try:
            v = [int(x) for x in v.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"{where}: gpu_device_ids must be a list of GPU indices, got {v!r}") from None
    if not isinstance(v, (list, tuple)) or not v or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
        raise ValueError(f"{where}: gpu_device_ids must be a non-empty list of GPU indices, got {v!r}")
    if any(x < 0 for x in v):
        raise ValueError(f"{where}: gpu_device_ids must be >= 0, got {list(v)}")
    if len(set(v)) != len(v):
        raise ValueError(f"{where}: gpu_device_ids lists a GPU twice: {list(v)}")
    return tuple(v)


def resolve_architecture(e: dict[str, Any], checkpoint: Path, where: str) -> Architecture:
    """The spec's ``architecture``, else the catalog entry of ``hf_model``, else the checkpoint's config.json."""
    if e.get("architecture") is not None:
        return Architecture.from_config(e["architecture"], f"{where}: architecture")
    hf = e.get("hf_model")
    if hf in CATALOG:
        return Architecture.from_config(CATALOG[hf], f"{where}: catalog entry {hf}")
    cfg = checkpoint / "config.json"
    if cfg.is_file():
        try:
            return Architecture.from_config(json.loads(cfg.read_text(encoding="utf-8")), str(cfg))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{cfg}: not JSON ({exc})") from None
    known = ", ".join(sorted(CATALOG))
    raise ValueError(
        f"{where}: unknown architecture of hf_model {hf!r} (catalog: {known}); give 'architecture' "
        f"(config.json fields) in the spec or put the checkpoint at {checkpoint}"
    )


def parse_model(name: str, e: dict[str, Any], rel: Callable[[Any], Path], where: str) -> TrtllmModel:
    """A ``trtllm`` entry of a spec (defaults already merged) -> TrtllmModel; ValueError names the problem."""
    e = {**TRTLLM_DEFAULTS, **e}
    hf = e.get("hf_model")
    if hf is not None and not isinstance(hf, str):
        raise ValueError(f"{where}: hf_model must be a Hugging Face repository id (org/name)")
    if e.get("checkpoint") is not None:
        checkpoint = rel(e["checkpoint"])
    elif hf:
        checkpoint = rel(e["checkpoint_root"]) / hf.split("/")[-1]
    else:
        raise ValueError(f"{where}: give 'hf_model' (and optionally 'checkpoint') or 'checkpoint'")
    tokenizer = rel(e["tokenizer"]) if e.get("tokenizer") is not None else checkpoint
    engine_dir = rel(e["engine_dir"]) if e.get("engine_dir") is not None else rel(e["engine_root"]) / name
    arch = resolve_architecture(e, checkpoint, where)
    if e["dtype"] not in DTYPES:
        raise ValueError(f"{where}: dtype must be one of {', '.join(DTYPES)}, got {e['dtype']!r}")
    if e["quantization"] not in QUANTIZATIONS:
        raise ValueError(f"{where}: quantization must be one of {', '.join(QUANTIZATIONS)}, got {e['quantization']!r}")
    if e.get("calib_dataset") is not None and e["quantization"] == "none":
        raise ValueError(f"{where}: calib_dataset is for quantization: fp8 only")
    if e["batch_scheduler_policy"] not in SCHEDULER_POLICIES:
        raise ValueError(f"{where}: batch_scheduler_policy must be one of {', '.join(SCHEDULER_POLICIES)}")
    if "gpu_device_ids" not in e or e["gpu_device_ids"] is None:
        raise ValueError(f"{where}: gpu_device_ids is required (orchestrator mode pins each engine to its GPUs)")
    cap = e.get("max_tokens_in_paged_kv_cache")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0):
        raise ValueError(f"{where}: max_tokens_in_paged_kv_cache must be a positive integer or null, got {cap!r}")
    frac = e["kv_cache_free_gpu_mem_fraction"]
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1:
        raise ValueError(f"{where}: kv_cache_free_gpu_mem_fraction must be in (0, 1], got {frac!r}")
    tv = e.get("trtllm_version")
    if tv is not None and not isinstance(tv, str):
        raise ValueError(f'{where}: trtllm_version must be a version string, e.g. "0.20.0" (quoted), got {tv!r}')
    version = trtllm_facts.resolve_version(tv, where)
    try:
        trtllm_facts.facts_for(version)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    try:
        gen = Generation(
            prompt_template=e["prompt_template"],
            system_prompt=e["system_prompt"],
            chat_template=_bool(e, "chat_template", where),
            stop=_str_list(e["stop"], "stop", where),
            end_id=None if e["end_id"] is None else int(e["end_id"]),
            temperature=float(e["temperature"]),
            top_k=int(e["top_k"]),
            top_p=float(e["top_p"]),
            seed=int(e["seed"]),
            max_tokens=int(e["max_tokens"]),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    m = TrtllmModel(
        name=name,
        hf_model=hf,
        arch=arch,
        checkpoint=checkpoint,
        tokenizer=tokenizer,
        engine_dir=engine_dir,
        dtype=e["dtype"],
        quantization=e["quantization"],
        calib_dataset=None if e.get("calib_dataset") is None else str(e["calib_dataset"]),
        tp_size=_int(e, "tp_size", where),
        pp_size=_int(e, "pp_size", where),
        gpu_device_ids=_device_ids(e["gpu_device_ids"], where),
        max_batch_size=_int(e, "max_batch_size", where),
        max_input_len=_int(e, "max_input_len", where),
        max_output_len=_int(e, "max_output_len", where),
        max_num_tokens=_int(e, "max_num_tokens", where),
        convert_args=_str_list(e["convert_args"], "convert_args", where),
        build_args=_str_list(e["build_args"], "build_args", where),
        max_tokens_in_paged_kv_cache=cap,
        kv_cache_free_gpu_mem_fraction=float(frac),
        batch_scheduler_policy=e["batch_scheduler_policy"],
        enable_chunked_context=_bool(e, "enable_chunked_context", where),
        enable_kv_cache_reuse=_bool(e, "enable_kv_cache_reuse", where),
        max_queue_delay_microseconds=_int(e, "max_queue_delay_microseconds", where, 0),
        max_queue_size=_int(e, "max_queue_size", where, 0),
        instance_count=_int(e, "instance_count", where),
        generation=gen,
        trtllm_version=version,
    )
    check_model(m, where)
    return m


def check_model(m: TrtllmModel, where: str) -> None:
    """Checks of one engine on its own: what TensorRT-LLM refuses to build or run (head size, splits of
    the weights over TP / PP), lengths, budgets."""
    a = m.arch
    sizes = trtllm_facts.head_sizes()
    if a.head_dim not in sizes:
        raise ValueError(
            f"{where}: head_dim {a.head_dim} (hidden_size {a.hidden_size} / {a.num_attention_heads} attention heads"
            f"{'' if a.head_dim * a.num_attention_heads == a.hidden_size else ', or head_dim in config.json'}) is not "
            f"a head size TensorRT-LLM's attention kernels support ({', '.join(map(str, sizes))}; "
            f"{trtllm_facts.head_sizes_source()}): the engine would build and then fail at its first generation "
            "step with 'unsupported head_size'"
        )
    if a.num_key_value_heads % m.tp_size:
        raise ValueError(
            f"{where}: tp_size {m.tp_size} does not divide the model's {a.num_key_value_heads} KV heads "
            f"(valid: {', '.join(str(t) for t in divisors(a.num_key_value_heads))})"
        )
    if a.num_attention_heads % m.tp_size:
        raise ValueError(f"{where}: tp_size {m.tp_size} does not divide {a.num_attention_heads} attention heads")
    if a.intermediate_size % m.tp_size:
        raise ValueError(
            f"{where}: tp_size {m.tp_size} does not divide intermediate_size {a.intermediate_size}: the checkpoint "
            "converter splits the MLP weights over the TP ranks, and uneven pieces do not fit the engine's per-rank "
            "shapes"
        )
    if a.num_hidden_layers % m.pp_size:
        raise ValueError(f"{where}: pp_size {m.pp_size} does not divide {a.num_hidden_layers} layers")
    if len(m.gpu_device_ids) != m.world_size:
        raise ValueError(
            f"{where}: gpu_device_ids {list(m.gpu_device_ids)} name {len(m.gpu_device_ids)} GPU(s); "
            f"tp_size x pp_size = {m.world_size}"
        )
    if m.max_seq_len > a.max_position_embeddings:
        raise ValueError(
            f"{where}: max_input_len + max_output_len = {m.max_seq_len} exceeds the model's "
            f"{a.max_position_embeddings} positions"
        )
    if not m.enable_chunked_context and m.max_num_tokens < m.max_input_len:
        raise ValueError(
            f"{where}: max_num_tokens {m.max_num_tokens} < max_input_len {m.max_input_len}: a long prompt "
            "could never be scheduled (raise max_num_tokens or enable_chunked_context)"
        )
    if m.max_tokens_in_paged_kv_cache is not None and m.max_tokens_in_paged_kv_cache < m.max_seq_len:
        raise ValueError(
            f"{where}: max_tokens_in_paged_kv_cache {m.max_tokens_in_paged_kv_cache} cannot hold one request of "
            f"max_input_len + max_output_len = {m.max_seq_len} tokens"
        )
    if m.generation.max_tokens > m.max_output_len:
        raise ValueError(
            f"{where}: max_tokens {m.generation.max_tokens} exceeds the engine's max_output_len {m.max_output_len}"
        )


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_placement(models: Iterable[TrtllmModel], node: Node, where: str) -> dict[int, list[str]]:
    """GPU placement across the engines of one server; returns {gpu: [models on it]}.

    Each engine runs on exactly its ``gpu_device_ids`` (orchestrator mode). A GPU may hold several
    engines only when every one of them caps its KV cache with ``max_tokens_in_paged_kv_cache``
    (``kv_cache_free_gpu_mem_fraction`` is taken of the memory free when an engine loads, so
    without caps the first engine loaded takes the GPU); then, and on every GPU when the node's
    memory is known, the planned memory must fit."""
    models = list(models)
    versions = sorted({m.trtllm_version for m in models})
    if len(versions) > 1:
        raise ValueError(
            f"{where}: the engines name different TensorRT-LLM versions ({', '.join(versions)}); one server runs one "
            "container: give trtllm_version once, in the engine block"
        )
    fp8 = [m.name for m in models if m.quantization == "fp8"]
    if fp8 and node.gpu and re.search(NO_FP8_GPUS, node.gpu):
        raise ValueError(
            f"{where}: {', '.join(fp8)} quantize to FP8, which needs compute capability 8.9 or later (Ada, Hopper, "
            f"Blackwell); node.gpu is {node.gpu!r}: use quantization: none"
        )
    by_gpu: dict[int, list[TrtllmModel]] = {}
    for m in models:
        for g in m.gpu_device_ids:
            if node.gpus is not None and g >= node.gpus:
                raise ValueError(f"{where}: model {m.name!r} is placed on GPU {g}; the node has {node.gpus} GPUs")
            by_gpu.setdefault(g, []).append(m)
    for g, ms in sorted(by_gpu.items()):
        if len(ms) > 1:
            uncapped = [m.name for m in ms if m.max_tokens_in_paged_kv_cache is None]
            if uncapped:
                raise ValueError(
                    f"{where}: GPU {g} is shared by {', '.join(m.name for m in ms)}; each must cap its KV cache "
                    f"with max_tokens_in_paged_kv_cache (missing for {', '.join(uncapped)})"
                )
        if node.gpu_memory_gb is not None:
            budget = node.gpu_memory_gb * GPU_MEMORY_HEADROOM
            planned = sum(
                m.planned_gb_per_gpu() or (m.weights_gb_per_gpu() + RUNTIME_OVERHEAD_GB + 1.0) for m in ms
            )  # an uncapped engine is alone on its GPUs; it needs at least a little KV cache
            if planned > budget:
                detail = ", ".join(f"{m.name} {m.planned_gb_per_gpu() or m.weights_gb_per_gpu():.1f}" for m in ms)
                raise ValueError(
                    f"{where}: GPU {g} is planned at {planned:.1f} GiB ({detail}, plus {RUNTIME_OVERHEAD_GB:g} GiB "
                    f"runtime each) but has {node.gpu_memory_gb:g} GB (budget {budget:.1f}): lower the KV caps, "
                    "quantize, or raise tp_size"
                )
    return {g: [m.name for m in ms] for g, ms in sorted(by_gpu.items())}


# --- the repository plan ------------------------------------------------------------------------

PREPROCESSING, ENGINE, POSTPROCESSING = "_preprocessing", "_tensorrt_llm", "_postprocessing"
TEMPLATE_DIRS = {
    "ensemble": "trtllm_ensemble",
    "preprocessing": "trtllm_preprocessing",
    "engine": "trtllm_engine",
    "postprocessing": "trtllm_postprocessing",
}
PROMPT_FILE = "prompt.json"
EXECUTOR_WORKER = "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"
# Parameters the pre/postprocessing models read with REQUIRED (trtllm.PreprocessingModel / PostprocessingModel;
# tests/test_trtllm_facts.py holds these lists to the code).
PREPROCESSING_REQUIRED = ("tokenizer_dir", "prompt", "max_input_len", "max_seq_len", "max_tokens")
POSTPROCESSING_REQUIRED = ("tokenizer_dir", "prompt")


@dataclass
class PlannedModel:
    name: str
    template: str  # directory under deploy/templates
    values: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # extra files beside config.pbtxt


def sub_model_names(name: str) -> list[str]:
    return [name + PREPROCESSING, name + ENGINE, name + POSTPROCESSING]


def plan(m: TrtllmModel, python_path: str, max_input_chars: int) -> list[PlannedModel]:
    """The four models of engine ``m`` (ensemble first) with their template values."""
    pre, eng, post = sub_model_names(m.name)
    g = m.generation
    prompt = json.dumps(g.to_dict(), indent=1) + "\n"
    common = {"max_batch_size": m.max_batch_size}
    return [
        PlannedModel(
            m.name,
            TEMPLATE_DIRS["ensemble"],
            {
                **common,
                "model_name": m.name,
                "preprocessing": pre,
                "engine": eng,
                "postprocessing": post,
                "hf_model": m.hf_model or "",
                "params_b": round(m.params_b, 3),
                "tp_size": m.tp_size,
                "quantization": m.quantization,
                "trtllm_version": m.trtllm_version,
                "seed_input": m.backend_facts.names["seed"],
            },
        ),
        PlannedModel(
            pre,
            TEMPLATE_DIRS["preprocessing"],
            {
                **common,
                "model_name": pre,
                "engine_model": m.name,
                "python_path": python_path,
                "instance_count": m.instance_count,
                "tokenizer_dir": str(m.tokenizer),
                "prompt": PROMPT_FILE,
                "max_input_len": m.max_input_len,
                "max_seq_len": m.max_seq_len,
                "max_tokens": g.max_tokens,
                "end_id": "" if g.end_id is None else g.end_id,
                "temperature": g.temperature,
                "top_k": g.top_k,
                "top_p": g.top_p,
                "seed": g.seed,
                "max_input_chars": max_input_chars,
            },
            {PROMPT_FILE: prompt},
        ),
        PlannedModel(
            eng,
            TEMPLATE_DIRS["engine"],
            {
                **common,
                "model_name": eng,
                "engine_model": m.name,
                "engine_dir": str(m.engine_dir),
                "gpu_device_ids": ",".join(str(x) for x in m.gpu_device_ids),
                "tp_size": m.tp_size,
                "pp_size": m.pp_size,
                "max_tokens_in_paged_kv_cache": ""
                if m.max_tokens_in_paged_kv_cache is None
                else m.max_tokens_in_paged_kv_cache,
                "kv_cache_free_gpu_mem_fraction": m.kv_cache_free_gpu_mem_fraction,
                "batch_scheduler_policy": m.batch_scheduler_policy,
                "enable_chunked_context": m.enable_chunked_context,
                "enable_kv_cache_reuse": m.enable_kv_cache_reuse,
                "max_queue_delay_microseconds": m.max_queue_delay_microseconds,
                "max_queue_size": m.max_queue_size,
                "executor_worker_path": EXECUTOR_WORKER,
                "trtllm_version": m.trtllm_version,
                "backend_facts": m.backend_facts.id,
                "seed_input": m.backend_facts.names["seed"],
                "min_tokens_input": m.backend_facts.names["min_tokens"],
            },
        ),
        PlannedModel(
            post,
            TEMPLATE_DIRS["postprocessing"],
            {
                **common,
                "model_name": post,
                "engine_model": m.name,
                "python_path": python_path,
                "instance_count": m.instance_count,
                "tokenizer_dir": str(m.tokenizer),
                "prompt": PROMPT_FILE,
            },
            {PROMPT_FILE: prompt},
        ),
    ]


def check_rendered(m: TrtllmModel, texts: dict[str, str], container_template: str | None = None) -> list[str]:
    """The four rendered configs of engine ``m`` (``texts``: model name -> config.pbtxt text) against the
    facts of the backend ``m`` targets (``trtllm_facts``), and the ``tensorrt_llm`` one against the
    container's own template when there is one. Returns the problems, each naming its model."""
    f = m.backend_facts
    pre, eng, post = sub_model_names(m.name)
    parsed = {}
    for n in (m.name, pre, eng, post):
        try:
            parsed[n] = trtllm_facts.parse_pbtxt(texts[n])
        except trtllm_facts.PbtxtError as exc:
            return [f"{n}: config.pbtxt is not protobuf text ({exc})"]
    problems = [f"{eng}: {p}" for p in trtllm_facts.check_engine_config(parsed[eng], f)]
    problems += [f"{m.name}: {p}" for p in trtllm_facts.check_ensemble_config(parsed[m.name], eng, f)]
    problems += [f"{pre}: {p}" for p in trtllm_facts.check_python_config(parsed[pre], list(PREPROCESSING_REQUIRED))]
    problems += [f"{post}: {p}" for p in trtllm_facts.check_python_config(parsed[post], list(POSTPROCESSING_REQUIRED))]
    if container_template is not None:
        problems += [
            f"{eng}: {p} (container template {trtllm_facts.CONTAINER_TEMPLATE})"
            for p in trtllm_facts.check_against_container_template(parsed[eng], container_template, f)
        ]
    return problems
