"""The ``semantic`` task: free-text answers grouped by what they assert, for prompts with no single right string.

Two models almost never write the same sentence, and whole-text embeddings measure wording and
length rather than the claim (a span "Wilhelm Rontgen" and a paragraph naming him looked far apart,
two paragraphs naming different laureates close; issue 21). So each answer is reduced to its core
(``cores.answer_core``: its content words beyond the question's, numbers, named entities, a short
core text) and two answers are "the same answer" with probability ``PairModel.same``, from signals
that read the claim (containment, coverage, overlap, number and entity matches, and the cosine of
the core texts' embeddings, ``embedding.py``). Groups are the connected components of
P(same) >= 0.5 (within a committee of a handful of answers chaining is rare, and the grouping does
not depend on the order the answers arrived in). The vote is the group with the most support (a
count, or the sum of the stage's ``vote_weights``); the answer returned is that group's most
complete member (the most content words: the paragraph rather than the span), never a concatenation.

The pair model is fitted without labels (``prepare``: EM over the committee's and the oracle's answer
pairs, which reads no outcome, so fitting it on the questions later scored leaks nothing) and
travels in the calibration artifact (``task_options["pair_model"]``). Labels: the traces'
judgements (``correct``) where they exist, else oracle agreement (a committee answer is right when
the pair model says it is the oracle's answer), or gold read by the task's grade (gold aliases
contained in the answer), or ``--grade TASK`` to grade whole answers with another task's extractor.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .answers import AnswerTask, get_task, grade_text_contains, read_gold_text, register_extractor
from .committee import AgentOutput, FeatureSet, Vote, judgement_maps, register_feature_set
from .cores import (
    SIGNALS,
    Core,
    PairModel,
    answer_core,
    default_pair_model,
    embedding_text,  # noqa: F401 - the text the server embeds for an answer (pyramid_triton.engine_calls)
    fit_pair_model,
    hedges,
    pair_levels,
)

# Where the command line keeps embeddings of recorded outputs (each text embedded once across runs).
DEFAULT_EMBEDDING_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "pyramid-moa"
    / ("embeddings-all-MiniLM-L6-v2.npz")
)
TASK = "semantic"
SAME = 0.5  # two answers are in one group when P(same answer) reaches this


def normalize_answer(text: str | None) -> str | None:
    """The semantic task's answer: the whole output, stripped; an empty output is no answer."""
    if text is None:
        return None
    text = text.strip()
    return text or None


def _unset_equal(a: str | None, b: str | None) -> bool:
    raise RuntimeError(
        "semantic answers compare by what they assert: use semantic_equal(model, cores) (RoutingData.same), "
        "not the task's string equality"
    )


def groups(prob: np.ndarray, valid: Sequence[bool], threshold: float = SAME) -> list[int | None]:
    """Group label per answer (None where not ``valid``): connected components of prob >= threshold,
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
            if valid[i] and valid[j] and prob[i, j] >= threshold:
                parent[find(j)] = find(i)
    labels: dict[int, int] = {}
    out: list[int | None] = []
    for i in range(n):
        if not valid[i]:
            out.append(None)
            continue
        out.append(labels.setdefault(find(i), len(labels)))
    return out


def _cosine(a: AgentOutput, b: AgentOutput) -> float:
    for o in (a, b):
        if o.embedding is None:
            raise ValueError(f"semantic vote: agent {o.agent}'s answer has no embedding (embed answers first)")
    return float(np.asarray(a.embedding, np.float32) @ np.asarray(b.embedding, np.float32))


def pair_probabilities(
    model: PairModel, outputs: Sequence[AgentOutput], question: str | None
) -> tuple[np.ndarray, list[bool], list[Core | None]]:
    """(P(same answer) for every pair, which answers are valid, their cores)."""
    valid = [not o.failed and o.answer is not None for o in outputs]
    cores = [answer_core(o.answer, question) if v else None for o, v in zip(outputs, valid)]
    valid = [c is not None for c in cores]
    n = len(outputs)
    prob = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            if valid[i] and valid[j]:
                cos = _cosine(outputs[i], outputs[j]) if model.uses_embedding else None
                prob[i, j] = prob[j, i] = model.same(cores[i], cores[j], cos)
    return prob, valid, cores


def semantic_vote(
    outputs: Sequence[AgentOutput],
    model: PairModel,
    question: str | None = None,
    weights: Sequence[float] | None = None,
) -> tuple[Vote, np.ndarray, list[int | None], list[Core | None]]:
    """(the vote, the pairwise P(same), the group per answer, the cores). Keys are ``"g<k>"`` per
    question; support is a count or the sum of ``weights``; ties go to the group whose first member
    came first; the answer is the group's most complete member (most content words; ties: the earliest)."""
    prob, valid, cores = pair_probabilities(model, outputs, question)
    labels = groups(prob, valid)
    keys = tuple(None if g is None else f"g{g}" for g in labels)
    if not any(valid):
        return Vote(None, None, 0, 0, keys), prob, labels, cores
    n_groups = max(g for g in labels if g is not None) + 1
    support = [0.0] * n_groups
    count = [0] * n_groups
    for pos, g in enumerate(labels):
        if g is not None:
            support[g] += 1.0 if weights is None else weights[pos]
            count[g] += 1
    best = max(range(n_groups), key=lambda g: (support[g], -g))
    members = [i for i, g in enumerate(labels) if g == best]
    richest = max(members, key=lambda i: (len(cores[i].all_words), -i))
    return Vote(outputs[richest].answer, f"g{best}", count[best], n_groups, keys), prob, labels, cores


