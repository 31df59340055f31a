"""Offline evaluation on recorded traces: our router, its τ sweep, and baselines.

Protocol (stated in every report): outer k-fold over the questions. For each
fold, everything learned (calibrators, schedule, thresholds, baseline
thresholds) is fitted on the other folds, with thresholds chosen on inner
out-of-fold probabilities; the held-out fold is then routed by the same
``Router`` code the server runs. Every question is scored exactly once, by
a model that never saw it. With ``--calibration`` the given artifact is
scored on the questions it was *not* fitted on.

A policy's outcome is the answer it returns per question; every point is scored twice from it:
``accuracy`` against gold (None when some question has none) and ``fidelity`` against the oracle
(1 - ``disagreement``: the share of all questions whose returned answer differs from the oracle's
answer, where it gave one). What the fit learns from is the data's ``labels`` (gold, oracle, or
estimated: then every fold's answer estimate is fitted on its fitting questions alone, and the
result's ``truth`` holds the estimate on all questions with its error against gold, where there is gold).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .artifact import CalibrationArtifact
from .cost import relative_cost
from .dataset import RoutingData
from .fitting import MAX_DEPTH, Evaluated, RouterFit, Target, TargetUnreachable, _oof_and_fit, choose
from .metrics import apgr, auroc, brier, ece, mcnemar_p, reliability
from .router import replay_schedule

SWEEP_POINTS = 50


@dataclass
class Outcome:
    """Per-question results of one policy over the evaluated rows."""

    answers: np.ndarray  # (object) the answer returned per question
    escalated: np.ndarray
    costs: dict[str, np.ndarray]  # cost kind -> per-question absolute cost
    threshold: float | None = None
    extra: dict = field(default_factory=dict)


class Evaluator:
    def __init__(self, data: RoutingData, cost_kind: str) -> None:
        data.cost_model.require(cost_kind, [*data.committee, data.oracle])
        self.data = data
        self.cost_kind = cost_kind
        self.kinds = data.cost_kinds()
        self.equal = data.equal_answers
        self.oracle_answers = _objects(data.answers(data.oracle))
        self.graded = data.has_labels  # every question can be graded (gold, or the traces' judgements)
        # The oracle's correctness under the fit's labels (what fitted baselines are chosen by).
        self.oracle_ok = data.correct(data.answers(data.oracle))
        self.cost = {k: {m: data.call_costs(k, m) for m in [*data.committee, data.oracle]} for k in self.kinds}

    # ---- turning outcomes into the JSON contract -------------------------------------------
    def agree(self, answers: np.ndarray, reference: np.ndarray, equal: Callable | None = None) -> np.ndarray:
        """Per question: ``answers`` equals ``reference`` under the task's equality, or ``equal`` (a
        missing reference: no)."""
        eq = equal or self.equal
        return np.array([r is not None and eq(a, r) for a, r in zip(answers, reference)], dtype=bool)

    def gold_ok(self, answers: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
        """Per question of ``rows``: the answer is right (its judgement, else the task's grade against gold)."""
        return self.data.graded(list(answers), rows) if self.graded else None

    def point(self, o: Outcome, rows: np.ndarray) -> dict:
        d = self.data
        ok = self.gold_ok(o.answers, rows)
        oracle = self.oracle_answers[rows]
        differ = (oracle != None) & ~self.agree(o.answers, oracle)  # noqa: E711 (elementwise)
        out = {
            "accuracy": None if ok is None else float(ok.mean()),
            "oracle_accuracy": None if ok is None else float(self.gold_ok(oracle, rows).mean()),
            "fidelity": float(1.0 - differ.mean()),
            "disagreement": float(differ.mean()),
            "oracle_call_rate": float(o.escalated.mean()),
            "cost_model": self.cost_kind,
            "threshold": o.threshold,
            "n_questions": int(len(rows)),
        }
        for k in self.kinds:
            spent = relative_cost(o.costs[k].sum(), self.cost[k][d.oracle][rows].sum())
            rel = math.nan if spent is None else float(spent)
            out[f"mean_cost_{k}"] = rel
            if k == self.cost_kind:
                out["mean_cost"] = rel
                out["cost_saving"] = 1.0 - rel
        out.update(o.extra)
        return out

    # ---- policies ----------------------------------------------------------------------------
    def calls_cost(self, rows: np.ndarray, called: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-question cost of the calls made: ``called[model]`` is a 0/1 mask over ``rows``."""
        return {k: sum(self.cost[k][m][rows] * mask for m, mask in called.items()) for k in self.kinds}

    def route_artifact(self, art: CalibrationArtifact, rows: np.ndarray, threshold: float | None = None) -> Outcome:
        """Route each question through ``Router.route``: the exact decision path of the server."""
        d = self.data
        router = art.router()
        answers, esc = np.empty(len(rows), object), np.zeros(len(rows), bool)
        called = {m: np.zeros(len(rows)) for m in [*d.committee, d.oracle]}
        for j, r in enumerate(rows):
            res = router.route(d.questions[r], lambda m, r=r: d.outputs[m][r], threshold)
            answers[j] = res.answer
            esc[j] = res.escalated
            for m in res.calls:
                called[m][j] = 1.0
        return Outcome(answers, esc, self.calls_cost(rows, called), threshold)

    def stage_probs(self, art: CalibrationArtifact, rows: np.ndarray) -> list[np.ndarray]:
        router = art.router()
        return [
            st.calibrator.predict(self.data.features(art.feature_set, st.agents, st.features.weights)[0][rows])
            for st in router.stages
        ]

    def sweep_prep(self, art: CalibrationArtifact, rows: np.ndarray) -> dict:
        """Per-fold arrays the τ sweep reuses: stage probabilities, committee answers, their
        correctness under the fit's labels and all-failed masks per stage, and the answer after
        escalating from each stage (``Router.final_answer``, arbiter included; it does not depend on τ)."""
        d = self.data
        router = art.router()
        probs = self.stage_probs(art, rows)
        committee, committee_ok, failed, final = [], [], [], []
        for s, st in enumerate(router.stages):
            tops = d.features(art.feature_set, st.agents, st.features.weights)[1]
            committee.append(_objects(tops)[rows])
            committee_ok.append(d.correct(tops)[rows])
            failed.append(d.all_failed(st.agents)[rows])
            fin = np.empty(len(rows), object)
            for j, r in enumerate(rows):
                outs = [d.outputs[a][r] for a in st.agents]
                dec = router.decide(s, d.questions[r], outs)
                fin[j], _ = router.final_answer(d.questions[r], outs, dec, d.outputs[d.oracle][r])
            final.append(fin)
        return {
            "router": router,
            "probs": probs,
            "committee": committee,
            "committee_ok": committee_ok,
            "failed": failed,
            "final": final,
        }

    def sweep_artifact(self, prep: dict, rows: np.ndarray, tau: float) -> Outcome:
        """The artifact's schedule with one threshold for every stage (the per-request override),
        replayed by ``replay_schedule``: the same rule, and the same result, as ``Router.route``."""
        d = self.data
        router = prep["router"]
        rp = replay_schedule(prep["probs"], prep["failed"], np.full((1, len(router.stages)), tau))
        called = {m: np.zeros(len(rows)) for m in [*d.committee, d.oracle]}
        for s in range(len(router.stages)):
            for m in router.new_agents(s):
                called[m] = rp.asked[0, s].astype(float)
        esc = rp.escalated[0]
        called[d.oracle] = esc.astype(float)
        answers = rp.correct(prep["committee"], prep["final"])[0]  # the same selection, of answers
        return Outcome(answers, esc.copy(), self.calls_cost(rows, called), tau)

    def fixed(self, rows: np.ndarray) -> dict[str, Outcome]:
        """Baselines with nothing to fit."""
        d = self.data
        n = len(rows)
        zeros = np.zeros(n, bool)
        out: dict[str, Outcome] = {}
        ones = np.ones(n)
        out["oracle_alone"] = Outcome(
            self.oracle_answers[rows], np.ones(n, bool), self.calls_cost(rows, {d.oracle: ones})
        )
        for a in d.committee:
            out[f"agent:{a}"] = Outcome(_objects(d.answers(a))[rows], zeros, self.calls_cost(rows, {a: ones}))
        X, tops = d.features("agreement", d.committee)
        maj = _objects(tops)[rows]
        all_called = {a: ones for a in d.committee}
        out["majority_vote"] = Outcome(maj, zeros, self.calls_cost(rows, all_called))
        unanimous = X[rows, 0] >= 1.0 - 1e-9
        esc = ~unanimous
        oracle_final = self._oracle_final(tops)[rows]
        out["unanimity_or_escalate"] = Outcome(
            np.where(esc, oracle_final, maj), esc, self.calls_cost(rows, all_called | {d.oracle: esc.astype(float)})
        )
        return out

    def _oracle_final(self, committee_tops: list[str | None]) -> np.ndarray:
        """The answer after escalation without an arbiter: the oracle's, the committee's where it gave none."""
        oans = self.data.answers(self.data.oracle)
        return _objects([o if o is not None else c for o, c in zip(oans, committee_tops)])

    def vote_cascade(self, fit_rows: np.ndarray, rows: np.ndarray, target: Target) -> Outcome:
        """MoT-cascade style: escalate when the vote share is below θ; θ fitted for the target."""
        d = self.data
        X, tops = d.features("agreement", d.committee)
        share = X[:, 0]
        ok = d.correct(tops)
        fin_answers = self._oracle_final(tops)
        fin = d.correct(list(fin_answers))
        ev = self._grid_eval(share[fit_rows], ok[fit_rows], fin[fit_rows], fit_rows, committee_first=True)
        _, j = choose([ev], target, float(self.oracle_ok[fit_rows].mean()), len(fit_rows))
        theta = float(ev.taus[j, 0])
        esc = share[rows] < theta
        called = {a: np.ones(len(rows)) for a in d.committee} | {d.oracle: esc.astype(float)}
        answers = np.where(esc, fin_answers[rows], _objects(tops)[rows])
        return Outcome(answers, esc, self.calls_cost(rows, called), theta)

    def prompt_only(self, fit_rows: np.ndarray, rows: np.ndarray, target: Target, seed: int) -> Outcome:
        """RouteLLM-style router on the question alone: committee *or* oracle, decided before any call."""
        d = self.data
        Q = question_features(d.questions)
        tops = d.features("agreement", d.committee)[1]
        ok = d.correct(tops)
        oof, cal = _oof_and_fit(Q[fit_rows], ok[fit_rows], "logistic", seed)
        ev = self._grid_eval(oof, ok[fit_rows], self.oracle_ok[fit_rows], fit_rows, committee_first=False)
        _, j = choose([ev], target, float(self.oracle_ok[fit_rows].mean()), len(fit_rows))
        tau = float(ev.taus[j, 0])
        esc = cal.predict(Q[rows]) < tau
        com = (~esc).astype(float)
        called = {a: com for a in d.committee} | {d.oracle: esc.astype(float)}
        answers = np.where(esc, self.oracle_answers[rows], _objects(tops)[rows])
        return Outcome(answers, esc, self.calls_cost(rows, called), tau)

    def _grid_eval(
        self, p: np.ndarray, ok: np.ndarray, fin: np.ndarray, fit_rows: np.ndarray, committee_first: bool
    ) -> Evaluated:
        """A one-stage threshold rule replayed over every candidate threshold (``replay_schedule``).
        ``committee_first``: the committee is always called, the oracle on escalation (vote cascade);
        otherwise the decision comes before any call, and escalation replaces the committee."""
        d = self.data
        grid = np.unique(np.r_[0.0, p, np.nextafter(p, 2.0), 1.0 + 1e-9])
        rp = replay_schedule([p], [np.zeros(len(p), bool)], grid[:, None])
        esc = rp.escalated
        k = self.cost_kind
        com = sum(self.cost[k][a][fit_rows] for a in d.committee)
        orc = self.cost[k][d.oracle][fit_rows]
        if committee_first:
            cost = rp.mean_cost([com], orc) / orc.mean()
        else:
            cost = np.where(esc, orc, com).mean(1) / orc.mean()
        return Evaluated(grid[:, None], rp.correct([ok], [fin]).mean(1), esc.mean(1), cost)


_NUM = re.compile(r"\d+(?:\.\d+)?")


def question_features(questions: list[str]) -> np.ndarray:
    """Question-only features for the prompt-only baseline: length, numbers, their sizes, cue words."""
    rows = []
    for q in questions:
        nums = [float(x) for x in _NUM.findall(q.replace(",", ""))]
        low = q.lower()
        rows.append(
            [
                math.log1p(len(q)),
                len(nums),
                math.log10(1 + max(nums)) if nums else 0.0,
                sum(x != int(x) for x in nums),
                float("%" in q or "percent" in low),
                float("fraction" in low or "half" in low or "third" in low),
                float("each" in low),
                q.count("?"),
                len(q.split(".")),
            ]
        )
    return np.array(rows, float)


def _objects(values) -> np.ndarray:
    """A 1-D object array (answers: strings or None)."""
    out = np.empty(len(values), object)
    out[:] = list(values)
    return out


def _concat(parts: list[tuple[np.ndarray, Outcome]], n: int) -> Outcome:
    """Reassemble per-fold outcomes into question order."""
    answers, esc = np.empty(n, object), np.zeros(n, bool)
    kinds = parts[0][1].costs.keys()
    costs = {k: np.zeros(n) for k in kinds}
    for rows, o in parts:
        answers[rows], esc[rows] = o.answers, o.escalated
        for k in kinds:
            costs[k][rows] = o.costs[k]
    thr = [o.threshold for _, o in parts if o.threshold is not None]
    return Outcome(answers, esc, costs, float(np.mean(thr)) if thr else None)


def evaluate(
    data: RoutingData,
    target: Target,
    cost_kind: str = "flops",
    feature_set: str = "full",
    calibrator: str = "logistic",
    adaptive: bool = True,
    folds: int = 5,
    seed: int = 0,
    artifact: CalibrationArtifact | None = None,
    progress: Callable[[str], None] | None = None,
    arbiter: bool = True,
    max_depth: int = MAX_DEPTH,
    weighted_vote: bool = True,
    groups: tuple[str, Sequence[str | None]] | None = None,
) -> dict:
    """Run the whole evaluation and return the JSON-contract dict. ``groups``: (a field's name, its value
    per question) adds ``by``: the same held-out figures per value (a subject, a category)."""
    from sklearn.model_selection import KFold

    ev = Evaluator(data, cost_kind)
    n = data.n
    say = progress or (lambda _msg: None)
    taus = np.linspace(0.0, 1.0, SWEEP_POINTS)
    if artifact is not None:
        seen = artifact.fitted_idx()
        test = np.array([r for r, i in enumerate(data.idxs) if i not in seen], int)
        fit = np.array([r for r, i in enumerate(data.idxs) if i in seen], int)
        if len(test) == 0:
            raise ValueError(
                "the calibration artifact was fitted on every question of these traces; nothing disjoint "
                "is left to score (fit it with --fit-fraction < 1 or on other questions)"
            )
        splits = [(fit, test, artifact, None)]
        protocol = f"given artifact scored on the {len(test)} questions it was not fitted on"
    else:
        if folds < 2:
            raise ValueError(f"--folds must be at least 2, got {folds}")
        kf = KFold(folds, shuffle=True, random_state=seed)
        splits = []
        for k, (fit, test) in enumerate(kf.split(np.arange(n))):
            say(f"fold {k + 1}/{folds}: fitting router on {len(fit)} questions")
            rf = RouterFit(
                data.fitted_on(fit), fit, cost_kind, feature_set, calibrator, adaptive, seed, arbiter,
                max_depth=max_depth, weighted_vote=weighted_vote, target=target,
            )  # fmt: skip
            splits.append((fit, test, rf.artifact(target), rf))
        protocol = (
            f"{folds}-fold cross-fitting over the {n} questions (seed {seed}): router, schedule and thresholds "
            f"fitted on {folds - 1} folds (thresholds on inner {5}-fold out-of-fold probabilities), scored on the "
            "held-out fold; every question scored once"
        )

    ours, sweeps, cal_p, cal_y = [], {t: [] for t in taus}, np.zeros(n), np.zeros(n)
    baselines: dict[str, list] = {}
    schedules = []
    for k, (fit, test, art, rf) in enumerate(splits):
        say(f"fold {k + 1}/{len(splits)}: routing {len(test)} held-out questions")
        ours.append((test, ev.route_artifact(art, test)))
        fold_data = data.fitted_on(fit)  # estimated labels: the fold's own estimate (else data itself)
        fev = ev if fold_data is data else Evaluator(fold_data, cost_kind)
        prep = fev.sweep_prep(art, test)
        for t in taus:
            sweeps[t].append((test, ev.sweep_artifact(prep, test, float(t))))
        cal_p[test] = prep["probs"][-1]
        cal_y[test] = prep["committee_ok"][-1]
        schedules.append(
            [{"oracle_only": True}]
            if art.oracle_only
            else [{"agents": s["agents"], "threshold": s["threshold"]} for s in art.stages]
        )
        for name, o in ev.fixed(test).items():
            baselines.setdefault(name, []).append((test, o))
        if len(fit) >= 40:
            for name, o in _fitted_baselines(
                fev, fold_data, fit, test, target, cost_kind, seed, rf if adaptive else None
            ):
                baselines.setdefault(name, []).append((test, o))

    rows_all = np.concatenate([t for t, _ in ours])
    rows_all.sort()
    ours_o = _concat(ours, n)
    op = ev.point(_sub(ours_o, rows_all), rows_all)
    # Folds whose fit found no saving at the target: their questions went to the oracle alone.
    op["oracle_only_folds"] = sum(art.oracle_only for _, _, art, _ in splits)
    op["n_folds"] = len(splits)
    sweep = [ev.point(_sub(_concat(sweeps[t], n), rows_all), rows_all) for t in taus]
    base_out: dict[str, dict | None] = {}
    for name, parts in baselines.items():
        if any(o is None for _, o in parts):
            base_out[name] = None  # the target was unreachable for this baseline on some fold
            continue
        base_out[name] = ev.point(_sub(_concat(parts, n), rows_all), rows_all)
    # Random escalation at our realised call rate (expectation over random draws).
    r = op["oracle_call_rate"]
    maj, orc = base_out["majority_vote"], base_out["oracle_alone"]
    rand = {key: (1 - r) * maj[key] + r * orc[key] if isinstance(maj[key], float) else maj[key] for key in maj}
    rand["oracle_call_rate"] = r
    if maj["accuracy"] is not None:
        rand["accuracy"] = (1 - r) * maj["accuracy"] + r * orc["accuracy"]
    for kind in ev.kinds:
        rand[f"mean_cost_{kind}"] = maj[f"mean_cost_{kind}"] + r * 1.0
    rand["mean_cost"] = rand[f"mean_cost_{cost_kind}"]
    rand["cost_saving"] = 1 - rand["mean_cost"]
    rand["oracle_accuracy"] = op["oracle_accuracy"]
    base_out["random_same_rate"] = rand

    score = "accuracy" if ev.graded else "fidelity"  # APGR on gold where there is gold
    weak = sweep[0][score]
    ok_rows = cal_y[rows_all]  # soft under estimated labels: ECE and Brier against the probabilities
    result = {
        "protocol": protocol,
        "setup": {
            "committee": data.committee,
            "oracle": data.oracle,
            "feature_set": feature_set,
            "calibrator": calibrator,
            "adaptive": adaptive,
            "max_depth": max_depth if adaptive else 1,
            "weighted_vote": weighted_vote,
            "arbiter": any(art.arbiter is not None for _, _, art, _ in splits),
            "labels": data.labels,
            "scored_against": ("judgements and oracle" if data.judgements is not None else "gold and oracle")
            if ev.graded
            else "oracle (no gold)",
            "notes": list(data.notes),
            "target": target.to_dict(),
            "cost_models_available": ev.kinds,
            "prompt_tokens": "recorded prompt_tokens, else question chars/4 (every tier gets the same prompt)",
            "output_tokens": "recorded output_tokens (chars/4 in the shared GSM8K traces)",
        },
        "operating_point": op,
        "sweep": sweep,
        "baselines": base_out,
        "calibration": {
            "ece": ece(cal_p[rows_all], ok_rows),
            "brier": brier(cal_p[rows_all], ok_rows),
            "auroc": auroc(cal_p[rows_all], ok_rows >= 0.5),
            "committee_accuracy": float(ok_rows.mean()),
            "reliability": reliability(cal_p[rows_all], ok_rows),
            "of": f"held-out P(last stage's committee answer is correct), correct = equal to the {data.labels} answer"
            if data.labels != "estimated"
            else "held-out P(last stage's committee answer is correct) vs the estimated probability that it is "
            "(the fold's own estimate; AUROC against estimated > 0.5)",
        },
        "apgr": apgr(
            np.array([s["oracle_call_rate"] for s in sweep]),
            np.array([s[score] for s in sweep]),
            weak,
            sweep[-1][score],
        ),
        "budget_targeting_error": _targeting(target, op),
        "mcnemar_p": None
        if not ev.graded
        else mcnemar_p(
            ev.gold_ok(ours_o.answers[rows_all], rows_all), ev.gold_ok(ev.oracle_answers[rows_all], rows_all)
        ),
        "schedules": schedules,
    }
    if data.labels == "estimated":
        result["truth"] = data.truth_report()
    if groups is not None:
        result["by"] = _by_group(ev, groups, rows_all, ours_o, base_out, baselines, cal_p, cal_y, n)
    return result


def _by_group(
    ev: Evaluator,
    groups: tuple[str, Sequence[str | None]],
    rows_all: np.ndarray,
    ours: Outcome,
    base_out: dict,
    baselines: dict[str, list],
    cal_p: np.ndarray,
    cal_y: np.ndarray,
    n: int,
) -> dict:
    """The held-out operating point, the oracle's and the majority vote's accuracy, and the last stage's
    AUROC within each group of questions (the same cross-fitted routers: no fit per group)."""
    name, values = groups
    if len(values) != n:
        raise ValueError(f"--by {name}: {len(values)} values for {n} questions")
    maj = _concat(baselines["majority_vote"], n) if base_out.get("majority_vote") else None
    out: dict[str, dict] = {}
    for value in sorted({str(v) for v in values}):
        rows = np.array([r for r in rows_all if str(values[r]) == value], int)
        p = ev.point(_sub(ours, rows), rows)
        y = cal_y[rows]
        p["committee_majority_accuracy"] = None if maj is None else ev.point(_sub(maj, rows), rows)["accuracy"]
        p["auroc"] = auroc(cal_p[rows], y >= 0.5) if 0 < (y >= 0.5).sum() < len(rows) else None
        out[value] = p
    return {"field": name, "groups": out}


def _fitted_baselines(
    ev: Evaluator,
    data: RoutingData,
    fit: np.ndarray,
    test: np.ndarray,
    target: Target,
    cost_kind: str,
    seed: int,
    rf: RouterFit | None,
) -> list[tuple[str, Outcome | None]]:
    """The baselines fitted on ``fit`` and scored on ``test``; None where the target is unreachable.
    ``rf``: our own fit, for the one-stage ablation (None: not adaptive, nothing to ablate)."""
    fitted: dict[str, Callable[[], Outcome]] = {
        "vote_share_cascade": lambda: ev.vote_cascade(fit, test, target),
        "prompt_only_router": lambda: ev.prompt_only(fit, test, target, seed),
        "agreement_router": lambda: ev.route_artifact(
            RouterFit(data, fit, cost_kind, "agreement", "logistic", False, seed, False).artifact(target), test
        ),
    }
    if rf is not None:
        fitted["single_stage_router"] = lambda: ev.route_artifact(rf.artifact(target, single_stage=True), test)
    out: list[tuple[str, Outcome | None]] = []
    for name, fn in fitted.items():
        try:
            out.append((name, fn()))
        except TargetUnreachable:
            out.append((name, None))
    return out


def _sub(o: Outcome, rows: np.ndarray) -> Outcome:
    return Outcome(o.answers[rows], o.escalated[rows], {k: v[rows] for k, v in o.costs.items()}, o.threshold, o.extra)


def _targeting(target: Target, op: dict) -> dict:
    if target.kind == "oracle_rate":
        realised = op["oracle_call_rate"]
        requested = target.value
    elif target.kind == "cost":
        realised = op["mean_cost"]
        requested = target.value
    elif target.kind == "max_disagreement":
        realised = op["disagreement"]
        requested = target.value
    else:
        realised = op["accuracy"]
        requested = op["oracle_accuracy"] - target.value
    return {"kind": target.kind, "requested": requested, "realised": realised, "error": realised - requested}
