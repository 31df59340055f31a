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
process is gone (no stub of that instance name left) while the model still reports ready, it unloads
and reloads the model through Triton's own repository API, with the admin key (access.py). A model
that is not ready was unloaded on purpose and is left alone; a stub replaced by a new one of the same
instance name is a reload someone else made. The stub a model runs under its own name while Triton loads
it (instances are named ``<group>_<i>``) exits once the model is loaded: it is no instance and is not
watched (else a reload, e.g. ``pyramid deploy-calibration``'s, would look like a death). Nothing is found
or killed by name; only children of the server's own PID are looked at.

``check`` is the same test without state, for a liveness probe where no supervisor runs (the Helm
chart, scripts/liveness.py): every instance of every ready Python-backend model must have its stub.

Descriptor bound (issue 27 item 1): tritonserver 2.51 keeps, for good, one socket descriptor and about
41 KB for every gRPC stream whose request it rejected (wrong datatype, unknown model, missing input, a
missing inference key) and whose client then cancelled the stream; a model holding such leftovers no
longer unloads. Any client that reaches the gRPC port can do it, so with ``fd_limit`` set the watchdog
also counts the server's open descriptors (``/proc/PID/fd``) every round and, past the bound, has the
server drained and restarted (``restart_server``: ``TritonServer.restart``), logs it, and counts it in
``fd_restarts`` (exported by the router as ``pyramid_server_restarts_total{reason="fd_limit"}``).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import access

SUPERVISED_ARGS = ["--model-control-mode=explicit", "--load-model=*"]


def fd_count(pid: int) -> int | None:
    """How many file descriptors process ``pid`` holds open (None: no such process, or not ours to read)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` in bytes (None: unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


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
        instance = args[8].decode()
        if instance == model:  # the load-time stub of a model being (re)loaded, not an instance
            continue
        out[instance] = (model, int(proc.name))
    return out


@dataclass
class Supervisor:
    """Watchdog thread; ``restarts`` lists (time, model) of every reload it made, ``fd_restarts`` (time,
    descriptors seen) of every server restart past ``fd_limit``."""

    server_pid: int
    http_url: str
    admin_key: access.Key
    interval_s: float = 0.5
    log: object = None  # where it says what it does; None: sys.stderr as it is when it speaks
    restarts: list[tuple[float, str]] = field(default_factory=list)
    # More open descriptors than this in tritonserver: drain and restart it with ``restart_server`` (which
    # returns the new server's PID). None (or no restart_server): descriptors are not watched.
    fd_limit: int | None = None
    restart_server: Callable[[], int] | None = None
    fd_restarts: list[tuple[float, int]] = field(default_factory=list)
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
        suspects: set[str] = set()
        failed: set[str] = set()
        while not self._stop.wait(self.interval_s):
            if self._fd_bound_restart():  # a new server: its stubs are the ones to watch from now on
                known, suspects, failed = stub_processes(self.server_pid), set(), set()
                continue
            now = stub_processes(self.server_pid)
            gone = {model for inst, (model, _) in known.items() if inst not in now}
            # Dead: a stub gone while its model still reports ready, twice in a row (an unload in progress
            # can show a gone stub and a still-ready model once; a model that is not ready was unloaded),
            # or a model whose reload failed (it may be left unloaded by then): retried every round.
            ready_gone = {m for m in gone - failed if self._ready(m)}
            dead = sorted((ready_gone & suspects) | (gone & failed))
            suspects = ready_gone - set(dead)
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
            # a suspect, or a model whose reload failed, keeps its old (dead) entries: looked at again next round
            known = {**now, **{i: v for i, v in known.items() if v[0] in failed | suspects}}

    def _fd_bound_restart(self) -> bool:
        """Restart the server if it holds more than ``fd_limit`` descriptors; whether it was restarted."""
        if self.fd_limit is None or self.restart_server is None or self._stop.is_set():
            return False
        n = fd_count(self.server_pid)
        if n is None or n <= self.fd_limit:
            return False
        self._say(
            f"tritonserver (pid {self.server_pid}) holds {n} open file descriptors, past the bound of "
            f"{self.fd_limit} (leftovers of cancelled gRPC streams, docs/SECURITY.md); draining and restarting it"
        )
        try:
            self.server_pid = self.restart_server()
        except Exception as exc:  # noqa: BLE001 - the watchdog must outlive a failed restart; told, retried
            self._say(f"restarting tritonserver failed ({exc}); will retry")
            return False
        self.fd_restarts.append((time.monotonic(), n))
        self._say(
            f"tritonserver restarted (pid {self.server_pid}, {fd_count(self.server_pid)} open file descriptors); "
            f"restarts past the descriptor bound so far: {len(self.fd_restarts)}"
        )
        return True

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
        admin_request(self.http_url, path, self.admin_key, body)

    def _ready(self, model: str) -> bool:
        return http_ok(f"http://{self.http_url}/v2/models/{model}/ready", 2.0)

    def _say(self, msg: str) -> None:
        print(f"pyramid supervisor: {msg}", file=self.log or sys.stderr, flush=True)  # type: ignore[call-overload]


def http_ok(url: str, timeout_s: float) -> bool:
    """Whether a GET of ``url`` answers 200 within ``timeout_s`` (Triton's readiness endpoints)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def admin_request(
    http_url: str, path: str, key: access.Key, body: dict | None = None, timeout_s: float = 120
) -> object:
    """A call to a restricted API (POST with ``body``, else GET) with the admin key; its JSON answer."""
    req = urllib.request.Request(
        f"http://{http_url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **access.http_headers(key)},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        text = r.read()
    return json.loads(text) if text else None


def expected_stubs(http_url: str, key: access.Key) -> dict[str, str]:
    """{instance name: model} that the server's ready Python-backend models should have a stub for
    (instance ``<group name>_<i>`` for ``i < count``, as the stubs' command lines name them)."""
    out: dict[str, str] = {}
    for m in admin_request(http_url, "/v2/repository/index", key, {"ready": True}) or []:  # type: ignore[union-attr]
        if m.get("state") != "READY":
            continue
        cfg = admin_request(http_url, f"/v2/models/{m['name']}/config", key)
        if cfg.get("backend") != "python":  # type: ignore[union-attr]
            continue
        for group in cfg.get("instance_group", []):  # type: ignore[union-attr]
            for i in range(int(group.get("count", 1))):
                out[f"{group['name']}_{i}"] = m["name"]
    return out


def listening_pid(port: int) -> int | None:
    """The PID of the process listening on TCP ``port`` in this network namespace (the topmost one if
    it shares the socket with its children): the server itself, found by what it serves, not by name."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
    holders: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                holders[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    top = [pid for pid, ppid in holders.items() if ppid not in holders]
    return top[0] if len(top) == 1 else None


def check(http_url: str, key: access.Key) -> list[str]:
    """Problems that make the server unfit to live (empty: healthy): no server on the port, or an
    instance of a ready Python-backend model whose stub process is gone (Triton 2.51 still reports
    that model ready, and calls to it fail)."""
    pid = listening_pid(int(http_url.rsplit(":", 1)[1]))
    if pid is None:
        return [f"no single process listens on {http_url}"]
    alive = stub_processes(pid)
    want = expected_stubs(http_url, key)
    return [
        f"model {model!r}: the stub of instance {inst} is gone"
        for inst, model in sorted(want.items())
        if inst not in alive
    ]


def main(argv: list[str] | None = None) -> int:
    """Liveness check: exit 0 if every ready Python-backend model has all its stubs, else 1 (and why)."""
    import argparse

    ap = argparse.ArgumentParser(description="Exit 1 if an engine's Python-backend stub process is dead")
    ap.add_argument("--http", default="127.0.0.1:8000", help="the server's HTTP address (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        key = access.from_env()
        if key is None:
            print(f"error: no admin key (${access.ADMIN_KEY_FILE_ENV} or ${access.ADMIN_KEY_ENV})", file=sys.stderr)
            return 1
        problems = check(args.http, key)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        problems = [f"cannot check the server at {args.http}: {exc}"]
    for p in problems:
        print(f"unhealthy: {p}", file=sys.stderr)
    if not problems:
        print("ok: every ready Python-backend model has all its stub processes")
    return 1 if problems else 0
