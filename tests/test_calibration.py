import numpy as np
import pytest

from pyramid_moa.calibration import calibrator_from_dict, calibrator_names, make_calibrator
from pyramid_moa.metrics import auroc, ece


def synthetic(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    p = 1 / (1 + np.exp(-(1.5 * X[:, 0] - X[:, 1] + 0.5)))
    y = (rng.random(n) < p).astype(float)
    return X, y, p


@pytest.mark.parametrize("name", calibrator_names())
def test_calibrators_fit_rank_and_roundtrip(name):
    X, y, _ = synthetic()
    cal = make_calibrator(name).fit(X[:1000], y[:1000])
    p = cal.predict(X[1000:])
    assert auroc(p, y[1000:]) > 0.75
    assert ece(p, y[1000:]) < 0.08
    again = calibrator_from_dict(cal.to_dict())
    assert np.allclose(again.predict(X[1000:1100]), p[:100])
    assert again.predict_one(X[1000].tolist()) == pytest.approx(p[0])


def test_logistic_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    X, y, _ = synthetic()
    mine = make_calibrator("logistic").fit(X, y).predict(X[:50])
    m = LogisticRegression(C=0.5, max_iter=5000, tol=1e-10).fit((X - X.mean(0)) / X.std(0), y)
    ref = m.predict_proba((X[:50] - X.mean(0)) / X.std(0))[:, 1]
    assert np.allclose(mine, ref, atol=1e-6)


def test_too_few_examples_is_a_clear_error():
    X = np.zeros((20, 2))
    y = np.r_[np.ones(18), np.zeros(2)]
    with pytest.raises(ValueError, match="too few examples to calibrate: 18 correct and 2 wrong"):
        make_calibrator("logistic").fit(X, y)


def test_unknown_calibrator():
    with pytest.raises(KeyError, match="unknown calibrator"):
        make_calibrator("svm")
    with pytest.raises(ValueError, match="unknown calibrator kind"):
        calibrator_from_dict({"kind": "svm", "params": {}})
