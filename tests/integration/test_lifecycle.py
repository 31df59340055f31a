"""``make serve`` stopped the way service managers and scripts stop it (issue 10 item 10), and bound to
loopback unless asked otherwise (issue 17).

Each test starts the real ``make serve`` (replay profile, the session deployment's calibration, its
own ``OUT``) as a background job of a non-interactive shell, which starts it with SIGINT ignored, as
POSIX shells do. Then: SIGTERM to make; SIGINT to the server wrapper; SIGKILL to the wrapper. Each
time every process of the tree (make, the wrapper, tritonserver, its stubs, the OpenAI gateway) must be gone and every
shared-memory region the server or its stubs had mapped must be removed. Processes are found only
as descendants of the make process this test started, never by name.

The exposure test runs ``make serve`` in a network namespace of its own with a second address
(a veth pair with both ends inside it: nothing leaves the machine): by default the server answers on loopback and the
other address refuses connections; with ``HOST=0.0.0.0`` it answers on both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pyramid_ops.server import mapped_shm_files as shm_of

from .conftest import ROOT
from .test_multihost import _netns_permitted

NS_ADDR = "10.213.9.1"
READY_S = 240.0  # render + tritonserver start on a busy 2-core machine


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of stat): tells a live process from a reused PID."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(root: int) -> dict[int, str]:
    """{pid: start time} of ``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            pp = _ppid(int(p.name))
            if pp is not None:
                children.setdefault(pp, []).append(int(p.name))
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        st = _start_time(pid)
        if st is not None:
            out[pid] = st
            todo.extend(children.get(pid, []))
    return out


def alive(procs: dict[int, str]) -> list[int]:
    """The processes of ``procs`` still running (the same process: same PID and start time, not a zombie)."""
    left = []
    for pid, st in procs.items():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if _start_time(pid) == st and state != "Z":
            left.append(pid)
    return left


