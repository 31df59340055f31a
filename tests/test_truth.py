"""Estimated labels (issue 25): which answer is right, estimated without gold, and the fit on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import COMMITTEE, ORACLE, SHIPPED

from pyramid_moa.artifact import load_artifact
from pyramid_moa.calibration import make_calibrator
from pyramid_moa.cli import main
from pyramid_moa.dataset import load_routing_data
from pyramid_moa.fitting import RouterFit, Target
from pyramid_moa.traces import SHADOW_MARKER
from pyramid_moa.truth import ABSENT, NULL, fit_truth, group_answers


def _synthetic(p: list[float], n: int, seed: int, pool: int = 40, null_rate: float = 0.05):
    """Each question's truth is 0; a wrong model answers one of ``pool`` wrong values (so wrong
    answers sometimes coincide) or nothing."""
    rng = np.random.default_rng(seed)
    answers = []
    for pm in p:
        right = rng.random(n) < pm
        wrong = np.where(rng.random(n) < null_rate, None, rng.integers(1, pool + 1, n).astype(str))
        answers.append([str(0) if r else w for r, w in zip(right, wrong)])
    return answers


def test_em_recovers_known_reliabilities():
    p = [0.92, 0.8, 0.7, 0.6, 0.55]
    answers = _synthetic(p, 4000, seed=1)
    G = group_answers(answers, key=lambda a: a)
    est = fit_truth(G, [f"m{j}" for j in range(len(p))])
    truth_ok = [np.array([a == "0" for a in col]) for col in answers]
    for j in range(len(p)):
        assert est.accuracy[j] == pytest.approx(truth_ok[j].mean(), abs=0.02)
        assert est.estimated_accuracy()[f"m{j}"] == pytest.approx(truth_ok[j].mean(), abs=0.02)
    # The posterior of the true answer is high on average and calibrated against the truth.
    true_post = np.array([est.posterior[i, G[i, np.flatnonzero(G[i] >= 0)[0]]] for i in range(100)])
    assert est.of_voter(0).mean() > 0.85 and true_post.max() <= 1.0


def test_fallible_oracle_is_outvoted_when_the_agents_agree():
    # Three independent agents at 0.75 and an oracle at 0.85: where all three agree against the
    # oracle, the agents' answer is the likelier one; where they all differ, the oracle's is the likeliest.
    p = [0.75, 0.75, 0.75, 0.85]
    answers = _synthetic(p, 3000, seed=2)
    G = group_answers(answers, key=lambda a: a)
    est = fit_truth(G, ["a", "b", "c", "oracle"])
    agents_vs_oracle = [
        i for i in range(len(G)) if G[i, 0] >= 0 and G[i, 0] == G[i, 1] == G[i, 2] and G[i, 3] != G[i, 0]
    ]
    assert agents_vs_oracle
    for i in agents_vs_oracle:
        assert est.posterior[i, G[i, 0]] > 0.8
    split = [i for i in range(len(G)) if len(set(G[i, :3])) == 3 and G[i, 3] >= 0 and G[i, 3] not in G[i, :3]]
    assert split and all(est.posterior[i].argmax() == G[i, 3] for i in split)
    assert est.accuracy[3] == pytest.approx(0.85, abs=0.03)  # not assumed right


def test_groups_absent_and_null():
    answers = [["1", None, "2"], ["1.0", "3", "2"], ["1", "3", "4"]]
    G = group_answers(
        answers, key=lambda a: str(float(a)), present=[[True, True, True], [True, True, True], [True, False, True]]
    )
    assert G[0].tolist() == [0, 0, 0] and G[1].tolist() == [NULL, 0, ABSENT] and G[2].tolist() == [0, 0, 1]
    G2 = group_answers(answers, equal=lambda a, b: float(a) == float(b))
    assert G2[0].tolist() == [0, 0, 0] and G2[2].tolist() == [0, 0, 1]
    # A model with no record of a question is no evidence: its accuracy is over its own questions.
    ans = _synthetic([0.9, 0.8, 0.7], 2000, seed=3)
    present = [[True] * 2000, [True] * 2000, [i < 1000 for i in range(2000)]]
    est = fit_truth(group_answers(ans, key=lambda a: a, present=present), ["x", "y", "z"])
    assert est.accuracy[2] == pytest.approx(np.mean([a == "0" for a in ans[2][:1000]]), abs=0.04)


@pytest.mark.parametrize("name", ["logistic", "isotonic", "gbdt"])
def test_calibrators_fit_soft_labels(name):
    """Soft labels: the fitted probabilities follow the labels' expectation, not a rounding of them."""
    rng = np.random.default_rng(0)
    x = rng.random(2000)
    X = np.c_[x, rng.random(2000)]
    y = np.clip(0.2 + 0.6 * x, 0, 1)  # P(correct) itself, never 0 or 1
    cal = make_calibrator(name).fit(X, y)
    p = cal.predict(X)
    assert abs(p.mean() - y.mean()) < 0.03
    lo, hi = p[x < 0.2].mean(), p[x > 0.8].mean()
    assert lo == pytest.approx(0.26, abs=0.08) and hi == pytest.approx(0.74, abs=0.08)
    hard = make_calibrator(name).fit(X, y >= 0.5).predict(X)  # rounding the labels would be far off
    assert abs(hard[x < 0.2].mean() - lo) > 0.1


