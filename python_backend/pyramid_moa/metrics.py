"""Metrics of a router: calibration quality, recovered gap, significance."""

from __future__ import annotations

import numpy as np


def ece(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error with equal-width bins (weighted |mean p - frequency|)."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(total)


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict]:
    p, y = np.asarray(p, float), np.asarray(y, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        if m.any():
            out.append(
                {
                    "lo": float(edges[b]),
                    "hi": float(edges[b + 1]),
                    "mean_p": float(p[m].mean()),
                    "freq": float(y[m].mean()),
                    "n": int(m.sum()),
                }
            )
    return out


def brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, float) - np.asarray(y, float)) ** 2))


def auroc(p: np.ndarray, y: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if y.min() == y.max():
        return None
    return float(roc_auc_score(y, p))


def mcnemar_p(router_ok: np.ndarray, oracle_ok: np.ndarray) -> float:
    """Exact McNemar test (binomial on discordant pairs) of router vs oracle correctness."""
    from scipy.stats import binomtest

    b = int(np.sum(router_ok & ~oracle_ok))
    c = int(np.sum(~router_ok & oracle_ok))
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5).pvalue)


def apgr(rates: np.ndarray, accs: np.ndarray, weak_acc: float, strong_acc: float) -> float | None:
    """Average performance gap recovered (RouteLLM): area under PGR vs strong-call rate.

    PGR = (acc - weak) / (strong - weak); the curve is closed at rate 0 (weak)
    and rate 1 (strong) and integrated with the trapezoid rule over the rate.
    """
    if strong_acc - weak_acc <= 1e-12:
        return None
    order = np.argsort(rates, kind="stable")
    r = np.r_[0.0, np.asarray(rates)[order], 1.0]
    pgr = (np.r_[weak_acc, np.asarray(accs)[order], strong_acc] - weak_acc) / (strong_acc - weak_acc)
    return float(np.trapz(pgr, r))
