"""The llama.cpp engine: one GGUF model in one ``llama_cpp.Llama``, behind the engine text API.

Framework-free (no Triton import): ``engines.LlamaCppModel`` puts it behind a decoupled
Triton model. ``llama_cpp`` is imported only when a model is loaded, so this module (prompt
formatting, stop-string handling, seeds, paths) imports and is testable without it.

What a request gets:

* the question is put into the prompt template (a few-shot GSM8K template by default, suited
  to a base model) and the continuation is generated until a stop string, an end-of-generation
  token, ``max_tokens`` or the engine's own budget (``max_tokens`` of the model's config), or
  the end of the context;
* ``text_output`` is the continuation without the stop string; ``output_tokens`` counts the
  tokens generated (an end-of-generation token is not counted; tokens of a stop string are);
* ``cum_log_prob`` (only with ``return_log_probs``): the sum of the log-probabilities of the
  generated tokens under the model's untempered distribution, read from the last position's
  logits at each step (no ``logits_all``, which would hold n_ctx x 262k floats for Gemma 3);
* temperature: the request's, else the model's (0 = greedy); seed: the model's seed, mixed with
  the request's seed when one is given (``effective_seed``), so agents that are one model with
  different seeds stay independent when a router passes the same client seed to all of them;
* the same request gets the same text whatever was served before: the template's fixed prefix
  (before ``{question}``) is evaluated once at load and kept in the KV cache, and every request
  evaluates the rest from there. (Letting a request reuse whatever prefix the previous one left
  changes how the prompt is split into batches, which changes low-order bits of the logits and,
  with a 270M model, even greedy output.)

One engine serves one request at a time (a ``Llama`` is not thread-safe); the Triton model
runs requests of an instance sequentially.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .protocol import EngineRequest, EngineResponse, InvalidArgument, ServeError

GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
INSTALL_HINT = "run scripts/install_llamacpp.sh (or make setup)"

# Two GSM8K *train* examples (the shipped traces are the test split), one line per answer, so the
# continuation of a base model ends at the blank line.
DEFAULT_TEMPLATE = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?\n"
    "Answer: In May she sold 48 / 2 = 24 clips. Altogether she sold 48 + 24 = 72 clips. The answer is 72.\n"
    "\n"
    "Question: Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?\n"
    "Answer: She earns 12 / 60 = 0.2 dollars per minute. For 50 minutes she earned 0.2 x 50 = 10 dollars. "
    "The answer is 10.\n"
    "\n"
    "Question: {question}\n"
    "Answer:"
)
DEFAULT_STOP = ("\n\n", "\nQuestion:")
PLACEHOLDER = "{question}"
LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp: "random seed"; never produced by effective_seed


def cache_dir() -> Path:
    """``$PYRAMID_CACHE``, else ``~/.cache/pyramid-moa`` (where scripts/install_llamacpp.sh puts things)."""
    env = os.environ.get("PYRAMID_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pyramid-moa"


def default_gguf_path() -> Path:
    """The Gemma 3 270M GGUF that scripts/install_llamacpp.sh assembles."""
    return cache_dir() / "models" / GGUF_NAME


class RequestCancelled(ServeError):
    """The client cancelled the request; generation stopped."""

    code = "CANCELLED"


@dataclass(frozen=True)
class PromptFormat:
    """A prompt template with one or more ``{question}`` placeholders, and the stop strings."""

    template: str = DEFAULT_TEMPLATE
    stop: tuple[str, ...] = DEFAULT_STOP

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or PLACEHOLDER not in self.template:
            raise ValueError(f"prompt template must contain {PLACEHOLDER}")
        stop = tuple(self.stop)
        if any(not isinstance(s, str) or s == "" for s in stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(stop)!r}")
        object.__setattr__(self, "stop", stop)

    def render(self, question: str) -> str:
        # str.replace, not str.format: few-shot examples may hold braces.
        return self.template.replace(PLACEHOLDER, question.strip())

    def split(self, question: str) -> tuple[str, str]:
        """(fixed prefix, rest): the prompt cut before the first placeholder and the spaces before it.

        The prefix is the same for every question, so the engine evaluates it once and keeps it in
        the KV cache; the spaces go with the question, so that ``"Question:" + " Janet ..."``
        tokenizes as the model saw such text (a word with its leading space).
        """
        prefix = self.template[: self.template.index(PLACEHOLDER)].rstrip(" ")
        return prefix, self.render(question)[len(prefix) :]

    def to_dict(self) -> dict[str, Any]:
        return {"template": self.template, "stop": list(self.stop)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptFormat:
        return cls(d.get("template", DEFAULT_TEMPLATE), tuple(d.get("stop", DEFAULT_STOP)))

    @classmethod
    def load(cls, path: str | Path) -> PromptFormat:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ValueError(f"prompt file {path} not found") from None
        except (json.JSONDecodeError, AttributeError, TypeError) as exc:
            raise ValueError(f"prompt file {path}: not a JSON object with 'template' and 'stop' ({exc})") from None


@dataclass(frozen=True)
class LlamaCppSettings:
    model_path: Path = field(default_factory=default_gguf_path)
    n_ctx: int = 2048
    n_threads: int = 1
    seed: int = 0
    temperature: float = 0.0
    max_tokens: int = 256  # the engine's budget: a request's max_tokens above it is lowered to it
    top_k: int = 40
    top_p: float = 0.95
    prompt: PromptFormat = field(default_factory=PromptFormat)

    def __post_init__(self) -> None:
        for name in ("n_ctx", "n_threads", "max_tokens"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 <= int(self.seed) < LLAMA_DEFAULT_SEED:
            raise ValueError(f"seed must be in [0, {LLAMA_DEFAULT_SEED}), got {self.seed}")


def effective_seed(model_seed: int, request_seed: int | None) -> int:
    """The sampler seed: the model's, or a hash of (model's, request's) when the request has one."""
    if request_seed is None:
        return int(model_seed)
    digest = hashlib.blake2b(f"{int(model_seed)}:{int(request_seed)}".encode(), digest_size=4).digest()
    seed = int.from_bytes(digest, "little")
    return seed if seed != LLAMA_DEFAULT_SEED else 0


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class TextAssembler:
    """Token pieces (bytes) in, text deltas that are safe to send out.

    A delta never holds part of a stop string nor half a UTF-8 character; text that could still
    turn into a stop string is held back until it cannot, or until ``finish``. The deltas
    concatenate to exactly the final text (the continuation up to the first stop string).
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(s for s in stop if s)
        self._raw = b""
        self._text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        if self.stopped:
            return ""
        self._raw += piece
        # "ignore" drops a trailing incomplete character until its last byte arrives; the decoded
        # text of a longer byte string always starts with that of a shorter one.
        text = self._raw.decode("utf-8", errors="ignore")
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            self._text = text[: min(hits)]
            safe = len(self._text)
        else:
            self._text = text
            safe = len(text) - _held_back(text, self.stop)
        return self._take(safe)

    def finish(self) -> str:
        """The rest (generation ended: nothing more can complete a stop string)."""
        return self._take(len(self._text))

    @property
    def text(self) -> str:
        return self._text

    def _take(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out = self._text[self.sent : upto]
        self.sent = upto
        return out


class LlamaCppEngine:
    """One ``llama_cpp.Llama`` and the settings it serves with."""

    def __init__(self, settings: LlamaCppSettings, llama: Any) -> None:
        self.settings = settings
        self.llama = llama
        self.load_seconds = 0.0
        self._llama_cpp: Any = None
        self._prefix_tokens: list[int] = []

    @classmethod
    def load(cls, settings: LlamaCppSettings) -> LlamaCppEngine:
        path = Path(settings.model_path)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model not found at {path}; {INSTALL_HINT}")
        try:
            import llama_cpp  # optional dependency, loaded only to serve
        except ImportError as exc:
            raise ImportError(f"llama-cpp-python is not installed ({exc}); {INSTALL_HINT}") from None
        t0 = time.perf_counter()
        llama = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=int(settings.n_ctx),
            n_batch=min(512, int(settings.n_ctx)),
            n_threads=int(settings.n_threads),
            n_threads_batch=int(settings.n_threads),
            seed=int(settings.seed),
            logits_all=False,
            verbose=False,
        )
        engine = cls(settings, llama)
        engine._llama_cpp = llama_cpp
        engine._pin_prefix()
        engine.load_seconds = time.perf_counter() - t0
        return engine

    def _pin_prefix(self) -> None:
        """Evaluate the template's fixed prefix into the KV cache (once; every request starts there)."""
        prefix, _ = self.settings.prompt.split("")
        self._prefix_tokens = self.llama.tokenize(prefix.encode("utf-8"), add_bos=True, special=False)
        self.llama.reset()
        self.llama.eval(self._prefix_tokens)

    def close(self) -> None:
        llama, self.llama = self.llama, None
        if llama is not None and hasattr(llama, "close"):
            llama.close()

    # --- generation ------------------------------------------------------------------------

    def generate(self, req: EngineRequest, cancelled: Callable[[], bool] | None = None) -> EngineResponse:
        """The whole continuation in one response: ``stream``'s deltas concatenated, counts summed."""
        parts = list(self.stream(req, cancelled))
        lps = [p.cum_log_prob for p in parts]
        return EngineResponse(
            "".join(p.text_output for p in parts),
            sum(p.output_tokens or 0 for p in parts),
            None if None in lps else float(sum(lps)),  # type: ignore[arg-type]
        )

    def stream(self, req: EngineRequest, cancelled: Callable[[], bool] | None = None) -> Iterator[EngineResponse]:
        """Text deltas as they become safe to send, then one final response (its text may be "").

        ``output_tokens`` / ``cum_log_prob`` of a response count the tokens generated since the
        previous response (text held back, e.g. a possible stop string, counts with the response
        that releases or drops it): summed over the responses they are the request's, as
        ``tensors.merge_engine_responses`` sums them. ``cancelled()`` is checked after every
        token; when it is true generation stops and ``RequestCancelled`` is raised.
        """
        if self.llama is None:
            raise ServeError("the llama.cpp engine is closed", "UNAVAILABLE")
        s = self.settings
        llm = self.llama
        _, rest = s.prompt.split(req.text_input)
        tokens = [*self._prefix_tokens, *llm.tokenize(rest.encode("utf-8"), add_bos=False, special=False)]
        n_ctx = int(llm.n_ctx())
        if len(tokens) >= n_ctx:
            raise InvalidArgument(
                "text_input", f"is {len(tokens)} tokens in the prompt template; the context holds {n_ctx}"
            )
        budget = min(int(req.max_tokens), int(s.max_tokens), n_ctx - len(tokens))
        temperature = s.temperature if req.temperature is None else float(req.temperature)
        llm.set_seed(effective_seed(s.seed, req.seed))
        with_lp = bool(req.return_log_probs)
        lp: float | None = 0.0 if with_lp else None  # since the previous response
        text = TextAssembler(s.prompt.stop)
        n = 0  # generated so far
        n_sent = 0  # counted in responses already yielded
        # Keep only the pinned prefix: generate() then reuses exactly it and evaluates the rest.
        llm.n_tokens = min(int(llm.n_tokens), len(self._prefix_tokens))
        gen = llm.generate(
            tokens, top_k=int(s.top_k), top_p=float(s.top_p), temp=temperature, repeat_penalty=1.0, reset=True
        )
        try:
            for token in gen:
                if self._is_eog(token):
                    break
                if with_lp:
                    lp += self._logprob(token)  # type: ignore[operator]
                n += 1
                delta = text.feed(llm.detokenize([token]))
                if delta:
                    yield EngineResponse(delta, n - n_sent, lp)
                    n_sent, lp = n, (0.0 if with_lp else None)
                if text.stopped or n >= budget:
                    break
                if cancelled is not None and cancelled():
                    raise RequestCancelled(f"request cancelled by the client; generation stopped after {n} tokens")
        finally:
            gen.close()
        yield EngineResponse(text.finish(), n - n_sent, lp)

    def _is_eog(self, token: int) -> bool:
        lc = self._llama_cpp
        if lc is not None and hasattr(lc, "llama_vocab_is_eog"):
            return bool(lc.llama_vocab_is_eog(lc.llama_model_get_vocab(self.llama.model), token))
        return token == self.llama.token_eos()

    def _logprob(self, token: int) -> float:
        """log P(token) at the last evaluated position (the one ``token`` was sampled from)."""
        import numpy as np

        lc = self._llama_cpp
        n_vocab = int(self.llama.n_vocab())
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.llama.ctx, -1), shape=(n_vocab,))
        m = float(logits.max())
        lse = m + math.log(float(np.exp(logits - m, dtype=np.float64).sum()))
        return float(logits[token]) - lse
