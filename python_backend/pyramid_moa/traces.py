"""The project's trace format: recorded model outputs per question.

Layout of a trace directory (adopted from ``shared/data/gsm8k``; see docs/TRACES.md):

* ``questions.jsonl``: ``{"idx", "question", "gold", ...}`` one per line.
* ``sources.json``: list of per-source metadata (``name``, ``params_b``,
  ``price_usd_per_1k_tokens``, ``license``, ...).
* ``traces/<source>.jsonl``: ``{"idx", "samples": [{"text", "answer", "output_tokens"}]}``;
  optional per-sample extras ``prompt_tokens``, ``cum_log_prob``, ``output_log_probs``, and
  ``correct`` (true/false: a judgement of the answer, by people or a judge; null: not judged).

Gold is kept as written: what it means belongs to the task that grades with it (``AnswerTask.read_gold``).

Everything is validated on load and every problem names its file and line,
because a silently skipped line would shift accuracies without anyone noticing.

A *shadow directory* (``SHADOW_MARKER`` at its top; written by the router's shadow sampling,
``pyramid_triton.shadow``) holds one trace directory per segment, appended to while the router
serves; it opens as one trace set, the segments' questions merged. Its records are written trace
lines first, question line last, so a record is complete once its question line is: there, a
torn last line (a write in progress or a crash) and trace lines whose question line is not written
yet are skipped; everything else is as strict as anywhere.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .features import AgentOutput

# A member may miss at most this fraction of the evaluated questions; its
# missing questions then count as failed calls (answer None, i.e. wrong), as
# the shared data README prescribes. More than that is a different question
# set, which would make the comparison meaningless, so it is an error.
MAX_MISSING_FRACTION = 0.01
SHADOW_MARKER = "pyramid-shadow.json"


class TraceError(ValueError):
    """A trace directory or file is malformed; the message names file and line."""


@dataclass(frozen=True)
class Sample:
    """One recorded generation of one model for one question."""

    text: str | None
    answer: str | None
    output_tokens: int | None
    prompt_tokens: int | None = None
    cum_log_prob: float | None = None
    correct: bool | None = None  # a recorded judgement of the answer (None: not judged)


def sample_output(name: str, s: Sample | None) -> AgentOutput:
    """What the router sees of model ``name``'s recorded sample; a missing record is a failed call."""
    if s is None:
        return AgentOutput(name, None, None, 0, failed=True)
    return AgentOutput(name, s.text, s.answer, s.output_tokens, s.prompt_tokens, s.cum_log_prob, judged=s.correct)


@dataclass(frozen=True)
class Question:
    idx: int
    question: str
    gold: str | None  # as written in questions.jsonl (a number as its string): the task reads it
    # The question's other scalar fields (a subject, a category, a source), as text: what
    # ``pyramid evaluate --by FIELD`` groups the figures by.
    tags: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class SourceInfo:
    """Per-source metadata: model size for FLOPs, prices for dollars, license for shipping."""

    name: str
    model: str = ""
    params_b: float | None = None
    price_in_per_1k: float | None = None
    price_out_per_1k: float | None = None
    license: str = "unknown"

    @classmethod
    def from_json(cls, row: dict) -> SourceInfo:
        price = row.get("price_usd_per_1k_tokens") or {}
        return cls(
            name=row["name"],
            model=row.get("model", ""),
            params_b=row.get("params_b"),
            price_in_per_1k=price.get("input"),
            price_out_per_1k=price.get("output"),
            license=row.get("license", "unknown"),
        )


