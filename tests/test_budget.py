"""The oracle budget (pyramid_triton/budget.py): convergence and bounds on a synthetic confidence stream that
shifts from easy to hard, and through the Triton glue (fake pb utils): the applied thresholds in the response."""

from __future__ import annotations

import asyncio
import json

import fake_pb_utils as pb  # tests/ is on sys.path (rootdir conftest)
import numpy as np
import pytest
import test_triton_glue as glue

from pyramid_triton.bls import PyramidModel
from pyramid_triton.budget import MIN_SCORES, BudgetController
from pyramid_triton.config import ModelParams
from pyramid_triton.protocol import ROUTER_PARAMS

TARGET, WINDOW = 0.2, 100


def stream(seed: int, n: int = 1200) -> np.ndarray:
    """Committee confidences: easy questions (Beta(8, 2)) then hard ones (Beta(4, 3))."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.beta(8, 2, n // 2), rng.beta(4, 3, n // 2)])


def serve(confs: np.ndarray, base: float, controller: BudgetController | None, in_flight: int = 0, seed: int = 0):
    """Route a one-stage stream (escalate iff confidence < threshold); ``in_flight`` requests are routed before
    the controller sees each outcome, which arrive in random order. (calls in observed order, thresholds)."""
    rng = np.random.default_rng(seed)
    calls, taus, pending = [], [], []
    for c in confs:
        applied = controller.thresholds([base]) if controller else None
        tau = applied.thresholds[0] if applied else base
        taus.append(tau)
        pending.append((applied, bool(c < tau), c))
        if len(pending) > in_flight:
            applied, esc, c = pending.pop(int(rng.integers(len(pending))))
            if controller:
                controller.observe(applied, esc, [(c, base, False)])
            calls.append(esc)
    calls += [esc for _, esc, _ in pending]
    return np.array(calls), np.array(taus)


def windows(calls: np.ndarray, size: int = WINDOW) -> np.ndarray:
    return calls[: len(calls) // size * size].reshape(-1, size).mean(axis=1)


def base_threshold(confs: np.ndarray) -> float:
    """The threshold fitted for the target on the easy questions (the calibration's)."""
    return float(np.quantile(confs[: len(confs) // 2], TARGET))


@pytest.mark.parametrize("seed", range(5))
def test_controlled_rate_holds_every_window_after_the_first_and_uncontrolled_drifts(seed):
    confs = stream(seed)
    base = base_threshold(confs)
    controlled = windows(serve(confs, base, BudgetController(TARGET, WINDOW))[0])
    assert np.all(np.abs(controlled[1:] - TARGET) <= 0.1 * TARGET + 1e-9), controlled
    uncontrolled = windows(serve(confs, base, None)[0])
    assert uncontrolled[-1] > 2 * TARGET, uncontrolled  # the hard half escalates far more


def test_holds_with_requests_in_flight_over_a_longer_window():
    for seed in range(5):
        confs = stream(seed)
        calls, _ = serve(confs, base_threshold(confs), BudgetController(TARGET, 200), in_flight=3, seed=seed)
        w = windows(calls, 200)
        assert np.all(np.abs(w[1:] - TARGET) <= 0.1 * TARGET + 1e-9), w


def test_thresholds_never_below_the_floor_nor_above_one():
    confs = stream(0)
    floor = 0.6  # above what the hard half would need: the floor wins, the rate is missed
    c = BudgetController(TARGET, WINDOW, min_threshold=floor)
    calls, taus = serve(confs, 0.7, c)
    assert taus.min() >= floor and taus.max() <= 1.0
    assert windows(calls)[-1] > TARGET  # held at the floor: accuracy before the budget
    # a target the traffic cannot reach from below: thresholds go up, never past 1
    c = BudgetController(0.9, WINDOW)
    _, taus = serve(stream(1), 0.3, c)
    assert taus.max() <= 1.0 and taus[-1] > 0.3
    # two stages: each stage's threshold is clipped on its own
    c = BudgetController(TARGET, WINDOW, min_threshold=0.2)
    for _ in range(MIN_SCORES):
        c.observe(c.thresholds([0.3, 0.9]), False, [(0.99, 0.3, False)])
    applied = c.thresholds([0.3, 0.9])
    assert all(0.2 <= t <= 1.0 for t in applied.thresholds)


def test_offset_is_zero_until_the_window_has_scores_and_failures_always_count_as_calls():
    c = BudgetController(TARGET, WINDOW)
    for _ in range(MIN_SCORES - 1):
        a = c.thresholds([0.5])
        assert a.offset == 0.0 and a.thresholds == [0.5]
        c.observe(a, True, [(0.0, 0.5, True)])  # every agent failed: the lowest score
    assert list(c.scores) == [-2.0] * (MIN_SCORES - 1) and c.window_rate == 1.0
    a = c.thresholds([0.5])
    c.release(a)  # an error or a cancellation: not counted
    assert len(c.calls) == MIN_SCORES - 1 and c.pending_n == 0


def test_off_when_unset_or_zero():
    assert ROUTER_PARAMS["budget_oracle_rate"] == 0.0
    for value in (None, "0"):
        params = {} if value is None else {"budget_oracle_rate": value}
        assert BudgetController.from_params(_params(params)) is None
    c = BudgetController.from_params(_params({"budget_oracle_rate": "0.2", "budget_window": "50"}))
    assert c is not None and (c.target, c.window, c.min_threshold) == (0.2, 50, 0.0)
    for bad in ({"target": 1.5}, {"target": 0.2, "window": 0}, {"target": 0.2, "min_threshold": -0.1}):
        with pytest.raises(ValueError):
            BudgetController(**bad)


def _params(values: dict[str, str]) -> ModelParams:
    cfg = {"name": "pyramid", "parameters": {k: {"string_value": v} for k, v in values.items()}}
    return ModelParams({"model_config": json.dumps(cfg)})


# ---- through the Triton glue ----------------------------------------------------------------------


def _model(tmp_path, **params) -> PyramidModel:
    glue.model.__wrapped__(tmp_path)  # writes the calibration, sets up the fake engines
    values = {
        "calibration": "calibration.json",
        "agents": ",".join(glue.AGENTS),
        "oracle": glue.ORACLE,
        "max_input_chars": "100",
        **{k: str(v) for k, v in params.items()},
    }
    args = {
        "model_config": json.dumps(
            {"name": "pyramid", "parameters": {k: {"string_value": v} for k, v in values.items()}}
        ),
        "model_repository": str(tmp_path),
    }
    return PyramidModel(pb, args)


def _ask(model: PyramidModel, **inputs) -> dict:
    r = glue.request(**inputs)
    asyncio.run(model.execute([r]))
    return glue.outputs(r.sender.sent[-1][0])


def _gauge(name: str) -> float:
    return [m for m in pb.MetricFamily.registry[name].metrics][-1].value


def test_the_applied_thresholds_show_in_the_response_and_the_metrics(tmp_path):
    model = _model(tmp_path, budget_oracle_rate=0.5, budget_window=20, budget_min_threshold=0.1)
    # The glue's committee: unanimous P=0.95 (accepted), a 2-of-3 split P~0.42 (escalated at 0.5).
    outs = [_ask(model, text_input=q) for q in [glue.Q_AGREE, glue.Q_SPLIT] * (MIN_SCORES // 2)]
    assert all(o["budget"]["offset"] == 0.0 and o["budget"]["thresholds"] == [0.5] for o in outs)
    assert outs[-1]["budget"]["window_rate"] == 0.5 and outs[-1]["budget"]["target"] == 0.5
    # now all questions are hard: the window over-spends, the threshold goes down to the floor (0.1)
    outs = [_ask(model, text_input=glue.Q_SPLIT) for _ in range(6)]
    taus = [o["budget"]["thresholds"][0] for o in outs]
    assert min(taus) >= 0.1 and taus[-1] < 0.5
    assert not all(o["escalated"] for o in outs)  # escalated less than the calibration would
    assert outs[-1]["budget"]["offset"] == pytest.approx(taus[-1] - 0.5, abs=1e-6)
    # a request with its own threshold is not controlled: no budget in its metadata, not counted
    n = len(model.budget.calls)
    own = _ask(model, text_input=glue.Q_SPLIT, escalation_threshold=0.5)
    assert "budget" not in own and own["escalated"] and len(model.budget.calls) == n
    model._flush_metrics()
    assert _gauge("pyramid_budget_target_oracle_rate") == 0.5
    assert _gauge("pyramid_budget_window_oracle_rate") == pytest.approx(model.budget.window_rate)
    assert _gauge("pyramid_budget_threshold_offset") == pytest.approx(model.budget.offset)


def test_budget_off_leaves_the_response_unchanged(tmp_path):
    model = _model(tmp_path)
    assert model.budget is None
    out = _ask(model, text_input=glue.Q_SPLIT)
    assert "budget" not in out and out["escalated"]
    model._flush_metrics()
    assert np.isnan(_gauge("pyramid_budget_target_oracle_rate"))
