"""Oracle-agreement labels (issue 13): fitting without gold, scoring by gold and by the oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import COMMITTEE, ORACLE, SHIPPED

from pyramid_moa.dataset import load_routing_data
from pyramid_moa.fitting import RouterFit, Target
from pyramid_moa.traces import TraceError


@pytest.fixture(scope="module")
def by_oracle():
    return load_routing_data(str(SHIPPED), COMMITTEE, ORACLE, labels="oracle")


def test_correct_means_equal_to_the_oracle(by_oracle, routing_data):
    d = by_oracle
    oracle = d.answers(d.oracle)
    ok = d.correct(oracle)
    assert np.array_equal(ok, np.array([a is not None for a in oracle]))
    agent = d.answers(d.committee[0])
    eq = [a is not None and o is not None and abs(float(a) - float(o)) < 1e-4 for a, o in zip(agent, oracle)]
    assert np.array_equal(d.correct(agent), np.array(eq))
    # The same rows under gold: another notion of correct, same caches.
    g = d.with_labels("gold")
    assert g.labels == "gold" and g._feature_cache is d._feature_cache
    assert np.array_equal(g.correct(agent), routing_data.correct(agent))
    assert d.with_labels("oracle") is d


def test_default_labels_and_refusal(no_gold, routing_data):
    assert routing_data.labels == "gold"
    assert load_routing_data(str(no_gold), COMMITTEE, ORACLE).labels == "oracle"
    with pytest.raises(TraceError, match=r"questions\.jsonl: 1319 of 1319 questions have no gold.*--labels oracle"):
        load_routing_data(str(no_gold), COMMITTEE, ORACLE, labels="gold")
    with pytest.raises(ValueError, match="unknown labels"):
        load_routing_data(str(SHIPPED), COMMITTEE, ORACLE, labels="silver")


def test_targets_are_stated_in_their_labels(by_oracle, routing_data):
    rows = np.arange(routing_data.n)
    with pytest.raises(ValueError, match="max_disagreement needs oracle labels.*--max-accuracy-drop"):
        RouterFit(routing_data, rows, "usd", target=Target("max_disagreement", 0.02))
    with pytest.raises(ValueError, match="max_accuracy_drop needs gold or estimated labels.*--max-disagreement"):
        RouterFit(by_oracle, rows, "usd", target=Target("max_accuracy_drop", 0.0))
    with pytest.raises(ValueError):
        Target("max_disagreement", 1.5)


def _strip_time(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    d["fitted_on"].pop("created")
    d["fit_summary"].pop("search_seconds")
    return d


def test_oracle_labels_read_no_gold(by_oracle, no_gold):
    """The fit under oracle labels is the same with and without gold in the files."""
    rows = np.arange(0, by_oracle.n, 2)
    target = Target("max_disagreement", 0.02)
    a = RouterFit(by_oracle, rows, "usd", target=target).artifact(target)
    bare = load_routing_data(str(no_gold), COMMITTEE, ORACLE)
    b = RouterFit(bare, rows, "usd", target=target).artifact(target)
    assert _strip_time(a.to_dict()) == _strip_time(b.to_dict())
    assert a.arbiter is None  # it needs cases where exactly one of committee and oracle is right
    assert a.fitted_on["labels"] == "oracle" and a.fit_summary["labels"] == "oracle"


def test_artifact_states_what_it_expects(by_oracle, routing_data):
    """fit_summary.expected: the oracle-call rate and accepted answers' fidelity at the artifact's
    thresholds, out-of-fold; the rate is the one the threshold search scored."""
    rows = np.arange(0, routing_data.n, 2)
    for data, target in ((by_oracle, Target("max_disagreement", 0.02)), (routing_data, Target("max_accuracy_drop", 0))):
        art = RouterFit(data, rows, "usd", target=target).artifact(target)
        exp = art.fit_summary["expected"]
        assert exp["oracle_call_rate"] == pytest.approx(art.fit_summary["oof_oracle_call_rate"])
        assert 0.8 < exp["accepted_fidelity"] <= 1.0
        assert exp["n_questions"] == len(rows)
        assert 0 < exp["n_accepted_with_oracle"] <= len(rows)
    # Under oracle labels the OOF "accuracy" is the fidelity: the gap to the oracle's own is the
    # disagreement, within the target.
    art = RouterFit(by_oracle, rows, "usd", target=Target("max_disagreement", 0.02)).artifact(
        Target("max_disagreement", 0.02)
    )
    fs = art.fit_summary
    assert fs["oracle_accuracy"] - fs["oof_accuracy"] <= 0.02 + 1e-9


def test_evaluate_scores_by_gold_and_by_the_oracle(by_oracle, no_gold):
    from pyramid_moa.evaluation import evaluate

    r = evaluate(by_oracle, Target("max_disagreement", 0.02), "usd", folds=2)
    op = r["operating_point"]
    assert r["setup"]["labels"] == "oracle" and r["setup"]["arbiter"] is False
    assert op["accuracy"] is not None and op["fidelity"] == pytest.approx(1 - op["disagreement"])
    assert r["baselines"]["oracle_alone"]["fidelity"] == 1.0
    assert r["baselines"]["oracle_alone"]["accuracy"] == op["oracle_accuracy"]
    assert abs(op["accuracy"] - op["oracle_accuracy"]) <= op["disagreement"] + 1e-9  # |gap| <= disagreement
    b = r["budget_targeting_error"]
    assert b["kind"] == "max_disagreement" and b["realised"] == op["disagreement"]
    assert all("fidelity" in p for p in r["sweep"])
    # Without gold: fidelity only, and the same routing.
    r2 = evaluate(load_routing_data(str(no_gold), COMMITTEE, ORACLE), Target("max_disagreement", 0.02), "usd", folds=2)
    op2 = r2["operating_point"]
    assert op2["accuracy"] is None and op2["oracle_accuracy"] is None and r2["mcnemar_p"] is None
    assert op2["fidelity"] == op["fidelity"] and op2["oracle_call_rate"] == op["oracle_call_rate"]
    assert r2["setup"]["scored_against"] == "oracle (no gold)"