@dataclass
class TraceSet:
    """Questions, source metadata and lazily loaded per-source samples of one trace directory."""

    root: Path
    questions: dict[int, Question]
    sources: dict[str, SourceInfo]
    _samples: dict[str, dict[int, list[Sample]]] = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | Path) -> TraceSet:
        root = Path(root)
        if not root.is_dir():
            raise TraceError(f"{root}: trace directory does not exist")
        if (root / SHADOW_MARKER).is_file():
            return cls._open_segments(root)
        questions = _load_questions(root / "questions.jsonl")
        sources = _load_sources(root / "sources.json")
        return cls(root=root, questions=questions, sources=sources)

    @classmethod
    def _open_segments(cls, root: Path) -> TraceSet:
        """A shadow directory: every segment's complete records, as one trace set (see the module doc)."""
        segments = sorted(p for p in root.iterdir() if p.is_dir() and (p / "sources.json").is_file())
        questions: dict[int, Question] = {}
        sources: dict[str, SourceInfo] = {}
        samples: dict[str, dict[int, list[Sample]]] = {}
        for seg in segments:
            qpath = seg / "questions.jsonl"
            qs = _load_questions(qpath, lenient=True) if qpath.is_file() else {}
            again = sorted(set(qs) & set(questions))
            if again:
                raise TraceError(f"{qpath}: idx {again[:5]} also in an earlier segment of {root}")
            questions.update(qs)
            sources.update(_load_sources(seg / "sources.json"))  # a later segment's facts win
            for path in sorted((seg / "traces").glob("*.jsonl")):
                samples.setdefault(path.stem, {}).update(_load_trace(path, qs, lenient=True))
        if not questions:
            raise TraceError(f"{root}: shadow directory holds no complete record yet")
        ts = cls(root=root, questions=questions, sources=sources)
        ts._samples = {name: samples.get(name, {}) for name in sources}
        return ts

    def source(self, name: str) -> SourceInfo:
        if name not in self.sources:
            known = ", ".join(sorted(self.sources)[:8])
            raise TraceError(f"unknown source {name!r}: not in {self.root / 'sources.json'} (e.g. {known}, ...)")
        return self.sources[name]

    def output(self, name: str, idx: int) -> AgentOutput:
        """Model ``name``'s first recorded sample for question ``idx`` as the router sees it (``sample_output``)."""
        rows = self.samples(name).get(idx)
        return sample_output(name, rows[0] if rows else None)

    def samples(self, name: str) -> dict[int, list[Sample]]:
        self.source(name)
        if name not in self._samples:
            self._samples[name] = _load_trace(self.root / "traces" / f"{name}.jsonl", self.questions)
        return self._samples[name]

    def first_samples(self, names: list[str]) -> tuple[list[int], dict[str, list[Sample | None]]]:
        """Align the first sample of each source on a common question list.

        Returns the evaluated idx list (all questions any source covers) and, per
        source, a list aligned with it (None where the source has no record).
        Raises TraceError if a source misses more than MAX_MISSING_FRACTION.
        """
        per_source = {n: self.samples(n) for n in names}
        idxs = sorted(set().union(*[set(s) for s in per_source.values()]))
        if not idxs:
            raise TraceError("the selected sources cover no questions")
        aligned: dict[str, list[Sample | None]] = {}
        for name, rows in per_source.items():
            missing = [i for i in idxs if i not in rows]
            if len(missing) > MAX_MISSING_FRACTION * len(idxs):
                raise TraceError(
                    f"mismatched question sets: source {name!r} covers {len(idxs) - len(missing)} of "
                    f"the {len(idxs)} questions the other sources cover (first missing idx: "
                    f"{missing[:5]}); choose sources recorded on the same questions"
                )
            if missing:
                print(
                    f"warning: source {name!r} has no record for idx {missing}; counted as failed calls (no answer)",
                    file=sys.stderr,
                )
            aligned[name] = [rows[i][0] if i in rows and rows[i] else None for i in idxs]
        return idxs, aligned


def _read_jsonl(path: Path, lenient: bool = False) -> list[tuple[int, dict]]:
    """``lenient`` (a shadow segment): a last line without its newline is a write in progress, skipped."""
    if not path.is_file():
        raise TraceError(f"{path}: file not found")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if lenient and not line.endswith("\n"):
                break  # only the last line can lack its newline
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise TraceError(f"{path}:{lineno}: expected a JSON object")
            rows.append((lineno, obj))
    return rows


def _idx_of(path: Path, lineno: int, obj: dict) -> int:
    idx = obj.get("idx")
    if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
        raise TraceError(f"{path}:{lineno}: missing or invalid 'idx' (got {idx!r})")
    return idx


