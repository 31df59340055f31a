"""The routing decision: committee confidence against a threshold, stage by stage.

This module is the single place where Pyramid MoA decides. The offline
evaluator and the in-server Triton router both call ``Router.decide`` with the
same artifact, so a decision made offline is the decision made in-server.

A schedule has one or more *stages*; each stage names the agents asked so far
(cumulative), a calibrator for that agent set, and a threshold. At a stage:
accept the committee answer if P(correct) >= threshold; otherwise ask the
next stage's extra agents; after the last stage, escalate to the oracle.
A one-stage schedule is the plain Pyramid MoA router; more stages make it
"anytime": cheap when the first agents already agree.

A per-request threshold override replaces the threshold of every stage, so
0 always answers after the first stage and 1 always reaches the oracle. ``thresholds`` (one per
stage) replaces the stages' own instead: what the in-server budget controller applies
(``pyramid_triton.budget``: each stage's threshold moved by one offset).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .answers import AnswerTask, answer_key, get_task
from .calibration import Calibrator
from .features import AgentOutput, FeatureSet, Vote, arbiter_features

Action = Literal["accept", "next", "escalate"]
TIERS = ("committee", "oracle")


@dataclass
class Stage:
    agents: list[str]
    features: FeatureSet
    calibrator: Calibrator
    threshold: float


@dataclass(frozen=True)
class StageDecision:
    stage: int
    action: Action
    confidence: float
    vote: Vote
    agreement: float
    all_failed: bool


@dataclass
class RouteResult:
    """Everything a caller may want to know about one routed question."""

    answer: str | None
    tier: str
    escalated: bool
    confidence: float
    agreement: float
    calls: list[str] = field(default_factory=list)
    decisions: list[StageDecision] = field(default_factory=list)
    committee_answer: str | None = None
    oracle_fallback: bool = False
    # The models whose answer was returned: the oracle, or the agents of the deciding stage that
    # voted for it (in a pyramid, e.g. a middle-tier model and the small agents that agreed).
    answered_by: list[str] = field(default_factory=list)


def validate_threshold(value: float | None, what: str = "escalation_threshold") -> float | None:
    if value is None:
        return None
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{what} must be within [0, 1], got {value}")
    return float(value)


@dataclass
class Replay:
    """Where each question's route ends, for each row of thresholds (see ``replay_schedule``).

    ``accepted[g, j]``: the stage whose committee answer was returned, -1 if the oracle was called;
    ``escalated_from[g, j]``: the stage after which the oracle was called, -1 if accepted;
    ``asked[g, s, j]``: whether stage ``s``'s new agents were called.
    """

    accepted: np.ndarray
    escalated_from: np.ndarray
    asked: np.ndarray
    active: np.ndarray  # (G, n): still undecided after the stages given (only with final=False)

    @property
    def escalated(self) -> np.ndarray:
        return self.escalated_from >= 0

    def correct(self, committee_ok: Sequence[np.ndarray], final_ok: Sequence[np.ndarray]) -> np.ndarray:
        """(G, n) correctness: stage ``s``'s committee answer where accepted there, else the answer
        after escalating from stage ``s`` (``final_ok[s]``)."""
        cols = np.arange(self.accepted.shape[1])[None, :]
        com = np.asarray(committee_ok)[np.maximum(self.accepted, 0), cols]
        fin = np.asarray(final_ok)[np.maximum(self.escalated_from, 0), cols]
        return np.where(self.accepted >= 0, com, fin)

    def mean_cost(self, stage_costs: Sequence[np.ndarray], oracle_cost: np.ndarray) -> np.ndarray:
        """(G,) mean absolute cost per question: every stage asked, plus the oracle when called."""
        asked = sum(self.asked[:, s, :] @ np.asarray(c, float) for s, c in enumerate(stage_costs))
        return (asked + self.escalated @ np.asarray(oracle_cost, float)) / self.accepted.shape[1]


def replay_schedule(
    probs: Sequence[np.ndarray], all_failed: Sequence[np.ndarray], taus: np.ndarray, final: bool = True
) -> Replay:
    """``Router.plan``'s stage rule, vectorized over questions and threshold rows.

    ``probs[s]``/``all_failed[s]``: P(committee correct) and "every agent of the stage failed" at
    stage ``s`` for each question; ``taus``: (G, S) thresholds, one row per policy. The rule is
    ``Router.decide``'s: all failed -> escalate now; P >= tau -> accept; else the next stage, or
    the oracle after the last. ``final=False``: the stages given are not the last, so what is
    neither accepted nor escalated stays ``active`` (``fitting.evaluate_grid`` scores the last
    stage itself). The fitting search, the evaluator's sweep and its baselines replay schedules
    through this function alone, and tests/test_pipeline.py holds them against ``Router.route``
    (failures included), so the fast path cannot drift from the served one.
    """
    taus = np.atleast_2d(np.asarray(taus, float))
    n_stages = len(probs)
    if taus.shape[1] != n_stages or len(all_failed) != n_stages:
        raise ValueError(f"{n_stages} stages of probabilities, {len(all_failed)} failure masks, taus {taus.shape}")
    n = len(probs[0]) if n_stages else 0
    G = taus.shape[0]
    active = np.ones((G, n), bool)
    accepted = np.full((G, n), -1)
    escalated_from = np.full((G, n), -1)
    asked = np.zeros((G, n_stages, n), bool)
    for s in range(n_stages):
        asked[:, s, :] = active
        failed = np.asarray(all_failed[s], bool)[None, :]
        acc = active & ~failed & (np.asarray(probs[s])[None, :] >= taus[:, s : s + 1])
        esc = active & ~acc & (failed | (final and s == n_stages - 1))
        accepted[acc] = s
        escalated_from[esc] = s
        active &= ~(acc | esc)
    return Replay(accepted, escalated_from, asked, active)


class Router:
    """Stage schedule + oracle name; decides, and can drive a whole route offline."""

    def __init__(
        self,
        stages: Sequence[Stage],
        oracle: str,
        task: str = "gsm8k",
        arbiter: Calibrator | None = None,
        oracle_only: bool = False,
    ) -> None:
        if not stages:
            raise ValueError("a router needs at least one stage")
        for prev, nxt in zip(stages, stages[1:]):
            if not set(prev.agents) < set(nxt.agents):
                raise ValueError(f"stage agents must grow cumulatively: {prev.agents} then {nxt.agents}")
        self.stages = list(stages)
        self.oracle = oracle
        self.task: AnswerTask = get_task(task)
        self.arbiter = arbiter
        # No saving at the calibrated target: the oracle alone answers unless a request sets its own
        # threshold(s) or tier (then the stages route it as usual).
        self.oracle_only = oracle_only

    @property
    def uses_embedding(self) -> bool:
        """Whether any stage's features read the answers' embeddings (then a server embeds each
        stage's answers before it decides)."""
        return any(st.features.uses_embedding for st in self.stages)

    @property
    def agents(self) -> list[str]:
        return self.stages[-1].agents

    def new_agents(self, stage: int) -> list[str]:
        """Agents first asked at ``stage`` (the router calls exactly these, concurrently)."""
        before = set(self.stages[stage - 1].agents) if stage > 0 else set()
        return [a for a in self.stages[stage].agents if a not in before]

    def decide(
        self, stage: int, question: str, outputs: Sequence[AgentOutput], threshold: float | None = None
    ) -> StageDecision:
        """Decide after ``stage`` given the outputs of the stage's agents, in ``stage.agents`` order."""
        st = self.stages[stage]
        x, vote = st.features(question, outputs)
        p = st.calibrator.predict_one(x)
        tau = st.threshold if threshold is None else threshold
        all_failed = all(o.failed for o in outputs)
        if all_failed:
            action: Action = "escalate"  # nothing to vote on: go straight to the oracle
        elif p >= tau:
            action = "accept"
        elif stage + 1 < len(self.stages):
            action = "next"
        else:
            action = "escalate"
        return StageDecision(stage, action, p, vote, vote.count / len(outputs), all_failed)

    def final_answer(
        self, question: str, outputs: Sequence[AgentOutput], decision: StageDecision, oracle: AgentOutput | None
    ) -> tuple[str | None, bool]:
        """The answer after escalation, and whether it is the committee's instead of the oracle's.

        The oracle's answer, except: the committee's when the oracle failed or
        gave none; and, with an arbiter, the committee's when the two differ and
        the arbiter judges the oracle's answer less likely right (P < 0.5).
        """
        vote = decision.vote
        if oracle is None or oracle.failed or oracle.answer is None:
            return vote.answer, True
        numeric = self.task.numeric
        if (
            self.arbiter is not None
            and vote.answer is not None
            and answer_key(oracle.answer, numeric) != vote.key
            and self.arbiter.predict_one(
                arbiter_features(question, outputs, vote, oracle, decision.confidence, numeric)
            )
            < 0.5
        ):
            return vote.answer, True
        return oracle.answer, False

    def voters(self, decision: StageDecision) -> list[str]:
        """The agents of ``decision``'s stage whose answer is the stage's vote."""
        vote = decision.vote
        agents = self.stages[decision.stage].agents
        return [a for a, k in zip(agents, vote.keys) if k is not None and k == vote.key]

    def plan(
        self,
        question: str,
        threshold: float | None = None,
        force_tier: str | None = None,
        thresholds: Sequence[float] | None = None,
    ) -> Generator[list[str], dict[str, AgentOutput], RouteResult]:
        """The route as a generator: yields the models to call next, receives their outputs.

        One stage loop serves every driver: ``route`` calls the models one by
        one (offline), the Triton router awaits them concurrently; neither can
        drift from the other because neither holds any routing logic. ``thresholds``: one per stage,
        used where ``threshold`` is None (None: the stages' own).
        """
        threshold = validate_threshold(threshold)
        if thresholds is not None:
            if len(thresholds) != len(self.stages):
                raise ValueError(f"{len(thresholds)} thresholds for {len(self.stages)} stages")
            thresholds = [validate_threshold(t, "thresholds") for t in thresholds]
        if force_tier is not None and force_tier not in TIERS:
            raise ValueError(f"force_tier must be one of {TIERS}, got {force_tier!r}")
        if force_tier == "oracle" or (
            self.oracle_only and force_tier is None and threshold is None and thresholds is None
        ):
            out = (yield [self.oracle])[self.oracle]
            return RouteResult(out.answer, "oracle", True, 0.0, 0.0, [self.oracle], answered_by=[self.oracle])
        got: dict[str, AgentOutput] = {}
        calls: list[str] = []
        decisions: list[StageDecision] = []
        last = len(self.stages) - 1
        for s in range(len(self.stages)):
            new = self.new_agents(s)
            got.update((yield new))
            calls.extend(new)
            if force_tier == "committee" and s < last:
                continue
            tau = threshold if threshold is not None or thresholds is None else thresholds[s]
            d = self.decide(s, question, [got[a] for a in self.stages[s].agents], tau)
            decisions.append(d)
            if force_tier == "committee" or d.action == "accept":
                return RouteResult(
                    d.vote.answer,
                    "committee",
                    False,
                    d.confidence,
                    d.agreement,
                    calls,
                    decisions,
                    d.vote.answer,
                    answered_by=self.voters(d),
                )
            if d.action == "escalate":
                break
        d = decisions[-1]
        oracle_out = (yield [self.oracle])[self.oracle]
        calls.append(self.oracle)
        stage_outputs = [got[a] for a in self.stages[d.stage].agents]
        answer, fallback = self.final_answer(question, stage_outputs, d, oracle_out)
        by = self.voters(d) if fallback else [self.oracle]
        return RouteResult(
            answer, "oracle", True, d.confidence, d.agreement, calls, decisions, d.vote.answer, fallback, by
        )

    def route(
        self,
        question: str,
        call: Callable[[str], AgentOutput],
        threshold: float | None = None,
        force_tier: str | None = None,
        thresholds: Sequence[float] | None = None,
    ) -> RouteResult:
        """Drive ``plan`` synchronously (offline evaluation, tests, record tooling)."""
        steps = self.plan(question, threshold, force_tier, thresholds)
        try:
            names = next(steps)
            while True:
                names = steps.send({n: call(n) for n in names})
        except StopIteration as stop:
            return stop.value
