"""The ``semantic`` task: answers grouped by meaning, for prompts with no single right string.

Two models almost never write the same sentence, so agreement on a free-form prompt ("Explain why
the sky is blue") has to be measured on meaning. Each answer is embedded (``embedding.py``,
all-MiniLM-L6-v2, unit vectors, cosine = dot product); two answers are in one group when their
cosine similarity reaches a threshold, and groups are the connected components of that relation
(within a committee of a handful of answers, chaining is rare, and the grouping does not depend
on the order the answers arrived in). The vote is the group with the most support (a count, or
the sum of the stage's ``vote_weights``); the answer returned is the text of that group's most
central member (the highest mean similarity to the rest of its group), never a concatenation.

The threshold is fitted on data without labels (``fit_similarity_threshold``: Otsu's split of the
committee's pairwise similarities, the cut that best separates "close" from "far" pairs), or with
pair labels where they exist (``same`` pairs, e.g. equal GSM8K numbers: the cut with the best
balanced accuracy). A semantic task has no gold strings: it is calibrated with oracle-agreement
labels (``RoutingData.labels == "oracle"``): a committee answer counts as correct when the oracle's
answer is in the same group as it (similarity to it at or above the threshold).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .answers import AnswerTask, get_task, register_extractor
from .committee import AgentOutput, FeatureSet, Vote, register_feature_set

# Where the command line keeps embeddings of recorded outputs (each text embedded once across runs).
DEFAULT_EMBEDDING_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "pyramid-moa"
    / ("embeddings-all-MiniLM-L6-v2.npz")
)
DEFAULT_SIMILARITY = 0.8  # used only where no fitted threshold is given (unit tests, a bare FeatureSet)
TASK = "semantic"


def normalize_answer(text: str | None) -> str | None:
    """The semantic task's answer: the whole output, stripped; an empty output is no answer."""
    if text is None:
        return None
    text = text.strip()
    return text or None


def embedding_text(answer: str, question: str) -> str:
    """The text embedded for an answer of the semantic task (every place that embeds an answer calls
    this: the router's embedder call, the offline preparation): the answer itself, for now."""
    return answer


def _unset_equal(a: str | None, b: str | None) -> bool:
    raise RuntimeError(
        "semantic answers compare by embedding: use semantic_equal(lookup, threshold) (RoutingData.same), "
        "not the task's string equality"
    )


