"""The embedder on a GPU (ONNX Runtime's CUDA provider) against the same graph on the CPU.

A GPU node runs the semantic task's embedder with ``embedder: {device: gpu}`` (deploy specs, docs/GPU.md);
this checks, where it runs, that onnxruntime has the CUDA provider and that the vectors it computes
on GPU ``--device-id`` match the CPU's (largest absolute difference <= ``--atol``, 1e-4 by default: GPU
kernels sum in another order) on hand-written sentences and, where ``../shared/data/nq`` is, recorded
free-form answers. Exit 0: they match; 1: they do not; 3: no CUDA provider here (scripts/gpu_check.sh
reports a SKIP naming the fix).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pyramid_moa.embedding import EmbedderError, OnnxMiniLMEmbedder

SENTENCES = [
    "The capital of France is Paris.",
    "Wilhelm Conrad Röntgen was awarded the first Nobel Prize in Physics in 1901.",
    "Marie Curie",
    "",
    "a" * 300,
]
NQ = Path(__file__).resolve().parents[2] / "shared" / "data" / "nq" / "traces" / "gpt-4.jsonl"


def texts(n: int) -> list[str]:
    out = list(SENTENCES)
    if NQ.is_file():
        with NQ.open(encoding="utf-8") as f:
            for line in f:
                if len(out) >= len(SENTENCES) + n:
                    break
                text = json.loads(line)["samples"][0].get("text")
                if text:
                    out.append(text)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--n", type=int, default=64, help="recorded answers besides the sentences")
    ap.add_argument("--atol", type=float, default=1e-4)
    a = ap.parse_args(argv)
    try:
        gpu = OnnxMiniLMEmbedder(device="gpu", device_id=a.device_id)
    except EmbedderError as exc:
        print(f"skip: {exc}")
        return 3
    cpu = OnnxMiniLMEmbedder()
    batch = texts(a.n)
    got, want = gpu.embed(batch), cpu.embed(batch)
    diff = float(np.abs(got - want).max())
    cos = float(np.min(np.sum(got * want, axis=1)))
    ok = diff <= a.atol
    print(
        f"{'ok' if ok else 'MISMATCH'}: {len(batch)} texts on GPU {a.device_id} vs CPU: largest |difference| "
        f"{diff:.2e} (allowed {a.atol:g}), smallest cosine {cos:.6f}; providers {gpu.session.get_providers()}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
