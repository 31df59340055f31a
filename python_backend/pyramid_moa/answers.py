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
import unicodedata
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


# ---- gold: each task reads its gold and grades an answer against it its own way -------------------
GOLD_ALIAS_SEPARATOR = "/"  # a gold string "Olivia/MFSK" lists aliases, any one of them right (shared/data/nq)


def fold_text(text: str | None) -> str:
    """Free text folded for comparison (SQuAD's answer normalisation): accents stripped, lower-case,
    articles and punctuation dropped, whitespace collapsed. "The Rontgen." and "rontgen" fold alike."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    text = re.sub(r"[^0-9a-z]+", " ", text)
    return " ".join(text.split())


def gold_aliases(gold: str | None) -> list[str]:
    """The folded aliases of a gold string ("/"-separated), empty ones dropped."""
    if gold is None:
        return []
    return [f for a in str(gold).split(GOLD_ALIAS_SEPARATOR) if (f := fold_text(a))]


def read_gold_number(raw: str) -> str | None:
    return normalize_number(raw)


def grade_number(answer: str | None, gold: str) -> bool:
    return numbers_equal(normalize_number(answer), gold)


def read_gold_letter(raw: str) -> str | None:
    """A gold option letter ("B", "(b)", "B)"); anything else is unreadable."""
    m = re.fullmatch(r"\s*\(?\s*([A-Ja-j])\s*\)?\.?\s*", str(raw))
    return m.group(1).upper() if m else None


def read_gold_text(raw: str) -> str | None:
    return str(raw) if gold_aliases(raw) else None


def grade_text_exact(answer: str | None, gold: str) -> bool:
    """The folded answer equals one of the gold's folded aliases."""
    return answer is not None and fold_text(answer) in gold_aliases(gold)


def grade_text_contains(answer: str | None, gold: str) -> bool:
    """One of the gold's folded aliases appears, as whole words, in the folded answer: the usual
    open-QA rule for a free-text answer ("awarded in 1901 to Wilhelm Rontgen" holds "wilhelm rontgen").
    Looser than a person's judgement (a hedge naming several candidates passes), so the
    ``correct`` judgements of a trace win where they exist (``RoutingData.correct``)."""
    if answer is None:
        return False
    text = f" {fold_text(answer)} "
    return any(f" {a} " in text for a in gold_aliases(gold))


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
    # Gold belongs to the task: ``read_gold`` turns a trace's raw gold string into what ``grade``
    # compares an answer with (None: this task cannot read it, an error naming the question), and
    # ``grade(answer, gold)`` says whether the answer is right.
    read_gold: Callable[[str], str | None] = read_gold_text
    grade: Callable[[str | None, str], bool] = grade_text_exact

    def gold_of(self, raw: str | None) -> str | None:
        """The gold as this task grades with, or None for no gold; ValueError when it cannot be read."""
        if raw is None:
            return None
        gold = self.read_gold(raw)
        if gold is None:
            raise ValueError(f"task {self.name!r} cannot read gold {raw!r}")
        return gold

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


register_extractor(
    AnswerTask("gsm8k", extract_gsm8k, numbers_equal, numeric=True, read_gold=read_gold_number, grade=grade_number)
)
register_extractor(AnswerTask("text", normalize_text, text_equal, numeric=False))
register_extractor(
    AnswerTask(
        "choice",
        extract_choice,
        choice_equal,
        numeric=False,
        uses_question=True,
        read_gold=read_gold_letter,
        grade=choice_equal,
    )  # fmt: skip
)
