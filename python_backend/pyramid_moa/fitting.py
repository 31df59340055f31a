"""Fitting a router: the schedule, its stage calibrators and vote weights, then thresholds for a budget.

Thresholds are chosen on *out-of-fold* probabilities of the fitting questions
(inner k-fold), never on in-sample scores, which are optimistic and would put
the threshold too low.

A schedule is a pyramid: a chain of stages, each adding one or more members to
the models already asked (cheaper models first), with the oracle above the last.
The search covers every such chain up to ``max_depth`` stages (one stage is the
plain Pyramid MoA router) and keeps the cheapest (or most accurate) schedule
that meets the target. Where none meets a floor target for less than the oracle alone, the
artifact is the oracle alone, keeping the best cascade over budgets (``cascade_area``) for requests
that name their own threshold. Each candidate's whole threshold grid is scored in one
vectorized pass (``evaluate_grid``); a candidate whose first stage alone costs
more than the best schedule already found is never scored (``prune``).

Each stage's answer is a reliability-weighted vote (``fit_vote_weights``), so a
larger model added at a later stage is not outvoted by smaller ones that agree
by chance.

What "correct" means is the data's ``labels`` (``RoutingData.correct``): against gold, or against
the oracle's own answer (label-free: a router fitted so reproduces the oracle at lower cost, and
its floor target is ``max_disagreement``), or the estimated probability that the answer is right
(label-free, ``truth.py``: a float, so accuracies are expected accuracies and the calibrators fit
soft labels; the estimate is refitted on the fitting questions alone). Nothing else branches on it;
the arbiter, trained where exactly one of committee and oracle is right, finds no such case under
oracle labels and is off; under estimated labels it is fitted on the probability that the oracle's
answer, rather than the committee's, is the right one of the two.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from .answers import answer_key, get_task
from .artifact import CalibrationArtifact
from .calibration import make_calibrator
from .dataset import RoutingData
from .features import ARBITER_FEATURES, AgentOutput, arbiter_features, committee_vote, make_feature_set, vote_weights
from .router import replay_schedule

TARGET_KINDS = ("oracle_rate", "cost", "max_accuracy_drop", "max_disagreement")
# Floor targets: the cheapest threshold whose accuracy under the data's labels is >= the oracle's
# minus the value. Under gold labels that is an accuracy drop; under oracle labels the oracle's own
# "accuracy" is the share of questions it answered, so the gap is the share of all questions whose
# returned answer differs from the oracle's (a question the oracle gave no answer on counts for none).
FLOOR_KINDS = ("max_accuracy_drop", "max_disagreement")
# Under estimated labels accuracy is the expected accuracy under the estimate, the oracle's included, so
# max_accuracy_drop means the same there: within E of the oracle's (estimated) accuracy.
TARGET_LABELS = {"max_accuracy_drop": ("gold", "estimated"), "max_disagreement": ("oracle",)}
INNER_FOLDS = 5
MAX_GRID = 120  # last-stage threshold candidates
MAX_DEPTH = 3  # stages below the oracle that the search considers by default
COST_ORDER_SLACK = 0.5  # a later stage may add a model that costs at least this share of the dearest earlier one
# How far (in questions) a more cautious threshold may dip below a floor without ruling out a cheaper one
# that meets it (``_robust_acc``). On the GSM8K setups it moves the operating points by <= 0.6 points of saving.
ENVELOPE_SLACK_QUESTIONS = 3
# Threshold candidates per earlier stage (coarse: fewer choices, less selection optimism), by the
# number of earlier stages; the last stage gets MAX_GRID.
GRID_EARLY = {1: 24, 2: 8}


class TargetUnreachable(ValueError):
    """No threshold on the fitting questions meets the requested target."""


@dataclass(frozen=True)
class Target:
    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"unknown target {self.kind!r}; use one of {TARGET_KINDS}")
        if self.kind != "cost" and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"target {self.kind} must be within [0, 1], got {self.value}")
        if self.kind == "cost" and self.value <= 0:
            raise ValueError(f"target cost must be positive (relative to always-oracle), got {self.value}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}

    @property
    def floor(self) -> bool:
        return self.kind in FLOOR_KINDS

    def check_labels(self, labels: str) -> None:
        """A floor target is stated in one kind of labels: refuse it under the other."""
        need = TARGET_LABELS.get(self.kind)
        if need is not None and labels not in need:
            other = next(k for k, v in TARGET_LABELS.items() if labels in v)
            raise ValueError(
                f"target {self.kind} needs {' or '.join(need)} labels, and these are {labels} labels; "
                f"use --{other.replace('_', '-')} (or --target-oracle-rate / --target-cost)"
            )


def schedule_shapes(
    members: list[str], adaptive: bool, max_depth: int = MAX_DEPTH, costs: dict[str, float] | None = None
) -> list[list[list[str]]]:
    """Candidate schedules, each a list of cumulative stages (agent lists in ``members`` order).

    Not adaptive: the one-stage whole committee. Adaptive: every chain of stages up to
    ``max_depth`` long, each adding at least one member, where a model is never added after a
    clearly dearer one (``costs``: mean cost per call; a later model must cost at least
    ``COST_ORDER_SLACK`` times the dearest earlier one). The one-stage whole committee comes first.
    """
    if max_depth < 1:
        raise ValueError(f"max_depth must be at least 1, got {max_depth}")
    full = [list(members)]
    if not adaptive:
        return [full]
    cost = costs or {m: 1.0 for m in members}
    pos = {m: i for i, m in enumerate(members)}
    shapes = [full]

    def extend(chain: list[frozenset[str]]) -> None:
        if chain:
            shape = [sorted(st, key=pos.__getitem__) for st in chain]
            if shape != full:
                shapes.append(shape)
        if len(chain) == max_depth:
            return
        have = chain[-1] if chain else frozenset()
        rest = [m for m in members if m not in have]
        dearest = max((cost[m] for m in have), default=0.0)
        for k in range(1, len(rest) + 1):
            for add in itertools.combinations(rest, k):
                if all(cost[m] >= COST_ORDER_SLACK * dearest for m in add):
                    extend([*chain, have | frozenset(add)])

    extend([])
    return shapes


def _grid(p: np.ndarray, size: int = MAX_GRID) -> np.ndarray:
    """Candidate thresholds: quantiles of the OOF probabilities, plus never/always."""
    qs = np.unique(np.quantile(p, np.linspace(0, 1, size)))
    return np.unique(np.r_[0.0, qs, np.nextafter(qs, 2.0), 1.0 + 1e-9])


@dataclass
class Evaluated:
    """Accuracy, oracle rate and cost of threshold grids for one candidate on fitting questions."""

    taus: np.ndarray  # (G, n_stages), the last stage's threshold varying fastest
    acc: np.ndarray
    rate: np.ndarray
    cost: np.ndarray
    n_early: int = 1  # rows of earlier-stage thresholds: G = n_early x the last stage's grid


@dataclass
class Candidate:
    """One schedule shape on the fitting questions: per stage its calibrator, out-of-fold
    probabilities, committee correctness (``labels``), all-failed mask and the cost of its new
    agents; per stage, whether the answer after escalating from it is right (``final_ok``); and
    the oracle's cost per question. Everything ``evaluate_grid`` needs to replay it."""

    stages: list[list[str]]
    calibrators: list
    oof: list[np.ndarray]
    labels: list[np.ndarray]
    all_failed: list[np.ndarray]
    final_ok: list[np.ndarray]
    stage_costs: list[np.ndarray]
    oracle_cost: np.ndarray
    weights: list[list[float] | None] = field(default_factory=list)
    arbiter: dict | None = None


