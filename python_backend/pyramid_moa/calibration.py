"""Calibrators: turn a committee feature vector into P(committee answer is correct).

One small interface (fit on a matrix, score one vector or a batch,
serialize to plain JSON) and a registry, RouteLLM-style, so a new calibrator
is one class. Fitting uses scikit-learn; *scoring* is pure Python/numpy from
the JSON parameters, so the in-server router needs no scikit-learn and the
offline and in-server numbers are computed by the same code.

Labels may be soft (``--labels estimated``: the probability that each committee answer is right):
the logistic and isotonic fits take them as targets directly (the log-loss and squared loss of
an expectation), gradient boosting sees each row twice, once correct and once wrong, weighted by
the probability of each.
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from .registry import lookup


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class Calibrator(ABC):
    """Maps feature vectors to calibrated probabilities."""

    name: ClassVar[str] = ""

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray) -> Calibrator: ...

    @abstractmethod
    def predict_one(self, x: Sequence[float]) -> float:
        """Probability for one vector: the per-request hot path (pure Python)."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Probabilities for a batch; same arithmetic as ``predict_one``."""
        return np.array([self.predict_one(row) for row in np.asarray(X, dtype=float).tolist()])

    @abstractmethod
    def params(self) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def from_params(cls, params: dict[str, Any]) -> Calibrator: ...

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "params": self.params()}


def _check_fit_data(X: np.ndarray, y: np.ndarray, min_per_class: int = 5) -> None:
    if len(X) != len(y):
        raise ValueError(f"{len(X)} feature rows but {len(y)} labels")
    pos = int(np.sum(y))
    neg = len(y) - pos
    if pos < min_per_class or neg < min_per_class:
        raise ValueError(
            f"too few examples to calibrate: {pos} correct and {neg} wrong committee answers "
            f"(need at least {min_per_class} of each): record more questions (pyramid record --n), or fit a "
            "shallower schedule (--max-depth 1)"
        )


def fit_logistic_newton(Z: np.ndarray, y: np.ndarray, c: float, iters: int = 50) -> tuple[np.ndarray, float]:
    """L2-regularized logistic regression by Newton's method.

    Minimizes sum(logloss) + ||w||^2 / (2c), the objective of scikit-learn's
    ``LogisticRegression(C=c)`` (intercept not penalized); with a few dozen
    features Newton converges in a handful of steps, about 100x faster than a
    generic solver, which matters because evaluation fits hundreds of them.
    """
    n, d = Z.shape
    A = np.c_[Z, np.ones(n)]
    reg = np.full(d + 1, 1.0 / c)
    reg[-1] = 0.0
    theta = np.zeros(d + 1)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(A @ theta, -35, 35)))
        grad = A.T @ (p - y) + reg * theta
        H = (A * (p * (1 - p))[:, None]).T @ A + np.diag(reg + 1e-9)
        step = np.linalg.solve(H, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return theta[:-1], float(theta[-1])


class LogisticCalibrator(Calibrator):
    """Platt-style logistic regression on standardized features (L2, C=0.5).

    Standardization is folded into the stored weights, so scoring is one dot
    product and a sigmoid.
    """

    name = "logistic"

    def __init__(self, weights: Sequence[float] | None = None, bias: float = 0.0, c: float = 0.5):
        self.weights = list(weights or [])
        self.bias = float(bias)
        self.c = c

    def fit(self, X: np.ndarray, y: np.ndarray) -> LogisticCalibrator:
        X = np.asarray(X, dtype=float)
        _check_fit_data(X, y)
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale < 1e-12] = 1.0
        coef, intercept = fit_logistic_newton((X - mean) / scale, np.asarray(y, dtype=float), self.c)
        w = coef / scale
        self.weights = w.tolist()
        self.bias = float(intercept - np.dot(w, mean))
        return self

    def score(self, x: Sequence[float]) -> float:
        return self.bias + math.fsum(w * v for w, v in zip(self.weights, x))

    def predict_one(self, x: Sequence[float]) -> float:
        return _sigmoid(self.score(x))

    def params(self) -> dict[str, Any]:
        return {"weights": self.weights, "bias": self.bias, "C": self.c}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> LogisticCalibrator:
        return cls(params["weights"], params["bias"], params.get("C", 0.5))