def semantic_equal(lookup: Callable[[str], np.ndarray], threshold: float) -> Callable[[str | None, str | None], bool]:
    """Equality of two answers under the semantic task: cosine similarity >= ``threshold``."""

    def equal(a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return False
        return a == b or float(lookup(a) @ lookup(b)) >= threshold

    return equal


def groups(sim: np.ndarray, valid: Sequence[bool], threshold: float) -> list[int | None]:
    """Group label per answer (None where not ``valid``): connected components of sim >= threshold,
    labelled 0, 1, ... in order of each group's first member."""
    n = len(valid)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if valid[i] and valid[j] and sim[i, j] >= threshold:
                parent[find(j)] = find(i)
    labels: dict[int, int] = {}
    out: list[int | None] = []
    for i in range(n):
        if not valid[i]:
            out.append(None)
            continue
        out.append(labels.setdefault(find(i), len(labels)))
    return out


def _similarities(outputs: Sequence[AgentOutput]) -> tuple[np.ndarray, list[bool]]:
    valid = [not o.failed and o.answer is not None for o in outputs]
    for o, v in zip(outputs, valid):
        if v and o.embedding is None:
            raise ValueError(f"semantic vote: agent {o.agent}'s answer has no embedding (embed answers first)")
    dim = next((len(o.embedding) for o, v in zip(outputs, valid) if v), 1)
    E = np.array(
        [np.asarray(o.embedding, np.float32) if v else np.zeros(dim, np.float32) for o, v in zip(outputs, valid)]
    )
    return E @ E.T, valid


def semantic_vote(
    outputs: Sequence[AgentOutput], threshold: float, weights: Sequence[float] | None = None
) -> tuple[Vote, np.ndarray, list[int | None]]:
    """(the vote, the pairwise similarities, the group per answer). Keys are ``"g<k>"`` per question;
    support is a count or the sum of ``weights``; ties go to the group whose first member came first;
    the answer is the group's most central member (ties: the earliest)."""
    sim, valid = _similarities(outputs)
    labels = groups(sim, valid, threshold)
    keys = tuple(None if g is None else f"g{g}" for g in labels)
    if not any(valid):
        return Vote(None, None, 0, 0, keys), sim, labels
    n_groups = max(g for g in labels if g is not None) + 1
    support = [0.0] * n_groups
    count = [0] * n_groups
    for pos, g in enumerate(labels):
        if g is not None:
            support[g] += 1.0 if weights is None else weights[pos]
            count[g] += 1
    best = max(range(n_groups), key=lambda g: (support[g], -g))
    members = [i for i, g in enumerate(labels) if g == best]
    centrality = [sim[i, members].sum() - 1.0 for i in members]
    central = members[int(np.argmax(centrality))]
    return Vote(outputs[central].answer, f"g{best}", count[best], n_groups, keys), sim, labels


class SemanticFeatures(FeatureSet):
    """The group structure of the committee's answers.

    Shares and sizes (the winning group's share, the runner-up's, the number of groups, their
    entropy), how close the answers are (mean similarity within the winning group, between it and
    the others, over all pairs, the least similar pair), failures, which agents agree with the
    winner, and output length. No number parsing: it applies to any prompt.
    """

    name = "semantic"
    options = ("similarity_threshold",)

    def __init__(
        self,
        agents: Sequence[str],
        numeric: bool = False,
        weights: Sequence[float] | None = None,
        similarity_threshold: float = DEFAULT_SIMILARITY,
    ) -> None:
        super().__init__(agents, numeric, weights)
        if not -1.0 <= similarity_threshold <= 1.0:
            raise ValueError(f"similarity_threshold must be within [-1, 1], got {similarity_threshold}")
        self.similarity_threshold = float(similarity_threshold)

    @property
    def names(self) -> list[str]:
        return [
            "vote_share",
            "runner_up_share",
            "groups_frac",
            "group_entropy",
            "parse_fail_frac",
            "failed_frac",
            "sim_within_winner",
            "sim_between",
            "sim_mean",
            "sim_min",
            *[f"agrees[{a}]" for a in self.agents],
            "log_tokens_mean",
        ]

    def __call__(self, question: str, outputs: Sequence[AgentOutput]) -> tuple[list[float], Vote]:
        self.check_outputs(outputs)
        vote, sim, labels = semantic_vote(outputs, self.similarity_threshold, self.weights)
        return self._features(outputs, vote, sim, labels), vote

    def compute(self, question: str, outputs: Sequence[AgentOutput], vote: Vote) -> list[float]:
        _, sim, labels = semantic_vote(outputs, self.similarity_threshold, self.weights)
        return self._features(outputs, vote, sim, labels)

    def _features(
        self, outputs: Sequence[AgentOutput], vote: Vote, sim: np.ndarray, labels: list[int | None]
    ) -> list[float]:
        n = len(outputs)
        sizes = sorted((labels.count(g) for g in set(labels) if g is not None), reverse=True)
        valid = [i for i, g in enumerate(labels) if g is not None]
        win = [i for i in valid if vote.key == f"g{labels[i]}"]
        rest = [i for i in valid if i not in win]

        def mean_sim(a: list[int], b: list[int], same: bool) -> float:
            vals = [sim[i, j] for i in a for j in b if (i < j if same else True)]
            return float(np.mean(vals)) if vals else 1.0 if same else 0.0

        pairs = [sim[i, j] for i in valid for j in valid if i < j]
        entropy = -sum((s / n) * math.log(s / n) for s in sizes)
        toks = [math.log1p(o.output_tokens or 0) for o in outputs]
        return [
            vote.count / n,
            (sizes[1] if len(sizes) > 1 else 0) / n,
            len(sizes) / n,
            entropy,
            sum(o.answer is None and not o.failed for o in outputs) / n,
            sum(o.failed for o in outputs) / n,
            mean_sim(win, win, True),
            mean_sim(win, rest, False),
            float(np.mean(pairs)) if pairs else 0.0,
            float(np.min(pairs)) if pairs else 0.0,
            *[float(i in win) for i in range(n)],
            sum(toks) / n,
        ]


class SymmetricSemanticFeatures(SemanticFeatures):
    """``semantic`` without which-agent features: the same whoever said what, so a calibration fitted
    on one committee can be moved to another of the same size (scripts/relabel_calibration.py; the
    llamacpp profile's transfer)."""

    name = "semantic_symmetric"
    symmetric = True

    @property
    def names(self) -> list[str]:
        return [n for n in super().names if not n.startswith("agrees[")]

    def _features(
        self, outputs: Sequence[AgentOutput], vote: Vote, sim: np.ndarray, labels: list[int | None]
    ) -> list[float]:
        full = super()._features(outputs, vote, sim, labels)
        return [v for n, v in zip(super().names, full) if not n.startswith("agrees[")]


FEATURE_SETS = (SemanticFeatures.name, SymmetricSemanticFeatures.name)  # the sets that group by meaning


def otsu_threshold(values: np.ndarray, bins: int = 200) -> float:
    """Otsu's threshold: the cut maximising the between-class variance of ``values``."""
    values = np.asarray(values, float)
    if len(values) < 2 or values.min() == values.max():
        raise ValueError("need at least two distinct similarities to fit a threshold")
    hist, edges = np.histogram(values, bins=bins)
    p = hist / hist.sum()
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centers)
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    # Every cut inside an empty stretch of the histogram scores the same: take the middle of the
    # best ones, not the first (which would sit at the edge of the lower cluster).
    best = np.flatnonzero(np.isclose(between, between.max(), rtol=1e-9, atol=0.0))
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)


