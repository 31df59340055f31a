"""Pre- and postprocessing of a TensorRT-LLM engine (the Python models around ``tensorrt_llm``).

The ensemble of each engine (``trtllm_spec``) turns the router's text API into what the
``tensorrt_llm`` backend takes, and back:

- preprocessing: the question goes into the prompt template and the tokenizer's chat template,
  is tokenized (a prompt over ``max_input_len`` tokens is INVALID_ARG on ``text_input``), and the
  request gets its token budget (``max_tokens``, lowered to the engine's budget and to what
  ``max_seq_len`` leaves after the prompt), end/pad ids, stop sequences in TensorRT-LLM's word-list
  format (the spec's stop strings and generation_config.json's other eos tokens), and sampling
  parameters: the request's, else the spec's defaults; temperature 0 is greedy (top_k 1). A
  request's seed is mixed with the spec's, so agents that share a request seed still differ.
  TensorRT-LLM returns log-probabilities only when a sampling parameter is set; these always are.
- postprocessing: the generated tokens back to text (special tokens skipped, a trailing stop
  string cut) and their count, ``output_tokens``.

The logic (``Preprocessor``, ``Postprocessor``) is framework-free and takes any tokenizer with
``encode``/``decode`` (and optionally ``apply_chat_template``), so it is tested without
``transformers``; ``PreprocessingModel`` / ``PostprocessingModel`` put it behind the Python
backend, and load the Hugging Face tokenizer (``transformers``, imported only then) in NVIDIA's
Triton TRT-LLM container. Streaming note: with ``stream=true`` the engine sends token deltas and
each is detokenized on its own (as upstream's ensemble does without ``accumulate_tokens``), which
can split a multi-byte character or drop a SentencePiece word's leading space; the router never
streams engine calls.
"""

from __future__ import annotations

import hashlib
import json
import math
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import REQUIRED, ModelParams
from .protocol import InvalidArgument, Limits, validate_text
from .tensors import error_response

PLACEHOLDER = "{question}"


@dataclass(frozen=True)
class PromptSpec:
    """prompt.json beside the pre/postprocessing configs (written by the renderer)."""

    prompt_template: str = PLACEHOLDER
    system_prompt: str | None = None
    chat_template: bool = True
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.prompt_template, str) or PLACEHOLDER not in self.prompt_template:
            raise ValueError(f"prompt_template must contain {PLACEHOLDER}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @classmethod
    def load(cls, path: str | Path) -> PromptSpec:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(
                d["prompt_template"], d.get("system_prompt"), bool(d.get("chat_template", True)), d.get("stop", ())
            )
        except FileNotFoundError:
            raise ValueError(f"prompt file {path} not found") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"prompt file {path}: not a prompt JSON object ({type(exc).__name__}: {exc})") from None

    def user_message(self, question: str) -> str:
        # str.replace, not str.format: templates may hold braces.
        return self.prompt_template.replace(PLACEHOLDER, question.strip())


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


def resolve_sampling(
    defaults: Sampling, temperature: float | None, top_k: int | None, top_p: float | None, seed: int | None
) -> tuple[float, int, float, int]:
    """(temperature, runtime_top_k, runtime_top_p, seed) sent to the engine; temperature 0 is greedy."""
    t = defaults.temperature if temperature is None else float(temperature)
    if not (math.isfinite(t) and t >= 0):
        raise InvalidArgument("temperature", f"must be a finite number >= 0, got {temperature}")
    k = defaults.top_k if top_k is None else int(top_k)
    if k < 0:
        raise InvalidArgument("top_k", f"must be >= 0 (0: off), got {top_k}")
    p = defaults.top_p if top_p is None else float(top_p)
    if not (math.isfinite(p) and 0.0 < p <= 1.0):
        raise InvalidArgument("top_p", f"must be in (0, 1], got {top_p}")
    s = mix_seed(defaults.seed, seed)
    if t == 0.0:
        return 1.0, 1, 1.0, s  # greedy: the most likely token; temperature 1 leaves log-probs untempered
    return t, k, p, s


