"""Fitting a router: calibrators per stage, then thresholds for a budget target.

Thresholds are chosen on *out-of-fold* probabilities of the fitting questions
(inner k-fold), never on in-sample scores, which are optimistic and would put
the threshold too low. The search covers one-stage schedules (the plain
Pyramid MoA router) and two-stage "anytime" schedules (ask a subset first, the
rest only when unsure) and keeps the cheapest (or most accurate) schedule that
meets the target.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from .answers import answer_key
from .artifact import CalibrationArtifact
from .calibration import make_calibrator
from .dataset import RoutingData
from .features import ARBITER_FEATURES, AgentOutput, arbiter_features, committee_vote, make_feature_set
from .router import replay_schedule

TARGET_KINDS = ("oracle_rate", "cost", "max_accuracy_drop")
INNER_FOLDS = 5
MAX_GRID = 120  # last-stage threshold candidates
MAX_GRID_FIRST = 24  # first-stage threshold candidates (coarse: fewer choices, less selection optimism)


class TargetUnreachable(ValueError):
    """No threshold on the fitting questions meets the requested target."""


@dataclass(frozen=True)
class Target:
    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"unknown target {self.kind!r}; use one of {TARGET_KINDS}")
        if self.kind in ("oracle_rate", "max_accuracy_drop") and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"target {self.kind} must be within [0, 1], got {self.value}")
        if self.kind == "cost" and self.value <= 0:
            raise ValueError(f"target cost must be positive (relative to always-oracle), got {self.value}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}


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


def _oof_and_fit(X: np.ndarray, y: np.ndarray, calibrator: str, seed: int) -> tuple[np.ndarray, object]:
    from sklearn.model_selection import StratifiedKFold

    oof = np.zeros(len(y))
    for tr, te in StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=seed).split(X, y):
        oof[te] = make_calibrator(calibrator).fit(X[tr], y[tr]).predict(X[te])
    return oof, make_calibrator(calibrator).fit(X, y)


def schedule_shapes(committee: list[str], adaptive: bool) -> list[list[list[str]]]:
    """One-stage full committee, plus (adaptive) every proper subset first, the full committee after.

    Agents keep the committee's order inside a stage so every two-stage
    schedule shares the full-committee calibrator.
    """
    shapes = [[list(committee)]]
    if adaptive:
        for k in range(1, len(committee)):
            for first in itertools.combinations(committee, k):
                shapes.append([list(first), list(committee)])
    return shapes


def _grid(p: np.ndarray, size: int = MAX_GRID) -> np.ndarray:
    """Candidate thresholds: quantiles of the OOF probabilities, plus never/always."""
    qs = np.unique(np.quantile(p, np.linspace(0, 1, size)))
    return np.unique(np.r_[0.0, qs, np.nextafter(qs, 2.0), 1.0 + 1e-9])


@dataclass
class Evaluated:
    """Accuracy, oracle rate and cost of threshold grids for one candidate on fitting questions."""

    taus: np.ndarray  # (G, n_stages)
    acc: np.ndarray
    rate: np.ndarray
    cost: np.ndarray


def threshold_grid(cand: Candidate) -> np.ndarray:
    """(G, n_stages) threshold rows: every combination of the stages' candidate thresholds, coarse
    for the earlier stages, fine for the last, the last varying fastest (``_robust_acc`` relies on
    that order)."""
    last = len(cand.oof) - 1
    grids = [_grid(p, MAX_GRID if s == last else MAX_GRID_FIRST) for s, p in enumerate(cand.oof)]
    return np.array(list(itertools.product(*grids)), float)


def evaluate_grid(cand: Candidate) -> Evaluated:
    """Accuracy, oracle rate and cost (relative to always-oracle) of every threshold row, replayed
    by ``replay_schedule``: the rule of ``Router.decide``, all-failed stages included."""
    taus = threshold_grid(cand)
    rp = replay_schedule(cand.oof, cand.all_failed, taus)
    acc = rp.correct(cand.labels, cand.final_ok).mean(1)
    cost = rp.mean_cost(cand.stage_costs, cand.oracle_cost) / cand.oracle_cost.mean()
    return Evaluated(taus, acc, rp.escalated.mean(1), cost)


def _robust_acc(ev: Evaluated, n_stage1: int) -> np.ndarray:
    """Accuracy made monotone from the expensive end along the last threshold.

    A threshold counts as meeting an accuracy floor only if every more
    cautious last-stage threshold does too: this discards lucky bumps of the
    fitting sample that would not carry over to new questions.
    """
    acc = ev.acc.copy()
    G = len(acc) // n_stage1
    for k in range(n_stage1):
        seg = acc[k * G : (k + 1) * G]
        acc[k * G : (k + 1) * G] = np.minimum.accumulate(seg[::-1])[::-1]
    return acc


def choose(evs: list[Evaluated], target: Target, oracle_acc: float, n_questions: int) -> tuple[int, int]:
    """Pick (candidate, grid row) for the target; raise TargetUnreachable with the best achievable."""
    best: tuple[tuple, int, int] | None = None
    for ci, ev in enumerate(evs):
        n1 = 1 if ev.taus.shape[1] == 1 else len(np.unique(ev.taus[:, :-1], axis=0))
        if target.kind == "max_accuracy_drop":
            ok = _robust_acc(ev, n1) >= oracle_acc - target.value - 1e-12
            keys = [(-ev.cost[j], ev.acc[j]) for j in np.flatnonzero(ok)]
        elif target.kind == "cost":
            ok = ev.cost <= target.value + 1e-12
            keys = [(ev.acc[j], -ev.cost[j]) for j in np.flatnonzero(ok)]
        else:
            dist = np.abs(ev.rate - target.value)
            ok = dist <= max(0.5 / n_questions, 1e-12) + 0.005
            keys = [(-round(dist[j], 3), ev.acc[j], -ev.cost[j]) for j in np.flatnonzero(ok)]
        for key, j in zip(keys, np.flatnonzero(ok)):
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


class RouterFit:
    """All candidate schedules fitted on one set of questions; artifacts are cut from it.

    Fitting once and choosing many times lets evaluation report the one-stage
    ablation without refitting.
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
    ) -> None:
        rows = np.asarray(rows)
        if len(rows) < 40:
            raise ValueError(f"too few questions to calibrate: {len(rows)} (need at least 40)")
        data.cost_model.require(cost_kind, [*data.committee, data.oracle])
        self.data, self.rows, self.cost_kind = data, rows, cost_kind
        self.feature_set, self.calibrator, self.seed, self.traces = feature_set, calibrator, seed, traces
        self.oracle_ok = data.correct(data.answers(data.oracle))[rows]
        oracle_cost = data.call_costs(cost_kind, data.oracle)[rows]

        fitted: dict[tuple[str, ...], tuple[np.ndarray, object, np.ndarray]] = {}

        def fit_agents(agents: list[str]) -> tuple[np.ndarray, object, np.ndarray]:
            if tuple(agents) not in fitted:
                X, tops = data.features(feature_set, agents)
                y = data.correct(tops)[rows]
                oof, cal = _oof_and_fit(X[rows], y, calibrator, seed)
                fitted[tuple(agents)] = (oof, cal, y)
            return fitted[tuple(agents)]

        full_oof = fit_agents(data.committee)[0]
        self.arbiter, oracle_final = self._fit_arbiter(full_oof) if arbiter else (None, None)
        if oracle_final is None:
            full_top = data.features(feature_set, data.committee)[1]
            oans = data.answers(data.oracle)
            oracle_final = data.correct([o if o is not None else c for o, c in zip(oans, full_top)])[rows]

        self.cands: list[Candidate] = []
        self.evs: list[Evaluated] = []
        for shape in schedule_shapes(data.committee, adaptive):
            parts = [fit_agents(a) for a in shape]
            prev: list[str] = []
            stage_costs = []
            for agents in shape:
                extra = [a for a in agents if a not in prev]
                stage_costs.append(sum(data.call_costs(cost_kind, a)[rows] for a in extra))
                prev = agents
            cand = Candidate(
                stages=shape,
                calibrators=[p[1] for p in parts],
                oof=[p[0] for p in parts],
                labels=[p[2] for p in parts],
                all_failed=[data.all_failed(a)[rows] for a in shape],
                # After escalating from the last stage: the oracle's answer (or the arbiter's choice);
                # from an earlier one (only when all its agents failed: no vote, no arbiter), the
                # oracle's own, or none when it failed too.
                final_ok=[self.oracle_ok] * (len(shape) - 1) + [oracle_final],
                stage_costs=stage_costs,
                oracle_cost=oracle_cost,
            )
            self.cands.append(cand)
            self.evs.append(evaluate_grid(cand))

    def _fit_arbiter(self, full_oof: np.ndarray) -> tuple[dict | None, np.ndarray | None]:
        """Fit the oracle-vs-committee arbiter on fitting questions where exactly one of them is right.

        Returns the serialized arbiter and the out-of-fold correctness of the
        final answer after escalation (None when there are too few cases).
        """
        d, rows = self.data, self.rows
        X_full, tops = d.features(self.feature_set, d.committee)
        oracle = d.outputs[d.oracle]
        com_ok = d.correct(tops)[rows]
        orc_ok = self.oracle_ok
        numeric = d.task != "text"
        feats, differ = [], []
        agents = d.committee
        for j, r in enumerate(rows):
            outs = [d.outputs[a][r] for a in agents]
            vote = committee_vote(outs, numeric)
            o = oracle[r]
            differ.append(
                o.answer is not None and vote.answer is not None and answer_key(o.answer, numeric) != vote.key
            )
            feats.append(arbiter_features(d.questions[r], outs, vote, o, float(full_oof[j]), numeric))
        F = np.array(feats, float)
        differ = np.array(differ)
        train = differ & (com_ok != orc_ok)
        z = orc_ok[train]
        if z.sum() < 10 or (~z).sum() < 10:
            return None, None
        oof = np.ones(len(rows))
        oof_train, cal = _oof_and_fit(F[train], z, "logistic", self.seed)
        oof[np.flatnonzero(train)] = oof_train
        use_committee = differ & (oof < 0.5)
        oans = d.answers(d.oracle)
        base = d.correct([o if o is not None else c for o, c in zip(oans, tops)])[rows]
        final = np.where(use_committee, com_ok, base)
        return {"feature_names": ARBITER_FEATURES, "calibrator": cal.to_dict()}, final

    def artifact(self, target: Target, single_stage: bool = False) -> CalibrationArtifact:
        idx = [k for k, c in enumerate(self.cands) if not single_stage or len(c.stages) == 1]
        ci, j = choose([self.evs[k] for k in idx], target, float(self.oracle_ok.mean()), len(self.rows))
        ci = idx[ci]
        cand, ev = self.cands[ci], self.evs[ci]
        d = self.data
        stages = []
        for agents, cal, tau in zip(cand.stages, cand.calibrators, ev.taus[j]):
            fs = make_feature_set(self.feature_set, agents, numeric=d.task != "text")
            stages.append(
                {"agents": agents, "feature_names": fs.names, "calibrator": cal.to_dict(), "threshold": float(tau)}
            )
        return CalibrationArtifact(
            committee=list(d.committee),
            oracle=d.oracle,
            feature_set=self.feature_set,
            calibrator=self.calibrator,
            stages=stages,
            target=target.to_dict() | {"cost_model": self.cost_kind},
            cost_model=d.cost_model,
            fitted_on={
                "traces": self.traces,
                "n_questions": len(self.rows),
                "idx": [d.idxs[r] for r in self.rows],
                "inner_folds": INNER_FOLDS,
                "seed": self.seed,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
            task=d.task,
            fit_summary={
                "oof_accuracy": float(ev.acc[j]),
                "oracle_accuracy": float(self.oracle_ok.mean()),
                "oof_oracle_call_rate": float(ev.rate[j]),
                "oof_mean_cost": float(ev.cost[j]),
                "schedules_considered": [self.cands[k].stages for k in idx],
                # What one call of each model costs on average (the server's "relative to one oracle
                # call" needs the oracle's output length on requests where it is not called).
                "mean_output_tokens": {
                    name: _mean_tokens([d.outputs[name][r] for r in self.rows]) for name in [*d.committee, d.oracle]
                },
            },
            arbiter=self.arbiter,
        )


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
) -> CalibrationArtifact:
    """Fit calibrators and thresholds on ``rows`` (positions into ``data``) and return the artifact."""
    fit = RouterFit(data, rows, cost_kind, feature_set, calibrator, adaptive, seed, arbiter, traces)
    return fit.artifact(target)
