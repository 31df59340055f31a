"""Routing data: the committee's and oracle's recorded outputs aligned per question.

Built once from a trace directory; features for any agent subset, labels and
per-call costs are derived from it, so fitting and evaluation never re-read
files and every number comes from the same aligned rows.

*Labels*: what "a committee answer is correct" means is the one thing ``labels`` says, read by
``correct``: ``gold`` compares with the gold answers; ``oracle`` with the oracle's own answer under
the task's equality (no gold is read), so a router fitted on it reproduces the oracle at lower
cost. Where the reference is missing (no gold, or the oracle gave no answer) nothing is correct.
``with_labels`` gives the same rows under the other labels (caches shared), so the evaluator can
score a policy by both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from .answers import get_task
from .cost import COST_MODELS, CostModel, ModelCost, estimate_tokens
from .features import AgentOutput, make_feature_set
from .traces import TraceError, TraceSet, sample_output

LABELS = ("gold", "oracle")


@dataclass
class RoutingData:
    idxs: list[int]
    questions: list[str]
    gold: list[str | None]
    committee: list[str]
    oracle: str
    outputs: dict[str, list[AgentOutput]]
    cost_model: CostModel
    task: str = "gsm8k"
    labels: str = "gold"  # what correct() compares with: "gold" or "oracle" (see the module doc)
    # Answer equality where it is not the task's key equality (``semantic``: by embedding, with a
    # fitted threshold, see semantic.prepare): ``same`` between two answers, ``grade`` against gold.
    same: Callable[[str | None, str | None], bool] | None = None
    grade: Callable[[str | None, str | None], bool] | None = None
    feature_options: dict = field(default_factory=dict)  # passed to make_feature_set (semantic: threshold)
    _cost_cache: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    _feature_cache: dict[tuple, tuple[np.ndarray, list[str | None]]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.idxs)

    def __post_init__(self) -> None:
        if self.labels not in LABELS:
            raise ValueError(f"unknown labels {self.labels!r}; use one of {LABELS}")

    @property
    def has_gold(self) -> bool:
        """Every question has a gold answer."""
        return all(g is not None for g in self.gold)

    def reference(self) -> list[str | None]:
        """Per question, the answer ``correct`` compares with under ``labels``."""
        return list(self.gold) if self.labels == "gold" else self.answers(self.oracle)

    def with_labels(self, labels: str) -> RoutingData:
        """The same rows under other labels (feature and cost caches shared)."""
        return self if labels == self.labels else replace(self, labels=labels)

    @property
    def equal_answers(self) -> Callable[[str | None, str | None], bool]:
        """Whether two answers agree (committee vs oracle)."""
        return self.same or get_task(self.task).equal

    @property
    def equal_gold(self) -> Callable[[str | None, str | None], bool]:
        """Whether an answer is the gold one."""
        return self.grade or self.equal_answers

    def correct(self, answers: list[str | None]) -> np.ndarray:
        eq = self.equal_gold if self.labels == "gold" else self.equal_answers
        return np.array([g is not None and eq(a, g) for a, g in zip(answers, self.reference())], dtype=bool)

    def answers(self, name: str) -> list[str | None]:
        return [o.answer for o in self.outputs[name]]

    def prompt_tokens(self, i: int, out: AgentOutput) -> int:
        """Recorded prompt tokens, else the question's chars/4: every tier gets the same prompt."""
        return out.prompt_tokens if out.prompt_tokens is not None else estimate_tokens(self.questions[i])

    def call_costs(self, kind: str, name: str) -> np.ndarray:
        """Cost of calling ``name`` on each question (0 where the source has no record)."""
        key = (kind, name)
        if key not in self._cost_cache:
            outs = self.outputs[name]
            self._cost_cache[key] = np.array(
                [
                    self.cost_model.call_cost(kind, name, self.prompt_tokens(i, o), o.output_tokens or 0)
                    for i, o in enumerate(outs)
                ]
            )
        return self._cost_cache[key]

    def cost_kinds(self) -> list[str]:
        return [k for k in COST_MODELS if self.cost_model.available(k, [*self.committee, self.oracle])]

    def all_failed(self, agents: list[str]) -> np.ndarray:
        """Per question: every one of ``agents`` failed (``Router.decide`` then escalates at once)."""
        return np.array([all(self.outputs[a][i].failed for a in agents) for i in range(self.n)], dtype=bool)

    def features(
        self, feature_set: str, agents: list[str], weights: list[float] | None = None
    ) -> tuple[np.ndarray, list[str | None]]:
        """Feature matrix and committee vote answers for an agent subset, with the vote weighted by
        ``weights`` if given (cached)."""
        opts = self.feature_options
        key = (feature_set, tuple(agents), None if weights is None else tuple(weights), tuple(sorted(opts.items())))
        if key not in self._feature_cache:
            fs = make_feature_set(feature_set, agents, numeric=get_task(self.task).numeric, weights=weights, **opts)
            rows, tops = [], []
            cols = [self.outputs[a] for a in agents]
            for i, q in enumerate(self.questions):
                x, vote = fs(q, [c[i] for c in cols])
                rows.append(x)
                tops.append(vote.answer)
            self._feature_cache[key] = (np.array(rows, dtype=float), tops)
        return self._feature_cache[key]


