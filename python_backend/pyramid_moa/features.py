"""Committee features: what the router knows about the committee's outputs.

The signal behind Pyramid MoA is agreement: when independent small models
converge on one answer it is usually right. Agents differ in reliability, so
*which* agents agree matters, not only how many. A feature set maps
(question, agent outputs) to a fixed-length vector whose names depend only on
the agent list, so a calibrator fitted offline applies unchanged in-server.

Feature sets are registered by name; a new one is one subclass of
``FeatureSet`` plus ``register_feature_set``. ``symmetric`` has no per-agent
feature at all, so its names do not depend on the agents.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence

from .answers import answer_key
from .committee import (  # noqa: F401  (re-exported: the committee's types, the base class, the registry)
    AgentOutput,
    FeatureSet,
    Vote,
    committee_vote,
    feature_set_names,
    make_feature_set,
    register_feature_set,
    vote_weights,
)

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ERROR_MARKERS = ("Traceback", "Error:", "error:")


@functools.lru_cache(maxsize=4096)
def _question_numbers(question: str) -> tuple[float, ...]:
    """The numbers in a question (cached: fitting asks for the same questions' numbers again and again)."""
    return tuple(float(x) for x in _NUMBER.findall(question.replace(",", "")))


class AgreementFeatures(FeatureSet):
    """Only *which* agents agree with the plurality answer, and the vote share.

    This is the reference router of the issue (and close to the paper's
    agreement features); kept as a baseline and for tasks without numbers.
    """

    name = "agreement"

    @property
    def names(self) -> list[str]:
        return ["vote_share"] + [f"agrees[{a}]" for a in self.agents]

    def compute(self, question: str, outputs: Sequence[AgentOutput], vote: Vote) -> list[float]:
        n = len(outputs)
        return [vote.count / n] + [float(k is not None and k == vote.key) for k in vote.keys]


class FullFeatures(FeatureSet):
    """Agreement, answer plausibility, output length, execution errors, log-probs, question shape.

    Beyond agreement: a plausible answer (integral, non-negative, not copied
    from the question) and a short, error-free derivation raise the chance a
    lone agent is right; long outputs signal struggle. Log-probabilities are
    used when the engine returns them (TensorRT-LLM ``cum_log_probs``) and are
    zero with an indicator otherwise, so one artifact serves both cases.
    """

    name = "full"

    @property
    def names(self) -> list[str]:
        a = self.agents
        names = list(_VOTE_STATS)
        names += [f"agrees[{x}]" for x in a]
        names += [f"pair[{a[i]},{a[j]}]" for i in range(len(a)) for j in range(i + 1, len(a))]
        names += _PLAUSIBILITY
        names += [f"log_tokens[{x}]" for x in a]
        names += ["log_tokens_mean_agreeing", "log_tokens_mean_dissenting"]
        names += [f"error_marker[{x}]" for x in a]
        names += ["has_logprobs", "logprob_per_token_mean_agreeing"]
        names += ["question_log_chars", "question_numbers"]
        return names

    def compute(self, question: str, outputs: Sequence[AgentOutput], vote: Vote) -> list[float]:
        n = len(outputs)
        keys = vote.keys
        agrees = [float(k is not None and k == vote.key) for k in keys]
        f = _vote_stats(outputs, vote)
        f += agrees
        f += [float(keys[i] is not None and keys[i] == keys[j]) for i in range(n) for j in range(i + 1, n)]
        f += _plausibility(question, vote)
        logtok = [math.log1p(o.output_tokens or 0) for o in outputs]
        f += logtok
        agree_tok = [t for t, g in zip(logtok, agrees) if g]
        dissent_tok = [t for t, g in zip(logtok, agrees) if not g]
        f += [
            sum(agree_tok) / len(agree_tok) if agree_tok else 0.0,
            sum(dissent_tok) / len(dissent_tok) if dissent_tok else 0.0,
        ]
        f += [float(bool(o.text) and any(m in o.text for m in _ERROR_MARKERS)) for o in outputs]
        lps = [
            o.cum_log_prob / max(o.output_tokens or 1, 1)
            for o, g in zip(outputs, agrees)
            if g and o.cum_log_prob is not None
        ]
        has_lp = any(o.cum_log_prob is not None for o in outputs)
        f += [float(has_lp), sum(lps) / len(lps) if lps else 0.0]
        f += [math.log1p(len(question)), float(len(_question_numbers(question)))]
        return f


class SymmetricFeatures(FeatureSet):
    """Features that are the same whichever agent said what: names independent of the agent list.

    Vote statistics and the plausibility of the plurality answer only; nothing per agent. For a
    committee of exchangeable agents (one model sampled with different seeds), and for moving a
    calibration fitted on one committee to another committee of the same size (scripts/
    relabel_calibration.py), where per-agent weights would have no meaning.
    """

    name = "symmetric"
    symmetric = True

    @property
    def names(self) -> list[str]:
        return [*_VOTE_STATS, *_PLAUSIBILITY]

    def compute(self, question: str, outputs: Sequence[AgentOutput], vote: Vote) -> list[float]:
        return _vote_stats(outputs, vote) + _plausibility(question, vote)


_VOTE_STATS = ["vote_share", "distinct_frac", "vote_entropy", "parse_fail_frac", "failed_frac"]
_PLAUSIBILITY = ["top_integral", "top_negative", "top_log_magnitude", "top_in_question"]


def _vote_stats(outputs: Sequence[AgentOutput], vote: Vote) -> list[float]:
    """The values of ``_VOTE_STATS``."""
    n = len(outputs)
    counts: dict[str, int] = {}
    for k in vote.keys:
        if k is not None:
            counts[k] = counts.get(k, 0) + 1
    entropy = -sum((c / n) * math.log(c / n) for c in counts.values())
    return [
        vote.count / n,
        len(counts) / n,
        entropy,
        sum(k is None for k in vote.keys) / n,
        sum(o.failed for o in outputs) / n,
    ]


def _plausibility(question: str, vote: Vote) -> list[float]:
    """The values of ``_PLAUSIBILITY`` (all 0 when the plurality answer is not a number)."""
    top = None
    if vote.answer is not None:
        try:
            top = float(vote.answer)
        except ValueError:
            top = None
    if top is None:
        return [0.0, 0.0, 0.0, 0.0]
    return [
        float(abs(top - round(top)) < 1e-9),
        float(top < 0),
        math.log10(1.0 + abs(top)),
        float(any(abs(top - q) < 1e-4 for q in _question_numbers(question))),
    ]


register_feature_set(AgreementFeatures)
register_feature_set(FullFeatures)
register_feature_set(SymmetricFeatures)


ARBITER_FEATURES = [
    "oracle_integral",
    "oracle_negative",
    "oracle_in_question",
    "agents_agreeing_with_oracle",
    "committee_vote_share",
    "committee_top_integral",
    "committee_confidence",
    "oracle_log_tokens",
    "oracle_error_marker",
]


def _integral(answer: str | None) -> float:
    try:
        v = float(answer)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return float(abs(v - round(v)) < 1e-9)


def arbiter_features(
    question: str,
    outputs: Sequence[AgentOutput],
    vote: Vote,
    oracle: AgentOutput,
    confidence: float,
    numeric: bool = True,
) -> list[float]:
    """Features for choosing between the oracle's and the committee's answer when they differ.

    An oracle is not infallible: an implausible oracle answer (non-integral
    where the task's answers are integers, copied from the question) against
    a committee majority is often the oracle's mistake.
    """
    okey = answer_key(oracle.answer, numeric)
    try:
        ov = float(oracle.answer)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ov = None
    qnums = _question_numbers(question)
    return [
        _integral(oracle.answer),
        float(ov is not None and ov < 0),
        float(ov is not None and any(abs(ov - q) < 1e-4 for q in qnums)),
        sum(k is not None and k == okey for k in vote.keys) / len(outputs),
        vote.count / len(outputs),
        _integral(vote.answer),
        confidence,
        math.log1p(oracle.output_tokens or 0),
        float(bool(oracle.text) and any(m in oracle.text for m in _ERROR_MARKERS)),
    ]


from . import semantic  # noqa: E402,F401  (registers the "semantic" task and feature set; it builds on committee)
