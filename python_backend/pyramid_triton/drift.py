"""Drift alarms: the router's live figures against what its calibration expects.

The calibration artifact states what its fit expects at its thresholds (``fit_summary.expected``,
out-of-fold on the fitting questions): the oracle-call rate, and the fidelity of accepted answers
(the share of accepted committee answers equal to the oracle's answer). Live, the router watches

* ``escalation_rate``: over the last ``drift_window`` requests routed with the artifact's own
  thresholds (no per-request threshold, no forced tier), the share escalated;
* ``fidelity``: over the last ``drift_fidelity_window`` shadowed requests (``shadow.py``) whose
  committee answer was accepted and whose oracle answered, the share where the two agree.

A figure *drifts* when its window is full and the count lies outside the binomial acceptance
interval of the expected rate at ``drift_confidence``: the exact two-sided binomial interval for
the window's size, widened by the expectation's own uncertainty (the expected rate is itself a
proportion over ``n`` fitting questions: the interval is taken from the low end of its Wilson
interval to the high end, at the same confidence). Each transition (on or off) gives one log line
naming the figure, the expected and the observed values. Nothing here touches Triton:
``metrics.RouterMetrics`` exports the state and ``bls`` writes the lines.

Hysteresis (issue 27 item 7): an alarm turns on as soon as its figure leaves the interval, but clears only
once the figure has stayed back inside it for ``clear_after`` observations in a row (default: one whole
window). Without it a figure sitting at the edge of its interval (skewed traffic) turned the alarm on and
off with nearly every request; with it an alarm turns on at most once per ``clear_after`` + 1 observations.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import NormalDist
from typing import Any

FIGURES = ("escalation_rate", "fidelity")
DEFAULTS: dict[str, Any] = {"drift_window": 500, "drift_fidelity_window": 200, "drift_confidence": 0.99}


def _log_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)


@lru_cache(maxsize=256)
def acceptance(n: int, p: float, confidence: float) -> tuple[int, int]:
    """(lo, hi): the counts out of ``n`` a Binomial(n, p) lands within with probability at least
    ``confidence``, cutting at most (1 - confidence) / 2 from each tail (exact)."""
    tail = (1.0 - confidence) / 2.0
    cdf, lo = 0.0, 0
    pmf = [math.exp(_log_pmf(k, n, p)) for k in range(n + 1)]
    for k in range(n + 1):  # lo: the least k with P(X < k) <= tail < P(X <= k)
        if cdf + pmf[k] > tail:
            lo = k
            break
        cdf += pmf[k]
    cdf, hi = 0.0, n
    for k in range(n, -1, -1):  # hi: the greatest k with P(X > k) <= tail
        if cdf + pmf[k] > tail:
            hi = k
            break
        cdf += pmf[k]
    return lo, hi


def wilson(p: float, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed over ``n`` (n <= 0: [0, 1])."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


@dataclass
class Figure:
    """One watched proportion: its expectation, sliding window and drift state."""

    name: str
    expected: float | None
    n_expected: int  # the fitting questions the expectation was measured on
    size: int
    confidence: float
    window: deque = field(default_factory=deque)
    hits: int = 0
    drifting: bool = False
    clear_after: int | None = None  # observations back inside before the alarm clears (None: the window size)
    _inside: int = field(default=0, repr=False)  # observations in a row inside the interval while drifting
    _interval: tuple[float, float] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.window = deque(maxlen=self.size)
        if self.clear_after is None:
            self.clear_after = self.size
        if self.clear_after < 1:
            raise ValueError(f"drift clear_after must be at least 1, got {self.clear_after}")

    @property
    def observed(self) -> float | None:
        return self.hits / len(self.window) if self.window else None

    def interval(self) -> tuple[float, float] | None:
        """The observed rates that are not drift, for a full window (None: nothing expected). Fixed for the
        figure's lifetime (a new calibration makes new figures), so computed once: ``add`` runs per request."""
        if self.expected is None:
            return None
        if self._interval is None:
            p_lo, p_hi = wilson(self.expected, self.n_expected, self.confidence)
            n = self.size
            self._interval = acceptance(n, p_lo, self.confidence)[0] / n, acceptance(n, p_hi, self.confidence)[1] / n
        return self._interval

    def add(self, hit: bool) -> str | None:
        """Add one outcome; a log line if the drift state changed."""
        if len(self.window) == self.size:
            self.hits -= self.window[0]
        self.window.append(1 if hit else 0)
        self.hits += 1 if hit else 0
        if self.expected is None or len(self.window) < self.size:
            return None
        iv = self.interval()
        assert iv is not None
        obs = self.hits / self.size
        outside = not (iv[0] - 1e-12 <= obs <= iv[1] + 1e-12)
        if outside:
            self._inside = 0
            if self.drifting:
                return None
            self.drifting = True
            what = "left"
        else:
            if not self.drifting:
                return None
            self._inside += 1
            if self._inside < (self.clear_after or 1):
                return None  # hysteresis: back inside, not for long enough yet
            self.drifting = False
            self._inside = 0
            what = f"is back within (for its last {self.clear_after} observations)"
        return (
            f"drift: {self.name} {what} its {self.confidence:.0%} binomial interval: expected "
            f"{self.expected:.4f} (interval {iv[0]:.4f}..{iv[1]:.4f} over {self.size}), observed {obs:.4f} "
            f"over the last {self.size}"
        )


class DriftMonitor:
    """The watched figures of one router instance (its artifact's expectations)."""

    def __init__(
        self,
        expected: dict[str, Any] | None,
        window: int = DEFAULTS["drift_window"],
        fidelity_window: int = DEFAULTS["drift_fidelity_window"],
        confidence: float = DEFAULTS["drift_confidence"],
        clear_after: int | None = None,
    ) -> None:
        """``clear_after``: observations in a row a drifting figure must stay back inside its interval before
        its alarm clears (None: each figure's own window size)."""
        if window < 1 or fidelity_window < 1:
            raise ValueError(f"drift windows must be at least 1, got {window} and {fidelity_window}")
        if not 0.5 <= confidence < 1.0:
            raise ValueError(f"drift_confidence must be within [0.5, 1), got {confidence}")
        e = expected or {}
        n = int(e.get("n_questions") or 0)
        self.figures = {
            "escalation_rate": Figure(
                "escalation_rate", e.get("oracle_call_rate"), n, window, confidence, clear_after=clear_after
            ),
            "fidelity": Figure(
                "fidelity", e.get("accepted_fidelity"), int(e.get("n_accepted_with_oracle") or 0), fidelity_window,
                confidence, clear_after=clear_after,
            ),
        }  # fmt: skip

    @classmethod
    def from_params(cls, params: Any, expected: dict[str, Any] | None) -> DriftMonitor:
        d = DEFAULTS
        return cls(
            expected,
            params.get_typed("drift_window", d),
            params.get_typed("drift_fidelity_window", d),
            params.get_typed("drift_confidence", d),
        )

    def observe_route(self, escalated: bool) -> str | None:
        """A request routed with the artifact's own thresholds."""
        return self.figures["escalation_rate"].add(escalated)

    def observe_shadow(self, agreed: bool) -> str | None:
        """A shadowed request whose committee answer was accepted and whose oracle answered."""
        return self.figures["fidelity"].add(agreed)

    @property
    def drifting(self) -> bool:
        return any(f.drifting for f in self.figures.values())
