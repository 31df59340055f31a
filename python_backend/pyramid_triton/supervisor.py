"""Bring a dead engine back: watch the server's Python-backend stub processes, reload a model whose
stub died.

Measured on tritonserver 2.51 (see BENCHMARKS.md / the fault tests): when a model's stub process
dies, Triton does not restart it. The model still reports ready; every call to it fails after about
1 s with "Stub process '<model>_0_0' is not healthy"; calls in flight at the moment of death never
return (the router's per-call timeout ends them). A plain ``load`` of the already-loaded model is a
no-op; ``unload`` then ``load`` (explicit model-control mode) starts a new stub in about 1.5 s.

So the launcher runs the server with ``--model-control-mode=explicit --load-model=*`` and this
watchdog: every ``interval_s`` it lists the server's stub children (by parent PID; their command
line names the model's ``model.py`` and the instance), and for each model with an instance whose
process is gone it unloads and reloads the model through Triton's own repository API. Nothing is
found or killed by name; only children of the server's own PID are looked at.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SUPERVISED_ARGS = ["--model-control-mode=explicit", "--load-model=*"]


def stub_processes(server_pid: int) -> dict[str, tuple[str, int]]:
    """{instance name: (model name, pid)} of the Python-backend stubs whose parent is ``server_pid``."""
    out: dict[str, tuple[str, int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != server_pid:
                continue
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if len(args) < 9 or not args[0].endswith(b"triton_python_backend_stub"):
            continue
        model = Path(args[1].decode()).parts[-3]  # <repository>/<model>/<version>/model.py
        out[args[8].decode()] = (model, int(proc.name))
    return out


@dataclass
class Supervisor:
    """Watchdog thread; ``restarts`` lists (time, model) of every reload it made."""

    server_pid: int
    http_url: str
    interval_s: float = 0.5
    log: object = sys.stderr
    restarts: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="pyramid-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        known = stub_processes(self.server_pid)
        while not self._stop.wait(self.interval_s):
            now = stub_processes(self.server_pid)
            dead = sorted({model for inst, (model, pid) in known.items() if now.get(inst) != (model, pid)})
            failed = set()
            for model in dead:
                if self._stop.is_set():
                    return
                self._say(f"engine {model!r}: a stub process is gone; reloading the model")
                try:
                    self.reload(model)
                    self.restarts.append((time.monotonic(), model))
                    self._say(f"engine {model!r}: reloaded")
                except (OSError, urllib.error.URLError, TimeoutError) as exc:
                    self._say(f"engine {model!r}: reload failed ({exc}); will retry")
                    failed.add(model)
            if dead:
                now = stub_processes(self.server_pid)  # the reloaded models' new stubs
            # a model whose reload failed keeps its old (dead) entries: it is retried next round
            known = {**now, **{i: v for i, v in known.items() if v[0] in failed}}

    def reload(self, model: str, timeout_s: float = 60.0) -> None:
        """Unload, wait until it is gone, load again: a new stub process."""
        self._post(f"/v2/repository/models/{model}/unload", {"parameters": {"unload_dependents": False}})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._ready(model):
            time.sleep(0.05)
        self._post(f"/v2/repository/models/{model}/load", {})
        if not self._ready(model):
            raise TimeoutError(f"model {model!r} not ready after reload")

    def _post(self, path: str, body: dict) -> None:
        req = urllib.request.Request(
            f"http://{self.http_url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()

    def _ready(self, model: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/models/{model}/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _say(self, msg: str) -> None:
        print(f"pyramid supervisor: {msg}", file=self.log, flush=True)  # type: ignore[call-overload]
