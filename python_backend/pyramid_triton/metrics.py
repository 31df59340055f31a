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
* ``pyramid_tier_request_duration_seconds{tier}``, ``pyramid_tier_cost_oracle_calls_total{tier}``: the
  same per answering tier (committee | oracle).
* ``pyramid_breaker_open{target}``: 1 while an engine's circuit breaker is open (set at each flush).
* Shadow sampling (``shadow.py``): ``pyramid_shadow_total{outcome}`` (recorded | skipped: the bound on
  shadow calls in flight was reached | dropped: by the redaction hook | failed: not written),
  ``pyramid_shadow_cost_oracle_calls_total`` (the shadow calls' own cost, in units of one oracle call:
  not in ``pyramid_cost_oracle_calls_total``), ``pyramid_shadow_in_flight`` (shadow calls running).
* Drift (``drift.py``): ``pyramid_live_escalation_rate`` and ``pyramid_live_fidelity`` (over their
  sliding windows; NaN before the first observation), ``pyramid_expected_escalation_rate`` and
  ``pyramid_expected_fidelity`` (the calibration's, NaN if it states none), ``pyramid_drift{figure}``
  (1 while the figure is outside its binomial interval), set at each flush.
* Oracle budget (``budget.py``): ``pyramid_budget_target_oracle_rate`` (NaN while off),
  ``pyramid_budget_window_oracle_rate`` (over the last ``budget_window`` controlled requests) and
  ``pyramid_budget_threshold_offset`` (the offset last added to every stage's threshold), set at each flush.
* ``pyramid_server_restarts_total{reason="fd_limit"}``: how often the supervisor drained and restarted
  tritonserver past its descriptor bound (supervisor.py); the new server's router starts from the count
  the supervisor hands it (``$PYRAMID_SERVER_RESTARTS``), so the count survives the restarts it counts.

Updates are batched: ``RouterMetrics.observe`` records a request locally, and the router flushes
the totals to Triton at most ``FLUSH_S`` after the first pending update (``flush``). Every metric call
is a message from the stub to the server, so the number of messages per flush is bounded, whatever the
request rate. That is why the histograms are not the Python backend's ``HISTOGRAM`` kind (one message
per observation: at c=16 four per request cost the router 5-7 points of its throughput, BENCHMARKS.md)
but their classic Prometheus series as counters (``BatchedHistogram``): ``<name>_bucket{le}``
(cumulative), ``<name>_sum`` and ``<name>_count``, the same series a histogram exposes, so PromQL
(``histogram_quantile`` over ``rate(<name>_bucket[...])``) and the dashboards read them unchanged; only
the exposition's ``# TYPE`` line says counter.

The family objects are kept for the model's lifetime: the Python backend refuses to update a
metric whose family was garbage-collected.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from .protocol import TIERS, PyramidResponse

SERVER_RESTARTS_ENV = "PYRAMID_SERVER_RESTARTS"  # set by TritonServer.restart for the new server's router

FLUSH_S = 0.5
UNIT_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]
SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
OUTCOMES = ("ok", "error", "cancelled")
SHADOW_OUTCOMES = ("recorded", "skipped", "dropped", "failed")
GAUGES = (
    "pyramid_live_escalation_rate",
    "pyramid_live_fidelity",
    "pyramid_expected_escalation_rate",
    "pyramid_expected_fidelity",
    "pyramid_shadow_in_flight",
    "pyramid_budget_target_oracle_rate",
    "pyramid_budget_window_oracle_rate",
    "pyramid_budget_threshold_offset",
)
DRIFT_FIGURES = ("escalation_rate", "fidelity")


@dataclass
class RequestRecord:
    """One finished request, as metrics and the log line see it."""

    request_id: str
    outcome: str  # ok | error | cancelled
    seconds: float
    response: PyramidResponse | None = None
    error: str | None = None
    failed: list[str] = field(default_factory=list)
    # the failed calls that were the engine's fault (timeout, crash): pyramid_model_failures_total counts
    # these, not a replay engine's NOT_FOUND for a question it has no record of
    engine_failed: list[str] = field(default_factory=list)

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


