"""The calibration a router serves, and its hot reload (``hot_reload.Watch``): one calibration per answer
task (``tasks``); the default task's is "the" artifact (cost facts, drift, shadow, hot reload). A changed
file is loaded and validated on the watch thread, off the requests' loop; the switch happens on the loop,
between requests (a request in flight keeps the router it started with: ``tasks.resolve`` on arrival).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import ModelParams
from .drift import DriftMonitor
from .hot_reload import Watch
from .shadow import artifact_version
from .tasks import load_task_routers


@dataclass
class Live:
    """The calibration serving now: the task routers, the default task's artifact and router, its cost model
    and reference tokens, its version (``shadow.artifact_version``) and the drift alarms (which start again
    with each calibration)."""

    tasks: Any
    artifact: Any
    source: str
    router: Any
    cost_kind: str | None
    reference_tokens: dict[str, float]
    version: dict[str, Any]
    drift: DriftMonitor


class CalibrationWatch:
    """Loads a router's calibration (validated for its models) and watches its file. ``on_switch(path, old
    version, problem)``: after each reload, on the loop (``problem`` None: the new one is live)."""

    def __init__(self, pb: Any, p: ModelParams, models: list[str], oracle: str) -> None:
        self.pb, self._params, self._models, self.oracle = pb, p, models, oracle
        self.live = self._live(*self.load())
        self.loop: asyncio.AbstractEventLoop | None = None  # the requests' event loop, once one came
        self.on_switch: Callable[[Any, str, Exception | None], None] = lambda *_: None
        self.watch: Watch | None = None

    def start(self, on_switch: Callable[[Any, str, Exception | None], None]) -> CalibrationWatch:
        """Start the watch thread (``calibration_watch_s``; 0: never)."""
        self.on_switch = on_switch
        self.watch = Watch.from_params(self._params).start(self.reload)
        return self

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.stop()

    def on_loop(self) -> bool:
        return self.loop is not None and self.loop.is_running()

    def load(self) -> tuple[Any, Any, str]:
        """(task routers, the default task's artifact, where from), validated for this deployment."""
        tasks, art, source = load_task_routers(self._params, self._models)
        if art.oracle != self.oracle:
            raise ValueError(f"calibration oracle {art.oracle!r} differs from the deployment's oracle {self.oracle!r}")
        return tasks, art, source

    def _live(self, tasks: Any, art: Any, source: str) -> Live:
        return Live(
            tasks, art, source, tasks.routers[tasks.default], art.target.get("cost_model"),
            dict(art.fit_summary.get("mean_output_tokens", {})), artifact_version(art),
            DriftMonitor.from_params(self._params, art.fit_summary.get("expected")),
        )  # fmt: skip

    def reload(self, path: Any) -> None:
        """The watch thread: the calibration file changed. Load and validate it here (off the requests'
        loop); the switch itself happens on the loop, between requests."""
        try:
            loaded, problem = self.load(), None
        except Exception as exc:  # noqa: BLE001 - any problem with the new file: refused, the old one serves
            loaded, problem = None, exc
        if self.on_loop():
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self._switch, path, loaded, problem)
        else:
            self._switch(path, loaded, problem)

    def _switch(self, path: Any, loaded: Any, problem: Exception | None) -> None:
        old = self.live.version["id"]
        if loaded is not None:
            self.live = self._live(*loaded)
        self.on_switch(path, old, problem)