def _model_option(pair_model: dict | PairModel | None) -> PairModel:
    if pair_model is None:
        return default_pair_model()
    return pair_model if isinstance(pair_model, PairModel) else PairModel.from_dict(pair_model)


class SemanticFeatures(FeatureSet):
    """The group structure of the committee's answers, by what they assert.

    Shares and sizes (the winning group's share, the runner-up's, the number of groups, their
    entropy), how surely the answers are the same (mean P(same) within the winning group, between it
    and the others, the least sure pair), whether a short answer is contained in another of its group,
    whether the returned answer hedges and how much it says, failures, which agents agree with the
    winner, and output length. No number parsing: it applies to any prompt.
    """

    name = "semantic"
    options = ("pair_model",)

    def __init__(
        self,
        agents: Sequence[str],
        numeric: bool = False,
        weights: Sequence[float] | None = None,
        pair_model: dict | PairModel | None = None,
    ) -> None:
        super().__init__(agents, numeric, weights)
        self.pair_model = _model_option(pair_model)

    @property
    def uses_embedding(self) -> bool:  # type: ignore[override]
        """Only a pair model fitted with the core-text cosine reads embeddings (``--no-embedding``: none)."""
        return self.pair_model.uses_embedding

    @property
    def names(self) -> list[str]:
        return [
            "vote_share",
            "runner_up_share",
            "groups_frac",
            "group_entropy",
            "parse_fail_frac",
            "failed_frac",
            "same_within_winner",
            "same_between",
            "same_min",
            "contained_in_winner",
            "answer_hedges",
            "answer_words",
            *[f"agrees[{a}]" for a in self.agents],
            "log_tokens_mean",
        ]

    def __call__(self, question: str, outputs: Sequence[AgentOutput]) -> tuple[list[float], Vote]:
        self.check_outputs(outputs)
        vote, prob, labels, cores = semantic_vote(outputs, self.pair_model, question, self.weights)
        return self._features(outputs, vote, prob, labels, cores), vote

    def compute(self, question: str, outputs: Sequence[AgentOutput], vote: Vote) -> list[float]:
        _, prob, labels, cores = semantic_vote(outputs, self.pair_model, question, self.weights)
        return self._features(outputs, vote, prob, labels, cores)

    def _features(
        self,
        outputs: Sequence[AgentOutput],
        vote: Vote,
        prob: np.ndarray,
        labels: list[int | None],
        cores: list[Core | None],
    ) -> list[float]:
        n = len(outputs)
        sizes = sorted((labels.count(g) for g in set(labels) if g is not None), reverse=True)
        valid = [i for i, g in enumerate(labels) if g is not None]
        win = [i for i in valid if vote.key == f"g{labels[i]}"]
        rest = [i for i in valid if i not in win]

        def mean_p(a: list[int], b: list[int], same: bool) -> float:
            vals = [prob[i, j] for i in a for j in b if (i < j if same else True)]
            return float(np.mean(vals)) if vals else 1.0 if same else 0.0

        pairs = [prob[i, j] for i in valid for j in valid if i < j]
        contained = any(pair_levels(cores[i], cores[j])[0] for i in win for j in win if i < j)
        entropy = -sum((s / n) * math.log(s / n) for s in sizes)
        toks = [math.log1p(o.output_tokens or 0) for o in outputs]
        answer = next((cores[i] for i in win if outputs[i].answer == vote.answer), None)
        return [
            vote.count / n,
            (sizes[1] if len(sizes) > 1 else 0) / n,
            len(sizes) / n,
            entropy,
            sum(o.answer is None and not o.failed for o in outputs) / n,
            sum(o.failed for o in outputs) / n,
            mean_p(win, win, True),
            mean_p(win, rest, False),
            float(np.min(pairs)) if pairs else 1.0,
            float(contained),
            float(hedges(vote.answer)),
            math.log1p(len(answer.all_words)) if answer is not None else 0.0,
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

    def _features(self, outputs, vote, prob, labels, cores) -> list[float]:  # noqa: ANN001 - as the parent's
        full = super()._features(outputs, vote, prob, labels, cores)
        return [v for n, v in zip(super().names, full) if not n.startswith("agrees[")]


FEATURE_SETS = (SemanticFeatures.name, SymmetricSemanticFeatures.name)  # the sets that group by meaning


def semantic_equal(
    model: PairModel, core_of: Callable[[str], Core | None], lookup: Callable[[str], np.ndarray] | None = None
) -> Callable[[str | None, str | None], bool]:
    """Equality of two answers under the semantic task: P(same answer) >= ``SAME``. ``core_of``: an
    answer's core (given its question when built); ``lookup``: its core text's embedding (when the
    model reads cosines)."""

    def equal(a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return False
        if a == b:
            return True
        cos = float(lookup(a) @ lookup(b)) if model.uses_embedding and lookup is not None else None
        return model.same(core_of(a), core_of(b), cos) >= SAME

    return equal


def answer_pairs(data, names: Sequence[str], core: Callable[[int, str], Core | None],
                 cosine: Callable[[str, str], float] | None) -> tuple[np.ndarray, list[tuple[int, str, str]]]:  # fmt: skip
    """Signal levels of every pair of ``names``' differing answers on the same question, and which pair each is."""
    levels, which = [], []
    for r in range(data.n):
        outs = [(n, data.outputs[n][r].answer) for n in names]
        for i in range(len(outs)):
            for j in range(i + 1, len(outs)):
                (na, a), (nb, b) = outs[i], outs[j]
                if a is None or b is None or a == b:  # identical answers are the same by definition: no evidence
                    continue
                ca, cb = core(r, a), core(r, b)
                if ca is None or cb is None:
                    continue
                levels.append(pair_levels(ca, cb, cosine(a, b) if cosine is not None else None))
                which.append((r, na, nb))
    return np.array(levels, int).reshape(-1, len(SIGNALS)), which


def prepare(
    data,
    cache: str | Path | None = None,
    embed: bool = True,
    grade: str | None = None,
    pair_model: PairModel | None = None,
) -> PairModel:
    """Turn ``data`` (a ``RoutingData`` loaded with ``task="semantic"``) into semantic routing data.

    Every output's answer becomes its whole text (stripped); with ``embed``, its core text's embedding
    (``cache``: an ``EmbeddingCache`` file, so each text is embedded once across runs) for the cosine
    signal. The pair model is ``pair_model`` or fitted label-free (EM) on the pairs of the committee's
    and the oracle's answers over all the data's questions (no labels are read). Answers compare by it
    (``data.same``). ``grade``: a task whose extractor grades a whole answer against gold (``gsm8k`` on
    GSM8K traces); else gold is graded by this task's own rule (a gold alias contained in the answer)
    and the traces' judgements win where they exist. Returns the pair model.
    """
    if data.task != TASK:
        raise ValueError(f"semantic.prepare needs data loaded with task {TASK!r}, got {data.task!r}")
    names = [*data.committee, data.oracle]
    cores: dict[str, Core | None] = {}
    for n in names:
        data.outputs[n] = [replace_answer(o, normalize_answer(o.text)) for o in data.outputs[n]]
        for r, o in enumerate(data.outputs[n]):
            if o.answer is not None and o.answer not in cores:
                cores[o.answer] = answer_core(o.answer, data.questions[r])
    vectors: dict[str, np.ndarray] = {}
    if embed:
        from .embedding import EmbeddingCache

        store = EmbeddingCache(cache)
        core_texts = {a: (c.text if c is not None else a) for a, c in cores.items()}
        texts = sorted(set(core_texts.values()))
        by_text = dict(zip(texts, store.embed(texts))) if texts else {}
        vectors = {a: by_text[t] for a, t in core_texts.items()}
        for n in names:
            data.outputs[n] = [replace_answer(o, o.answer, vectors.get(o.answer or "")) for o in data.outputs[n]]
    lookup = vectors.__getitem__ if embed else None
    if pair_model is None:
        cosine = (lambda a, b: float(vectors[a] @ vectors[b])) if embed else None
        levels, _ = answer_pairs(data, names, lambda r, a: cores.get(a), cosine)
        pair_model = fit_pair_model(levels, with_cosine=embed)
    data.same = semantic_equal(pair_model, cores.get, lookup)
    if data.judgements is not None:
        data.judgements = judgement_maps(data.outputs, names, numeric=False)
    if grade is not None:
        g = get_task(grade)
        data.grade = lambda a, gold: g.equal(g.extract(a), g.gold_of(gold))
    data.feature_options = {"pair_model": pair_model.to_dict()}
    data._feature_cache.clear()
    return pair_model


def replace_answer(o: AgentOutput, answer: str | None, embedding=None) -> AgentOutput:  # noqa: ANN001
    """``o`` with another answer (and embedding), everything else (the judgement included) kept."""
    from dataclasses import replace

    return replace(o, answer=answer, embedding=embedding if embedding is not None else o.embedding)


register_extractor(
    AnswerTask(
        TASK,
        normalize_answer,
        _unset_equal,
        numeric=False,
        keyed=False,
        read_gold=read_gold_text,
        grade=grade_text_contains,
    )  # fmt: skip
)
register_feature_set(SemanticFeatures)
register_feature_set(SymmetricSemanticFeatures)