def le_label(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``0.25``, ``1``, ``+Inf``)."""
    if math.isinf(bound):
        return "+Inf"
    text = repr(float(bound))
    return text[:-2] if text.endswith(".0") else text


class BatchedHistogram:
    """A Prometheus histogram kept as its classic series, counters that are updated once per flush.

    ``observe`` only counts locally; ``flush`` adds the pending counts to ``<name>_bucket{le}`` (each
    bucket counts the observations at or below its bound, ``+Inf`` all of them), ``<name>_sum`` and
    ``<name>_count``: at most ``len(bounds) + 3`` messages to the server per flush. The families are made
    by ``family`` (the caller's, which keeps them alive); ``label_sets`` are the label sets to export,
    each observation names one of them by its position. Values must be >= 0 (a counter cannot go down)."""

    def __init__(
        self, family: Any, counter_kind: Any, name: str, description: str, bounds: list[float],
        label_sets: list[dict[str, str]],
    ) -> None:  # fmt: skip
        self.bounds = sorted(float(b) for b in bounds)
        les = [le_label(b) for b in self.bounds] + ["+Inf"]
        buckets = family(f"{name}_bucket", f"{description} (cumulative count per upper bound le)", counter_kind)
        sums = family(f"{name}_sum", f"{description} (sum of the observed values)", counter_kind)
        counts = family(f"{name}_count", f"{description} (number of observations)", counter_kind)
        self._series = [
            (
                [buckets.Metric(labels={**labels, "le": le}) for le in les],
                sums.Metric(labels=labels),
                counts.Metric(labels=labels),
            )
            for labels in label_sets
        ]
        self._bins = [[0] * len(les) for _ in label_sets]  # pending observations per bin (not cumulative)
        self._sums = [0.0] * len(label_sets)

    def observe(self, value: float, series: int = 0) -> None:
        if not value >= 0.0:  # also NaN
            raise ValueError(f"a batched histogram takes values >= 0, got {value}")
        self._bins[series][bisect.bisect_left(self.bounds, value)] += 1
        self._sums[series] += value

    @property
    def pending(self) -> bool:
        return any(any(b) for b in self._bins)

    def flush(self) -> None:
        for k, (buckets, total, count) in enumerate(self._series):
            bins, n = self._bins[k], sum(self._bins[k])
            if not n:
                continue
            self._bins[k], s, self._sums[k] = [0] * len(bins), self._sums[k], 0.0
            cumulative = 0
            for metric, pending in zip(buckets, bins):
                cumulative += pending
                if cumulative:
                    metric.increment(cumulative)
            total.increment(s)
            count.increment(n)


def server_restarts_from_env() -> int:
    """The supervisor's restarts of this server so far (``$PYRAMID_SERVER_RESTARTS``; 0 if unset or bad)."""
    import os

    try:
        return max(0, int(os.environ.get(SERVER_RESTARTS_ENV, "0")))
    except ValueError:
        return 0


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

        def histogram(name: str, description: str, buckets: list[float], labels: list[dict[str, str]]) -> Any:
            return BatchedHistogram(family, mf.COUNTER, name, description, buckets, labels)

        self.confidence = histogram(
            "pyramid_confidence", "Calibrated confidence of the committee", UNIT_BUCKETS, [base]
        )
        self.agreement = histogram("pyramid_agreement", "Vote share of the committee's answer", UNIT_BUCKETS, [base])
        self.duration = histogram(
            "pyramid_request_duration_seconds", "Time in the router, arrival to last response", SECONDS_BUCKETS, [base]
        )
        self.tier_duration = histogram(
            "pyramid_tier_request_duration_seconds", "Time in the router by the answering tier", SECONDS_BUCKETS,
            [{**base, "tier": t} for t in TIERS],
        )  # fmt: skip
        self._tier_series = {t: k for k, t in enumerate(TIERS)}
        self._histograms = [self.confidence, self.agreement, self.duration, self.tier_duration]
        tier_cost = family(
            "pyramid_tier_cost_oracle_calls_total",
            "Cost spent in units of one oracle call, by answering tier",
            mf.COUNTER,
        )
        self.tier_cost = {t: tier_cost.Metric(labels={**base, "tier": t}) for t in TIERS}
        breaker = family("pyramid_breaker_open", "1 while an engine's circuit breaker is open", mf.GAUGE)
        self.breaker = {t: breaker.Metric(labels={**base, "target": t}) for t in targets}
        shadow = family("pyramid_shadow_total", "Shadow-sampled requests by outcome", mf.COUNTER)
        self.shadow = {o: shadow.Metric(labels={**base, "outcome": o}) for o in SHADOW_OUTCOMES}
        self.shadow_cost = counter(
            "pyramid_shadow_cost_oracle_calls_total", "Cost of the shadow calls in units of one oracle call"
        )
        gauge_help = {
            "pyramid_live_escalation_rate": "Share of the last drift_window requests escalated",
            "pyramid_live_fidelity": "Share of shadowed accepted answers equal to the oracle's (sliding window)",
            "pyramid_expected_escalation_rate": "Oracle-call rate the calibration expects at its thresholds",
            "pyramid_expected_fidelity": "Fidelity of accepted answers the calibration expects",
            "pyramid_shadow_in_flight": "Shadow model calls running",
            "pyramid_budget_target_oracle_rate": "The oracle budget's target oracle-call rate (NaN: budget off)",
            "pyramid_budget_window_oracle_rate": "Oracle-call rate of the budget window's controlled requests",
            "pyramid_budget_threshold_offset": "Offset the oracle budget last added to every stage's threshold",
        }
        self.gauges = {n: family(n, gauge_help[n], mf.GAUGE).Metric(labels=base) for n in GAUGES}
        reloads = family(
            "pyramid_calibration_reloads_total", "Changed calibration files: ok (live) or refused", mf.COUNTER
        )
        self.reloads = {o: reloads.Metric(labels={**base, "outcome": o}) for o in ("ok", "refused")}
        self._info_family = family("pyramid_calibration_info", "1 for the calibration that is live (id)", mf.GAUGE)
        self._info: dict[str, Any] = {}
        self._base = base
        drift = family("pyramid_drift", "1 while a watched figure is outside its binomial interval", mf.GAUGE)
        self.drift = {f: drift.Metric(labels={**base, "figure": f}) for f in DRIFT_FIGURES}
        self._gauge_values: dict[int, tuple[Any, float]] = {}
        self._counts: dict[int, tuple[Any, float]] = {}  # id(metric) -> (metric, pending increment)
        restarts = family(
            "pyramid_server_restarts_total",
            "tritonserver restarts by the supervisor, by reason (fd_limit: past its open-descriptor bound)",
            mf.COUNTER,
        )
        self.server_restarts = restarts.Metric(labels={**base, "reason": "fd_limit"})
        if server_restarts_from_env() > 0:
            self._add(self.server_restarts, float(server_restarts_from_env()))

    def observe(self, rec: RequestRecord) -> None:
        """Record one request locally; ``flush`` hands the totals to Triton. Every metric update is
        a message from the stub to the server process, so per-request updates cost the router
        measurable throughput (BENCHMARKS.md); batched, it is a few messages per flush."""
        self._add(self.requests[rec.outcome])
        self.duration.observe(rec.seconds)
        for t in rec.engine_failed:
            if t in self.failures:
                self._add(self.failures[t])
        r = rec.response
        if r is None:
            return
        self._add(self.tier[r.tier])
        self.tier_duration.observe(rec.seconds, self._tier_series[r.tier])
        if r.escalated:
            self._add(self.escalations)
        if r.degraded:
            self._add(self.degraded)
        if r.provisional:
            self._add(self.provisional)
        if r.agent_answers:  # the committee was asked (not force_tier=oracle)
            self.confidence.observe(min(max(r.confidence, 0.0), 1.0))
            self.agreement.observe(min(max(r.agreement, 0.0), 1.0))
        if not math.isnan(r.cost):
            self._add(self.cost["spent"], r.cost)
            self._add(self.cost["baseline"])
            self._add(self.tier_cost[r.tier], r.cost)

    def observe_shadow(self, outcome: str, cost: float | None = None) -> None:
        """One shadow-sampled request's outcome and its shadow calls' cost (oracle-call units)."""
        self._add(self.shadow[outcome])
        if cost is not None and not math.isnan(cost):
            self._add(self.shadow_cost, cost)

    def set_calibration(self, calibration_id: str) -> None:
        """``pyramid_calibration_info{id}``: 1 for the live calibration, 0 for those before it."""
        for cid, metric in self._info.items():
            self._gauge_values[id(metric)] = (metric, 1.0 if cid == calibration_id else 0.0)
        if calibration_id not in self._info:
            metric = self._info_family.Metric(labels={**self._base, "id": calibration_id})
            self._info[calibration_id] = metric
            self._gauge_values[id(metric)] = (metric, 1.0)

    def observe_reload(self, outcome: str, live_id: str) -> None:
        self._add(self.reloads[outcome])
        self.set_calibration(live_id)

    def set_gauges(
        self, values: dict[str, float | None], drifting: dict[str, bool], breaker_open: dict[str, bool]
    ) -> None:
        """The gauges' current values (None: NaN), handed to Triton at the next flush."""
        for name, v in values.items():
            self._gauge_values[id(self.gauges[name])] = (self.gauges[name], math.nan if v is None else float(v))
        for f, on in drifting.items():
            self._gauge_values[id(self.drift[f])] = (self.drift[f], 1.0 if on else 0.0)
        for t, on in breaker_open.items():
            if t in self.breaker:
                self._gauge_values[id(self.breaker[t])] = (self.breaker[t], 1.0 if on else 0.0)

    @property
    def pending(self) -> bool:
        return bool(self._counts or self._gauge_values or any(h.pending for h in self._histograms))

    def flush(self) -> None:
        counts, gauges = self._counts, self._gauge_values
        self._counts, self._gauge_values = {}, {}
        for metric, value in counts.values():
            metric.increment(value)
        for h in self._histograms:
            h.flush()
        for metric, value in gauges.values():
            metric.set(value)

    def _add(self, metric: Any, value: float = 1.0) -> None:
        key = id(metric)
        old = self._counts.get(key)
        self._counts[key] = (metric, value + (old[1] if old else 0.0))
