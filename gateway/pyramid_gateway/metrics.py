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

Per API key (only with keys; issue 24): ``key`` is a configured key's label (its ``name=`` in the keys file, else
``key-`` and 8 hex digits of its SHA-256; never the key), from the configured set only: the calls each key's
answers made per tier, their oracle cost (in oracle calls), and for a key with a budget the current period's
spend, its limit and its state.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .budget import STATES, BudgetBook, spend_of

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
        self.key_labels: tuple[str, ...] = ()  # the configured keys' labels: the only values of ``key``
        self.key_calls: dict[tuple[str, str], int] = defaultdict(int)
        self.key_cost: dict[str, float] = defaultdict(float)
        self.book: BudgetBook | None = None

    def add_key_usage(self, label: str | None, meta: dict[str, Any]) -> None:
        """One answer's calls per tier and oracle cost, for the key that asked (a configured key only)."""
        if label is None or label not in self.key_labels:
            return
        for tier in ("committee", "oracle"):
            self.key_calls[(label, tier)] += int(((meta.get("usage") or {}).get(tier) or {}).get("calls") or 0)
        self.key_cost[label] += spend_of("cost", meta)

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
        out += self._render_keys()
        out += [
            f"# HELP {PREFIX}in_flight Requests being answered now.",
            f"# TYPE {PREFIX}in_flight gauge",
            f"{PREFIX}in_flight {self.in_flight}",
            f"# HELP {PREFIX}client_disconnects_total Requests whose client went away first (the Triton request was cancelled).",
            f"# TYPE {PREFIX}client_disconnects_total counter",
            f"{PREFIX}client_disconnects_total {self.disconnects}",
        ]
        return "\n".join(out) + "\n"

    def _render_keys(self) -> list[str]:
        if not self.key_labels:
            return []
        out = [
            f"# HELP {PREFIX}key_calls_total Model calls of each API key's answers, by tier (committee, oracle).",
            f"# TYPE {PREFIX}key_calls_total counter",
        ]
        for label in self.key_labels:
            for tier in ("committee", "oracle"):
                out.append(f"{PREFIX}key_calls_total{_labels(key=label, tier=tier)} {self.key_calls[(label, tier)]}")
        out += [
            f"# HELP {PREFIX}key_oracle_cost_total Cost of each API key's answers, in oracle calls (the router's cost).",
            f"# TYPE {PREFIX}key_oracle_cost_total counter",
        ]
        out += [f"{PREFIX}key_oracle_cost_total{_labels(key=k)} {self.key_cost[k]:.6f}" for k in self.key_labels]
        book = self.book
        if book is None or not book.budgets:
            return out
        budgeted = [k for k in self.key_labels if k in book.budgets]
        out += [
            f"# HELP {PREFIX}key_budget_spent Each budgeted API key's spend in its current period (unit: its budget's).",
            f"# TYPE {PREFIX}key_budget_spent gauge",
        ]
        out += [f"{PREFIX}key_budget_spent{_labels(key=k, unit=book.budgets[k].unit)} {book.current(k).spent:.6f}"
                for k in budgeted]  # fmt: skip
        out += [
            f"# HELP {PREFIX}key_budget_limit Each budgeted API key's budget per period.",
            f"# TYPE {PREFIX}key_budget_limit gauge",
        ]
        out += [f"{PREFIX}key_budget_limit{_labels(key=k, unit=book.budgets[k].unit)} {book.budgets[k].limit:g}"
                for k in budgeted]  # fmt: skip
        out += [
            f"# HELP {PREFIX}key_budget_state 1 for each budgeted API key's state (ok, low, exhausted), else 0.",
            f"# TYPE {PREFIX}key_budget_state gauge",
        ]
        for k in budgeted:
            now = book.state(k)
            out += [f"{PREFIX}key_budget_state{_labels(key=k, state=st)} {int(st == now)}" for st in STATES]
        return out
