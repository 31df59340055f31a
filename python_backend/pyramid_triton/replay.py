"""The replay engine: serve what a model really produced, from recorded traces.

A question is looked up by its exact text in the trace directory's
``questions.jsonl``; the engine returns the first recorded sample of its source
(the same sample offline evaluation uses). An unknown question, or a question
the source has no record for, is a ``NotFound`` error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyramid_moa.traces import TraceSet

from .protocol import EngineRequest, EngineResponse, NotFound


@dataclass
class ReplayEngine:
    source: str
    traces: Path
    by_question: dict[str, int]
    samples: dict[int, list]
    seconds_per_token: float = 0.0
    return_answer: bool = True

    @classmethod
    def open(
        cls, traces: str | Path, source: str, seconds_per_token: float = 0.0, return_answer: bool = True
    ) -> ReplayEngine:
        ts = TraceSet.open(traces)
        by_question: dict[str, int] = {}
        for q in ts.questions.values():
            by_question.setdefault(q.question, q.idx)
        if seconds_per_token < 0:
            raise ValueError(f"seconds_per_token must be >= 0, got {seconds_per_token}")
        return cls(source, Path(traces), by_question, ts.samples(source), seconds_per_token, return_answer)

    def generate(self, req: EngineRequest) -> EngineResponse:
        idx = self.by_question.get(req.text_input)
        if idx is None:
            idx = self.by_question.get(req.text_input.strip())
        if idx is None:
            snippet = req.text_input[:60] + ("..." if len(req.text_input) > 60 else "")
            raise NotFound(f"replay engine {self.source!r}: question not found in traces {self.traces}: {snippet!r}")
        rows = self.samples.get(idx)
        if not rows:
            raise NotFound(f"replay engine {self.source!r}: no recorded output for question idx {idx}")
        s = rows[0]
        return EngineResponse(
            text_output=s.text or "",
            output_tokens=s.output_tokens,
            cum_log_prob=s.cum_log_prob if req.return_log_probs else None,
            answer=s.answer,
            has_answer=self.return_answer,
        )

    def latency_s(self, resp: EngineResponse) -> float:
        """Emulated generation time (seconds per output token, per model)."""
        return self.seconds_per_token * (resp.output_tokens or 0)
