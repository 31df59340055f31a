"""Which answer is right, estimated without gold: a latent-truth model fitted by EM (``--labels estimated``).

Why. ``--labels oracle`` calls a committee answer correct when it equals the oracle's, so every
question where the committee is right and the oracle wrong counts as a committee error, and the
fit pays for it in escalations. The recorded answers of several models on one question carry more
than the oracle's single vote: when three agents agree against the oracle, the oracle is often the
one that is wrong. This module turns every recorded model's answer into, per question, a
probability that each distinct answer is the right one; the oracle is one strong but fallible
voter, weighed by its estimated reliability like any other.

Model (Dawid-Skene with one coin per model, for open answer spaces). Each question has one true
answer ``t``. Model ``m`` gives it with probability ``p_m``; otherwise it gives a wrong answer or
none (a null answer is always wrong). Wrong answers are open-ended, yet two wrong models do land on
the same wrong number now and then (a common slip), and on a multiple-choice task often: the wrong
answers of a question are drawn from a Chinese restaurant process with one concentration ``alpha``
(fitted), so the chance that a wrong answer repeats an earlier wrong one is learnt from the data
instead of assumed to be 0 or 1/K. The candidates for ``t`` are the distinct answers given (the
task's answer groups: keys for numbers and letters, meaning groups for ``semantic``) and "none of
them". Given ``t``, the likelihood of what was said is, up to a factor the same for every candidate,

    exp(sum over models that said t of logit(p_m)) * CRP_alpha(the partition of the other answers)

so the posterior of an answer is a reliability-weighted vote (log-odds weights, as the router's own
``vote_weights``), corrected for how likely the remaining answers are to coincide if all wrong; no
prior over candidates is needed (the answer values' base density cancels). EM alternates the
posteriors (E) with each model's expected accuracy (M, with a Beta(1, 1) prior) and ``alpha``
(M, a one-dimensional grid search); it starts from plain vote shares, so accuracies start above
one half and EM does not swap the labels. Nothing branches on which model is the oracle.

Limits (stated, measured in BENCHMARKS.md): models that copy each other's mistakes (two runs of one
model, one family's prompt variants) count as more independent evidence than they are; one
``alpha`` for all questions. With the committee and the oracle alone (four voters) the estimate
is identifiable but noisier than with more recorded models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

ALPHAS = np.exp(np.linspace(math.log(0.01), math.log(100.0), 61))  # the grid alpha is fitted on
MAX_ITER = 200
TOL = 1e-7
P_CLIP = (1e-3, 1 - 1e-3)
NULL, ABSENT = -1, -2  # group ids: an answer that is none (always wrong) / no record (no evidence)


def group_answers(
    answers: Sequence[Sequence[str | None]],
    key: Callable[[str], str | None] | None = None,
    equal: Callable[[str, str], bool] | None = None,
    present: Sequence[Sequence[bool]] | None = None,
) -> np.ndarray:
    """(n_questions, n_models) group ids: per question, answers that are one answer share an id
    (0, 1, ... in order of first appearance); ``NULL`` for no answer, ``ABSENT`` where
    ``present[model][question]`` is false (the model has no record of the question).

    ``key``: answers with equal keys are one answer (numbers, letters); else ``equal`` (a pairwise
    relation, e.g. semantic similarity), grouped as its connected components."""
    m = len(answers)
    n = len(answers[0]) if m else 0
    G = np.full((n, m), -1, dtype=int)
    for i in range(n):
        row = [answers[j][i] for j in range(m)]
        if key is not None:
            ids: dict[str, int] = {}
            for j, a in enumerate(row):
                k = None if a is None else key(a)
                if k is not None:
                    G[i, j] = ids.setdefault(k, len(ids))
            continue
        parent = list(range(m))
        valid = [j for j, a in enumerate(row) if a is not None]
        for x, a in enumerate(valid):
            for b in valid[x + 1 :]:
                ra, rb = _root(parent, a), _root(parent, b)
                if ra != rb and equal is not None and equal(row[a], row[b]):
                    parent[rb] = ra
        ids2: dict[int, int] = {}
        for j in valid:
            G[i, j] = ids2.setdefault(_root(parent, j), len(ids2))
    if present is not None:
        G[~np.asarray(present, bool).T] = ABSENT
    return G


def _root(parent: list[int], x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@dataclass
class TruthEstimate:
    """A fitted latent-truth model and its per-question posteriors.

    ``posterior[i, k]``: P(group ``k`` of question ``i`` is the true answer) for ``k < n_groups[i]``;
    ``none[i]``: P(no answer given is right). ``accuracy``: each voter's estimated accuracy."""

    voters: list[str]
    groups: np.ndarray  # (n, m) group ids, -1 for no answer
    posterior: np.ndarray  # (n, m) padded with zeros
    none: np.ndarray  # (n,)
    accuracy: np.ndarray  # (m,)
    alpha: float
    iterations: int
    fitted_rows: np.ndarray  # the questions the parameters were fitted on

    def of_voter(self, j: int) -> np.ndarray:
        """Per question, P(voter ``j``'s answer is right) (0 where it gave none)."""
        g = self.groups[:, j]
        n = len(g)
        return np.where(g >= 0, self.posterior[np.arange(n), np.maximum(g, 0)], 0.0)

    def estimated_accuracy(self, rows: np.ndarray | None = None) -> dict[str, float]:
        """Each voter's expected accuracy over ``rows`` (default: the fitted ones) under the posteriors."""
        rows = self.fitted_rows if rows is None else rows
        return {v: float(self.of_voter(j)[rows].mean()) for j, v in enumerate(self.voters)}

    def summary(self) -> dict:
        return {
            "method": "Dawid-Skene EM, one coin per model, wrong answers by a Chinese restaurant process",
            "voters": list(self.voters),
            "reliability": {v: float(p) for v, p in zip(self.voters, self.accuracy)},
            "estimated_accuracy": self.estimated_accuracy(),
            "alpha": float(self.alpha),
            "iterations": int(self.iterations),
            "n_questions": int(len(self.fitted_rows)),
            "mean_none": float(self.none[self.fitted_rows].mean()),
        }


