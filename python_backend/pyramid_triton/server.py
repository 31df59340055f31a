"""Start, wait for and stop a real ``tritonserver`` (from the ``nvidia-pytriton`` wheel) on CPU.

What makes it work here (shared/PLATFORM.md): the Python-backend stub for the
running interpreter copied into ``backends/python`` (``scripts/install_triton.sh``),
the venv's ``bin/`` first on ``PATH`` (the stub then imports the venv's packages;
``PYTHONPATH`` is ignored) and the base interpreter's ``LIBDIR`` on
``LD_LIBRARY_PATH``. The server is stopped by its own PID only: SIGINT, wait,
then SIGKILL of its process group (which holds the stub processes), then its
``/dev/shm/triton_python_backend_shm_region_*`` files are removed. Nothing is
ever killed by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .supervisor import SUPERVISED_ARGS, Supervisor

SHM_GLOB = "triton_python_backend_shm_region_*"


class ServerError(RuntimeError):
    """tritonserver is missing, failed to start, or did not become ready; the message says why."""


def triton_root() -> Path:
    """The ``tritonserver`` directory of the installed ``nvidia-pytriton`` wheel."""
    try:
        import pytriton  # noqa: PLC0415
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
    proc: subprocess.Popen | None = None
    supervisor: Supervisor | None = None
    _log_fh: object | None = None
    _shm_before: set[str] = field(default_factory=set)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

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
            "--log-verbose",
            str(self.log_verbose),
            "--exit-on-error=true",
            "--strict-readiness=true",
            *(SUPERVISED_ARGS if self.supervise else []),
            *self.extra_args,
        ]

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
            self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            out = self._log_fh
        else:
            out = None
        # start_new_session: the server leads its own process group, which holds its stub processes.
        self.proc = subprocess.Popen(
            cmd, env=server_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        if self.supervise:
            self.supervisor = Supervisor(self.proc.pid, self.http_url).start()
        return self

    def is_ready(self) -> bool:
        if self.launcher:  # the server's ports may only be reachable where it runs (a network namespace)
            probe = [*self.launcher, sys.executable, "-c", _READY_PROBE, f"http://{self.http_url}/v2/health/ready"]
            try:
                return subprocess.run(probe, capture_output=True, timeout=5).returncode == 0
            except subprocess.TimeoutExpired:
                return False
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

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
        proc, self.proc = self.proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session: the group id is the server's pid
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGINT)
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(pgid, signal.SIGKILL)  # leftovers: stub processes, or a server that ignored SIGINT
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
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
        in_use = _mapped_shm_files()
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


def _mapped_shm_files() -> set[str]:
    """/dev/shm files mapped or open by any live process we can inspect (never remove those)."""
    used: set[str] = set()
    for proc in Path("/proc").iterdir():
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


def main(argv: list[str] | None = None) -> int:
    """Run tritonserver in the foreground on a rendered repository until Ctrl-C."""
    import argparse  # noqa: PLC0415

    ap = argparse.ArgumentParser(description="Serve a rendered Pyramid MoA model repository with tritonserver")
    ap.add_argument("repository")
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--no-supervise", action="store_true", help="do not reload engines whose process died")
    ap.add_argument("--log-verbose", type=int, default=0, help="1: also the router's per-request JSON lines")
    args = ap.parse_args(argv)
    server = TritonServer(
        Path(args.repository),
        args.http_port,
        args.grpc_port,
        args.metrics_port,
        log_verbose=args.log_verbose,
        supervise=not args.no_supervise,
    )
    try:
        server.start()
        print(f"ready: gRPC {server.grpc_url}, HTTP {server.http_url} (Ctrl-C stops)", flush=True)
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
