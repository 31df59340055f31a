import numpy as np
import pytest

from pyramid_moa.metrics import apgr, brier, ece, mcnemar_p


def test_ece_zero_when_calibrated_and_large_when_not():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = rng.random(20000) < p
    assert ece(p, y) < 0.02
    assert ece(np.full(1000, 0.9), np.zeros(1000)) == pytest.approx(0.9)
    assert brier(np.ones(4), np.ones(4)) == 0.0


def test_apgr_diagonal_is_half_and_perfect_is_one():
    rates = np.linspace(0, 1, 11)
    assert apgr(rates, 0.5 + 0.4 * rates, 0.5, 0.9) == pytest.approx(0.5)
    assert apgr(rates[1:], np.full(10, 0.9), 0.5, 0.9) == pytest.approx(0.95)
    assert apgr(rates, rates, 0.9, 0.9) is None


def test_mcnemar():
    a = np.array([True] * 50 + [False] * 50)
    assert mcnemar_p(a, a) == 1.0
    b = np.array([True] * 100)
    assert mcnemar_p(a, b) < 1e-10
