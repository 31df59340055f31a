"""The gateway's own Prometheus metrics (``GET /metrics``, text format 0.0.4).

The router's decisions (tiers, escalations, cost) are on Triton's ``/metrics`` (``pyramid_*``); the
gateway adds only what happens at the HTTP edge: requests by model, endpoint and status, their
latency, requests in flight, client disconnects, tokens billed. Hand-written (a few counters and one
histogram) rather than a dependency; everything runs on the event loop, so no locks.

Label values are the gateway's own, never a client's text: ``endpoint`` is one of its routes, ``status`` an
HTTP status it answered, ``model`` a model name it serves (``Gateway.model_label``), ``unknown`` for a name it
does not serve, ``?`` for a request refused before its model was read. So the label sets are bounded, and
nobody can add lines to the scrape (issue 27: a model name with a newline in it once could). Every value is
escaped anyway (``escape_label``: backslash, double quote and newline, as the exposition format says).
"""

from __future__ import annotations

from collections import defaultdict

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PREFIX = "pyramid_gateway_"
UNKNOWN_MODEL = "unknown"  # a model name this gateway does not serve
NO_MODEL = "?"  # refused before the request's model was read (bad JSON, no key, too large)


def escape_label(value: object) -> str:
    """A label value as the text exposition format writes it: ``\\`` -> ``\\\\``, ``"`` -> ``\\"``,
    newline -> ``\\n``."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**kv: object) -> str:
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in kv.items()) + "}"


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.tokens: dict[tuple[str, str], int] = defaultdict(int)
        self.in_flight = 0
        self.disconnects = 0
        self._buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS_S))
        self._sum: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)

    def observe(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        self.requests[(endpoint, model, str(status))] += 1
        b = self._buckets[endpoint]
        for i, le in enumerate(BUCKETS_S):
            if seconds <= le:
                b[i] += 1
        self._sum[endpoint] += seconds
        self._count[endpoint] += 1

    def add_tokens(self, model: str, prompt: int, completion: int) -> None:
        self.tokens[(model, "prompt")] += prompt
        self.tokens[(model, "completion")] += completion

    def render(self) -> str:
        out = [
            f"# HELP {PREFIX}requests_total OpenAI API requests answered, by endpoint, model and HTTP status.",
            f"# TYPE {PREFIX}requests_total counter",
        ]
        for (endpoint, model, status), n in sorted(self.requests.items()):
            out.append(f"{PREFIX}requests_total{_labels(endpoint=endpoint, model=model, status=status)} {n}")
        out += [
            f"# HELP {PREFIX}request_seconds Time from the request's arrival to its last byte.",
            f"# TYPE {PREFIX}request_seconds histogram",
        ]
        for endpoint in sorted(self._count):
            for le, n in zip(BUCKETS_S, self._buckets[endpoint]):
                out.append(f"{PREFIX}request_seconds_bucket{_labels(endpoint=endpoint, le=str(le))} {n}")
            out.append(f"{PREFIX}request_seconds_bucket{_labels(endpoint=endpoint, le='+Inf')} {self._count[endpoint]}")
            out.append(f"{PREFIX}request_seconds_sum{_labels(endpoint=endpoint)} {self._sum[endpoint]:.6f}")
            out.append(f"{PREFIX}request_seconds_count{_labels(endpoint=endpoint)} {self._count[endpoint]}")
        out += [
            f"# HELP {PREFIX}tokens_total Tokens of every call the routes made (the usage billed), by model asked.",
            f"# TYPE {PREFIX}tokens_total counter",
        ]
        for (model, kind), n in sorted(self.tokens.items()):
            out.append(f"{PREFIX}tokens_total{_labels(model=model, kind=kind)} {n}")
        out += [
            f"# HELP {PREFIX}in_flight Requests being answered now.",
            f"# TYPE {PREFIX}in_flight gauge",
            f"{PREFIX}in_flight {self.in_flight}",
            f"# HELP {PREFIX}client_disconnects_total Requests whose client went away first (the Triton request was cancelled).",
            f"# TYPE {PREFIX}client_disconnects_total counter",
            f"{PREFIX}client_disconnects_total {self.disconnects}",
        ]
        return "\n".join(out) + "\n"
