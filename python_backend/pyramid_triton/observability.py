"""What the router tells about itself: the ``pyramid_*`` Prometheus metrics (flushed at most every
``metrics.FLUSH_S``), the request log (``request_log``) and the drift alarms' lines. None of it may fail
a request: every problem is logged as a warning and dropped.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from typing import Any

from .config import ModelParams
from .metrics import FLUSH_S, RequestRecord, RouterMetrics
from .protocol import ROUTER_PARAMS
from .request_log import RequestLog

# (gauge values, drift alarms up, breakers open): what ``RouterMetrics.set_gauges`` takes
Gauges = tuple[dict[str, float | None], dict[str, bool], dict[str, bool]]


class Observability:
    """The metrics (None with ``metrics`` off) and the request log of one router; ``gauges()`` gives the
    gauges' current values at each flush."""

    def __init__(self, pb: Any, p: ModelParams, models: list[str], gauges: Callable[[], Gauges]) -> None:
        self.pb, self.name, self._gauges = pb, p.name, gauges
        # off by default; prompts and answers only if asked, through the redaction hook (request_log.py)
        self.request_log = RequestLog.from_params(p, self.name)
        self._flush_scheduled = False
        on = p.get_typed("metrics", ROUTER_PARAMS)
        self.metrics = RouterMetrics(pb, self.name, models) if on else None

    def observe(self, rec: RequestRecord, prompt: str | None = None) -> None:
        """One request's metrics and request-log line."""
        try:
            if self.metrics is not None:
                self.metrics.observe(rec)
                self.schedule_flush()
            if self.request_log.enabled:
                answer = rec.response.text_output if rec.response is not None else None
                problem = self.request_log.write(rec.log_fields(self.name), prompt, answer, self._emit_log)
                if problem:
                    self.pb.Logger.log_warn(f"{self.name}: {problem}")
        except Exception:  # noqa: BLE001 - observability must never fail a request
            self.pb.Logger.log_warn(f"{self.name}: metrics/log failed: {traceback.format_exc()}")

    def shadow_done(self, outcome: str, cost: float | None = None) -> None:
        if self.metrics is not None:
            self.metrics.observe_shadow(outcome, cost)
            self.schedule_flush()

    def reloaded(self, outcome: str, calibration_id: str, on_loop: bool) -> None:
        """A hot reload's outcome (``ok``, ``refused``) and the calibration now live."""
        if self.metrics is not None:
            self.metrics.observe_reload(outcome, calibration_id)
            if on_loop:
                self.schedule_flush()
            else:
                self.flush()

    def drift_line(self, line: str | None, drifting: bool) -> None:
        if line:
            (self.pb.Logger.log_warn if drifting else self.pb.Logger.log_info)(f"{self.name}: {line}")

    def _emit_log(self, level: str, line: str) -> None:
        (self.pb.Logger.log_info if level == "info" else self.pb.Logger.log_verbose)(line)

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        try:
            if self.metrics is not None:
                self.metrics.set_gauges(*self._gauges())
                self.metrics.flush()
        except Exception:  # noqa: BLE001 - observability must never fail the router
            self.pb.Logger.log_warn(f"{self.name}: metrics flush failed: {traceback.format_exc()}")
