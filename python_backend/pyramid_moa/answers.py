"""Final-answer extraction, normalization and equality.

The router decides by *agreement between answers*, so two agents that wrote the
same number in different clothes ("$1,200.", "\\boxed{1200}", "1200.0") must map to
the same key. Extractors are registered by task name so a new task (multiple
choice (``choice.py``), code, free text) is one function plus one ``register_extractor`` call.

Normalization follows the shared GSM8K trace README: strip ``,`` ``$`` ``%``,
a trailing ``.`` and ``\\boxed{}``; a string that is not a plain number must hold
exactly one number; integral values print as integers, others with up to six
decimals; NaN/inf and multi-number strings become ``None``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from .choice import choice_equal, extract_choice
from .registry import lookup

NUMERIC_TOLERANCE = 1e-4

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_HASHES = re.compile(r"####\s*([^\n]*)")
_THE_ANSWER_IS = re.compile(r"answer is[:\s]*([^\n]*)", re.IGNORECASE)


def normalize_number(raw: str | float | int | None) -> str | None:
    """Return the canonical string of the single number in ``raw``, or None.

    Canonical: integral values as integers ("18"), others with up to 6 decimals
    ("2.5"). Anything holding zero or several numbers ("20/3", "14:00") is None,
    because guessing which one was meant would make agreement meaningless.
    """
    if raw is None:
        return None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    else:
        text = str(raw).strip()
        boxed = _BOXED.search(text)
        if boxed:
            text = boxed.group(1)
        text = text.replace(",", "").replace("$", "").replace("%", "").strip()
        text = text.rstrip(".").strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            numbers = _NUMBER.findall(text)
            if len(numbers) != 1:
                return None
            value = float(numbers[0])
    if math.isnan(value) or math.isinf(value):
        return None
    if abs(value - round(value)) < 1e-9:
        return str(int(round(value)))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def numbers_equal(a: str | None, b: str | None, tol: float = NUMERIC_TOLERANCE) -> bool:
    """Numeric equality within ``tol``; None never equals anything (a missing answer is wrong)."""
    if a is None or b is None:
        return False
    try:
        return abs(float(a) - float(b)) < tol
    except ValueError:
        return a == b


def extract_gsm8k(text: str | None) -> str | None:
    """Extract a GSM8K-style numeric final answer from a model's raw text.

    Order of preference mirrors how models mark answers: the last ``#### N``,
    the last ``\\boxed{N}``, the last "The answer is N", else the last number in
    the text. Each candidate is normalized; an unparsable marked answer falls
    through to the next rule rather than returning garbage.
    """
    if not text:
        return None
    for pattern in (_HASHES, _BOXED, _THE_ANSWER_IS):
        matches = pattern.findall(text)
        if matches:
            candidate = normalize_number(matches[-1])
            if candidate is None and pattern is _THE_ANSWER_IS:
                numbers = _NUMBER.findall(matches[-1].replace(",", ""))
                candidate = normalize_number(numbers[0]) if numbers else None
            if candidate is not None:
                return candidate
    numbers = _NUMBER.findall(text.replace(",", ""))
    return normalize_number(numbers[-1]) if numbers else None


def normalize_text(text: str | None) -> str | None:
    """Generic free-text answer key: last non-empty line, lower-cased, punctuation-trimmed."""
    if not text:
        return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    key = re.sub(r"\s+", " ", lines[-1].lower()).strip(" .!?;:\"'")
    return key or None


def text_equal(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a == b


@dataclass(frozen=True)
class AnswerTask:
    """How one task turns raw text into a comparable answer key, and compares keys."""

    name: str
    extract: Callable[..., str | None]
    equal: Callable[[str | None, str | None], bool]
    numeric: bool
    # True where extraction reads the question too (``choice`` maps an option's text to its letter).
    uses_question: bool = False
    # False where answers compare by meaning, not by key (``semantic``): equal keys are then no
    # agreement, and fits that compare keys (vote weights, the arbiter) are off.
    keyed: bool = True

    def extract_for(self, text: str | None, question: str | None = None) -> str | None:
        """The answer key of ``text``, given the question when the task can use it."""
        return self.extract(text, question) if self.uses_question else self.extract(text)


_REGISTRY: dict[str, AnswerTask] = {}


def register_extractor(task: AnswerTask) -> AnswerTask:
    if task.name in _REGISTRY:
        raise ValueError(f"answer task {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def get_task(name: str) -> AnswerTask:
    return lookup(_REGISTRY, name, "answer task")


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def answer_key(answer: str | None, numeric: bool = True) -> str | None:
    """Key under which answers are grouped for voting (numbers rounded to the tolerance)."""
    if answer is None:
        return None
    if not numeric:
        return answer
    try:
        return f"{round(float(answer), 4):.4f}"
    except ValueError:
        return answer


register_extractor(AnswerTask("gsm8k", extract_gsm8k, numbers_equal, numeric=True))
register_extractor(AnswerTask("text", normalize_text, text_equal, numeric=False))
register_extractor(AnswerTask("choice", extract_choice, choice_equal, numeric=False, uses_question=True))