def _crp_parts(G: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per question and candidate (groups, then "none" in the last column): the number of wrong
    clusters, of wrong answers, and the sum of lgamma(cluster sizes), were that candidate true; and
    the valid-candidate mask."""
    n, m = G.shape
    counts = np.zeros((n, m + 1))
    for j in range(m):
        ok = G[:, j] >= 0
        np.add.at(counts, (np.flatnonzero(ok), G[ok, j]), 1.0)
    counts = counts[:, :m]
    pos = counts > 0
    lg = np.zeros_like(counts)
    lg[pos] = [math.lgamma(c) for c in counts[pos]]
    K, N, S = pos.sum(1).astype(float), counts.sum(1), lg.sum(1)
    k = np.c_[np.repeat(K[:, None] - 1.0, m, 1), K]  # wrong clusters left when group g / none is the truth
    nn = np.c_[N[:, None] - counts, N]
    s = np.c_[S[:, None] - lg, S]
    return k, nn.astype(int), s, np.c_[pos, np.ones(n, bool)]


def _lgamma_table(alpha: float, top: int) -> np.ndarray:
    return np.array([math.lgamma(alpha + x) for x in range(top + 1)])


def _log_crp(k: np.ndarray, nn: np.ndarray, s: np.ndarray, alpha: float, top: int) -> np.ndarray:
    """log CRP_alpha of partitions with ``k`` clusters, ``nn`` items, sum of lgamma(sizes) ``s``."""
    return k * math.log(alpha) + math.lgamma(alpha) - _lgamma_table(alpha, top)[nn] + s


def fit_truth(
    groups: np.ndarray,
    voters: Sequence[str],
    rows: np.ndarray | None = None,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
) -> TruthEstimate:
    """Fit per-voter accuracies and ``alpha`` by EM on ``rows`` (default: all questions); the
    posteriors of every question (fitted or not) come from the fitted parameters.

    ``groups``: ``group_answers``' ids (``NULL``: no answer, wrong; ``ABSENT``: no record, ignored)."""
    G = np.asarray(groups, int)
    n, m = G.shape
    if m < 2:
        raise ValueError(f"estimating which answer is right needs at least two voters, got {m}")
    rows = np.arange(n) if rows is None else np.asarray(rows, int)
    if len(rows) == 0:
        raise ValueError("no questions to fit the answer estimate on")
    k, nn, s, valid = _crp_parts(G)
    top = int(nn.max())
    said = G >= 0
    at = np.maximum(G, 0)
    present = (G != ABSENT)[rows]
    cols = np.arange(n)

    def posteriors(acc: np.ndarray, alpha: float) -> np.ndarray:
        logit = np.log(acc) - np.log1p(-acc)
        score = _log_crp(k, nn, s, alpha, top)
        for j in range(m):
            np.add.at(score, (cols[said[:, j]], at[said[:, j], j]), logit[j])
        score = np.where(valid, score, -np.inf)
        score -= score.max(1, keepdims=True)
        p = np.exp(score)
        return p / p.sum(1, keepdims=True)

    # Start: each answer's share of the votes, no "none" mass (plain plurality beliefs).
    P = np.zeros((n, m + 1))
    for j in range(m):
        np.add.at(P, (cols[said[:, j]], at[said[:, j], j]), 1.0)
    P[P.sum(1) == 0, m] = 1.0
    P /= P.sum(1, keepdims=True)
    acc, alpha, done_at = np.full(m, 0.5), 1.0, max_iter
    kr, nr, sr = k[rows], nn[rows], s[rows]
    for it in range(1, max_iter + 1):
        Pr = P[rows]
        right = np.where(said[rows], np.take_along_axis(Pr, at[rows], 1), 0.0)
        new_acc = np.clip((right.sum(0) + 1.0) / (present.sum(0) + 2.0), *P_CLIP)
        # alpha: the expected log CRP of the wrong answers, maximised over the grid.
        vals = [float((Pr * _log_crp(kr, nr, sr, float(a), top)).sum()) for a in ALPHAS]
        new_alpha = float(ALPHAS[int(np.argmax(vals))])
        P = posteriors(new_acc, new_alpha)
        done = np.max(np.abs(new_acc - acc)) < tol and new_alpha == alpha
        acc, alpha = new_acc, new_alpha
        if done:
            done_at = it
            break
    return TruthEstimate(list(voters), G, P[:, :m].copy(), P[:, m].copy(), acc, alpha, done_at, rows)


def estimate_error(est: TruthEstimate, gold_ok: dict[str, np.ndarray], rows: np.ndarray | None = None) -> dict:
    """Where gold exists: how far the label-free estimate is from the truth.

    ``gold_ok[voter]``: per question, whether its answer is right by gold. Per voter: estimated vs
    true accuracy over ``rows`` (default: the fitted questions); and the calibration of the
    posterior of each voter's answer (ECE, Brier) pooled over voters."""
    from .metrics import brier, ece

    rows = est.fitted_rows if rows is None else np.asarray(rows, int)
    per = {}
    ps, ys = [], []
    for j, v in enumerate(est.voters):
        if v not in gold_ok:
            continue
        p = est.of_voter(j)[rows]
        y = np.asarray(gold_ok[v], float)[rows]
        per[v] = {"estimated": float(p.mean()), "true": float(y.mean()), "error": float(p.mean() - y.mean())}
        ps.append(p)
        ys.append(y)
    p, y = np.concatenate(ps), np.concatenate(ys)
    return {
        "accuracy": per,
        "max_abs_accuracy_error": max(abs(x["error"]) for x in per.values()),
        "posterior_ece": ece(p, y),
        "posterior_brier": brier(p, y),
        "of": "posterior of each voter's answer vs its gold correctness, pooled over voters and questions",
        "n_questions": int(len(rows)),
    }