def _sig_ignored(pid: int, sig: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


class MakeServe:
    """``make serve`` started as a background job (``make ... &`` in ``bash -c``), its output in a file."""

    def __init__(self, out: Path, calibration: Path, launcher: list[str] | None = None, **make_vars: str) -> None:
        (out / "calibration").mkdir(parents=True, exist_ok=True)
        shutil.copy(calibration, out / "calibration" / "replay.json")
        self.out = out
        self.vars = make_vars
        self.log = out / f"make-serve-{make_vars.get('HTTP_PORT', '')}.log"
        self.key_file = out / "serve" / f"admin-key-{make_vars.get('HTTP_PORT', '8000')}"  # one per run
        # -o the venv stamp: never rebuild the venv from a test, even if a project file is newer than it
        args = " ".join(f"{k}={v}" for k, v in {"OUT": str(out), **make_vars}.items())
        self.pid_file = out / f"make-{make_vars.get('HTTP_PORT', '')}.pid"
        script = f"make -s -o .venv/.installed serve {args} & echo $! > {self.pid_file}; wait"
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        with open(self.log, "wb") as fh:
            self.shell = subprocess.Popen([*(launcher or []), "bash", "-c", script], cwd=ROOT, stdout=fh,
                                          stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip
        self.make_pid = 0
        self.procs: dict[int, str] = {}

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_S
        while "ready: gRPC" not in self.text():
            assert self.shell.poll() is None, f"make serve exited ({self.shell.returncode}):\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"make serve not ready after {READY_S:.0f} s:\n{self.text()[-3000:]}"
            time.sleep(0.5)
        self.make_pid = int(self.pid_file.read_text())
        self.procs = descendants(self.make_pid)

    def wrapper_pid(self) -> int:
        return next(p for p in self.procs if _ppid(p) == self.make_pid)

    def server_pid(self) -> int:
        """tritonserver: the wrapper's child that listens on HTTP_PORT (the gateway is another child)."""
        from pyramid_ops.supervisor import listening_pid

        pid = listening_pid(int(self.vars["HTTP_PORT"]))
        assert pid is not None and _ppid(pid) == self.wrapper_pid()
        return pid

    def wait_exit(self, timeout_s: float = 90) -> int:
        try:
            return self.shell.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"make serve still running {timeout_s:.0f} s after the signal:\n{self.text()[-3000:]}")

    def kill_all(self) -> None:
        """Cleanup after a failed test: SIGKILL what is left of this tree (by PID), remove its shm regions."""
        regions = shm_of(alive(self.procs))
        for pid in alive(self.procs):
            os.kill(pid, signal.SIGKILL)
        if self.shell.poll() is None:
            os.killpg(self.shell.pid, signal.SIGKILL)
            self.shell.wait(timeout=10)
        for r in regions:
            Path(r).unlink(missing_ok=True)


@pytest.fixture
def make_serve(deployment, tmp_path):
    started: list[MakeServe] = []

    def start(launcher=None, out=None, **make_vars) -> MakeServe:
        from pyramid_ops.server import free_ports

        ports = dict(
            zip(("HTTP_PORT", "GRPC_PORT", "METRICS_PORT", "OPENAI_PORT"), map(str, free_ports(4)), strict=True)
        )
        out = out or tmp_path / f"run{len(started)}"  # given: a second run in the same OUT (one checkout)
        # the repository and calibration under OUT: the committed top-level model_repository/ stays untouched
        where = {"SERVE_REPO": str(out / f"model_repository{len(started)}"),
                 "CALIBRATION": str(out / "calibration" / "replay.json"), "RENDER_FLAGS": ""}  # fmt: skip
        ms = MakeServe(out, deployment.calibration, launcher, **{**ports, **where, **make_vars})
        started.append(ms)
        ms.wait_ready()
        return ms

    yield start
    for ms in started:
        ms.kill_all()


def _signal_and_check(ms: MakeServe, pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to ``pid``; make serve must exit, leaving no process of its tree and none of its shm regions."""
    regions = shm_of(ms.procs)
    assert regions, "the server had no shm region mapped: nothing to check"
    server = ms.server_pid()
    os.kill(pid, sig)
    ms.wait_exit()
    if sig == signal.SIGKILL:  # no cleanup code runs: tritonserver's parent-death signal must do it
        deadline = time.monotonic() + 60  # tritonserver's graceful stop (its exit timeout is 30 s)
        while alive({server: ms.procs[server]}) and time.monotonic() < deadline:
            time.sleep(0.2)
    else:
        assert f"{sig.name}: stopping" in ms.text()
        assert not ms.key_file.exists()  # the per-run key ends with the run
    assert alive(ms.procs) == [], f"left running: {alive(ms.procs)}"
    assert not [r for r in regions if Path(r).exists()], f"shm regions left: {regions}"


def test_sigterm_to_make_serve_stops_everything(make_serve):
    ms = make_serve()
    server = ms.server_pid()
    stubs = [p for p in ms.procs if _ppid(p) == server]
    assert len(stubs) == 5  # the router and four engines
    assert _sig_ignored(ms.make_pid, signal.SIGINT)  # a background job, as a shell starts it
    # the per-run admin key: in a private file for tools, shown only redacted
    key_file = ms.key_file
    key = key_file.read_text().strip()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and len(key) >= 32
    assert key not in ms.text() and f"'pyramid-admin-key': key {key[:4]}…" in ms.text()
    _signal_and_check(ms, ms.make_pid, signal.SIGTERM)


def test_two_runs_in_one_checkout_keep_their_own_admin_keys(make_serve):
    """Issue 27 item 6: two ``make serve`` runs with one OUT write one key file each (named by the run's HTTP
    port), each works on its own server only, and stopping one leaves the other's file (and server) alone."""
    from pyramid_ops import access
    from pyramid_ops.supervisor import admin_request

    first = make_serve()
    second = make_serve(out=first.out)
    assert first.key_file != second.key_file and first.key_file.parent == second.key_file.parent
    keys = [access.read_key_file(ms.key_file) for ms in (first, second)]  # 0600, else refused
    assert keys[0].value != keys[1].value
    for ms, key in zip((first, second), keys, strict=True):
        assert admin_request(f"127.0.0.1:{ms.vars['HTTP_PORT']}", "/v2/repository/index", key, {}) is not None
    other = urllib_status(f"http://127.0.0.1:{first.vars['HTTP_PORT']}/v2/repository/index", keys[1])
    assert other == 403  # the second run's key is not the first server's
    _signal_and_check(second, second.make_pid, signal.SIGTERM)
    assert not second.key_file.exists()
    assert access.read_key_file(first.key_file).value == keys[0].value  # untouched by the other run's stop
    assert admin_request(f"127.0.0.1:{first.vars['HTTP_PORT']}", "/v2/repository/index", keys[0], {}) is not None
    _signal_and_check(first, first.make_pid, signal.SIGTERM)
    assert not first.key_file.exists()


def urllib_status(url: str, key) -> int:
    import urllib.error
    import urllib.request

    from pyramid_ops import access

    req = urllib.request.Request(url, data=b"{}", headers=access.http_headers(key), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_sigint_stops_the_server_although_the_parent_ignored_it(make_serve):
    ms = make_serve()
    assert _sig_ignored(ms.wrapper_pid(), signal.SIGINT) is False  # the wrapper installed its own handler
    _signal_and_check(ms, ms.wrapper_pid(), signal.SIGINT)


def test_a_killed_wrapper_takes_tritonserver_down(make_serve):
    ms = make_serve()
    _signal_and_check(ms, ms.wrapper_pid(), signal.SIGKILL)


def _reachable(ns: str, addr: str, port: str) -> bool:
    """An HTTP readiness request from inside ``ns``; False when the connection is refused."""
    code = (
        "import sys, urllib.request\n"
        "try:\n"
        "    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=5).status == 200 else 1)\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    url = f"http://{addr}:{port}/v2/health/ready"
    return subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", code, url], timeout=30).returncode == 0


@contextlib.contextmanager
def network_namespace(suffix: str, *setup: list[str]):
    """A fresh network namespace ``pmoa-PID-<suffix>`` with loopback up and ``ip -n NS <setup...>`` run in it;
    removed on exit. Skips (saying why) where namespaces cannot be made."""
    why = _netns_permitted()
    if why:
        pytest.skip(why)
    ns = f"pmoa-{os.getpid()}-{suffix}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"], *setup):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def namespace():
    # a second address on a veth pair with both ends inside the namespace: no way out of it
    with network_namespace("l", ["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
                           ["addr", "add", f"{NS_ADDR}/24", "dev", "d0"], ["link", "set", "d0", "up"],
                           ["link", "set", "d1", "up"]) as ns:  # fmt: skip
        yield ns


def test_make_serve_listens_on_loopback_unless_asked(make_serve, namespace):
    launcher = ["ip", "netns", "exec", namespace]
    ms = make_serve(launcher)
    port = ms.vars["HTTP_PORT"]
    assert "listening on loopback only" in ms.text()
    assert _reachable(namespace, "127.0.0.1", port)
    assert not _reachable(namespace, NS_ADDR, port)
    os.kill(ms.make_pid, signal.SIGTERM)
    ms.wait_exit()

    # the control: the same check passes when asked to listen widely (the gateway then needs API keys)
    wide = make_serve(launcher, HOST="0.0.0.0", OPENAI_PORT="0")
    port = wide.vars["HTTP_PORT"]
    assert "listening on 0.0.0.0" in wide.text()
    assert _reachable(namespace, NS_ADDR, port)
    os.kill(wide.make_pid, signal.SIGTERM)
    wide.wait_exit()
