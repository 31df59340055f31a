"""Routing data: the committee's and oracle's recorded outputs aligned per question.

Built once from a trace directory; features for any agent subset, labels and
per-call costs are derived from it, so fitting and evaluation never re-read
files and every number comes from the same aligned rows.

*Labels*: what "a committee answer is correct" means is the one thing ``labels`` says, read by
``correct``: ``gold`` compares with the gold answers; ``oracle`` with the oracle's own answer under
the task's equality (no gold is read), so a router fitted on it reproduces the oracle at lower
cost. Where the reference is missing (no gold, or the oracle gave no answer) nothing is correct.
``estimated`` reads no gold either: ``correct`` is the estimated probability that an answer is the
right one (a float per question, ``truth.py``), from every recorded model's answer (``voters``:
models of the traces besides the committee and the oracle), the oracle one fallible voter among
them; the estimate is fitted on ``truth_rows`` (``fitted_on``: a fold's fitting questions).
``with_labels`` gives the same rows under the other labels (caches shared), so the evaluator can
score a policy by both.

*Gold* belongs to the task: each question's gold is read by the task (``AnswerTask.read_gold``: a
number, a letter, text with "/"-separated aliases) and an answer is graded by the task's
``grade``. Where the traces carry judgements of the answers (``correct`` on a sample, by people or a
judge), a judged answer is graded by its judgement instead, and the questions where some routed
model's answer is not judged are left out of the data (``notes`` says how many), so every
figure is read off judgements, never a mix of judgements and string matching.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from .answers import answer_key, get_task
from .committee import judgement_maps
from .cost import COST_MODELS, CostModel, ModelCost, prompt_tokens
from .features import AgentOutput, make_feature_set
from .traces import TraceError, TraceSet, sample_output
from .truth import TruthEstimate, estimate_error, fit_truth, group_answers

LABELS = ("gold", "oracle", "estimated")
# --labels estimated: which recorded models vote on the truth besides the committee and the oracle.
TRUTH_VOTERS = ("all", "routed")  # every source of the traces / none (or a comma-separated list)


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
    # --labels estimated: further models' answers (None: no answer) and whether each has a record of
    # the question; the questions the estimate is fitted on (None: all); the fit, once made.
    voters: dict[str, list[str | None]] = field(default_factory=dict)
    voters_present: dict[str, list[bool]] = field(default_factory=dict)
    truth_rows: tuple[int, ...] | None = None
    _truth: list = field(default_factory=list)  # [TruthEstimate, per-question {answer key: group}]
    # Recorded judgements, per question {answer key: judged right}; None where the traces carry none.
    judgements: list[dict[str, bool]] | None = None
    notes: list[str] = field(default_factory=list)  # what loading left out, and why (in every report)

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
        """Per question, the answer ``correct`` compares with under ``labels`` (``estimated``: the likeliest)."""
        if self.labels == "estimated":
            est = self.truth()
            best = est.posterior.argmax(1)
            cols = [self._voter_answers(v) for v in est.voters]
            out: list[str | None] = []
            for i, g in enumerate(best):
                j = np.flatnonzero(est.groups[i] == g)
                out.append(cols[j[0]][i] if len(j) and est.posterior[i, g] > est.none[i] else None)
            return out
        return list(self.gold) if self.labels == "gold" else self.answers(self.oracle)

    # ---- --labels estimated ----------------------------------------------------------------------
    def truth_voters(self) -> list[str]:
        """The models whose answers the estimate reads: the committee, the oracle, then ``voters``
        (answers compared by meaning, ``semantic``, use the committee and the oracle only: only
        their outputs are embedded)."""
        extra = list(self.voters) if get_task(self.task).keyed else []
        return [*self.committee, self.oracle, *extra]

    def _voter_answers(self, name: str) -> list[str | None]:
        return self.answers(name) if name in self.outputs else self.voters[name]

    def truth(self) -> TruthEstimate:
        """The latent-truth estimate (``truth.fit_truth``) fitted on ``truth_rows``; made once."""
        if not self._truth:
            names = self.truth_voters()
            answers = [self._voter_answers(v) for v in names]
            present = [[True] * self.n if v in self.outputs else self.voters_present[v] for v in names]
            task = get_task(self.task)
            if task.keyed:
                G = group_answers(answers, key=lambda a: answer_key(a, task.numeric), present=present)
                keymaps = [
                    {answer_key(a[i], task.numeric): int(G[i, j]) for j, a in enumerate(answers) if G[i, j] >= 0}
                    for i in range(self.n)
                ]
            else:
                G = group_answers(answers, equal=self.equal_answers, present=present)
                keymaps = None
            rows = None if self.truth_rows is None else np.array(self.truth_rows, int)
            self._truth[:] = [fit_truth(G, names, rows), keymaps]
        return self._truth[0]

    def fitted_on(self, rows: np.ndarray) -> RoutingData:
        """The same rows with the answer estimate fitted on ``rows`` only (other labels: ``self``)."""
        rows_t = tuple(int(r) for r in np.sort(np.asarray(rows)))
        if self.labels != "estimated" or rows_t == (self.truth_rows or tuple(range(self.n))):
            return self
        return replace(self, truth_rows=rows_t, _truth=[])

    def truth_report(self, rows: np.ndarray | None = None) -> dict:
        """The estimate's parameters, and where every question has gold, its own error: estimated vs
        true accuracy of each voter and the calibration of the posteriors (over ``rows``, default
        the fitted questions)."""
        est = self.truth()
        out = est.summary()
        if self.has_labels:
            gold_ok = {v: self.graded(self._voter_answers(v)) for v in est.voters}
            out["error_vs_gold"] = estimate_error(est, gold_ok, rows)
        return out

    def _estimated(self, answers: list[str | None]) -> np.ndarray:
        est = self.truth()
        keymaps = self._truth[1]
        out = np.zeros(self.n)
        if keymaps is not None:
            numeric = get_task(self.task).numeric
            for i, a in enumerate(answers):
                g = None if a is None else keymaps[i].get(answer_key(a, numeric))
                if g is not None:
                    out[i] = est.posterior[i, g]
            return out
        eq = self.equal_answers
        cols = [self._voter_answers(v) for v in est.voters]
        for i, a in enumerate(answers):
            if a is None:
                continue
            for j, col in enumerate(cols):
                if est.groups[i, j] >= 0 and eq(a, col[i]):
                    out[i] = est.posterior[i, est.groups[i, j]]
                    break
        return out

    def with_labels(self, labels: str) -> RoutingData:
        """The same rows under other labels (feature and cost caches shared)."""
        return self if labels == self.labels else replace(self, labels=labels)

    @property
    def equal_answers(self) -> Callable[[str | None, str | None], bool]:
        """Whether two answers agree (committee vs oracle)."""
        return self.same or get_task(self.task).equal

    @property
    def equal_gold(self) -> Callable[[str | None, str | None], bool]:
        """Whether an answer is right by the (task-read) gold: the task's ``grade``."""
        return self.grade or get_task(self.task).grade

    def graded(self, answers: list[str | None], rows: np.ndarray | None = None) -> np.ndarray:
        """Per answer (of question ``rows[k]``, default all in order): right by its recorded judgement
        where it has one, else by the gold (no gold: not right)."""
        rows = np.arange(self.n) if rows is None else np.asarray(rows)
        eq, numeric = self.equal_gold, get_task(self.task).numeric
        out = np.zeros(len(rows), dtype=bool)
        for k, (a, r) in enumerate(zip(answers, rows)):
            if a is None:
                continue
            if self.judgements is not None:
                judged = self.judgements[r].get(answer_key(a, numeric))
                if judged is not None:
                    out[k] = judged
                    continue
            g = self.gold[r]
            out[k] = g is not None and eq(a, g)
        return out

    @property
    def has_labels(self) -> bool:
        """Every question can be graded: it has gold, or the traces' judgements of its answers."""
        return self.has_gold or self.judgements is not None

    def correct(self, answers: list[str | None]) -> np.ndarray:
        """Per question, whether each answer is correct under ``labels``: bool, or under ``estimated``
        the estimated probability that it is (float)."""
        if self.labels == "estimated":
            return self._estimated(answers)
        if self.labels == "gold":
            return self.graded(answers)
        eq = self.equal_answers
        return np.array([g is not None and eq(a, g) for a, g in zip(answers, self.reference())], dtype=bool)

    def answers(self, name: str) -> list[str | None]:
        return [o.answer for o in self.outputs[name]]

    def prompt_tokens(self, i: int, out: AgentOutput) -> int:
        """Recorded prompt tokens, else the question's chars/4: every tier gets the same prompt."""
        return prompt_tokens(out, self.questions[i])

    def call_costs(self, kind: str, name: str) -> np.ndarray:
        """Cost of calling ``name`` on each question (0 where the source has no record)."""
        key = (kind, name)
        if key not in self._cost_cache:
            outs = self.outputs[name]
            self._cost_cache[key] = np.array(
                [self.cost_model.output_cost(kind, name, o, self.questions[i]) for i, o in enumerate(outs)]
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
        key = (
            feature_set,
            tuple(agents),
            None if weights is None else tuple(weights),
            json.dumps(opts, sort_keys=True),
        )
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
    truth_voters: str = "all",
) -> RoutingData:
    """Align first samples of the committee and oracle on a common question set.

    ``labels``: ``gold``, ``oracle``, ``estimated``, or None for ``gold`` when every question has a
    gold answer and ``oracle`` otherwise. ``gold`` on questions without gold is an error naming the
    file. ``truth_voters`` (``estimated`` only): the further models whose answers vote on the
    truth: ``all`` (every other source of the traces), ``routed`` (none), or a comma-separated list."""
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
    notes: list[str] = []
    judged = any(o.judged is not None for n in names for o in outputs[n])
    if judged:  # every figure from judgements: questions with an unjudged routed answer are left out
        keep = [k for k in range(len(idxs)) if all(outputs[n][k].judged is not None for n in names)]
        if not keep:
            raise TraceError(f"{ts.root}: no question has a judgement ('correct') of every routed model's answer")
        if len(keep) < len(idxs):
            notes.append(
                f"{len(idxs) - len(keep)} of {len(idxs)} questions left out: some routed model's answer there "
                "has no judgement ('correct': null); every figure is over the fully judged questions"
            )
        idxs = [idxs[k] for k in keep]
        outputs = {n: [outs[k] for k in keep] for n, outs in outputs.items()}
    questions = [ts.questions[i].question for i in idxs]
    answer_task = get_task(task)
    gold = []
    for i in idxs:
        try:
            gold.append(answer_task.gold_of(ts.questions[i].gold))
        except ValueError as exc:
            raise TraceError(f"{ts.root / 'questions.jsonl'}: idx {i}: {exc}; is this the right --task?") from None
    missing = [i for i, g in zip(idxs, gold) if g is None]
    if labels is None:
        labels = "oracle" if missing and not judged else "gold"
    if labels == "gold" and missing and not judged:
        how = "it was recorded without gold answers" if len(missing) == len(idxs) else f"first: idx {missing[:5]}"
        raise TraceError(
            f"{ts.root / 'questions.jsonl'}: {len(missing)} of {len(idxs)} questions have no gold answer ({how}); "
            "--labels gold needs one for every question: use --labels oracle (agreement with the oracle)"
        )
    data = RoutingData(idxs, questions, gold, list(committee), oracle, outputs, CostModel(models), task, labels)
    data.notes = notes
    if judged:
        data.judgements = judgement_maps(outputs, names, answer_task.numeric)
    if labels == "estimated":
        if truth_voters == "all":
            extra = [v for v in ts.sources if v not in names]
        elif truth_voters == "routed":
            extra = []
        else:
            extra = [v.strip() for v in truth_voters.split(",") if v.strip() and v.strip() not in names]
        for v in extra:
            ts.source(v)  # an unknown name: TraceError
            try:
                rows = ts.samples(v)
            except TraceError:
                if truth_voters != "all":
                    raise
                continue  # "all": a source listed without a readable trace file adds nothing
            if not any(i in rows for i in idxs):
                continue  # recorded on other questions: no evidence here
            data.voters[v] = [sample_output(v, rows[i][0]).answer if rows.get(i) else None for i in idxs]
            data.voters_present[v] = [bool(rows.get(i)) for i in idxs]
    return data
