"""Calibration sets: one artifact per answer task, for a deployment that routes each request by its task."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyramid_moa.artifact import (
    ArtifactError,
    CalibrationArtifact,
    load_artifact,
    load_calibrations,
    save_calibration_set,
)
from pyramid_moa.calibration import LogisticCalibrator
from pyramid_moa.cores import fit_pair_model
from pyramid_moa.cost import CostModel, ModelCost
from pyramid_moa.features import make_feature_set

PAIRS = np.array([[k % 2, k % 4, 0, 0, 0, 0] for k in range(40)])  # half "contained"

AGENTS, ORACLE = ["a", "b"], "o"


def _artifact(task: str = "gsm8k", oracle: str = ORACLE, with_cosine: bool = True) -> CalibrationArtifact:
    """``with_cosine``: a semantic artifact's pair model reads the answers' embeddings (else it needs none)."""
    fs_name = "semantic" if task == "semantic" else "agreement"
    pm = fit_pair_model(PAIRS, same=PAIRS[:, 0] == 1, with_cosine=with_cosine) if task == "semantic" else None
    opts = {"pair_model": pm.to_dict()} if pm is not None else {}
    fs = make_feature_set(fs_name, AGENTS, **opts)
    return CalibrationArtifact(
        committee=AGENTS,
        oracle=oracle,
        feature_set=fs_name,
        calibrator="logistic",
        stages=[
            {
                "agents": AGENTS,
                "feature_names": fs.names,
                "calibrator": LogisticCalibrator([1.0] * len(fs.names), 0.0).to_dict(),
                "threshold": 0.5,
            }
        ],
        target={"kind": "oracle_rate", "value": 0.3, "cost_model": "flops"},
        cost_model=CostModel({m: ModelCost(params_b=7.0) for m in [*AGENTS, oracle]}),
        fitted_on={"idx": []},
        task=task,
        task_options=opts,
    )


def test_a_plain_artifact_is_a_set_of_one(tmp_path):
    _artifact().save(tmp_path / "one.json")
    got = load_calibrations(tmp_path / "one.json", known_agents=[*AGENTS, ORACLE])
    assert list(got) == ["gsm8k"] and got["gsm8k"].oracle == ORACLE


def test_set_round_trip_keeps_each_tasks_options(tmp_path):
    path = tmp_path / "set.json"
    save_calibration_set(path, [_artifact("gsm8k"), _artifact("semantic"), _artifact("choice")])
    got = load_calibrations(path, known_agents=[*AGENTS, ORACLE])
    assert sorted(got) == ["choice", "gsm8k", "semantic"]
    router = got["semantic"].router()
    assert router.task.name == "semantic"
    assert router.stages[0].features.pair_model.prior == pytest.approx(0.5)
    assert router.stages[0].features.pair_model.fitted == "judgements"
    # A set is not one artifact: load_artifact says what to do instead.
    with pytest.raises(ArtifactError, match="calibration set"):
        load_artifact(path)


def test_set_errors_name_the_problem(tmp_path):
    path = tmp_path / "s.json"
    with pytest.raises(ArtifactError, match="one calibration per task"):
        save_calibration_set(path, [_artifact("gsm8k"), _artifact("gsm8k")])
    save_calibration_set(path, [_artifact("gsm8k"), _artifact("choice", oracle="other")])
    with pytest.raises(ArtifactError, match="different oracles"):
        load_calibrations(path)
    with pytest.raises(ArtifactError, match="does not have"):
        load_calibrations(path, known_agents=[*AGENTS, ORACLE])
    d = {"format": "pyramid-moa/calibration-set", "version": 1, "calibrations": []}
    path.write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="non-empty list"):
        load_calibrations(path)
    bad = _artifact().to_dict() | {"version": 99}
    path.write_text(json.dumps(d | {"calibrations": [bad]}))
    with pytest.raises(ArtifactError, match=r"calibrations\[0\]: calibration version 99"):
        load_calibrations(path)


def test_cli_add_builds_a_set_task_by_task(tmp_path, shipped):
    """pyramid calibrate --add: the set gains one task's calibration per run, and a re-run replaces it."""
    from pyramid_moa.cli import main

    out = tmp_path / "set.json"
    common = ["--traces", str(shipped), "--committee", "faithfulcot_gpt-3.5-turbo_COT,reread_gpt-3.5-turbo_re2_cot"]
    common += ["--oracle", "faithfulcot_gpt4_COT", "--no-adaptive", "--target-cost", "0.8", "--cost", "usd"]
    common += ["--out", str(out)]
    assert main(["calibrate", *common, "--add"]) == 0
    assert main(["calibrate", *common, "--add", "--task", "text", "--features", "agreement"]) == 0
    assert sorted(load_calibrations(out)) == ["gsm8k", "text"]
    assert load_calibrations(out)["gsm8k"].fitted_on["seed"] == 0
    assert main(["calibrate", *common, "--add", "--seed", "3"]) == 0
    again = load_calibrations(out)
    assert sorted(again) == ["gsm8k", "text"] and again["gsm8k"].fitted_on["seed"] == 3
