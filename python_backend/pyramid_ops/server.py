"""Start, wait for and stop a real ``tritonserver`` (from the ``nvidia-pytriton`` wheel) on CPU.

What makes it work here (shared/PLATFORM.md): the Python-backend stub for the
running interpreter copied into ``backends/python`` (``scripts/install_triton.sh``),
the venv's ``bin/`` first on ``PATH`` (the stub then imports the venv's packages;
``PYTHONPATH`` is ignored) and the base interpreter's ``LIBDIR`` on
``LD_LIBRARY_PATH``. The server is stopped by its own PID only: SIGINT, wait,
then SIGKILL of its process group (which holds the stub processes), then its
``/dev/shm/triton_python_backend_shm_region_*`` files are removed. Nothing is
ever killed by name.

Least exposure (docs/SECURITY.md): the server listens on loopback unless ``host`` says otherwise, and
its model-control APIs need the admin key (``access.py``; one generated per start when none is given).
tritonserver gets a parent-death signal (SIGINT, its graceful stop) so it stops if this process is
killed; ``main`` stops it on SIGTERM, SIGINT and SIGHUP, whatever dispositions it inherited (a shell's
background job starts with SIGINT ignored).

Descriptor bound (issue 27 item 1, docs/SECURITY.md "Hostile clients"): with ``fd_limit`` (``make serve``:
``--fd-limit``, default 4096), the supervisor restarts tritonserver gracefully (``restart``: SIGINT, which
makes Triton stop taking requests and finish those in flight, then a new server on the same ports) when it
holds more open descriptors than that: tritonserver 2.51 leaks one per cancelled gRPC stream it had rejected.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from pyramid_triton.metrics import SERVER_RESTARTS_ENV

from . import access
from .supervisor import SUPERVISED_ARGS, Supervisor, http_ok

SHM_GLOB = "triton_python_backend_shm_region_*"
LOOPBACK = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
FD_LIMIT = 4096  # make serve's default bound on tritonserver's open descriptors (baseline: about 70)
TRITON_EXIT_TIMEOUT_S = 30  # tritonserver's default --exit-timeout-secs


class ServerError(RuntimeError):
    """tritonserver is missing, failed to start, or did not become ready; the message says why."""


def triton_root() -> Path:
    """The ``tritonserver`` directory of the installed ``nvidia-pytriton`` wheel."""
    try:
        import pytriton
    except ImportError:
        raise ServerError("nvidia-pytriton is not installed; run scripts/install_triton.sh") from None
    return Path(pytriton.__file__).parent / "tritonserver"


def find_tritonserver() -> tuple[Path, Path]:
    """(binary, backend directory); ServerError with the fix if missing or not set up."""
    root = triton_root()
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServerError(f"tritonserver binary not found at {binary}; run scripts/install_triton.sh")
    stub = root / "backends" / "python" / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"the Python-backend stub is missing at {stub}; run scripts/install_triton.sh")
    return binary, root / "backends"


def free_ports(n: int) -> list[int]:
    """``n`` distinct currently free TCP ports on localhost."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = libdir + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env.pop("PYTHONPATH", None)  # ignored by the stub anyway; keep the server's view explicit
    return env


