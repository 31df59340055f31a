"""What a free-text answer asserts, and whether two answers assert the same thing.

A chat model answers "who got the first Nobel prize in physics" with a paragraph; a reader model
with the span "Wilhelm Rontgen". Whole-text embeddings compare wording and length, so the span and
the paragraph look far apart while two paragraphs naming different laureates look close (issue 21).
Here an answer is reduced to its *core*: the words it adds to the question (content words, the
question's own words removed), its numbers and its named entities, and a short core text (the
answer itself when short, else its first sentence that says something the question does not).
Two cores are compared by signals that read the claim: normalised containment of a short answer in
the other, coverage of the shorter core's words by the other answer, word overlap, shared or
conflicting numbers and entities, and (optionally) the cosine of the core texts' embeddings.

The signals are combined into P(same answer) by a small model (``PairModel``): a two-class
latent-class model over the signals, binned. It is fitted without labels by EM (the "same" class is
the one whose answers cover each other), or by counting on labelled pairs where judgements exist
(two answers both judged right: same; one right, one wrong: different). Its parameters are a few
dozen numbers, stored in the calibration artifact.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .answers import fold_text

# Words that carry no claim: function words and the scaffolding chat models wrap answers in.
STOPWORDS = frozenset(
    """a an the of in on at to for by with from and or nor is was were are be been being it its this that
    these those which who whom whose what when where why how as his her hers their theirs he she they them
    i you we our your my me us not no do does did done has have had will would can could should may might
    must shall there here also than then so such but if into about over after before during between under
    up out only one more most some any all other each both either neither very much many well first last
    answer question according known called named based said says say year years time times date
    wikipedia source sources sorry however hello bing search result results information""".split()
)
SHORT_WORDS = 6  # an answer with at most this many content words is a span: it is its own core
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# A capitalised run ("Wilhelm Conrad Rontgen", "New York City"), allowing lower-case joiners inside.
_ENTITY = re.compile(r"[A-Z][\w'\-]*(?:\s+(?:of|de|la|le|von|van|der|da|del|and|&)?\s*[A-Z][\w'\-]*)*")
_HEDGE = re.compile(
    r"(?i)\b(i'?m sorry|i am sorry|as an ai|i (?:do not|don't) (?:know|have)|not sure|cannot|can't|unable|"
    r"no (?:information|record|evidence)|unclear|not possible|no one knows|unknown|depends on|"
    r"there (?:is|are) (?:no|several|many|multiple)|it is difficult)\b"
)


@dataclass(frozen=True)
class Core:
    """What one answer asserts (see the module doc)."""

    text: str  # the core text: what is embedded
    folded: str  # the whole answer, folded (``fold_text``)
    words: frozenset[str]  # content words of the core text
    all_words: frozenset[str]  # content words of the whole answer
    numbers: frozenset[str]
    entities: frozenset[str]  # folded capitalised runs of the core text, question words removed
    hedge: bool  # the answer hedges or refuses


def _content(folded: str, drop: frozenset[str]) -> list[str]:
    return [w for w in folded.split() if w not in STOPWORDS and w not in drop and (len(w) > 1 or w.isdigit())]


def question_words(question: str | None) -> frozenset[str]:
    return frozenset(fold_text(question).split()) if question else frozenset()


def answer_core(answer: str | None, question: str | None = None) -> Core | None:
    """The core of ``answer`` given the question it answers (None for no answer)."""
    if answer is None or not answer.strip():
        return None
    qwords = question_words(question)
    text = " ".join(answer.split())
    all_words = _content(fold_text(text), qwords)
    core_text = text
    if len(all_words) > SHORT_WORDS:
        for sentence in _SENTENCE.split(text):
            if _content(fold_text(sentence), qwords) and not _HEDGE.search(sentence[:40]):
                core_text = sentence
                break
    words = _content(fold_text(core_text), qwords)
    entities = set()
    for m in _ENTITY.finditer(core_text):
        e = " ".join(_content(fold_text(m.group(0)), qwords))
        if e:
            entities.add(e)
    numbers = {n.replace(",", "") for n in _NUMBER.findall(core_text)}
    return Core(
        core_text,
        fold_text(text),
        frozenset(words),
        frozenset(all_words),
        frozenset(numbers),
        frozenset(entities),
        bool(_HEDGE.search(text)),
    )


def embedding_text(answer: str, question: str | None = None) -> str:
    """The text whose embedding stands for an answer: its core text (the answer itself when short)."""
    core = answer_core(answer, question)
    return core.text if core is not None else answer


# ---- pair signals -----------------------------------------------------------------------------------
SIGNALS = ("contained", "covered", "overlap", "number", "entity", "cosine")
# Bins per signal: each signal's value is cut into these levels (the latent-class model's categories).
_COVER_CUTS = (0.34, 0.67, 0.999)
_OVERLAP_CUTS = (0.1, 0.3, 0.6)
_COSINE_CUTS = (0.4, 0.6, 0.8)
LEVELS = {"contained": 2, "covered": 4, "overlap": 4, "number": 3, "entity": 3, "cosine": 4}


def _contained(small: Core, big: Core) -> bool:
    return bool(small.folded) and f" {small.folded} " in f" {big.folded} "


def pair_levels(a: Core, b: Core, cosine: float | None = None) -> list[int]:
    """Each signal's level for the pair (a level per ``SIGNALS``; cosine level 0 when not given,
    and a model fitted without cosine ignores it)."""
    small, big = (a, b) if len(a.all_words) <= len(b.all_words) else (b, a)
    contained = int(len(small.all_words) <= SHORT_WORDS and _contained(small, big))
    sw = small.words or small.all_words
    covered = len(sw & big.all_words) / len(sw) if sw else 0.0
    union = a.words | b.words
    overlap = len(a.words & b.words) / len(union) if union else 0.0
    if a.numbers and b.numbers:
        number = 2 if a.numbers & b.numbers else 1  # 2: a shared number; 1: numbers that conflict
    else:
        number = 0
    if a.entities and b.entities:
        shared = any(x == y or f" {x} " in f" {y} " or f" {y} " in f" {x} " for x in a.entities for y in b.entities)
        entity = 2 if shared else 1
    else:
        entity = 0
    return [
        contained,
        int(np.searchsorted(_COVER_CUTS, covered, side="right")),
        int(np.searchsorted(_OVERLAP_CUTS, overlap, side="right")),
        number,
        entity,
        0 if cosine is None else int(np.searchsorted(_COSINE_CUTS, cosine, side="right")),
    ]


@dataclass
class PairModel:
    """P(two answers are the same answer | their signals' levels): a two-class latent-class model
    (naive Bayes over the signals' levels). ``prior``: P(same); ``tables[s][c][level]``: P(level | class
    c), c = 0 different, 1 same. ``signals``: the signals it reads (cosine only where fitted with it)."""

    prior: float
    tables: dict[str, list[list[float]]]
    signals: tuple[str, ...]
    fitted: str = "prior"  # how: "em" (label-free), "judgements", or "prior" (the built-in default)

    def prob(self, levels: Sequence[int]) -> float:
        log = [math.log(1 - self.prior), math.log(self.prior)]
        for s, lv in zip(SIGNALS, levels):
            if s in self.tables:
                for c in (0, 1):
                    log[c] += math.log(self.tables[s][c][lv])
        m = max(log)
        e = [math.exp(v - m) for v in log]
        return e[1] / (e[0] + e[1])

    def same(self, a: Core | None, b: Core | None, cosine: float | None = None) -> float:
        if a is None or b is None:
            return 0.0
        return self.prob(pair_levels(a, b, cosine))

    @property
    def uses_embedding(self) -> bool:
        return "cosine" in self.signals

    def to_dict(self) -> dict:
        return {"prior": self.prior, "tables": self.tables, "signals": list(self.signals), "fitted": self.fitted}

    @classmethod
    def from_dict(cls, d: dict) -> PairModel:
        try:
            model = cls(float(d["prior"]), {k: [list(map(float, r)) for r in v] for k, v in d["tables"].items()},
                        tuple(d["signals"]), str(d.get("fitted", "prior")))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed pair model ({exc})") from None
        unknown = [s for s in model.signals if s not in SIGNALS]
        if unknown or set(model.tables) != set(model.signals):
            raise ValueError(f"pair model signals {list(model.signals)} do not match this code's {list(SIGNALS)}")
        return model


PRIOR_PAIRS = 20.0  # EM's pseudo-pairs per class drawn from the built-in model: a small set cannot undo it


def _tables(
    levels: np.ndarray, resp: np.ndarray, signals: Sequence[str], smooth: float = 1.0, prior: dict | None = None
) -> dict:
    """Class-conditional level frequencies from responsibilities ``resp`` = P(same), smoothed by one
    pseudo-count a level, or by ``PRIOR_PAIRS`` pairs distributed as ``prior``'s tables."""
    out = {}
    for s in signals:
        k = SIGNALS.index(s)
        rows = []
        for c, w in enumerate((1 - resp, resp)):
            counts = np.array([w[levels[:, k] == lv].sum() for lv in range(LEVELS[s])], float)
            counts += PRIOR_PAIRS * np.array(prior[s][c]) if prior is not None else smooth
            rows.append((counts / counts.sum()).tolist())
        out[s] = rows
    return out


def default_pair_model(with_cosine: bool = False) -> PairModel:
    """The built-in model before any fit: containment or full coverage mean the same answer; no
    shared words, or conflicting numbers or entities, mean another. EM starts from it."""
    levels, same = [], []
    grid = [range(LEVELS[s]) for s in SIGNALS]
    for lv in np.array(np.meshgrid(*grid, indexing="ij")).reshape(len(SIGNALS), -1).T:
        levels.append(lv)
        score = 2.0 * lv[0] + lv[1] + 0.5 * lv[2] - (lv[3] == 1) - (lv[4] == 1) + (lv[3] == 2) + (lv[4] == 2)
        if with_cosine:
            score += 0.5 * (lv[5] - 1.5)
        same.append(1.0 / (1.0 + math.exp(-(score - 2.0))))
    signals = SIGNALS if with_cosine else SIGNALS[:-1]
    resp = np.array(same)
    return PairModel(float(resp.mean()), _tables(np.array(levels), resp, signals), tuple(signals), "prior")


def fit_pair_model(levels: np.ndarray, same: np.ndarray | None = None, with_cosine: bool = False,
                   iterations: int = 50) -> PairModel:  # fmt: skip
    """Fit on pairs' signal levels (rows of ``pair_levels``). ``same`` (bool per pair): labelled pairs,
    fitted by counting; without it, EM from the built-in model (label-free)."""
    levels = np.asarray(levels, int)
    signals = SIGNALS if with_cosine else SIGNALS[:-1]
    if len(levels) < 20:
        raise ValueError(f"too few answer pairs to fit a pair model: {len(levels)} (need 20)")
    if same is not None:
        same = np.asarray(same, float)
        if same.min() == same.max():
            raise ValueError("pair labels are all one class: cannot fit a pair model from them")
        return PairModel(float(same.mean()), _tables(levels, same, signals), tuple(signals), "judgements")
    start = default_pair_model(with_cosine)
    resp = np.array([start.prob(lv) for lv in levels])
    for _ in range(iterations):
        tables = _tables(levels, resp, signals, prior=start.tables)
        model = PairModel(float(np.clip(resp.mean(), 0.05, 0.95)), tables, tuple(signals), "em")
        new = np.array([model.prob(lv) for lv in levels])
        if np.abs(new - resp).max() < 1e-6:
            break
        resp = new
    # The "same" class is the one whose answers cover each other: swap the labels if EM flipped them.
    cov = SIGNALS.index("covered")
    if (levels[:, cov] * resp).sum() / max(resp.sum(), 1e-9) < (levels[:, cov] * (1 - resp)).sum() / max(
        (1 - resp).sum(), 1e-9
    ):
        model = PairModel(1 - model.prior, {s: t[::-1] for s, t in model.tables.items()}, model.signals, "em")
    return model


def hedges(answer: str | None) -> bool:
    """The answer hedges or refuses ("I'm sorry, I cannot ...", "there are several ...")."""
    return bool(answer) and bool(_HEDGE.search(answer))
