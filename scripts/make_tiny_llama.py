#!/usr/bin/env python3
"""Write the tiny random-weight Llama checkpoint of deploy/gpu-1gpu-smoke.yaml, with no network.

usage: python3 scripts/make_tiny_llama.py [--spec deploy/gpu-1gpu-smoke.yaml] [--out DIR] [--seed 0]

A Hugging Face checkpoint directory (config.json, model.safetensors, generation_config.json, a
tokenizer with a chat template) whose shapes are the spec's ``engine.architecture``, so that
scripts/build_engines.py converts and builds it like any other model and the renderer's placement
checks describe it (the spec's head_dim, hidden_size / num_attention_heads, must be one TensorRT-LLM's
attention kernels support: 64 in the shipped spec). The tokenizer is a byte-level BPE trained on the shipped GSM8K questions (any
text encodes); the weights are random, so the model's answers are noise. For scripts/gpu_check.sh:
it proves the GPU path (engine build, repository load, pre/postprocessing, the router), not quality.
Needs torch, transformers and tokenizers (NVIDIA's Triton TRT-LLM container has them). Idempotent:
an existing checkpoint with the same shapes is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECIALS = ["<s>", "<pad>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "deploy" / "gpu-1gpu-smoke.yaml")
    ap.add_argument("--out", type=Path, help="checkpoint directory (default: the spec's engine.checkpoint)")
    ap.add_argument("--questions", type=Path, default=ROOT / "data" / "gsm8k" / "questions.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import yaml

    spec = yaml.safe_load(a.spec.read_text(encoding="utf-8"))
    arch = spec["engine"]["architecture"]
    # Kept: run by gpu_check.sh in NVIDIA's container, where the packages are not installed.
    sys.path.insert(0, str(ROOT / "python_backend"))
    from pyramid_deploy import trtllm_facts
    from pyramid_deploy.trtllm_spec import Architecture

    try:
        shape = Architecture.from_config(arch, f"{a.spec}: engine.architecture")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if shape.head_dim not in trtllm_facts.head_sizes():
        print(
            f"error: {a.spec}: head_dim {shape.head_dim} is not a head size TensorRT-LLM's attention kernels support "
            f"({', '.join(map(str, trtllm_facts.head_sizes()))})",
            file=sys.stderr,
        )
        return 2
    out = a.out or (a.spec.parent / spec["engine"]["checkpoint"]).resolve()
    cfg_path = out / "config.json"
    if cfg_path.is_file() and (out / "tokenizer.json").is_file():
        have = json.loads(cfg_path.read_text(encoding="utf-8"))
        if all(have.get(k) == v for k, v in arch.items()):
            print(f"{out}: up to date")
            return 0

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [json.loads(x)["question"] for x in a.questions.read_text(encoding="utf-8").splitlines() if x.strip()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(arch["vocab_size"]),
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    if tok.get_vocab_size() > int(arch["vocab_size"]):
        print(
            f"error: the tokenizer has {tok.get_vocab_size()} tokens > vocab_size {arch['vocab_size']}", file=sys.stderr
        )
        return 2
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>")
    hf_tok.chat_template = CHAT_TEMPLATE

    torch.manual_seed(a.seed)
    config = LlamaConfig(
        vocab_size=int(arch["vocab_size"]),
        hidden_size=int(arch["hidden_size"]),
        intermediate_size=int(arch["intermediate_size"]),
        num_hidden_layers=int(arch["num_hidden_layers"]),
        num_attention_heads=int(arch["num_attention_heads"]),
        num_key_value_heads=int(arch["num_key_value_heads"]),
        max_position_embeddings=int(arch["max_position_embeddings"]),
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    hf_tok.save_pretrained(out)
    GenerationConfig(
        bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id
    ).save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {n / 1e6:.3f} M parameters, {tok.get_vocab_size()} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