def _stage_grids(cand: Candidate) -> list[np.ndarray]:
    early = GRID_EARLY.get(len(cand.oof) - 1, 8)
    return [_grid(p, early) for p in cand.oof[:-1]] + [_grid(cand.oof[-1], MAX_GRID)]


def evaluate_grid(cand: Candidate) -> Evaluated:
    """Accuracy, oracle rate and cost (relative to always-oracle) of every threshold row.

    The rule is ``Router.decide``'s, applied by ``replay_schedule`` to the earlier stages over
    the product of their coarse grids; the last stage's fine grid is then scored for all its
    thresholds at once from cumulative sums over its probabilities in sorted order (a question
    reaching it is accepted iff P >= tau and not all its agents failed), so a deep schedule
    costs a few early rows times one sort, not the full product of rows times questions.
    """
    grids = _stage_grids(cand)
    n = len(cand.oracle_cost)
    norm = cand.oracle_cost.mean()
    S = len(cand.oof)
    early = np.array(list(itertools.product(*grids[:-1])), float) if S > 1 else np.zeros((1, 0))
    if S > 1:
        rp = replay_schedule(cand.oof[:-1], cand.all_failed[:-1], early, final=False)
        reach = rp.active  # (Ge, n): the questions that get to the last stage
        base_ok = np.where(reach, False, rp.correct(cand.labels[:-1], cand.final_ok[:-1])).sum(1)
        base_esc = rp.escalated.sum(1)
        base_cost = rp.mean_cost(cand.stage_costs[:-1], cand.oracle_cost) * n
    else:
        reach = np.ones((1, n), bool)
        base_ok = base_esc = base_cost = np.zeros(1)
    base_cost = base_cost + reach @ cand.stage_costs[-1]

    p = np.where(cand.all_failed[-1], -np.inf, cand.oof[-1])
    order = np.argsort(p, kind="stable")
    below = np.searchsorted(p[order], grids[-1], side="left")  # questions with P < tau, per tau

    # For each early row and each last-stage tau, sums over the reaching questions with P < tau of: the
    # committee's correctness, the escalated answer's correctness, 1 (escalations) and the oracle's cost.
    # One cumulative sum over the questions in P order, read at each tau's position.
    values = np.stack([cand.labels[-1], cand.final_ok[-1], np.ones(n), cand.oracle_cost], dtype=float)[
        :, order
    ]  # (4, n)
    c = np.zeros((4, reach.shape[0], n + 1))
    np.cumsum(reach[None, :, order] * values[:, None, :], axis=2, out=c[:, :, 1:])
    below_ok, below_final, below_n, below_cost = c[:, :, below]  # each (Ge, G_last)

    total_ok = reach @ cand.labels[-1].astype(float)
    acc = base_ok[:, None] + total_ok[:, None] - below_ok + below_final
    esc = base_esc[:, None] + below_n
    cost = base_cost[:, None] + below_cost
    last = grids[-1]
    taus = np.c_[np.repeat(early, len(last), axis=0), np.tile(last, len(early))]
    return Evaluated(taus, (acc / n).ravel(), (esc / n).ravel(), (cost / n / norm).ravel(), len(early))


