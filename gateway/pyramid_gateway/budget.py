"""Oracle budgets per API key (issue 24 item 2): hold a key's oracle spend to a budget by escalating less.

Configured in the keys file (``auth``), per key: ``budget=calls:N/hour`` (oracle calls) or ``budget=cost:X/day``
(the router's cost, in oracle calls: ``pyramid.costs.usd`` where the router reports it, else ``pyramid.cost``;
a committee answer costs its share of one oracle call), ``on_exhausted=committee|refuse``, ``low=F`` (the share
of the budget under which the key is "low", default 0.2) and ``threshold=T`` (the escalation threshold the
lowering starts from; default ``--budget-base-threshold``).

Periods are fixed UTC windows (an hour ``2026-12-06T04``, a day ``2026-12-06``): the budget resets at the next
boundary. Spend is counted from each response's routing metadata after it is answered (``charge``), so requests
in flight when the budget runs out are still answered and counted: spend can pass the limit by those.

Per request (``decide``), by what remains of the period's budget:

* ``ok``: nothing changes;
* ``low`` (remaining < ``low`` x limit): routed with ``escalation_threshold`` = ``threshold`` x remaining /
  (``low`` x limit), or the client's own if that is lower (never raised);
* ``exhausted`` (nothing remains): answered by the committee only (the router's ``force_tier=committee``; a
  direct call to the oracle engine too), marked ``x-pyramid-budget: exhausted`` and in ``pyramid.budget``; with
  ``on_exhausted=refuse``, a 429 (``insufficient_quota``) with ``Retry-After`` until the period resets.

Restarts: with ``--budget-state FILE`` the current period's spend per key is kept in FILE (JSON, written
atomically after every charge that spends, mode 0600; keyed by the key's label, never the key) and read at start:
a restart keeps the period's spend. Without it a restart resets every key's spend, and the gateway says so in its
log at start. A period that has ended by the time the file is read starts from zero; so does a key whose budget
unit or period changed.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UNITS = ("calls", "cost")
PERIODS = {"hour": 3600, "day": 86400}
ON_EXHAUSTED = ("committee", "refuse")
DEFAULT_LOW = 0.2
DEFAULT_BASE_THRESHOLD = 0.5
STATES = ("ok", "low", "exhausted")
STATE_FORMAT = "pyramid-gateway/budget-state"
_BUDGET = re.compile(r"(calls|cost):([0-9]+(?:\.[0-9]+)?)/(hour|day)")


@dataclass(frozen=True)
class Budget:
    """One key's budget: ``limit`` ``unit`` per ``period``."""

    unit: str
    limit: float
    period: str
    on_exhausted: str = "committee"
    low: float = DEFAULT_LOW
    threshold: float | None = None  # None: the gateway's --budget-base-threshold

    @classmethod
    def parse(cls, spec: str, **options: str) -> Budget:
        """``calls:N/hour`` / ``cost:X/day`` and the key's other options; ValueError saying what is wrong."""
        m = _BUDGET.fullmatch(spec)
        if not m:
            raise ValueError(f"budget={spec!r}: expected calls:N/hour|day or cost:X/hour|day")
        limit = float(m.group(2))
        if limit <= 0:
            raise ValueError(f"budget={spec!r}: the limit must be > 0")
        on = options.get("on_exhausted", "committee")
        if on not in ON_EXHAUSTED:
            raise ValueError(f"on_exhausted={on!r}: expected committee or refuse")
        low = _fraction("low", options.get("low", str(DEFAULT_LOW)))
        t = options.get("threshold")
        return cls(m.group(1), limit, m.group(3), on, low, _fraction("threshold", t) if t is not None else None)


def _fraction(name: str, value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a number in [0, 1]") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name}={value!r}: expected a number in [0, 1]")
    return v


def period_of(period: str, now: float) -> tuple[str, float]:
    """(the period's id, when it ends: epoch seconds) at ``now`` (fixed UTC windows)."""
    length = PERIODS[period]
    start = math.floor(now / length) * length
    fmt = "%Y-%m-%dT%H" if period == "hour" else "%Y-%m-%d"
    return time.strftime(fmt, time.gmtime(start)), start + length


def spend_of(unit: str, meta: dict[str, Any]) -> float:
    """What one answer spent, in ``unit``, from its ``pyramid`` object: ``calls``: oracle calls made (its per-tier
    usage); ``cost``: ``costs.usd``, else ``cost`` (relative to one oracle call), else (a direct engine call) its
    oracle calls."""
    oracle_calls = int(((meta.get("usage") or {}).get("oracle") or {}).get("calls") or 0)
    if unit == "calls":
        return float(oracle_calls)
    for v in ((meta.get("costs") or {}).get("usd"), meta.get("cost")):
        if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0:
            return float(v)
    return float(oracle_calls)