@pytest.fixture(scope="module")
def estimated():
    return load_routing_data(str(SHIPPED), COMMITTEE, ORACLE, labels="estimated")


def test_estimated_labels_are_probabilities(estimated, routing_data):
    d = estimated
    assert set(d.truth_voters()) == {*COMMITTEE, ORACLE, "routellm_mixtral_8x7b", "tora_70b"}
    oracle = d.correct(d.answers(d.oracle))
    assert oracle.dtype == float and 0 <= oracle.min() and oracle.max() <= 1
    # The estimate's accuracies are near the true ones (shipped traces: six voters).
    rep = d.truth_report()
    err = rep["error_vs_gold"]
    for v in d.truth_voters():
        true = routing_data.with_labels("gold").correct(d._voter_answers(v)).mean()
        assert err["accuracy"][v]["true"] == pytest.approx(true, abs=1e-9)
        assert abs(err["accuracy"][v]["estimated"] - true) < 0.04
    assert 0 <= err["posterior_ece"] < 0.1 and 0 <= err["posterior_brier"] < 0.15
    # A fold's estimate is its own: fitted on the given rows, same caches.
    half = d.fitted_on(np.arange(0, d.n, 2))
    assert half is not d and half._feature_cache is d._feature_cache
    assert len(half.truth().fitted_rows) == (d.n + 1) // 2
    assert d.fitted_on(np.arange(d.n)) is d
    assert d.with_labels("gold").fitted_on(np.arange(10)).labels == "gold"


def test_targets_under_estimated_labels(estimated):
    rows = np.arange(estimated.n)
    with pytest.raises(ValueError, match="max_disagreement needs oracle labels.*--max-accuracy-drop"):
        RouterFit(estimated, rows, "usd", target=Target("max_disagreement", 0.02))


def test_estimated_fit_reads_no_gold_and_meets_its_floor(estimated, no_gold):
    rows = np.arange(0, estimated.n, 2)
    target = Target("max_accuracy_drop", 0.0)
    art = RouterFit(estimated, rows, "usd", target=target).artifact(target)
    bare = RouterFit(load_routing_data(str(no_gold), COMMITTEE, ORACLE, labels="estimated"), rows, "usd", target=target)
    art2 = bare.artifact(target)
    assert [s["threshold"] for s in art.stages] == pytest.approx([s["threshold"] for s in art2.stages])
    assert art.fitted_on["labels"] == "estimated"
    assert (art.arbiter is None) == (art2.arbiter is None)  # fitted on the estimate, not on gold
    fs = art.fit_summary
    assert fs["oof_accuracy"] >= fs["oracle_accuracy"] - 1e-9
    assert fs["oracle_accuracy"] < 0.99  # the oracle is not taken to be always right
    assert "error_vs_gold" in fs["truth"] and "error_vs_gold" not in art2.fit_summary["truth"]
    assert len(fs["truth"]["voters"]) == 6 and fs["truth"]["n_questions"] == len(rows)


def _calibrate(traces: Path, out: Path, *extra: str) -> dict:
    rc = main(
        ["calibrate", "--traces", str(traces), "--committee", ",".join(COMMITTEE), "--oracle", ORACLE,
         "--cost", "usd", "--labels", "estimated", "--fit-fraction", "0.5", "--out", str(out), *extra]
    )  # fmt: skip
    assert rc == 0
    return json.loads(out.read_text())


def test_calibrate_on_records_and_shadow_directories(no_gold, tmp_path, capsys):
    art = _calibrate(no_gold, tmp_path / "rec.json", "--truth-voters", "routed")
    assert art["fitted_on"]["labels"] == "estimated"
    assert art["fit_summary"]["truth"]["voters"] == [*COMMITTEE, ORACLE]
    assert "labels estimated (4 voters)" in capsys.readouterr().out
    load_artifact(tmp_path / "rec.json", known_agents=[*COMMITTEE, ORACLE])  # the router loads it
    # A shadow directory: segments of complete records, read as one trace set.
    shadow = tmp_path / "shadow"
    shutil.copytree(no_gold, shadow / "seg-0001")
    (shadow / SHADOW_MARKER).write_text("{}")
    art2 = _calibrate(shadow, tmp_path / "shadow.json")
    assert len(art2["fit_summary"]["truth"]["voters"]) == 6
    assert main(["calibrate", "--traces", str(no_gold), "--committee", ",".join(COMMITTEE), "--oracle", ORACLE,
                 "--labels", "oracle", "--truth-voters", "routed", "--out", str(tmp_path / "x.json")]) == 2  # fmt: skip