def _load_questions(path: Path, lenient: bool = False) -> dict[int, Question]:
    out: dict[int, Question] = {}
    for lineno, obj in _read_jsonl(path, lenient):
        idx = _idx_of(path, lineno, obj)
        if idx in out:
            raise TraceError(f"{path}:{lineno}: duplicate idx {idx}")
        if not isinstance(obj.get("question"), str):
            raise TraceError(f"{path}:{lineno}: missing 'question' text")
        gold = obj.get("gold")
        if gold is not None and (isinstance(gold, bool) or not isinstance(gold, (str, int, float))):
            raise TraceError(f"{path}:{lineno}: 'gold' must be a string, a number or null, got {gold!r}")
        tags = {
            k: str(v)
            for k, v in obj.items()
            if k not in ("idx", "question", "gold") and isinstance(v, (str, int, float, bool))
        }
        out[idx] = Question(idx, obj["question"], None if gold is None else _gold_text(gold), tags)
    if not out and not lenient:
        raise TraceError(f"{path}: no questions")
    return out


def _gold_text(gold: str | int | float) -> str:
    """A gold as text; an integral float (``18.0``) written as the integer it is."""
    if isinstance(gold, float) and gold.is_integer():
        return str(int(gold))
    return str(gold).strip()


def read_json(path: Path, error: type[Exception] = ValueError, what: str = "file") -> Any:
    """The JSON document in ``path``; ``error`` naming the file (and the line) when it is missing or not JSON."""
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _load_sources(path: Path) -> dict[str, SourceInfo]:
    rows = read_json(path, TraceError)
    if not isinstance(rows, list):
        raise TraceError(f"{path}: expected a JSON list of source objects")
    out: dict[str, SourceInfo] = {}
    for k, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise TraceError(f"{path}: entry {k} has no 'name'")
        if row["name"] in out:
            raise TraceError(f"{path}: duplicate source name {row['name']!r}")
        out[row["name"]] = SourceInfo.from_json(row)
    return out


def _opt_num(path: Path, lineno: int, sample: dict, key: str, kind: type) -> int | float | None:
    value = sample.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TraceError(f"{path}:{lineno}: sample field {key!r} must be a number, got {value!r}")
    return kind(value)


def _load_trace(path: Path, questions: dict[int, Question], lenient: bool = False) -> dict[int, list[Sample]]:
    """``lenient`` (a shadow segment): a line whose question line is not written yet is skipped."""
    out: dict[int, list[Sample]] = {}
    for lineno, obj in _read_jsonl(path, lenient):
        idx = _idx_of(path, lineno, obj)
        if idx in out:
            raise TraceError(f"{path}:{lineno}: duplicate idx {idx}")
        if idx not in questions and lenient:
            continue
        if idx not in questions:
            raise TraceError(f"{path}:{lineno}: idx {idx} is not in questions.jsonl")
        samples = obj.get("samples")
        if not isinstance(samples, list):
            raise TraceError(f"{path}:{lineno}: missing 'samples' list")
        parsed = []
        for s in samples:
            if not isinstance(s, dict) or "answer" not in s:
                raise TraceError(f"{path}:{lineno}: each sample needs an 'answer' field")
            text = s.get("text")
            if text is not None and not isinstance(text, str):
                raise TraceError(f"{path}:{lineno}: sample 'text' must be a string or null")
            judged = s.get("correct")
            if judged is not None and not isinstance(judged, bool):
                raise TraceError(f"{path}:{lineno}: sample 'correct' must be true, false or null, got {judged!r}")
            parsed.append(
                Sample(
                    text=text,
                    answer=None if s["answer"] is None else str(s["answer"]),
                    output_tokens=_opt_num(path, lineno, s, "output_tokens", int),
                    prompt_tokens=_opt_num(path, lineno, s, "prompt_tokens", int),
                    cum_log_prob=_opt_num(path, lineno, s, "cum_log_prob", float),
                    correct=judged,
                )
            )
        out[idx] = parsed
    return out