class IsotonicCalibrator(Calibrator):
    """Isotonic regression over a logistic score.

    The logistic model orders questions; isotonic regression, fitted on
    out-of-fold scores so it does not inherit in-sample optimism, maps the
    order to frequencies without assuming a sigmoid shape.
    """

    name = "isotonic"

    def __init__(
        self,
        base: LogisticCalibrator | None = None,
        xs: Sequence[float] | None = None,
        ys: Sequence[float] | None = None,
    ):
        self.base = base or LogisticCalibrator()
        self.xs = list(xs or [])
        self.ys = list(ys or [])

    def fit(self, X: np.ndarray, y: np.ndarray) -> IsotonicCalibrator:
        from sklearn.isotonic import IsotonicRegression
        from sklearn.model_selection import StratifiedKFold

        X = np.asarray(X, dtype=float)
        y = np.asarray(y)
        _check_fit_data(X, y)
        oof = np.zeros(len(y))
        for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(X, y >= 0.5):
            part = LogisticCalibrator(c=self.base.c).fit(X[tr], y[tr])
            oof[te] = [part.score(row) for row in X[te].tolist()]
        self.base.fit(X, y)
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(oof, y)
        self.xs = [float(v) for v in iso.X_thresholds_]
        self.ys = [float(v) for v in iso.y_thresholds_]
        return self

    def predict_one(self, x: Sequence[float]) -> float:
        s = self.base.score(x)
        xs, ys = self.xs, self.ys
        if s <= xs[0]:
            return ys[0]
        if s >= xs[-1]:
            return ys[-1]
        j = bisect.bisect_right(xs, s)
        x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
        return y0 if x1 == x0 else y0 + (y1 - y0) * (s - x0) / (x1 - x0)

    def params(self) -> dict[str, Any]:
        return {"base": self.base.params(), "xs": self.xs, "ys": self.ys}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> IsotonicCalibrator:
        return cls(LogisticCalibrator.from_params(params["base"]), params["xs"], params["ys"])


class GradientBoostingCalibrator(Calibrator):
    """Gradient-boosted trees (log-loss), the tree-ensemble router of the paper.

    Trees are exported as flat node arrays and walked in pure Python.
    """

    name = "gbdt"

    def __init__(
        self,
        init: float = 0.0,
        learning_rate: float = 0.05,
        trees: list[dict[str, list]] | None = None,
        n_estimators: int = 150,
        max_depth: int = 2,
    ):
        self.init = init
        self.learning_rate = learning_rate
        self.trees = trees or []
        self.n_estimators = n_estimators
        self.max_depth = max_depth

    def fit(self, X: np.ndarray, y: np.ndarray) -> GradientBoostingCalibrator:
        from sklearn.ensemble import GradientBoostingClassifier

        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        _check_fit_data(X, y)
        # Soft labels: both copies of each row, weighted by the probability of each (hard labels as given).
        X2, y2, w2 = X, y, None
        if not np.all((y == 0) | (y == 1)):
            w2 = np.r_[y, 1.0 - y]
            keep = w2 > 0
            X2, y2, w2 = np.r_[X, X][keep], np.r_[np.ones(len(y)), np.zeros(len(y))][keep], w2[keep]
        model = GradientBoostingClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            subsample=0.8,
            min_samples_leaf=10,
            random_state=0,
        ).fit(X2, y2, sample_weight=w2)
        p0 = float(np.clip(np.mean(y), 1e-6, 1 - 1e-6))
        self.init = math.log(p0 / (1 - p0))
        self.trees = []
        for est in model.estimators_[:, 0]:
            t = est.tree_
            self.trees.append(
                {
                    "left": t.children_left.tolist(),
                    "right": t.children_right.tolist(),
                    "feature": t.feature.tolist(),
                    "threshold": t.threshold.tolist(),
                    "value": t.value[:, 0, 0].tolist(),
                }
            )
        # Guard: the exported walk must reproduce scikit-learn's own scores.
        ref = model.predict_proba(X[:20])[:, 1]
        mine = np.array([self.predict_one(r) for r in X[:20].tolist()])
        if not np.allclose(ref, mine, atol=1e-9):
            raise RuntimeError("exported gradient-boosting trees disagree with scikit-learn")
        return self

    def predict_one(self, x: Sequence[float]) -> float:
        z = self.init
        lr = self.learning_rate
        for t in self.trees:
            left, right, feat, thr = t["left"], t["right"], t["feature"], t["threshold"]
            node = 0
            while left[node] != -1:
                node = left[node] if x[feat[node]] <= thr[node] else right[node]
            z += lr * t["value"][node]
        return _sigmoid(z)

    def params(self) -> dict[str, Any]:
        return {"init": self.init, "learning_rate": self.learning_rate, "trees": self.trees}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> GradientBoostingCalibrator:
        return cls(params["init"], params["learning_rate"], params["trees"])


_CALIBRATORS: dict[str, type[Calibrator]] = {}


def register_calibrator(cls: type[Calibrator]) -> type[Calibrator]:
    if cls.name in _CALIBRATORS:
        raise ValueError(f"calibrator {cls.name!r} is already registered")
    _CALIBRATORS[cls.name] = cls
    return cls


def make_calibrator(name: str) -> Calibrator:
    return lookup(_CALIBRATORS, name, "calibrator")()


def calibrator_from_dict(d: dict[str, Any]) -> Calibrator:
    kind = d.get("kind")
    if kind not in _CALIBRATORS:
        raise ValueError(f"unknown calibrator kind {kind!r}; known: {', '.join(sorted(_CALIBRATORS))}")
    return _CALIBRATORS[kind].from_params(d["params"])


def calibrator_names() -> list[str]:
    return sorted(_CALIBRATORS)


for _cls in (LogisticCalibrator, IsotonicCalibrator, GradientBoostingCalibrator):
    register_calibrator(_cls)
