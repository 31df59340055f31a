"""Convert a Hugging Face Llama / Mistral / Qwen2 checkpoint to a TensorRT-LLM checkpoint with the
``tensorrt_llm`` Python API (``from_hugging_face`` + ``save_checkpoint``, one rank at a time): what the
examples' ``convert_checkpoint.py`` does for an unquantized model, without a TensorRT-LLM source checkout.

``engine_build`` uses it when ``--trtllm-src`` has no example script (NVIDIA's container ships the
package but not the examples, and an offline node cannot clone them). FP8 still needs the examples'
``quantize.py`` (ModelOpt calibration). ``tensorrt_llm`` is imported only when converting.

usage: python3 -m pyramid_deploy.trtllm_convert --model_dir HF --output_dir OUT --dtype bfloat16
           --tp_size N --pp_size M --family llama|qwen
"""

from __future__ import annotations

import argparse
import sys

FAMILIES = ("llama", "qwen")


def convert(model_dir: str, output_dir: str, dtype: str, tp_size: int, pp_size: int, family: str) -> None:
    try:
        from tensorrt_llm.mapping import Mapping
        from tensorrt_llm.models import LLaMAForCausalLM, QWenForCausalLM
    except ImportError as exc:
        raise SystemExit(
            f"tensorrt_llm is not importable ({exc}): convert inside NVIDIA's Triton TRT-LLM container"
        ) from None
    cls = {"llama": LLaMAForCausalLM, "qwen": QWenForCausalLM}[family]
    world = tp_size * pp_size
    for rank in range(world):
        mapping = Mapping(world_size=world, rank=rank, tp_size=tp_size, pp_size=pp_size)
        model = cls.from_hugging_face(model_dir, dtype=dtype, mapping=mapping)
        model.save_checkpoint(output_dir, save_config=rank == 0)
        del model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--tp_size", type=int, default=1)
    ap.add_argument("--pp_size", type=int, default=1)
    ap.add_argument("--family", required=True, choices=FAMILIES)
    a = ap.parse_args(argv)
    if a.tp_size < 1 or a.pp_size < 1:
        ap.error("--tp_size and --pp_size must be >= 1")
    convert(a.model_dir, a.output_dir, a.dtype, a.tp_size, a.pp_size, a.family)
    return 0


if __name__ == "__main__":
    sys.exit(main())