@dataclass
class Spend:
    """A key's spend in its current period."""

    period: str
    spent: float = 0.0


@dataclass(frozen=True)
class Decision:
    """What a request of a key with a budget gets: its ``state`` (``ok``, ``low``, ``exhausted``), the threshold
    to route with when low (None: unchanged), whether it is committee-only, or refused (then ``retry_after_s``)."""

    label: str
    state: str
    threshold: float | None = None
    committee_only: bool = False
    refuse: bool = False
    retry_after_s: int = 0


@dataclass
class BudgetBook:
    """Every budgeted key's spend (by label), its decisions, and the state file."""

    budgets: dict[str, Budget]
    state_path: Path | None = None
    base_threshold: float = DEFAULT_BASE_THRESHOLD
    spend: dict[str, Spend] = field(default_factory=dict)
    clock: Any = time.time

    def load(self) -> str:
        """Read the state file (if any): the current periods' spend; returns what it did, for the log."""
        if self.state_path is None:
            return (
                "no --budget-state file: every key's budget spend starts from zero now, and a restart resets it "
                "(the spend of the current hour / day is lost)"
            )
        if not self.state_path.parent.is_dir():
            raise ValueError(f"budget state {self.state_path}: its directory does not exist")
        try:
            raw = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"budget state {self.state_path}: none yet, every key starts from zero"
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"budget state {self.state_path}: unreadable ({exc}); remove it to start from zero"
            ) from None
        if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT or not isinstance(raw.get("keys"), dict):
            raise ValueError(f"budget state {self.state_path}: not a {STATE_FORMAT} file")
        now, kept = self.clock(), []
        for label, b in self.budgets.items():
            s = raw["keys"].get(label)
            if not isinstance(s, dict) or s.get("unit") != b.unit or s.get("period_kind") != b.period:
                continue
            if s.get("period") == period_of(b.period, now)[0] and isinstance(s.get("spent"), (int, float)):
                self.spend[label] = Spend(s["period"], float(s["spent"]))
                kept.append(label)
        return f"budget state {self.state_path}: kept the current period's spend of {len(kept)} key(s)"

    def save(self) -> None:
        """The state file, written atomically (a temporary file in its directory, mode 0600, then renamed)."""
        if self.state_path is None:
            return
        keys = {
            label: {"unit": self.budgets[label].unit, "period_kind": self.budgets[label].period,
                    "period": s.period, "spent": s.spent}
            for label, s in sorted(self.spend.items()) if label in self.budgets
        }  # fmt: skip
        data = json.dumps({"format": STATE_FORMAT, "version": 1, "keys": keys}, indent=1, sort_keys=True)
        d = self.state_path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.state_path.name}.", dir=d)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def current(self, label: str) -> Spend:
        """The key's spend in the current period (a new period starts from zero)."""
        pid, _ = period_of(self.budgets[label].period, self.clock())
        s = self.spend.get(label)
        if s is None or s.period != pid:
            s = self.spend[label] = Spend(pid)
        return s

    def state(self, label: str) -> str:
        b = self.budgets[label]
        remaining = b.limit - self.current(label).spent
        return "exhausted" if remaining <= 0 else "low" if remaining < b.low * b.limit else "ok"

    def decide(self, label: str | None) -> Decision | None:
        """The request's decision; None for a key without a budget (nothing changes)."""
        if label is None or label not in self.budgets:
            return None
        b, st = self.budgets[label], self.state(label)
        if st == "exhausted":
            if b.on_exhausted == "refuse":
                _, end = period_of(b.period, self.clock())
                return Decision(label, st, refuse=True, retry_after_s=max(1, math.ceil(end - self.clock())))
            return Decision(label, st, committee_only=True)
        if st == "low":
            base = self.base_threshold if b.threshold is None else b.threshold
            remaining = b.limit - self.current(label).spent
            return Decision(label, st, threshold=round(base * remaining / (b.low * b.limit), 6))
        return Decision(label, st)

    def charge(self, decision: Decision, meta: dict[str, Any]) -> dict[str, Any]:
        """Count one answer's spend against its key (state file written if it spent); the ``pyramid.budget``
        object: the period, the spend after this answer, the limit, what remains, and the state this request
        was served under (with the threshold applied when low)."""
        b = self.budgets[decision.label]
        s = self.current(decision.label)
        spent = spend_of(b.unit, meta)
        if spent > 0:
            s.spent += spent
            self.save()
        out: dict[str, Any] = {
            "unit": b.unit,
            "period": s.period,
            "spent": round(s.spent, 6),
            "limit": b.limit,
            "remaining": round(max(0.0, b.limit - s.spent), 6),
            "state": decision.state,
        }
        if decision.threshold is not None:
            out["escalation_threshold"] = decision.threshold
        if decision.committee_only:
            out["committee_only"] = True
        return out