@dataclass
class TritonServer:
    """One ``tritonserver`` process; use as a context manager or call ``start()`` / ``stop()``."""

    model_repository: Path
    http_port: int | None = None
    grpc_port: int | None = None
    metrics_port: int | None = None
    log_path: Path | None = None
    log_verbose: int = 0
    extra_args: list[str] = field(default_factory=list)
    supervise: bool = False  # reload an engine whose stub process died (see supervisor.py)
    # Run in front of the command, e.g. ["ip", "netns", "exec", "NS"] (which execs tritonserver: the PID
    # stays the server's own, so stopping by PID still works). The readiness probe runs through it too.
    launcher: list[str] = field(default_factory=list)
    # The address tritonserver binds (HTTP, gRPC, metrics): loopback unless asked otherwise.
    host: str = LOOPBACK
    # Model control needs this key (a header); None: a new one is generated by start() and kept here.
    admin_key: access.Key | None = None
    inference_key: access.Key | None = None  # set: inference needs this key too
    # With supervise: past this many open descriptors, tritonserver is drained and restarted (None: never).
    fd_limit: int | None = None
    proc: subprocess.Popen | None = None
    supervisor: Supervisor | None = None
    restarts: int = 0  # graceful restarts (``restart``) so far
    _log_fh: object | None = None
    _shm_before: set[str] = field(default_factory=set)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _restarting: bool = False
    _holder: threading.Event | None = None  # set to let the thread that started the current server end

    name: str = "tritonserver"

    @property
    def connect_host(self) -> str:
        """Where a local client reaches the server: loopback if it listens there (or everywhere)."""
        return LOOPBACK if self.host in ("0.0.0.0", "::", LOOPBACK) else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self.connect_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.connect_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.connect_host}:{self.metrics_port}"

    def command(self) -> list[str]:
        binary, backends = find_tritonserver()
        return [
            str(binary),
            "--model-repository",
            str(self.model_repository),
            "--backend-directory",
            str(backends),
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-port",
            str(self.metrics_port),
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            "--log-verbose",
            str(self.log_verbose),
            "--exit-on-error=true",
            "--strict-readiness=true",
            *(SUPERVISED_ARGS if self.supervise else []),
            *access.restricted_args(self._admin_key(), self.inference_key),
            *self.extra_args,
        ]

    def _admin_key(self) -> access.Key:
        if self.admin_key is None:
            self.admin_key = access.generate()
        return self.admin_key

    def start(self, timeout_s: float = 60.0) -> TritonServer:
        if self.proc is not None:
            raise ServerError("server already started")
        ports = free_ports(3)
        self.http_port = self.http_port or ports[0]
        self.grpc_port = self.grpc_port or ports[1]
        self.metrics_port = self.metrics_port or ports[2]
        cmd = [*self.launcher, *self.command()]
        self._shm_before = {str(f) for f in Path("/dev/shm").glob(SHM_GLOB)}
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = open_private_log(self.log_path)
        self.proc = spawn_child(cmd, server_env(), self._log_fh)
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        if self.supervise:
            self.supervisor = Supervisor(
                self.proc.pid, self.http_url, self._admin_key(), fd_limit=self.fd_limit,
                restart_server=self.restart if self.fd_limit is not None else None,
            ).start()  # fmt: skip
        return self

    def running(self) -> bool:
        if self._restarting:  # a graceful restart: the old server exits, a new one follows
            return True
        return self.proc is not None and self.proc.poll() is None

    def exit_timeout_s(self) -> float:
        """How long tritonserver waits, once asked to stop, for requests in flight and model unloads
        (its ``--exit-timeout-secs``, default 30 s), after which it exits by itself."""
        v = self.extra_arg("--exit-timeout-secs")
        try:
            return float(v) if v is not None else float(TRITON_EXIT_TIMEOUT_S)
        except ValueError:
            return float(TRITON_EXIT_TIMEOUT_S)

    def extra_arg(self, flag: str) -> str | None:
        """The value ``extra_args`` gives tritonserver's ``flag`` (``--flag=V`` or ``--flag V``; the first)."""
        for i, a in enumerate(self.extra_args):
            if a.startswith(f"{flag}="):
                return a.split("=", 1)[1]
            if a == flag and i + 1 < len(self.extra_args):
                return self.extra_args[i + 1]
        return None

    def restart(self, timeout_s: float = 120.0) -> int:
        """Drain and restart tritonserver on the same ports and keys; returns the new server's PID.

        Drain: SIGINT, tritonserver's graceful stop (it stops taking new requests, lets those in flight finish
        and unloads its models, exiting by itself after its exit timeout at the latest); this waits for that
        and SIGKILLs only past it (logged). Then its shm regions are removed and a new server is started and
        waited for. The new server's environment carries the restart count (``$PYRAMID_SERVER_RESTARTS``) for
        the router's ``pyramid_server_restarts_total``."""
        with self._lock:
            if self.proc is None:
                raise ServerError("server not started")
            self._restarting = True
            try:
                old = self.proc
                forced = stop_child(old, self.exit_timeout_s() + 10.0)
                self._release_holder()
                if forced:
                    print(f"tritonserver (pid {old.pid}) did not stop by itself; killed", file=sys.stderr, flush=True)
                self._remove_shm(self._shm_before)
                self.restarts += 1
                self._shm_before = {str(f) for f in Path("/dev/shm").glob(SHM_GLOB)}
                env = server_env()
                env[SERVER_RESTARTS_ENV] = str(self.restarts)
                self.proc = self._spawn_held([*self.launcher, *self.command()], env)
                self.wait_ready(timeout_s)
                return self.proc.pid
            finally:
                self._restarting = False

    def _spawn_held(self, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        """``spawn_child`` from a thread that lives until this server is stopped: the parent-death signal
        fires when the thread that started the child ends, and a restart runs on the supervisor's thread."""
        got: queue.Queue = queue.Queue()
        release = threading.Event()

        def hold() -> None:
            try:
                got.put(spawn_child(cmd, env, self._log_fh))  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                got.put(exc)
                return
            release.wait()

        threading.Thread(target=hold, name="tritonserver-holder", daemon=True).start()
        r = got.get()
        if isinstance(r, BaseException):
            raise r
        self._holder = release
        return r

    def _release_holder(self) -> None:
        if self._holder is not None:
            self._holder.set()
            self._holder = None

    def metrics_enabled(self) -> bool:
        """Whether this server serves its metrics port (on unless ``--allow-metrics=false`` is passed)."""
        return (self.extra_arg("--allow-metrics") or "true").lower() not in ("false", "0", "no", "off")

    def readiness_urls(self) -> list[str]:
        """What must answer 200 before the server counts as started: its readiness endpoint, and its
        metrics endpoint when metrics are on. tritonserver opens the metrics listener after HTTP, so a
        scrape right after HTTP readiness can be refused without the second check."""
        urls = [f"http://{self.http_url}/v2/health/ready"]
        if self.metrics_enabled():
            urls.append(f"http://{self.metrics_url}/metrics")
        return urls

    def is_ready(self) -> bool:
        for url in self.readiness_urls():
            if self.launcher:  # the ports may only be reachable where the server runs (a network namespace)
                probe = [*self.launcher, sys.executable, "-c", _READY_PROBE, url]
                try:
                    if subprocess.run(probe, capture_output=True, timeout=5).returncode != 0:
                        return False
                except subprocess.TimeoutExpired:
                    return False
            elif not http_ok(url, 1.0):
                return False
        return True

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                rc = None if self.proc is None else self.proc.returncode
                raise ServerError(f"tritonserver exited with code {rc} before it was ready{self._log_hint()}")
            if self.is_ready():
                return
            time.sleep(0.2)
        raise ServerError(f"tritonserver was not ready after {timeout_s:.0f} s{self._log_hint()}")

    def _log_hint(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        tail = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        return f"; log {self.log_path} ends with:\n" + "\n".join(tail)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGINT the server (its own PID), wait, SIGKILL its process group, remove its shm regions."""
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        with self._lock:  # after a restart in progress, if any
            proc, self.proc = self.proc, None
            if proc is not None:
                stop_child(proc, grace_s)
                self._release_holder()
                self._remove_shm(self._shm_before)
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None

    @staticmethod
    def _remove_shm(before: set[str]) -> None:
        """Remove the shm regions that appeared while this server ran and that no live process maps
        (region names are random UUIDs, so "new since our start and unused" is what identifies ours)."""
        shm = Path("/dev/shm")
        if not shm.is_dir():
            return
        new = [f for f in shm.glob(SHM_GLOB) if str(f) not in before]
        if not new:
            return
        in_use = mapped_shm_files()
        for f in new:
            if str(f) not in in_use:
                try:
                    f.unlink()
                except OSError:
                    pass

    def __enter__(self) -> TritonServer:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_READY_PROBE = (
    "import sys, urllib.request\n"
    "try:\n"
    "    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200 else 1)\n"
    "except Exception:\n"
    "    sys.exit(1)\n"
)


def mapped_shm_files(pids: Iterable[int] | None = None) -> set[str]:
    """/dev/shm files mapped or open by ``pids`` (default: every live process we can inspect)."""
    used: set[str] = set()
    procs = [Path(f"/proc/{pid}") for pid in pids] if pids is not None else Path("/proc").iterdir()
    for proc in procs:
        if not proc.name.isdigit():
            continue
        try:
            for line in (proc / "maps").read_text().splitlines():
                if "/dev/shm/" in line:
                    used.add(line.split(None, 5)[-1].replace(" (deleted)", ""))
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("/dev/shm/"):
                    used.add(target)
        except OSError:
            continue
    return used


class Child(Protocol):
    """A process ``main`` runs in the foreground: tritonserver and the gateway beside it. ``start`` raises
    a ``RuntimeError`` naming the cause when the process does not come up."""

    name: str

    def start(self) -> object: ...
    def running(self) -> bool: ...
    def stop(self) -> None: ...


def spawn_child(cmd: Sequence[str], env: dict[str, str], out: IO[bytes] | None) -> subprocess.Popen:
    """Start ``cmd`` in its own session, so its process group holds it and everything it starts (Triton's
    stubs: ``stop_child`` kills that group), with SIGINT as its parent-death signal: if this process
    dies, even by SIGKILL, the child is asked to stop gracefully. Linux delivers that signal when the
    *thread* that started the child ends, so start children from a thread that outlives them."""
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child only calls into it

    def die_with_parent() -> None:  # runs in the child, between fork and exec
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGINT)

    return subprocess.Popen(
        list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent
    )


def stop_child(proc: subprocess.Popen, grace_s: float) -> bool:
    """SIGINT ``proc`` (its own PID), wait up to ``grace_s``, then SIGKILL its process group (leftovers:
    Triton's stub processes, or a child that ignored SIGINT) and reap it. Returns whether ``proc`` itself
    had to be killed (it had not exited within ``grace_s``)."""
    forced = False
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            forced = True
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is the child's pid
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return forced


def open_private_log(path: Path) -> IO[bytes]:
    """``path`` opened for appending, created with mode 0600: the server's log can hold user data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")


class Shutdown(BaseException):  # a request to stop, like KeyboardInterrupt, not an error
    """A stop signal arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _raise_shutdown(signum: int, _frame: object) -> None:
    raise Shutdown(signum)


def run_foreground(children: Sequence[Child], on_ready: Callable[[], None], out: IO[str] = sys.stdout) -> int:
    """Start ``children`` in order, call ``on_ready``, and run until a stop signal (0) or until a child
    exits or fails to start (1); every child is stopped, last started first, whatever happens.

    Handlers are installed for SIGTERM, SIGINT and SIGHUP even where the parent left them ignored; while
    the children are being stopped, further stop signals are ignored so they cannot cut the cleanup short
    (a SIGKILL still leaves the children their parent-death signal)."""
    previous = {s: signal.signal(s, _raise_shutdown) for s in STOP_SIGNALS}
    started: list[Child] = []
    try:
        for child in children:
            started.append(child)
            child.start()
        on_ready()
        while all(c.running() for c in children):
            time.sleep(0.5)
        dead = ", ".join(c.name for c in children if not c.running())
        print(f"error: {dead} exited on its own; stopping", file=sys.stderr, flush=True)
        return 1
    except Shutdown as sig:
        print(f"{sig}: stopping", file=out, flush=True)
        return 0
    except RuntimeError as exc:  # a child that could not start says why (ServerError, the gateway's GatewayError)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        for child in reversed(started):
            child.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def resolve_admin_key(key_file: str | None) -> access.Key:
    """``--admin-key-file``, else ``$PYRAMID_ADMIN_KEY_FILE`` / ``$PYRAMID_ADMIN_KEY``, else a new key."""
    if key_file:
        return access.read_key_file(Path(key_file))
    return access.from_env() or access.generate()


def resolve_inference_key(spec: Path | None) -> access.Key | None:
    """``$PYRAMID_INFERENCE_KEY_FILE`` / ``$PYRAMID_INFERENCE_KEY`` if set (inference is then keyed), else a new
    key if the spec asks for one (``security.inference_key``), else None (inference open)."""
    key = access.from_env(key_env=access.INFERENCE_KEY_ENV, file_env=access.INFERENCE_KEY_FILE_ENV)
    if key is None and spec is not None:
        from pyramid_deploy.render import load_spec  # only the wrapper needs the spec reader

        if access.inference_key_wanted(load_spec(spec), str(spec)):
            key = access.generate()
    return key


def port_in_use(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` (a server of another run)."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _announce_key(
    what: str, header: str, key: access.Key, out: Path | None, file_env: str, server: TritonServer | None = None
) -> access.RunKeyFile | None:
    """Say which header guards ``what`` and where the key came from (redacted); a generated key is written
    (0600) to ``out`` if given. Returns the file written, which ends with the run (and only that file: a key
    file another run wrote meanwhile is left alone).

    ``out`` names one run (``make serve``: by its HTTP port). If it exists while a server answers on
    ``server``'s HTTP port, it is that server's key: AccessError, nothing overwritten (this run could not
    bind that port anyway). If nothing answers there, it was left by a run that is gone, and is replaced."""
    note = f"{what} needs the header '{header}': key {access.redacted(key.value)} from {key.source}"
    written = None
    if key.source == "generated" and out is not None:
        try:
            written = access.write_run_key_file(key, out)
        except FileExistsError:
            if server is not None and port_in_use(server.connect_host, int(server.http_port or 0)):
                raise access.AccessError(
                    f"{out} is the key file of the server already running on port {server.http_port}: "
                    "not overwritten (give this run other ports)"
                ) from None
            written = access.write_run_key_file(key, out, replace=True)  # left by a run that is gone
        note += f", written (0600) to {out}: read it with {file_env}={out}"
    print(note, flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    """Run tritonserver in the foreground on a rendered repository until SIGTERM, SIGINT or SIGHUP."""
    import argparse

    ap = argparse.ArgumentParser(description="Serve a rendered Pyramid MoA model repository with tritonserver")
    ap.add_argument("repository")
    ap.add_argument("--host", default=LOOPBACK, help="address to listen on (default: loopback only; 0.0.0.0: all)")
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--no-supervise", action="store_true", help="do not reload engines whose process died")
    ap.add_argument("--log-verbose", type=int, default=0, help="1: also the router's per-request JSON lines")
    ap.add_argument("--admin-key-file", help=f"the admin key (mode 0600; default: ${access.ADMIN_KEY_FILE_ENV}, "
                    f"${access.ADMIN_KEY_ENV}, else one generated for this run)")  # fmt: skip
    ap.add_argument("--admin-key-out", type=Path, help="write a generated admin key here (0600) for tools to use")
    ap.add_argument("--spec", type=Path, help="the deployment spec: security.inference_key puts inference behind a key")
    ap.add_argument("--inference-key-out", type=Path, help="write a generated inference key here (0600) for clients")
    ap.add_argument("--openai-port", type=int, default=0, help="also run the OpenAI-compatible gateway (0: do not)")
    ap.add_argument("--fd-limit", type=int, default=FD_LIMIT,
                    help="restart tritonserver gracefully when it holds more open file descriptors than this "
                    "(a leak of Triton 2.51's gRPC streams; 0: never; default: %(default)s)")  # fmt: skip
    args = ap.parse_args(argv)
    try:
        admin = resolve_admin_key(args.admin_key_file)
        inference = resolve_inference_key(args.spec)
    except (access.AccessError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = TritonServer(
        Path(args.repository),
        args.http_port,
        args.grpc_port,
        args.metrics_port,
        log_verbose=args.log_verbose,
        supervise=not args.no_supervise,
        host=args.host,
        admin_key=admin,
        inference_key=inference,
        fd_limit=args.fd_limit if args.fd_limit > 0 else None,
    )
    scope = "loopback only (HOST=0.0.0.0 make serve: every interface)" if args.host == LOOPBACK else args.host
    print(f"listening on {scope}", flush=True)
    written: list[access.RunKeyFile | None] = []
    try:
        written.append(_announce_key(
            "model control", access.ADMIN_HEADER, admin, args.admin_key_out, access.ADMIN_KEY_FILE_ENV, server
        ))  # fmt: skip
        if inference is not None:
            out, env = args.inference_key_out, access.INFERENCE_KEY_FILE_ENV
            written.append(_announce_key("inference", access.INFERENCE_HEADER, inference, out, env, server))
    except access.AccessError as exc:
        for f in written:
            if f is not None:
                access.remove_run_key_file(f)
        print(f"error: {exc}", file=sys.stderr)
        return 2

    children: list[Child] = [server]
    if args.openai_port:  # the gateway (gateway/, pyramid_gateway) beside the server, stopped with it
        from pyramid_gateway.process import GatewayProcess

        route = ["--model-repository", str(args.repository)]  # the router's engines, from its rendered config
        env = dict(os.environ)
        if inference is not None:  # the gateway sends it on every inference call (pyramid_gateway.__main__)
            env.pop(access.INFERENCE_KEY_FILE_ENV, None)
            env[access.INFERENCE_KEY_ENV] = inference.value
        gateway = GatewayProcess(
            server.grpc_url, args.openai_port, args.host, extra_args=route, env=env, spawn=spawn_child
        )
        children.append(gateway)

    def ready() -> None:
        openai = f", OpenAI API http://{server.connect_host}:{args.openai_port}/v1" if args.openai_port else ""
        print(
            f"ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}{openai} "
            "(SIGTERM or Ctrl-C stops)",
            flush=True,
        )

    try:
        return run_foreground(children, ready)
    finally:
        for f in written:
            if f is not None:
                access.remove_run_key_file(f)  # a per-run key ends with its run (its own file only)


if __name__ == "__main__":
    sys.exit(main())
