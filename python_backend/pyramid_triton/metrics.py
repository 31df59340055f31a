"""What the router exports about itself: Prometheus metrics and one structured log line per request.

Metrics are Python-backend ``MetricFamily`` objects, so they appear on Triton's own ``/metrics``
endpoint next to Triton's (``nv_inference_*``) metrics, labelled with the router's model name:

* ``pyramid_requests_total{outcome}``: ok | error | cancelled
* ``pyramid_tier_total{tier}``: who answered, committee | oracle (ok requests)
* ``pyramid_escalations_total``, ``pyramid_degraded_total``, ``pyramid_provisional_total``
* ``pyramid_model_failures_total{target}``: failed or timed-out calls per engine
* ``pyramid_confidence``, ``pyramid_agreement``: histograms of the committee's calibrated
  confidence and vote share (0..1)
* ``pyramid_request_duration_seconds``: histogram of time in the router, arrival to last response
* ``pyramid_cost_oracle_calls_total{kind}``: cost in units of one oracle call on the same
  question, in the calibration's cost model: ``spent`` (every call made, committee included) and
  ``baseline`` (1 per ok request, what always calling the oracle would have spent); saved =
  baseline - spent (a PromQL difference: a counter cannot go down, and an escalated request
  spends more than 1).

Updates are batched: ``RouterMetrics.observe`` records a request locally, and the router flushes
the totals to Triton at most ``FLUSH_S`` after the first pending update (``flush``).

The family objects are kept for the model's lifetime: the Python backend refuses to update a
metric whose family was garbage-collected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .protocol import TIERS, PyramidResponse

FLUSH_S = 0.5
UNIT_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]
SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
OUTCOMES = ("ok", "error", "cancelled")


@dataclass
class RequestRecord:
    """One finished request, as metrics and the log line see it."""

    request_id: str
    outcome: str  # ok | error | cancelled
    seconds: float
    response: PyramidResponse | None = None
    error: str | None = None
    failed: list[str] = field(default_factory=list)

    def log_fields(self, model: str) -> dict[str, Any]:
        """The request's routing facts (no prompt, no answer text): what a request-log line holds."""
        d: dict[str, Any] = {"event": "pyramid.request", "model": model, "request_id": self.request_id}
        d["outcome"] = self.outcome
        d["latency_ms"] = round(self.seconds * 1000, 3)
        r = self.response
        if r is not None:
            d.update(
                tier=r.tier,
                escalated=r.escalated,
                confidence=round(r.confidence, 4),
                agreement=round(r.agreement, 4),
                degraded=r.degraded,
                provisional=r.provisional,
                calls=r.calls,
                cost=None if math.isnan(r.cost) else round(r.cost, 4),
                step_ms={k: round(v, 3) for k, v in r.latency_ms.items()},
            )
        if self.failed:
            d["failed"] = self.failed
        if self.error is not None:
            d["error"] = self.error
        return d


class RouterMetrics:
    def __init__(self, pb: Any, model: str, targets: list[str]) -> None:
        mf = pb.MetricFamily
        self._families: list[Any] = []
        base = {"model": model}

        def family(name: str, description: str, kind: Any) -> Any:
            f = mf(name=name, description=description, kind=kind)
            self._families.append(f)
            return f

        req = family("pyramid_requests_total", "Routed requests by outcome (ok, error, cancelled)", mf.COUNTER)
        self.requests = {o: req.Metric(labels={**base, "outcome": o}) for o in OUTCOMES}
        tier = family("pyramid_tier_total", "Answered requests by the tier whose answer was returned", mf.COUNTER)
        self.tier = {t: tier.Metric(labels={**base, "tier": t}) for t in TIERS}

        def counter(name: str, description: str) -> Any:
            return family(name, description, mf.COUNTER).Metric(labels=base)

        self.escalations = counter("pyramid_escalations_total", "Requests the router escalated to the oracle")
        self.degraded = counter("pyramid_degraded_total", "Answers given with a failed or timed-out model call")
        self.provisional = counter("pyramid_provisional_total", "Committee answers returned before the oracle's")
        fails = family("pyramid_model_failures_total", "Failed or timed-out engine calls by engine", mf.COUNTER)
        self.failures = {t: fails.Metric(labels={**base, "target": t}) for t in targets}
        cost = family(
            "pyramid_cost_oracle_calls_total",
            "Cost in units of one oracle call: spent (all calls made) and baseline (always-oracle)",
            mf.COUNTER,
        )
        self.cost = {k: cost.Metric(labels={**base, "kind": k}) for k in ("spent", "baseline")}

        def histogram(name: str, description: str, buckets: list[float]) -> Any:
            return family(name, description, mf.HISTOGRAM).Metric(labels=base, buckets=buckets)

        self.confidence = histogram("pyramid_confidence", "Calibrated confidence of the committee", UNIT_BUCKETS)
        self.agreement = histogram("pyramid_agreement", "Vote share of the committee's answer", UNIT_BUCKETS)
        self.duration = histogram(
            "pyramid_request_duration_seconds", "Time in the router, arrival to last response", SECONDS_BUCKETS
        )
        self._counts: dict[int, tuple[Any, float]] = {}  # id(metric) -> (metric, pending increment)
        self._observations: list[tuple[Any, float]] = []  # pending histogram observations

    def observe(self, rec: RequestRecord) -> None:
        """Record one request locally; ``flush`` hands the totals to Triton. Every metric update is
        a message from the stub to the server process, so per-request updates cost the router
        measurable throughput (BENCHMARKS.md); batched, it is a few messages per flush."""
        self._add(self.requests[rec.outcome])
        self._hist(self.duration, rec.seconds)
        for t in rec.failed:
            if t in self.failures:
                self._add(self.failures[t])
        r = rec.response
        if r is None:
            return
        self._add(self.tier[r.tier])
        if r.escalated:
            self._add(self.escalations)
        if r.degraded:
            self._add(self.degraded)
        if r.provisional:
            self._add(self.provisional)
        if r.agent_answers:  # the committee was asked (not force_tier=oracle)
            self._hist(self.confidence, min(max(r.confidence, 0.0), 1.0))
            self._hist(self.agreement, min(max(r.agreement, 0.0), 1.0))
        if not math.isnan(r.cost):
            self._add(self.cost["spent"], r.cost)
            self._add(self.cost["baseline"])

    @property
    def pending(self) -> bool:
        return bool(self._counts or self._observations)

    def flush(self) -> None:
        counts, observations = self._counts, self._observations
        self._counts, self._observations = {}, []
        for metric, value in counts.values():
            metric.increment(value)
        for metric, value in observations:
            metric.observe(value)

    def _add(self, metric: Any, value: float = 1.0) -> None:
        key = id(metric)
        old = self._counts.get(key)
        self._counts[key] = (metric, value + (old[1] if old else 0.0))

    def _hist(self, metric: Any, value: float) -> None:
        self._observations.append((metric, value))
