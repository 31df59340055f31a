"""calibrate -> artifact -> evaluate on the shipped traces, through the CLI and the library."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import COMMITTEE, ORACLE

from pyramid_moa.artifact import ArtifactError, load_artifact
from pyramid_moa.cli import main
from pyramid_moa.evaluation import Evaluator
from pyramid_moa.features import AgentOutput, make_feature_set
from pyramid_moa.fitting import RouterFit, Target, TargetUnreachable, evaluate_grid
from pyramid_moa.router import Router, Stage

BASE = ["--committee", ",".join(COMMITTEE), "--oracle", ORACLE, "--cost", "usd"]


@pytest.fixture(scope="module")
def half_artifact(tmp_path_factory, shipped):
    out = tmp_path_factory.mktemp("cal") / "calib.json"
    assert main(["calibrate", "--traces", str(shipped), *BASE, "--fit-fraction", "0.5", "--out", str(out)]) == 0
    return out


def test_artifact_is_versioned_and_complete(half_artifact):
    d = json.loads(half_artifact.read_text())
    assert d["format"] == "pyramid-moa/calibration" and d["version"] == 2
    assert d["committee"] == COMMITTEE and d["oracle"] == ORACLE
    assert d["fitted_on"]["n_questions"] == 660 and len(d["fitted_on"]["idx"]) == 660
    assert all(0 <= s["threshold"] <= 1 + 1e-6 for s in d["stages"])
    assert d["stages"][-1]["agents"] == COMMITTEE


def test_artifact_errors(half_artifact, tmp_path):
    d = json.loads(half_artifact.read_text())
    with pytest.raises(ArtifactError, match="does not have"):
        load_artifact(half_artifact, known_agents=COMMITTEE)
    bad = tmp_path / "v3.json"
    bad.write_text(json.dumps(d | {"version": 3}))
    with pytest.raises(ArtifactError, match="version 3 is not supported"):
        load_artifact(bad)
    # a version 1 file (plurality votes, no vote_weights) still loads and routes with plurality votes
    v1 = tmp_path / "v1.json"
    v1.write_text(
        json.dumps(
            d | {"version": 1, "stages": [{k: v for k, v in st.items() if k != "vote_weights"} for st in d["stages"]]}
        )
    )
    assert all(st.features.weights is None for st in load_artifact(v1).router().stages)
    bad = tmp_path / "weights.json"
    bad.write_text(json.dumps(d | {"stages": [d["stages"][0] | {"vote_weights": [1.0]}, *d["stages"][1:]]}))
    with pytest.raises(ArtifactError, match="vote weights must be one finite number per agent"):
        load_artifact(bad)
    d["stages"][0]["feature_names"] = ["renamed"] + d["stages"][0]["feature_names"][1:]
    bad.write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="feature names"):
        load_artifact(bad)


def test_evaluate_with_artifact_scores_only_unseen_questions(half_artifact, shipped, tmp_path):
    out = tmp_path / "e.json"
    rc = main(
        [
            "evaluate",
            "--traces",
            str(shipped),
            *BASE,
            "--calibration",
            str(half_artifact),
            "--json",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["operating_point"]["n_questions"] == 1319 - 660
    assert "not fitted on" in r["protocol"]


def test_cross_fitted_evaluation_contract(shipped, tmp_path):
    out, rep, png = tmp_path / "e.json", tmp_path / "e.md", tmp_path / "e.png"
    args = ["evaluate", "--traces", str(shipped), *BASE, "--folds", "3", "--json", str(out), "--quiet"]
    assert main([*args, "--report", str(rep), "--plot", str(png)]) == 0
    r = json.loads(out.read_text())
    op = r["operating_point"]
    for key in [
        "accuracy",
        "oracle_accuracy",
        "oracle_call_rate",
        "mean_cost",
        "cost_saving",
        "cost_model",
        "threshold",
        "n_questions",
    ]:
        assert key in op
    assert op["n_questions"] == 1319 and op["cost_model"] == "usd"
    assert op["cost_saving"] == pytest.approx(1 - op["mean_cost"])
    assert len(r["sweep"]) == 50
    # Monotone ends of the sweep: τ=0 never escalates, τ=1 always does.
    assert r["sweep"][0]["oracle_call_rate"] == 0.0 and r["sweep"][-1]["oracle_call_rate"] == 1.0
    for name in [
        "oracle_alone",
        "majority_vote",
        "unanimity_or_escalate",
        "vote_share_cascade",
        "random_same_rate",
        "prompt_only_router",
        "agreement_router",
        f"agent:{COMMITTEE[0]}",
    ]:
        assert name in r["baselines"]
    assert r["baselines"]["oracle_alone"]["mean_cost"] == pytest.approx(1.0)
    assert set(r["calibration"]) >= {"ece", "brier", "auroc"}
    assert r["calibration"]["auroc"] > 0.8
    assert {"requested", "realised", "error"} <= set(r["budget_targeting_error"])
    assert 0 <= r["mcnemar_p"] <= 1
    assert png.stat().st_size > 10_000 and "| **ours** |" in rep.read_text()
    # the router beats random escalation at the same oracle-call rate
    assert op["accuracy"] > r["baselines"]["random_same_rate"]["accuracy"]


def test_sweep_matches_router_route_exactly(routing_data):
    """The vectorized τ sweep and the per-request Router path make identical decisions."""
    d = routing_data
    rows = np.arange(d.n)
    fit, test = rows[rows % 2 == 0], rows[rows % 2 == 1]
    art = RouterFit(d, fit, "usd").artifact(Target("max_accuracy_drop", 0.0))
    ev = Evaluator(d, "usd")
    prep = ev.sweep_prep(art, test)
    for tau in (0.3, 0.7, 0.9):
        exact = ev.route_artifact(art, test, threshold=tau)
        fast = ev.sweep_artifact(prep, test, tau)
        assert np.array_equal(exact.escalated, fast.escalated)
        assert np.array_equal(exact.answers, fast.answers)
        assert np.allclose(exact.costs["usd"], fast.costs["usd"])


def test_oracle_rate_target_is_met_on_fitting_questions(routing_data):
    art = RouterFit(routing_data, np.arange(routing_data.n), "usd").artifact(Target("oracle_rate", 0.3))
    assert art.fit_summary["oof_oracle_call_rate"] == pytest.approx(0.3, abs=0.006)


def test_unreachable_target_is_an_error(routing_data, shipped, tmp_path, capsys):
    with pytest.raises(TargetUnreachable, match="no threshold reaches target cost=0.01"):
        RouterFit(routing_data, np.arange(200), "usd").artifact(Target("cost", 0.01))
    out = tmp_path / "never.json"
    assert main(["calibrate", "--traces", str(shipped), *BASE, "--target-cost", "0.01", "--out", str(out)]) == 2
    assert "no threshold reaches target" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--committee", "nope,reread_gpt-3.5-turbo_re2_cot"], "unknown source 'nope'"),
        (["--target-oracle-rate", "1.5"], "must be within [0, 1]"),
        (["--price", "faithfulcot_gpt4_COT=abc"], "bad --price"),
        (["--cost", "flops"], "needs params_b"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(shipped, tmp_path, capsys, extra, message):
    out = tmp_path / "x.json"
    argv = ["calibrate", "--traces", str(shipped), *BASE, *extra, "--out", str(out)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_refuses_artifact_fitted_on_everything(shipped, tmp_path, capsys):
    cal = tmp_path / "all.json"
    assert main(["calibrate", "--traces", str(shipped), *BASE, "--out", str(cal)]) == 0
    out = tmp_path / "e.json"
    assert (
        main(["evaluate", "--traces", str(shipped), *BASE, "--calibration", str(cal), "--json", str(out), "--quiet"])
        == 2
    )
    assert "nothing disjoint" in capsys.readouterr().err and not out.exists()


def _with_failures(d):
    """The shipped data with failed calls injected in patterns that reach every branch of the stage
    rule: one agent down, a whole first stage down, the whole committee down, the oracle down."""
    fail = {
        d.committee[0]: lambda i: i % 5 == 0 or i % 4 == 1 or i % 7 == 0,
        d.committee[1]: lambda i: i % 4 == 1 or i % 7 == 0,
        d.committee[2]: lambda i: i % 7 == 0,
        d.oracle: lambda i: i % 9 == 0,
    }
    outputs = {
        m: [AgentOutput(m, None, None, 0, failed=True) if fail[m](i) else o for i, o in enumerate(outs)]
        for m, outs in d.outputs.items()
    }
    return dataclasses.replace(d, outputs=outputs, _cost_cache={}, _feature_cache={})


def _route_all(router, d, rows):
    """Router.route on every row: (correct, escalated, relative cost per question before dividing)."""
    eq = router.task.equal
    res = [router.route(d.questions[r], lambda m, r=r: d.outputs[m][r]) for r in rows]
    correct = np.array([eq(x.answer, d.gold[r]) for x, r in zip(res, rows)])
    escalated = np.array([x.escalated for x in res])
    cost = np.array([sum(d.call_costs("usd", m)[r] for m in x.calls) for x, r in zip(res, rows)])
    return correct, escalated, cost


def test_fitting_grid_replays_router_route_with_failures(routing_data):
    """``evaluate_grid`` (the threshold search) scores each threshold row exactly as ``Router.route``
    would route with those thresholds, including all-failed stages and a failed oracle. The
    probabilities are the stage calibrators' own (not out-of-fold), so both sides see the same P."""
    d = _with_failures(routing_data)
    rows = np.arange(400)
    rf = RouterFit(d, rows, "usd", arbiter=False)
    assert any(len(c.stages) == 2 for c in rf.cands)
    rng = np.random.default_rng(0)
    numeric = d.task != "text"
    for cand in rf.cands:
        sets = [
            make_feature_set(rf.feature_set, agents, numeric=numeric, weights=w)
            for agents, w in zip(cand.stages, cand.weights)
        ]
        probs = [cal.predict(np.array([fs(d.questions[r], [d.outputs[a][r] for a in fs.agents])[0] for r in rows]))
                 for cal, fs in zip(cand.calibrators, sets)]  # fmt: skip
        ev = evaluate_grid(dataclasses.replace(cand, oof=probs))
        for j in rng.choice(len(ev.taus), 4, replace=False):
            stages = [
                Stage(a, fs, cal, float(t)) for a, fs, cal, t in zip(cand.stages, sets, cand.calibrators, ev.taus[j])
            ]
            correct, escalated, cost = _route_all(Router(stages, d.oracle, d.task), d, rows)
            where = f"{cand.stages} at {ev.taus[j]}"
            assert ev.acc[j] == pytest.approx(correct.mean(), abs=1e-12), where
            assert ev.rate[j] == pytest.approx(escalated.mean(), abs=1e-12), where
            assert ev.cost[j] == pytest.approx(cost.mean() / cand.oracle_cost.mean(), rel=1e-9), where


def test_sweep_matches_router_route_with_failures(routing_data):
    """The evaluator's τ sweep equals ``Router.route`` question by question when calls fail."""
    d = _with_failures(routing_data)
    rows = np.arange(d.n)
    fit, test = rows[rows % 2 == 0], rows[rows % 2 == 1]
    art = RouterFit(d, fit, "usd").artifact(Target("max_accuracy_drop", 0.0))
    ev = Evaluator(d, "usd")
    prep = ev.sweep_prep(art, test)
    assert any(f.any() for f in prep["failed"])
    for tau in (0.0, 0.3, 0.7, 0.9, 1.0):
        exact = ev.route_artifact(art, test, threshold=tau)
        fast = ev.sweep_artifact(prep, test, tau)
        assert np.array_equal(exact.escalated, fast.escalated), tau
        assert np.array_equal(exact.answers, fast.answers), tau
        assert np.allclose(exact.costs["usd"], fast.costs["usd"]), tau
