import pytest

from pyramid_moa.calibration import LogisticCalibrator
from pyramid_moa.features import AgentOutput, make_feature_set
from pyramid_moa.router import Router, Stage


def stage(agents, weight_vote_share, bias, tau):
    fs = make_feature_set("agreement", agents)
    w = [weight_vote_share] + [0.0] * len(agents)
    return Stage(agents, fs, LogisticCalibrator(w, bias), tau)


def two_stage_router():
    # P = sigmoid(10*share - 7): unanimous pair -> 0.95, split pair -> 0.12
    return Router([stage(["a", "b"], 10, -7, 0.5), stage(["a", "b", "c"], 10, -7, 0.5)], "o")


def caller(answers, calls):
    def call(name):
        calls.append(name)
        a = answers[name]
        if a == "FAIL":
            return AgentOutput(name, None, None, failed=True)
        return AgentOutput(name, f"#### {a}", a, 3)

    return call


def test_agreeing_first_stage_stops_early():
    calls = []
    r = two_stage_router().route("q", caller({"a": "1", "b": "1", "c": "2", "o": "3"}, calls))
    assert (r.answer, r.tier, r.escalated) == ("1", "committee", False)
    assert calls == ["a", "b"]


def test_disagreement_asks_more_then_escalates():
    calls = []
    r = two_stage_router().route("q", caller({"a": "1", "b": "2", "c": "3", "o": "9"}, calls))
    assert calls == ["a", "b", "c", "o"]
    assert (r.answer, r.tier, r.escalated) == ("9", "oracle", True)


def test_threshold_override_applies_to_every_stage():
    answers = {"a": "1", "b": "2", "c": "3", "o": "9"}
    calls = []
    assert two_stage_router().route("q", caller(answers, calls), threshold=0.0).tier == "committee"
    assert calls == ["a", "b"]
    calls = []
    agree = {"a": "1", "b": "1", "c": "1", "o": "9"}
    assert two_stage_router().route("q", caller(agree, calls), threshold=1.0).tier == "oracle"
    with pytest.raises(ValueError, match=r"escalation_threshold must be within \[0, 1\]"):
        two_stage_router().route("q", caller(agree, []), threshold=1.5)


def test_all_agents_failed_go_straight_to_oracle():
    calls = []
    r = two_stage_router().route("q", caller({"a": "FAIL", "b": "FAIL", "c": "1", "o": "4"}, calls))
    assert calls == ["a", "b", "o"] and r.answer == "4"


def test_failed_oracle_falls_back_to_committee():
    r = two_stage_router().route("q", caller({"a": "1", "b": "2", "c": "2", "o": "FAIL"}, []))
    assert r.escalated and r.oracle_fallback and r.answer == "2"


def test_force_tier():
    calls = []
    r = two_stage_router().route("q", caller({"a": "1", "b": "2", "c": "3", "o": "9"}, calls), force_tier="committee")
    assert r.tier == "committee" and calls == ["a", "b", "c"]
    calls = []
    r = two_stage_router().route("q", caller({"a": "1", "b": "2", "c": "3", "o": "9"}, calls), force_tier="oracle")
    assert r.answer == "9" and calls == ["o"]
    with pytest.raises(ValueError, match="force_tier must be one of"):
        two_stage_router().route("q", caller({}, []), force_tier="gpu")


def test_stages_must_grow():
    with pytest.raises(ValueError, match="grow cumulatively"):
        Router([stage(["a", "b"], 1, 0, 0.5), stage(["a", "c"], 1, 0, 0.5)], "o")


def test_the_route_names_the_models_that_answered():
    router = two_stage_router()
    agree = router.route("q", caller({"a": "1", "b": "1", "c": "2", "o": "3"}, []))
    assert agree.answered_by == ["a", "b"]
    late = router.route("q", caller({"a": "1", "b": "2", "c": "2", "o": "9"}, []), threshold=0.4)
    assert late.tier == "committee" and late.decisions[-1].stage == 1 and late.answered_by == ["b", "c"]
    oracle = router.route("q", caller({"a": "1", "b": "2", "c": "3", "o": "9"}, []))
    assert oracle.answered_by == ["o"]
    down = router.route("q", caller({"a": "1", "b": "2", "c": "1", "o": "FAIL"}, []), threshold=1.0)
    assert down.oracle_fallback and down.answered_by == ["a", "c"]


def test_a_weighted_vote_lets_one_reliable_model_outvote_two_weak_ones():
    fs = make_feature_set("agreement", ["a", "b", "big"], weights=[0.3, 0.3, 1.0])
    outs = [AgentOutput(n, f"#### {x}", x, 3) for n, x in (("a", "1"), ("b", "1"), ("big", "2"))]
    _, vote = fs("q", outs)
    assert vote.answer == "2" and vote.count == 1
    _, plain = make_feature_set("agreement", ["a", "b", "big"])("q", outs)
    assert plain.answer == "1" and plain.count == 2