def parse_overrides(items: list[str] | None, what: str) -> dict[str, list[float]]:
    """Parse ``NAME=V[,V]`` command-line overrides into floats, naming the bad item."""
    out: dict[str, list[float]] = {}
    for item in items or []:
        name, sep, vals = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = [float(v) for v in vals.split(",")]
        except ValueError:
            raise ValueError(f"bad {what} {item!r}: expected NAME=NUMBER[,NUMBER]") from None
    return out


def load_routing_data(
    traces: str,
    committee: list[str],
    oracle: str,
    task: str = "gsm8k",
    params: dict[str, list[float]] | None = None,
    prices: dict[str, list[float]] | None = None,
    labels: str | None = None,
) -> RoutingData:
    """Align first samples of the committee and oracle on a common question set.

    ``labels``: ``gold``, ``oracle``, or None for ``gold`` when every question has a gold answer
    and ``oracle`` otherwise. ``gold`` on questions without gold is an error naming the file."""
    if labels is not None and labels not in LABELS:
        raise ValueError(f"unknown labels {labels!r}; use one of {LABELS}")
    if len(committee) < 2:
        raise TraceError(f"a committee needs at least two agents, got {committee}")
    if len(set(committee)) != len(committee) or oracle in committee:
        raise TraceError(f"committee and oracle must be distinct models: {committee} / {oracle}")
    ts = TraceSet.open(traces)
    names = [*committee, oracle]
    for n in names:
        ts.source(n)
    for n in [*(params or {}), *(prices or {})]:
        if n not in names:
            raise TraceError(f"--params/--price names {n!r}, which is neither in the committee nor the oracle")
    idxs, aligned = ts.first_samples(names)
    outputs: dict[str, list[AgentOutput]] = {}
    for n in names:
        outputs[n] = [sample_output(n, s) for s in aligned[n]]
    models = {}
    for n in names:
        info = ts.source(n)
        p_b = (params or {}).get(n, [info.params_b])[0]
        pr = (prices or {}).get(n)
        if pr is not None and len(pr) != 2:
            raise ValueError(f"--price {n}= needs two numbers IN,OUT (USD per 1k tokens)")
        p_in, p_out = pr if pr is not None else (info.price_in_per_1k, info.price_out_per_1k)
        models[n] = ModelCost(p_b, p_in, p_out)
    questions = [ts.questions[i].question for i in idxs]
    gold = [ts.questions[i].gold for i in idxs]
    missing = [i for i, g in zip(idxs, gold) if g is None]
    if labels is None:
        labels = "oracle" if missing else "gold"
    if labels == "gold" and missing:
        how = "it was recorded without gold answers" if len(missing) == len(idxs) else f"first: idx {missing[:5]}"
        raise TraceError(
            f"{ts.root / 'questions.jsonl'}: {len(missing)} of {len(idxs)} questions have no gold answer ({how}); "
            "--labels gold needs one for every question: use --labels oracle (agreement with the oracle)"
        )
    return RoutingData(idxs, questions, gold, list(committee), oracle, outputs, CostModel(models), task, labels)
