"""The oracle budget: hold the deployment's oracle-call rate at a target by moving every stage's threshold.

The calibration's thresholds are fitted once, for the oracle-call rate of the fitting questions; on live
traffic the rate moves with the questions (harder traffic escalates more). With ``budget_oracle_rate`` set
(0: off, the default), the router adds one offset ``delta`` to every stage's threshold (a lower threshold:
fewer escalations), each stage's threshold kept within ``[budget_min_threshold, 1]`` (the floor protects
accuracy: the controller never accepts committee answers the spec says are too unsure).

Why this design (quantile map + feedback on the window's count):

* **A quantile map, not a search.** Each routed request leaves a *score*: the largest margin
  ``confidence_s - threshold_s`` over the stages it reached; with offset ``delta`` a request escalates
  iff its score < ``delta`` (all agents failing: always). The share of the last ``budget_window`` scores
  below ``delta`` is the oracle-call rate ``delta`` would have given on that traffic, so the offset for a
  rate ``p`` is the ``p``-quantile of the window's scores. The scores do not depend on the offset that
  was applied (in a one-stage schedule exactly; in a pyramid a request accepted at an early stage is
  scored at that stage), so there is no loop to oscillate: a shift in difficulty moves the quantile
  within one window, with no gain to tune against the traffic.
* **Feedback on the count.** The window's oracle calls are counted; the rate asked of the quantile map is
  ``p = target - gain * (calls in the window - target * window size)``, clipped to [0, 1]. The map alone
  holds the rate only on average (each request escalates or not: a window of 100 at 20% has a binomial
  spread of +-4 points, and the quantile of the last window lags a shift); the feedback spends what the
  window under-spent and saves what it over-spent, so the window's count stays within a call or two of
  the target (``gain`` 0.3 per call), and the lag's bias is removed. Requests in flight (routed, not yet
  observed) count by their expected calls (the rate asked for them): uncounted, they are a feedback
  delay that makes the loop overshoot. What is left is the outcomes not yet seen: with ``c`` requests
  in flight, about ``sqrt(c * p * (1 - p))`` calls either way, which is why a short window (100 at
  20%: +-2 calls is +-10%) is held less tightly under concurrency than a longer one (BENCHMARKS.md).
* **Bounded.** ``delta`` is recomputed from the window for each request (no integrator to wind up) and
  clipped to where it still changes something: no stage's threshold below the floor or above 1.

Only requests routed by the calibration's own thresholds are controlled and counted: a request with its
own ``escalation_threshold`` or ``force_tier``, or of another answer task, is neither (its spend is its
client's choice; counting it would make the controlled requests pay for it). The window is in memory:
it starts empty at every load of the router (a restart, an unload), and until ``MIN_SCORES`` requests
are in it the offset is 0 (the calibration's thresholds). No per-request target: a request may lower
its own threshold with ``escalation_threshold``.

Framework-free (numpy): the router (``bls``) asks ``thresholds`` before a route and calls ``observe``
after it; tests/test_budget.py drives it with a synthetic confidence stream.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Router parameters (protocol.ROUTER_PARAMS): the target share of controlled requests that call the oracle
# (0: off), the sliding window it is held over (requests), and the lowest threshold any stage may get.
DEFAULTS: dict[str, Any] = {"budget_oracle_rate": 0.0, "budget_window": 100, "budget_min_threshold": 0.0}
GAIN = 0.3  # rate asked of the quantile map per oracle call the window is off its target
MIN_SCORES = 10  # below this many scores in the window, the offset is 0
ALWAYS = -2.0  # the score of a request that escalates whatever the threshold (every agent failed)


@dataclass(frozen=True)
class Applied:
    """What one request was routed with: the offset, each stage's threshold, and the oracle-call rate the
    offset was chosen for (counted as the request's expected call while it is in flight)."""

    offset: float
    thresholds: list[float]
    asked: float = 0.0


class BudgetController:
    def __init__(
        self, target: float, window: int = DEFAULTS["budget_window"], min_threshold: float = 0.0, gain: float = GAIN
    ) -> None:
        if not (0.0 < target <= 1.0):
            raise ValueError(f"budget_oracle_rate must be within (0, 1] (0: off), got {target}")
        if window < 1:
            raise ValueError(f"budget_window must be >= 1, got {window}")
        if not (0.0 <= min_threshold <= 1.0):
            raise ValueError(f"budget_min_threshold must be within [0, 1], got {min_threshold}")
        self.target, self.window, self.min_threshold, self.gain = float(target), int(window), float(min_threshold), gain
        self.scores: deque[float] = deque(maxlen=self.window)
        self.calls: deque[bool] = deque(maxlen=self.window)
        self.offset = 0.0  # the last offset applied
        # requests routed but not yet observed: their number and expected oracle calls (their asked rates)
        self.pending_n, self.pending_calls = 0, 0.0

    @classmethod
    def from_params(cls, params: Any) -> BudgetController | None:
        """From the router's parameters (``config.ModelParams``); None when the budget is off."""
        rate = params.get_typed("budget_oracle_rate", DEFAULTS)
        if not rate:
            return None
        return cls(
            rate, params.get_typed("budget_window", DEFAULTS), params.get_typed("budget_min_threshold", DEFAULTS)
        )

    @property
    def window_rate(self) -> float | None:
        """The oracle-call rate of the requests in the window (None before the first)."""
        return sum(self.calls) / len(self.calls) if self.calls else None

    def asked_rate(self) -> float:
        """The rate asked of the quantile map for the next request: the target, corrected by the window's
        count, the requests in flight counted by their expected calls (without them, a few concurrent
        requests are a feedback delay that makes the loop ring)."""
        calls = sum(self.calls) + self.pending_calls
        error = calls - self.target * (len(self.calls) + self.pending_n)
        return min(max(self.target - self.gain * error, 0.0), 1.0)

    def thresholds(self, base: Sequence[float]) -> Applied:
        """The thresholds for the next controlled request, from the stages' own (``base``)."""
        p = self.asked_rate()
        if len(self.scores) < MIN_SCORES:
            delta, p = 0.0, self.window_rate if self.window_rate is not None else self.target
        else:
            s = np.fromiter(self.scores, float)
            delta = float(np.quantile(s, p)) if p < 1.0 else float(s.max()) + 1e-9
            # where it still changes something: no threshold below the floor or above 1 on account of it
            delta = min(max(delta, self.min_threshold - max(base)), 1.0 - min(base))
        self.offset = delta
        self.pending_n += 1
        self.pending_calls += p
        return Applied(delta, [self.clip(t + delta) for t in base], p)

    def clip(self, threshold: float) -> float:
        return min(max(threshold, self.min_threshold), 1.0)

    def release(self, applied: Applied) -> None:
        """A request routed with ``applied`` is no longer in flight (``observe`` calls this)."""
        self.pending_n = max(0, self.pending_n - 1)
        self.pending_calls = max(0.0, self.pending_calls - applied.asked) if self.pending_n else 0.0

    def observe(self, applied: Applied, escalated: bool, margins: Sequence[tuple[float, float, bool]]) -> None:
        """One controlled request's route, routed with ``applied``: whether it called the oracle, and per
        stage decided ``(confidence, the stage's own threshold, every agent failed)``. A request that
        ends without a route (an error, a cancellation) is ``release``d instead: it is not counted."""
        self.release(applied)
        ok = [c - t for c, t, failed in margins if not failed and math.isfinite(c)]
        self.scores.append(max(ok) if ok else ALWAYS)
        self.calls.append(bool(escalated))

    def report(self, applied: Applied) -> dict[str, Any]:
        """The response's ``budget`` metadata: the target, the window's rate and what was applied."""
        rate = self.window_rate
        return {
            "target": self.target,
            "window_rate": None if rate is None else round(rate, 6),
            "offset": round(applied.offset, 6),
            "thresholds": [round(t, 6) for t in applied.thresholds],
        }
