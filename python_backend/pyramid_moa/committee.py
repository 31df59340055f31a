"""The committee as every feature set sees it: one agent's output, the vote over them, the
``FeatureSet`` base class and the registry of feature sets by name.

Apart from ``features`` (the sets over answer keys) so that a set defined elsewhere (``semantic``:
answers grouped by meaning) builds on it without importing ``features``, which registers that set by
importing it: ``features -> semantic -> committee``, no cycle. ``features`` re-exports every name
here; import them from there.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .answers import answer_key
from .registry import lookup


@dataclass(frozen=True)
class AgentOutput:
    """One agent's reply as the router sees it (offline from a trace, online from an engine)."""

    agent: str
    text: str | None
    answer: str | None
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    cum_log_prob: float | None = None
    failed: bool = False  # the call errored or timed out (serving); offline always False
    # The answer's sentence embedding (unit vector), for tasks that compare answers by meaning
    # (``semantic.py``); None for tasks that compare keys.
    embedding: Any = field(default=None, compare=False, repr=False)
    # A recorded judgement of the answer (trace field ``correct``); offline only, never served.
    judged: bool | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Vote:
    """The committee's plurality answer and the support behind it."""

    answer: str | None
    key: str | None
    count: int
    n_distinct: int
    keys: tuple[str | None, ...]


def committee_vote(
    outputs: Sequence[AgentOutput], numeric: bool = True, weights: Sequence[float] | None = None
) -> Vote:
    """The answer with the most support among non-null answers; ties go to the earliest agent (as in
    the trace README). Support is a count (plurality), or with ``weights`` (one per agent, e.g.
    ``vote_weights``) their sum, so that one reliable model is not outvoted by two weak ones."""
    keys = tuple(answer_key(o.answer, numeric) for o in outputs)
    counts: dict[str, int] = {}
    support: dict[str, float] = {}
    first: dict[str, int] = {}
    for pos, k in enumerate(keys):
        if k is None:
            continue
        counts[k] = counts.get(k, 0) + 1
        support[k] = support.get(k, 0.0) + (1.0 if weights is None else weights[pos])
        first.setdefault(k, pos)
    if not counts:
        return Vote(None, None, 0, 0, keys)
    best = max(counts, key=lambda k: (support[k], -first[k]))
    return Vote(outputs[first[best]].answer, best, counts[best], len(counts), keys)


def vote_weights(accuracies: Sequence[float], floor: float = 0.02) -> list[float]:
    """Reliability weights for ``committee_vote``: the log-odds of each agent being right on its own
    (the weighted-majority rule that is optimal for independent voters), from accuracies measured
    on fitting questions; clipped so that no agent gets infinite or negative say."""
    out = []
    for acc in accuracies:
        a = min(max(float(acc), 0.5 + floor), 1.0 - floor)
        out.append(math.log(a / (1.0 - a)))
    return out


class FeatureSet(ABC):
    """Maps a question and the outputs of a fixed, ordered agent list to a feature vector."""

    name: str = ""
    # True where the features are the same whichever agent said what (no per-agent feature). A vote
    # weighted per agent would break that, so the fit keeps such sets on a plain plurality vote.
    symmetric: bool = False
    # Keyword options the constructor takes besides agents, numeric and weights (make_feature_set).
    options: tuple[str, ...] = ()
    # True where the features read the answers' embeddings (AgentOutput.embedding): a server must then
    # embed each stage's answers before it decides, and needs an embedder model.
    uses_embedding: bool = False

    def __init__(self, agents: Sequence[str], numeric: bool = True, weights: Sequence[float] | None = None) -> None:
        if len(agents) == 0:
            raise ValueError("a feature set needs at least one agent")
        if len(set(agents)) != len(agents):
            raise ValueError(f"duplicate agent names in {list(agents)}")
        if weights is not None and (len(weights) != len(agents) or not all(math.isfinite(w) for w in weights)):
            raise ValueError(f"vote weights must be one finite number per agent {list(agents)}, got {list(weights)}")
        self.agents = list(agents)
        self.numeric = numeric
        self.weights = None if weights is None else [float(w) for w in weights]

    @property
    @abstractmethod
    def names(self) -> list[str]:
        """Feature names, in vector order."""

    @abstractmethod
    def compute(self, question: str, outputs: Sequence[AgentOutput], vote: Vote) -> list[float]:
        """The feature vector for one question."""

    def check_outputs(self, outputs: Sequence[AgentOutput]) -> None:
        got = [o.agent for o in outputs]
        if got != self.agents:
            raise ValueError(f"feature set expects agents {self.agents} in that order, got {got}")

    def __call__(self, question: str, outputs: Sequence[AgentOutput]) -> tuple[list[float], Vote]:
        self.check_outputs(outputs)
        vote = committee_vote(outputs, self.numeric, self.weights)
        return self.compute(question, outputs, vote), vote


_FEATURE_SETS: dict[str, Callable[..., FeatureSet]] = {}


def register_feature_set(cls: type[FeatureSet]) -> type[FeatureSet]:
    if cls.name in _FEATURE_SETS:
        raise ValueError(f"feature set {cls.name!r} is already registered")
    _FEATURE_SETS[cls.name] = cls
    return cls


def make_feature_set(
    name: str, agents: Sequence[str], numeric: bool = True, weights: Sequence[float] | None = None, **options: Any
) -> FeatureSet:
    """The feature set ``name`` over ``agents``; ``weights``: reliability weights of the vote;
    ``options``: what the set itself needs (``semantic``: ``similarity_threshold``)."""
    cls = lookup(_FEATURE_SETS, name, "feature set")
    # The task's options (RoutingData.feature_options, an artifact's task_options) go to every set;
    # each takes the ones it names.
    return cls(agents, numeric, weights, **{k: v for k, v in options.items() if k in cls.options})


def feature_set_names() -> list[str]:
    return sorted(_FEATURE_SETS)


def judgement_maps(outputs: dict[str, list[AgentOutput]], names: list[str], numeric: bool) -> list[dict[str, bool]]:
    """Per question, {answer key: its recorded judgement} over ``names``' outputs (keys by ``answer_key``:
    two models giving the same answer share it; should their judgements differ, "wrong" wins)."""
    n = len(outputs[names[0]])
    maps: list[dict[str, bool]] = [{} for _ in range(n)]
    for name in names:
        for i, o in enumerate(outputs[name]):
            if o.answer is not None and o.judged is not None:
                key = answer_key(o.answer, numeric)
                maps[i][key] = maps[i].get(key, True) and o.judged
    return maps