def mix_seed(model_seed: int, request_seed: int | None) -> int:
    """The model's seed, or a 64-bit hash of (model's, request's) when the request has one."""
    if request_seed is None:
        return int(model_seed)
    digest = hashlib.blake2b(f"{int(model_seed)}:{int(request_seed)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def to_word_list(words: Sequence[Sequence[int]]) -> np.ndarray:
    """TensorRT-LLM's word-list format, ``[2, L]`` int32: the words' token ids concatenated, and
    under them each word's cumulative end offset, padded with -1 (ids padded with 0). No words:
    ``[2, 0]``."""
    words = [list(w) for w in words if len(w)]
    if not words:
        return np.zeros((2, 0), dtype=np.int32)
    flat = [t for w in words for t in w]
    offsets = list(np.cumsum([len(w) for w in words]))
    offsets += [-1] * (len(flat) - len(offsets))
    return np.array([flat, offsets], dtype=np.int32)


def eos_ids_from_generation_config(tokenizer_dir: str | Path) -> list[int]:
    """``eos_token_id`` of ``generation_config.json`` (an int or a list), [] if absent."""
    p = Path(tokenizer_dir) / "generation_config.json"
    try:
        v = json.loads(p.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, json.JSONDecodeError, AttributeError):
        return []
    if isinstance(v, int):
        return [v]
    if isinstance(v, list):
        return [int(x) for x in v if isinstance(x, int)]
    return []


class Preprocessor:
    """Question -> engine request (token ids, budget, end/pad ids, stop words, sampling)."""

    def __init__(
        self,
        tokenizer: Any,
        prompt: PromptSpec,
        max_input_len: int,
        max_seq_len: int,
        max_tokens: int,
        sampling: Sampling,
        end_id: int | None = None,
        extra_eos_ids: Sequence[int] = (),
        limits: Limits | None = None,
    ) -> None:
        if max_input_len <= 0 or max_seq_len <= max_input_len or max_tokens <= 0:
            raise ValueError(
                f"need 0 < max_input_len < max_seq_len and max_tokens > 0, got {max_input_len}, {max_seq_len}, "
                f"{max_tokens}"
            )
        self.tokenizer, self.prompt = tokenizer, prompt
        self.max_input_len, self.max_seq_len, self.max_tokens = max_input_len, max_seq_len, max_tokens
        self.sampling = sampling
        self.limits = limits or Limits()
        eos = getattr(tokenizer, "eos_token_id", None)
        self.end_id = int(end_id if end_id is not None else (eos if eos is not None else -1))
        if self.end_id < 0:
            raise ValueError("the tokenizer has no eos token: set end_id in the spec")
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else self.end_id)
        stop_words = [self._encode(s) for s in prompt.stop]
        stop_words += [[int(i)] for i in dict.fromkeys(extra_eos_ids) if int(i) != self.end_id]
        self.stop_words = to_word_list(stop_words)
        self.use_chat_template = prompt.chat_template and bool(getattr(tokenizer, "chat_template", None))

    def _encode(self, text: str, special: bool = False) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=special)]

    def prompt_text(self, question: str) -> str:
        user = self.prompt.user_message(question)
        if not self.use_chat_template:
            return user
        messages = [{"role": "user", "content": user}]
        if self.prompt.system_prompt:
            messages.insert(0, {"role": "system", "content": self.prompt.system_prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def input_ids(self, question: str) -> list[int]:
        # The chat template writes the BOS token itself; a plain prompt gets the tokenizer's specials.
        ids = self._encode(self.prompt_text(question), special=not self.use_chat_template)
        if not ids:
            raise InvalidArgument("text_input", "tokenizes to no tokens")
        if len(ids) > self.max_input_len:
            raise InvalidArgument(
                "text_input", f"is {len(ids)} tokens with the prompt; the engine takes at most {self.max_input_len}"
            )
        return ids

    def output_len(self, max_tokens: int | None, input_len: int) -> int:
        if max_tokens is None:
            raise InvalidArgument("max_tokens", "is required")
        if max_tokens <= 0:
            raise InvalidArgument("max_tokens", f"must be > 0, got {max_tokens}")
        return int(min(max_tokens, self.max_tokens, self.max_seq_len - input_len))

    def process(
        self,
        text: str | None,
        max_tokens: int | None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """One request row -> the engine's inputs (as Python values; ``INPUT_ID`` a list)."""
        question = validate_text("text_input", text, self.limits)
        ids = self.input_ids(question)
        t, k, p, s = resolve_sampling(self.sampling, temperature, top_k, top_p, seed)
        return {
            "INPUT_ID": ids,
            "REQUEST_INPUT_LEN": len(ids),
            "REQUEST_OUTPUT_LEN": self.output_len(max_tokens, len(ids)),
            "OUT_END_ID": self.end_id,
            "OUT_PAD_ID": self.pad_id,
            "STOP_WORDS_IDS": self.stop_words,
            "OUT_TEMPERATURE": t,
            "OUT_TOP_K": k,
            "OUT_TOP_P": p,
            "OUT_SEED": s,
        }


class Postprocessor:
    """Generated tokens -> (text, token count)."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), skip_special_tokens: bool = True) -> None:
        self.tokenizer, self.stop, self.skip_special_tokens = tokenizer, tuple(stop), skip_special_tokens

    def process(self, tokens: np.ndarray, sequence_length: np.ndarray) -> tuple[str, int]:
        """``tokens`` ``[beam, len]`` and ``sequence_length`` ``[beam]`` of one request; the first beam."""
        tokens, lengths = np.asarray(tokens), np.asarray(sequence_length).reshape(-1)
        n = int(lengths[0]) if lengths.size else 0
        row = tokens.reshape(-1, tokens.shape[-1])[0][:n] if tokens.size else np.zeros(0, dtype=np.int32)
        text = self.tokenizer.decode([int(t) for t in row], skip_special_tokens=self.skip_special_tokens)
        for s in self.stop:
            if text.endswith(s):
                text = text[: -len(s)]
                break
        return text, n


# --- the Python-backend models ------------------------------------------------------------------


def load_tokenizer(tokenizer_dir: str | Path) -> Any:
    """The Hugging Face tokenizer (``transformers`` is imported here only: NVIDIA's container has it)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise RuntimeError(
            "transformers is not installed: the TensorRT-LLM pre/postprocessing models run in NVIDIA's "
            "Triton TRT-LLM container (nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3)"
        ) from exc
    if not Path(tokenizer_dir).is_dir():
        raise RuntimeError(f"tokenizer directory {tokenizer_dir} not found (the Hugging Face checkpoint's directory)")
    return AutoTokenizer.from_pretrained(str(tokenizer_dir), legacy=False, padding_side="left")


def _rows(pb: Any, request: Any, name: str, n: int | None = None) -> list[Any] | None:
    """The per-row scalars of optional input ``name`` ([batch, 1]), or None if absent."""
    t = pb.get_input_tensor_by_name(request, name)
    if t is None:
        return None
    arr = t.as_numpy()
    rows = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(-1, 1)
    if rows.shape[1] != 1:
        raise InvalidArgument(name, f"must hold one element per request, got shape {list(arr.shape)}")
    if n is not None and rows.shape[0] != n:
        raise InvalidArgument(name, f"has {rows.shape[0]} rows; text_input has {n}")
    return [r[0] for r in rows]


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("text_input", "is not valid UTF-8") from None
    return str(v)


class PreprocessingModel:
    """``model.py`` of ``NAME_preprocessing`` delegates here."""

    def __init__(self, pb: Any, args: dict[str, Any], tokenizer: Any = None) -> None:
        self.pb = pb
        p = ModelParams(args)
        self.name = p.name
        tokenizer_dir = p.get_str("tokenizer_dir", REQUIRED)
        tok = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_dir)
        prompt = PromptSpec.load(p.get_path("prompt", REQUIRED))
        self.impl = Preprocessor(
            tok,
            prompt,
            p.get_int("max_input_len", REQUIRED),
            p.get_int("max_seq_len", REQUIRED),
            p.get_int("max_tokens", REQUIRED),
            Sampling(
                p.get_float("temperature", 0.0), p.get_int("top_k", 0), p.get_float("top_p", 1.0), p.get_int("seed", 0)
            ),
            p.get_int("end_id", None),
            eos_ids_from_generation_config(tokenizer_dir),
            Limits(max_input_chars=p.get_int("max_input_chars", 20_000)),
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        out = []
        for request in requests:
            try:
                out.append(self._one(request))
            except Exception as exc:  # noqa: BLE001 - answered as this request's error response
                if not isinstance(exc, InvalidArgument):
                    self.pb.Logger.log_error(f"{self.name}: {traceback.format_exc()}")
                out.append(error_response(self.pb, exc))
        return out

    def _one(self, request: Any) -> Any:
        pb = self.pb
        texts = _rows(pb, request, "text_input")
        if texts is None:
            raise InvalidArgument("text_input", "is required")
        n = len(texts)
        opt = {k: _rows(pb, request, k, n) for k in ("max_tokens", "temperature", "top_k", "top_p", "seed")}

        def at(k: str, i: int, cast: Any) -> Any:
            rows = opt[k]
            return None if rows is None else cast(rows[i])

        rows = [
            self.impl.process(
                _text(texts[i]),
                at("max_tokens", i, int),
                at("temperature", i, float),
                at("top_k", i, int),
                at("top_p", i, float),
                at("seed", i, int),
            )
            for i in range(n)
        ]
        width = max(len(r["INPUT_ID"]) for r in rows)
        ids = np.full((n, width), self.impl.pad_id, dtype=np.int32)
        for i, r in enumerate(rows):
            ids[i, : len(r["INPUT_ID"])] = r["INPUT_ID"]
        stop = np.stack([r["STOP_WORDS_IDS"] for r in rows]).astype(np.int32)

        def col(k: str, dtype: Any) -> np.ndarray:
            return np.array([[r[k]] for r in rows], dtype=dtype)

        tensors = [
            pb.Tensor("INPUT_ID", ids),
            pb.Tensor("REQUEST_INPUT_LEN", col("REQUEST_INPUT_LEN", np.int32)),
            pb.Tensor("REQUEST_OUTPUT_LEN", col("REQUEST_OUTPUT_LEN", np.int32)),
            pb.Tensor("OUT_END_ID", col("OUT_END_ID", np.int32)),
            pb.Tensor("OUT_PAD_ID", col("OUT_PAD_ID", np.int32)),
            pb.Tensor("STOP_WORDS_IDS", stop),
            pb.Tensor("OUT_TEMPERATURE", col("OUT_TEMPERATURE", np.float32)),
            pb.Tensor("OUT_TOP_K", col("OUT_TOP_K", np.int32)),
            pb.Tensor("OUT_TOP_P", col("OUT_TOP_P", np.float32)),
            pb.Tensor("OUT_SEED", col("OUT_SEED", np.uint64)),
        ]
        return pb.InferenceResponse(output_tensors=tensors)


class PostprocessingModel:
    """``model.py`` of ``NAME_postprocessing`` delegates here."""

    def __init__(self, pb: Any, args: dict[str, Any], tokenizer: Any = None) -> None:
        self.pb = pb
        p = ModelParams(args)
        self.name = p.name
        tok = tokenizer if tokenizer is not None else load_tokenizer(p.get_str("tokenizer_dir", REQUIRED))
        prompt = PromptSpec.load(p.get_path("prompt", REQUIRED))
        self.impl = Postprocessor(tok, prompt.stop, p.get_bool("skip_special_tokens", True))

    def execute(self, requests: list[Any]) -> list[Any]:
        out = []
        for request in requests:
            try:
                out.append(self._one(request))
            except Exception as exc:  # noqa: BLE001
                self.pb.Logger.log_error(f"{self.name}: {traceback.format_exc()}")
                out.append(error_response(self.pb, exc))
        return out

    def _one(self, request: Any) -> Any:
        pb = self.pb
        tokens = pb.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()  # [batch, beam, len]
        lengths = pb.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()  # [batch, beam]
        texts, counts = [], []
        for b in range(tokens.shape[0]):
            text, n = self.impl.process(tokens[b], lengths[b])
            texts.append([text.encode("utf-8")])
            counts.append([n])
        return pb.InferenceResponse(
            output_tensors=[
                pb.Tensor("text_output", np.array(texts, dtype=np.object_)),
                pb.Tensor("output_tokens", np.array(counts, dtype=np.int32)),
            ]
        )