def _robust_acc(ev: Evaluated, n_stage1: int, n_questions: int = 1) -> np.ndarray:
    """Accuracy made monotone from the expensive end along the last threshold.

    A threshold counts as meeting an accuracy floor only if every more
    cautious last-stage threshold does too: this discards lucky bumps of the
    fitting sample that would not carry over to new questions. A more cautious
    threshold may fall short by ``ENVELOPE_SLACK_QUESTIONS`` questions' worth
    (the threshold itself may not): near the always-oracle end a single unlucky
    accepted answer would otherwise rule out every cheaper threshold, and the fit
    would find no saving where there is one (free-text NQ: the oracle alone on 1-3
    of 5 folds without it).
    """
    slack = ENVELOPE_SLACK_QUESTIONS / max(n_questions, 1)
    acc = ev.acc.copy()
    G = len(acc) // n_stage1
    for k in range(n_stage1):
        seg = acc[k * G : (k + 1) * G]
        later = np.r_[np.minimum.accumulate(seg[::-1])[::-1][1:], np.inf]
        acc[k * G : (k + 1) * G] = np.minimum(seg, later + slack)
    return acc


def _feasible(ev: Evaluated, target: Target, oracle_acc: float, n_questions: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``ev`` that meet ``target``, a sort key per row: larger is better)."""
    if target.floor:
        ok = _robust_acc(ev, ev.n_early, n_questions) >= oracle_acc - target.value - 1e-12
        return ok, np.c_[-ev.cost, ev.acc]
    if target.kind == "cost":
        return ev.cost <= target.value + 1e-12, np.c_[ev.acc, -ev.cost]
    dist = np.abs(ev.rate - target.value)
    ok = dist <= max(0.5 / n_questions, 1e-12) + 0.005
    return ok, np.c_[-np.round(dist, 3), ev.acc, -ev.cost]


def choose(evs: list[Evaluated], target: Target, oracle_acc: float, n_questions: int) -> tuple[int, int]:
    """Pick (candidate, grid row) for the target; raise TargetUnreachable with the best achievable."""
    best: tuple[tuple, int, int] | None = None
    for ci, ev in enumerate(evs):
        ok, keys = _feasible(ev, target, oracle_acc, n_questions)
        for j in np.flatnonzero(ok):
            key = tuple(keys[j])
            if best is None or key > best[0]:
                best = (key, ci, int(j))
    if best is None:
        top = max(evs, key=lambda e: e.acc.max())
        raise TargetUnreachable(
            f"no threshold reaches target {target.kind}={target.value} on the fitting questions "
            f"(best accuracy {top.acc.max():.4f} vs oracle {oracle_acc:.4f}; "
            f"cheapest cost {min(e.cost.min() for e in evs):.3f}; oracle-call rates "
            f"{min(e.rate.min() for e in evs):.3f}..{max(e.rate.max() for e in evs):.3f})"
        )
    return best[1], best[2]


def _oof_and_fit(X: np.ndarray, y: np.ndarray, calibrator: str, seed: int) -> tuple[np.ndarray, object]:
    """Out-of-fold probabilities and the calibrator fitted on all of ``X``; ``y`` may be soft (the
    probability that each is correct, estimated labels): folds are stratified by y >= 0.5."""
    from sklearn.model_selection import StratifiedKFold

    oof = np.zeros(len(y))
    for tr, te in StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=seed).split(X, np.asarray(y) >= 0.5):
        oof[te] = make_calibrator(calibrator).fit(X[tr], y[tr]).predict(X[te])
    return oof, make_calibrator(calibrator).fit(X, y)


WEIGHT_STEPS = (0.0, 0.25, 0.5, 0.75, 1.5, 2.0, 3.0, 4.0)
# Weights replace a plain plurality only when they raise the vote's accuracy on the fitting questions
# by at least this much: a smaller in-sample gain is within noise and did not carry over (setup A).
MIN_WEIGHT_GAIN = 0.005
# Below this many fitting questions calibrate warns: each stage's calibrator and threshold are fitted
# out-of-fold, so with fewer the schedule and the rates it expects (what the drift alarms watch) are noisy.
RECOMMENDED_QUESTIONS = 200


def fit_vote_weights(keys: list[list[str | None]], correct: np.ndarray, passes: int = 3) -> list[float]:
    """Vote weights for ``committee_vote`` that maximise the vote's accuracy on fitting questions.

    ``keys[a][j]``: agent ``a``'s answer key on question ``j``; ``correct[a, j]``: whether it is
    right. Starts from the log-odds weights of the agents' own accuracies (``vote_weights``) and
    improves one weight at a time by a few multiplicative steps; a change is kept only if it
    raises accuracy. Few parameters, so little room to overfit; equal weights are kept unless the
    weights beat them by ``MIN_WEIGHT_GAIN``.
    """
    m, n = correct.shape
    same = np.zeros((n, m, m))
    for a in range(m):
        for b in range(m):
            same[:, a, b] = [ka is not None and ka == kb for ka, kb in zip(keys[a], keys[b])]
    valid = np.array([[k is not None for k in keys[a]] for a in range(m)]).T  # (n, m)
    cols = np.arange(n)

    def accuracy(w: np.ndarray) -> float:
        support = np.where(valid, same @ w, -np.inf)
        return float(correct[support.argmax(1), cols].mean())

    plural = np.ones(m)
    w = np.array(vote_weights(correct.mean(1)))
    best = accuracy(w)
    for _ in range(passes):
        improved = False
        for a in range(m):
            for step in WEIGHT_STEPS:
                trial = w.copy()
                trial[a] *= step
                if trial.sum() <= 0:
                    continue
                got = accuracy(trial)
                if got > best + 1e-12:
                    w, best, improved = trial, got, True
        if not improved:
            break
    if accuracy(plural) >= best - MIN_WEIGHT_GAIN:
        return plural.tolist()
    return (w / w.max()).tolist()


def reliability_weights(correct: np.ndarray) -> list[float]:
    """Vote weights from each member's accuracy on the fitting questions (``correct``: member x
    question), scaled into [0.5 + e, 1]: a lone more reliable member wins a tie between single answers,
    and two members together always outweigh one."""
    acc = np.asarray(correct, float).mean(1)
    spread = acc.max() - acc.min()
    if spread < 1e-9:
        return [1.0] * len(acc)
    return (0.51 + 0.49 * (acc - acc.min()) / spread).round(4).tolist()


class RouterFit:
    """All candidate schedules fitted on one set of questions; artifacts are cut from it.

    Fitting once and choosing many times lets evaluation report the one-stage
    ablation without refitting. With ``target``, candidates that cannot beat the
    best schedule already found for it are pruned unscored.
    """

    def __init__(
        self,
        data: RoutingData,
        rows: np.ndarray,
        cost_kind: str,
        feature_set: str = "full",
        calibrator: str = "logistic",
        adaptive: bool = True,
        seed: int = 0,
        arbiter: bool = True,
        traces: str = "",
        max_depth: int = MAX_DEPTH,
        weighted_vote: bool = True,
        target: Target | None = None,
    ) -> None:
        rows = np.asarray(rows)
        if len(rows) < 40:
            raise ValueError(
                f"too few questions to calibrate: {len(rows)} (need at least 40, and {RECOMMENDED_QUESTIONS} for "
                "thresholds worth trusting): record more (pyramid record --n)"
            )
        data.cost_model.require(cost_kind, [*data.committee, data.oracle])
        if target is not None:
            target.check_labels(data.labels)
        data = data.fitted_on(rows)  # estimated labels: the estimate sees the fitting questions only
        t0 = time.perf_counter()
        self.data, self.rows, self.cost_kind = data, rows, cost_kind
        self.feature_set, self.calibrator, self.seed, self.traces = feature_set, calibrator, seed, traces
        # A symmetric feature set (e.g. for a transfer to other agents) keeps a plain plurality vote.
        symmetric = make_feature_set(feature_set, data.committee, **data.feature_options).symmetric
        # Vote weights and the arbiter are fitted by comparing answer keys; answers compared by
        # meaning (semantic) have none, so those stages keep a plain vote and the oracle's answer.
        keyed = get_task(data.task).keyed
        self.use_arbiter, self.max_depth = arbiter and keyed, max_depth
        self.weighted_vote = weighted_vote and not symmetric
        self.keyed = keyed
        self.numeric = get_task(data.task).numeric
        self.oracle_ok = data.correct(data.answers(data.oracle))[rows]
        self.oracle_cost = data.call_costs(cost_kind, data.oracle)[rows]
        members = list(data.committee)
        self.member_cost = {m: float(data.call_costs(cost_kind, m)[rows].mean()) for m in members}
        self._keys = {m: [answer_key(a, self.numeric) for a in data.answers(m)] for m in members}
        self._member_ok = {m: data.correct(data.answers(m))[rows] for m in members}
        self._stage_cache: dict[tuple[str, ...], tuple] = {}
        self._arbiter_cache: dict[tuple[str, ...], tuple[dict | None, np.ndarray]] = {}

        shapes = schedule_shapes(members, adaptive, max_depth, self.member_cost)
        self.cands: list[Candidate] = []
        self.evs: list[Evaluated] = []
        self.pruned = 0
        self.unfitted: list[str] = []  # schedules that could not be calibrated, and why
        oracle_acc = float(self.oracle_ok.mean())
        best_cost = np.inf
        # The one-stage whole committee first (always scored: the ablation baseline), then by lower bound.
        first, rest = shapes[0], sorted(shapes[1:], key=lambda sh: self._first_stage_cost(sh[0]))
        for shape in [first, *rest]:
            if target is not None and shape is not first:
                bound = self._first_stage_cost(shape[0])
                if (target.floor and bound >= best_cost) or (target.kind == "cost" and bound > target.value + 1e-12):
                    self.pruned += 1
                    continue
            try:
                cand = self._candidate(shape)
            except ValueError as exc:  # a stage whose labels are all one class cannot be calibrated
                self.unfitted.append(f"{' -> '.join('+'.join(st) for st in shape)}: {exc}")
                continue
            ev = evaluate_grid(cand)
            self.cands.append(cand)
            self.evs.append(ev)
            if target is not None and target.floor:
                ok, _ = _feasible(ev, target, oracle_acc, len(rows))
                if ok.any():
                    best_cost = min(best_cost, float(ev.cost[ok].min()))
        self.search_seconds = time.perf_counter() - t0

    def _first_stage_cost(self, agents: list[str]) -> float:
        return sum(self.member_cost[a] for a in agents) / float(self.oracle_cost.mean())

    def _stage(self, agents: list[str]) -> tuple:
        """(weights, oof, calibrator, labels, all-failed) of a cumulative agent set, fitted once."""
        key = tuple(agents)
        if key not in self._stage_cache:
            d, rows = self.data, self.rows
            weights = None
            if self.weighted_vote and len(agents) > 1:
                correct = np.array([self._member_ok[a] for a in agents])
                if self.keyed:
                    weights = fit_vote_weights([[self._keys[a][r] for r in rows] for a in agents], correct)
                else:  # answers compared by meaning have no keys to search weights on: the members' own
                    weights = reliability_weights(correct)  # accuracies break ties, never outvote a majority
                if all(w == 1.0 for w in weights):
                    weights = None
            X, tops = d.features(self.feature_set, agents, weights)
            y = d.correct(tops)[rows]
            oof, cal = _oof_and_fit(X[rows], y, self.calibrator, self.seed)
            self._stage_cache[key] = (weights, oof, cal, y, d.all_failed(agents)[rows])
        return self._stage_cache[key]

    def _candidate(self, shape: list[list[str]]) -> Candidate:
        parts = [self._stage(a) for a in shape]
        prev: list[str] = []
        stage_costs = []
        for agents in shape:
            extra = [a for a in agents if a not in prev]
            stage_costs.append(sum(self.data.call_costs(self.cost_kind, a)[self.rows] for a in extra))
            prev = agents
        arb, last_final = self._final(shape[-1], parts[-1])
        return Candidate(
            stages=shape,
            calibrators=[p[2] for p in parts],
            oof=[p[1] for p in parts],
            labels=[p[3] for p in parts],
            all_failed=[p[4] for p in parts],
            # After escalating from the last stage: the oracle's answer (or the arbiter's choice);
            # from an earlier one (only when all its agents failed: no vote, no arbiter), the
            # oracle's own, or none when it failed too.
            final_ok=[self.oracle_ok] * (len(shape) - 1) + [last_final],
            stage_costs=stage_costs,
            oracle_cost=self.oracle_cost,
            weights=[p[0] for p in parts],
            arbiter=arb,
        )

    def _final(self, agents: list[str], stage: tuple) -> tuple[dict | None, np.ndarray]:
        """(arbiter, out-of-fold correctness of the answer after escalating from ``agents``)."""
        key = tuple(agents)
        if key not in self._arbiter_cache:
            weights, oof = stage[0], stage[1]
            d, rows = self.data, self.rows
            tops = d.features(self.feature_set, agents, weights)[1]
            oans = d.answers(d.oracle)
            plain = d.correct([o if o is not None else c for o, c in zip(oans, tops)])[rows]
            arb, final = self._fit_arbiter(agents, weights, oof) if self.use_arbiter else (None, None)
            self._arbiter_cache[key] = (arb, plain if final is None else final)
        return self._arbiter_cache[key]

    def _fit_arbiter(
        self, agents: list[str], weights: list[float] | None, stage_oof: np.ndarray
    ) -> tuple[dict | None, np.ndarray | None]:
        """Fit the oracle-vs-committee arbiter on fitting questions where exactly one of them is right.

        Returns the serialized arbiter and the out-of-fold correctness of the
        final answer after escalation (None when there are too few cases).
        """
        d, rows = self.data, self.rows
        tops = d.features(self.feature_set, agents, weights)[1]
        oracle = d.outputs[d.oracle]
        com_ok = d.correct(tops)[rows]
        orc_ok = self.oracle_ok
        feats, differ = [], []
        for j, r in enumerate(rows):
            outs = [d.outputs[a][r] for a in agents]
            vote = committee_vote(outs, self.numeric, weights)
            o = oracle[r]
            differ.append(
                o.answer is not None and vote.answer is not None and answer_key(o.answer, self.numeric) != vote.key
            )
            feats.append(arbiter_features(d.questions[r], outs, vote, o, float(stage_oof[j]), self.numeric))
        F = np.array(feats, float)
        differ = np.array(differ)
        if d.labels == "estimated":  # soft: P(the oracle's is the right one of the two), where one likely is
            both = com_ok + orc_ok
            train = differ & (both > 0.5)
            z = orc_ok[train] / both[train]
        else:
            train = differ & (com_ok != orc_ok)
            z = orc_ok[train].astype(float)
        if z.sum() < 10 or (1 - z).sum() < 10:
            return None, None
        oof = np.ones(len(rows))
        oof_train, cal = _oof_and_fit(F[train], z, "logistic", self.seed)
        oof[np.flatnonzero(train)] = oof_train
        use_committee = differ & (oof < 0.5)
        oans = d.answers(d.oracle)
        base = d.correct([o if o is not None else c for o, c in zip(oans, tops)])[rows]
        final = np.where(use_committee, com_ok, base)
        return {"feature_names": ARBITER_FEATURES, "calibrator": cal.to_dict()}, final

    def expected(self, cand: Candidate, taus: np.ndarray) -> dict:
        """What ``cand`` at thresholds ``taus`` does on the fitting questions (out-of-fold), in the
        figures a live router can watch without labels: the oracle-call rate, and the fidelity of
        accepted answers (the share of accepted committee answers that equal the oracle's, where the
        oracle answered), whatever labels the fit used. The drift alarms compare live traffic with it."""
        d, rows = self.data, self.rows
        rp = replay_schedule(cand.oof, cand.all_failed, np.asarray(taus, float)[None, :])
        stage = rp.accepted[0]
        by_oracle = d.with_labels("oracle")
        agree = np.zeros(len(rows), bool)
        for s, (agents, w) in enumerate(zip(cand.stages, cand.weights)):
            agree |= (stage == s) & by_oracle.correct(d.features(self.feature_set, agents, w)[1])[rows]
        answered = np.array([a is not None for a in d.answers(d.oracle)])[rows]
        watched = (stage >= 0) & answered
        return {
            "oracle_call_rate": float(rp.escalated[0].mean()),
            "accepted_fidelity": float(agree[watched].mean()) if watched.any() else None,
            "n_questions": int(len(rows)),
            "n_accepted_with_oracle": int(watched.sum()),
            "of": "out-of-fold on the fitting questions, at the artifact's thresholds",
        }

    def artifact(self, target: Target, single_stage: bool = False, depth: int | None = None) -> CalibrationArtifact:
        """The artifact of the best schedule for ``target``; ``single_stage`` (the ablation) or ``depth``
        restrict the choice to schedules of one stage, or of exactly ``depth`` stages."""
        target.check_labels(self.data.labels)
        want = 1 if single_stage else depth
        idx = [k for k, c in enumerate(self.cands) if want is None or len(c.stages) == want]
        if not idx:
            if want is not None:
                raise TargetUnreachable(f"no schedule of {want} stage(s) was fitted (max_depth {self.max_depth})")
            why = "; ".join(self.unfitted[:3]) + (
                f"; and {len(self.unfitted) - 3} more" if len(self.unfitted) > 3 else ""
            )
            raise TargetUnreachable(f"no schedule could be calibrated on these questions ({why or 'none considered'})")
        evs = [self.evs[k] for k in idx]
        oracle_only, why = False, ""
        try:
            ci, j = choose(evs, target, float(self.oracle_ok.mean()), len(self.rows))
        except TargetUnreachable as exc:
            if not target.floor:
                raise
            # No schedule is as accurate as asked: the oracle alone is (by definition of the floor).
            oracle_only, why = True, f"no schedule meets the target: {exc}"
        ev = evs[ci] if not oracle_only else None
        if ev is not None and target.floor and ev.cost[j] >= 1.0 - 1e-12:
            oracle_only = True
            why = (
                f"the cheapest schedule that meets the target costs {ev.cost[j]:.3f} of always-oracle on the "
                "fitting questions (out-of-fold): no saving exists"
            )
        if oracle_only:  # the schedule kept for requests that name a threshold or a budget
            ci, j = _best_cascade([self.cands[k] for k in idx], evs)
        ci = idx[ci]
        cand, ev = self.cands[ci], self.evs[ci]
        d = self.data
        stages = []
        for agents, cal, tau, w in zip(cand.stages, cand.calibrators, ev.taus[j], cand.weights):
            fs = make_feature_set(self.feature_set, agents, numeric=self.numeric, weights=w, **d.feature_options)
            stage = {"agents": agents, "feature_names": fs.names, "calibrator": cal.to_dict(), "threshold": float(tau)}
            if w is not None:
                stage["vote_weights"] = w
            stages.append(stage)
        art = CalibrationArtifact(
            committee=list(d.committee),
            oracle=d.oracle,
            feature_set=self.feature_set,
            calibrator=self.calibrator,
            stages=stages,
            target=target.to_dict() | {"cost_model": self.cost_kind},
            cost_model=d.cost_model,
            fitted_on={
                "traces": self.traces,
                "labels": d.labels,
                "n_questions": len(self.rows),
                "idx": [d.idxs[r] for r in self.rows],
                "inner_folds": INNER_FOLDS,
                "seed": self.seed,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
            task=d.task,
            task_options=dict(d.feature_options),
            fit_summary={
                "labels": d.labels,  # what oof_accuracy / oracle_accuracy are measured against
                "oof_accuracy": float(ev.acc[j]),
                "oracle_accuracy": float(self.oracle_ok.mean()),
                "oof_oracle_call_rate": float(ev.rate[j]),
                "oof_mean_cost": float(ev.cost[j]),
                "schedules_considered": len(idx),
                "schedules_pruned": self.pruned,
                "max_depth": self.max_depth,
                "search_seconds": round(self.search_seconds, 3),
                "expected": self.expected(cand, ev.taus[j]),
                # What one call of each model costs on average (the server's "relative to one oracle
                # call" needs the oracle's output length on requests where it is not called).
                "mean_output_tokens": {
                    name: _mean_tokens([d.outputs[name][r] for r in self.rows]) for name in [*d.committee, d.oracle]
                },
            }
            # Estimated labels: the estimate's parameters and, where there is gold, its own error.
            | ({"truth": d.truth_report()} if d.labels == "estimated" else {}),
            arbiter=cand.arbiter,
            oracle_only=oracle_only,
        )
        if oracle_only:
            art.fit_summary["oracle_only"] = {
                "why": why,
                "of": "the operating point: requests go to the oracle alone (cost 1.0); the schedule below it "
                "(the best cascade over budgets, fitting.cascade_area) is kept for requests that name their "
                "own escalation_threshold or a budget",
            }
        return art


# Per-request thresholds the kept schedule of an oracle-only artifact is judged over (``cascade_area``).
SWEEP_TAUS = np.r_[np.linspace(0.0, 1.0, 101), 1.0 + 1e-9]


def cascade_area(cand: Candidate) -> float:
    """How good a cascade ``cand`` is for requests that name their own threshold: the mean, over
    budgets c from 0 to 1 of always-oracle, of the best accuracy a per-request threshold (the same at
    every stage, as ``Router.plan`` applies one) reaches at a cost of at most c, 0 where none does."""
    taus = np.repeat(SWEEP_TAUS[:, None], len(cand.oof), axis=1)
    rp = replay_schedule(cand.oof, cand.all_failed, taus)
    acc = rp.correct(cand.labels, cand.final_ok).astype(float).mean(1)
    cost = rp.mean_cost(cand.stage_costs, cand.oracle_cost) / float(cand.oracle_cost.mean())
    order = np.argsort(cost, kind="stable")
    best = np.maximum.accumulate(acc[order])
    edges = np.clip(np.r_[cost[order], 1.0], 0.0, 1.0)
    return float(np.sum(best * np.diff(edges)))


def _best_cascade(cands: list[Candidate], evs: list[Evaluated]) -> tuple[int, int]:
    """(candidate, row) kept by an oracle-only artifact: the schedule with the largest ``cascade_area``
    (the most accurate one alone can be a poor cascade: on MMLU-Pro it lay below the straight line from
    the cheapest agent to the oracle), at its most accurate row, the cheaper on ties."""
    ci = max(range(len(cands)), key=lambda k: (cascade_area(cands[k]), evs[k].acc.max()))
    return ci, int(np.lexsort((evs[ci].cost, -evs[ci].acc))[0])


def _mean_tokens(outputs: list[AgentOutput]) -> float | None:
    toks = [o.output_tokens for o in outputs if not o.failed and o.output_tokens is not None]
    return float(np.mean(toks)) if toks else None


def fit_router(
    data: RoutingData,
    rows: np.ndarray,
    target: Target,
    cost_kind: str,
    feature_set: str = "full",
    calibrator: str = "logistic",
    adaptive: bool = True,
    seed: int = 0,
    traces: str = "",
    arbiter: bool = True,
    max_depth: int = MAX_DEPTH,
    weighted_vote: bool = True,
) -> CalibrationArtifact:
    """Fit calibrators and thresholds on ``rows`` (positions into ``data``) and return the artifact."""
    fit = RouterFit(
        data,
        rows,
        cost_kind,
        feature_set,
        calibrator,
        adaptive,
        seed,
        arbiter,
        traces,
        max_depth,
        weighted_vote,
        target,
    )
    return fit.artifact(target)