def fit_similarity_threshold(sims: np.ndarray, same: np.ndarray | None = None) -> float:
    """The grouping threshold from pairwise similarities of committee answers.

    ``same`` (optional, one bool per pair): pairs known to mean the same; then the threshold with
    the best balanced accuracy at telling them apart (midpoint between neighbouring values).
    Without it, Otsu's threshold (no labels needed).
    """
    sims = np.asarray(sims, float)
    if same is None:
        return otsu_threshold(sims)
    same = np.asarray(same, bool)
    if same.all() or not same.any():
        raise ValueError("pair labels are all one class: cannot fit a threshold from them")
    cand = np.unique(sims)
    cuts = np.r_[cand[0] - 1e-6, (cand[:-1] + cand[1:]) / 2]
    tpr = np.array([(sims[same] >= c).mean() for c in cuts])
    tnr = np.array([(sims[~same] < c).mean() for c in cuts])
    return float(cuts[int(np.argmax(tpr + tnr))])


def committee_pair_similarities(data, agents: Sequence[str], rows: Sequence[int] | None = None) -> np.ndarray:
    """Every pairwise similarity between answers of ``agents`` on the same question (``rows``: which)."""
    rows = range(data.n) if rows is None else rows
    out = []
    for r in rows:
        outs = [data.outputs[a][r] for a in agents]
        sim, valid = _similarities(outs)
        out += [sim[i, j] for i in range(len(outs)) for j in range(i + 1, len(outs)) if valid[i] and valid[j]]
    return np.array(out, float)


def prepare(
    data,
    cache: str | Path | None = None,
    threshold: float | None = None,
    grade: str | None = None,
) -> float:
    """Turn ``data`` (a ``RoutingData`` loaded with ``task="semantic"``) into semantic routing data.

    Every output's answer becomes its whole text (stripped) with its embedding (``cache``: an
    ``EmbeddingCache`` file, so each text is embedded once across runs); the grouping threshold is
    ``threshold`` or fitted label-free on the committee's pairwise similarities over all the data's
    questions (no labels are read, so fitting it on the questions later scored leaks no outcome);
    answers compare by that threshold (``data.same``). ``grade``: a task whose extractor grades a
    whole answer against gold (``gsm8k`` on GSM8K traces, for evidence); without it gold labels are
    refused, as a semantic answer has no gold string. Returns the threshold.
    """
    from .embedding import EmbeddingCache

    if data.task != TASK:
        raise ValueError(f"semantic.prepare needs data loaded with task {TASK!r}, got {data.task!r}")
    store = EmbeddingCache(cache)
    names = [*data.committee, data.oracle]
    texts = sorted({t for n in names for o in data.outputs[n] if (t := normalize_answer(o.text)) is not None})
    vectors = dict(zip(texts, store.embed(texts))) if texts else {}
    for n in names:
        data.outputs[n] = [
            AgentOutput(
                o.agent,
                o.text,
                normalize_answer(o.text),
                o.output_tokens,
                o.prompt_tokens,
                o.cum_log_prob,
                o.failed,
                embedding=vectors.get(normalize_answer(o.text) or ""),
            )
            for o in data.outputs[n]
        ]
    if threshold is None:
        threshold = fit_similarity_threshold(committee_pair_similarities(data, data.committee))
    data.same = semantic_equal(vectors.__getitem__, threshold)
    if grade is not None:
        g = get_task(grade)
        data.grade = lambda a, gold: g.equal(g.extract(a), gold)
    elif data.labels == "gold":
        raise ValueError("semantic answers have no gold strings: use --labels oracle, or --grade TASK to grade them")
    else:  # nothing can compare a whole answer with a gold string: the gold answers are not used
        data.gold = [None] * data.n
    data.feature_options = {"similarity_threshold": threshold}
    data._feature_cache.clear()
    return threshold


register_extractor(AnswerTask(TASK, normalize_answer, _unset_equal, numeric=False, keyed=False))
register_feature_set(SemanticFeatures)
register_feature_set(SymmetricSemanticFeatures)
