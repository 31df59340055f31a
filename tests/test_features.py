import pytest

from pyramid_moa.features import AgentOutput, committee_vote, make_feature_set


def outs(*answers, tokens=10):
    return [AgentOutput(f"a{i}", f"#### {a}", a, tokens) for i, a in enumerate(answers)]


def test_plurality_tie_goes_to_earliest_agent():
    v = committee_vote(outs("5", "7", None))
    assert v.answer == "5" and v.count == 1 and v.n_distinct == 2


def test_numeric_keys_group_equal_numbers():
    v = committee_vote(outs("3", "3.0", "4"))
    assert v.answer == "3" and v.count == 2


@pytest.mark.parametrize("name", ["full", "agreement"])
def test_feature_vector_matches_names(name):
    fs = make_feature_set(name, ["a0", "a1", "a2"])
    x, vote = fs("Tom has 3 apples and 4 pears.", outs("7", "7", "12"))
    assert len(x) == len(fs.names)
    named = dict(zip(fs.names, x))
    assert named["vote_share"] == pytest.approx(2 / 3)
    assert named["agrees[a2]"] == 0.0 and named["agrees[a0]"] == 1.0


def test_full_features_see_plausibility_and_logprobs():
    fs = make_feature_set("full", ["a0", "a1"])
    x, _ = fs(
        "Tom has 3 apples.",
        [AgentOutput("a0", "x", "2.5", 5, cum_log_prob=-2.0), AgentOutput("a1", "Traceback", "2.5", 5)],
    )
    n = dict(zip(fs.names, x))
    assert n["top_integral"] == 0.0 and n["has_logprobs"] == 1.0
    assert n["logprob_per_token_mean_agreeing"] == pytest.approx(-0.4)
    assert n["error_marker[a1]"] == 1.0


def test_agent_order_is_checked():
    fs = make_feature_set("full", ["a0", "a1"])
    with pytest.raises(ValueError, match="expects agents"):
        fs("q", list(reversed(outs("1", "2"))))
    with pytest.raises(KeyError, match="unknown feature set"):
        make_feature_set("nope", ["a0"])
