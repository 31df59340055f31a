"""Run the gateway as a child process: ``make serve`` (``pyramid_ops.server --openai-port``, beside
tritonserver), ``make demo``, the benchmark and the tests start it the same way, and stop it by its own PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

Spawn = Callable[[Sequence[str], dict[str, str], "IO[bytes] | None"], subprocess.Popen]


def _popen(cmd: Sequence[str], env: dict[str, str], out: IO[bytes] | None) -> subprocess.Popen:
    return subprocess.Popen(list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT)


class GatewayError(RuntimeError):
    """The gateway exited or did not answer in time; the message has the end of its log."""


class GatewayProcess:
    """``python -m pyramid_gateway`` on ``host:port`` against Triton's gRPC ``triton_url``.

    A ``pyramid_ops.server.Child`` (``name``, ``start``, ``running``, ``stop``). ``spawn``: how the
    process is started (``make serve`` passes ``spawn_child``: its own session, a parent-death signal)."""

    name = "gateway"

    def __init__(
        self,
        triton_url: str,
        port: int,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        spawn: Spawn = _popen,
        stdout: IO[Any] | None = None,
    ) -> None:
        self.triton_url, self.port, self.host = triton_url, port, host
        self.log_path, self.extra_args, self.env, self.spawn = log_path, list(extra_args or []), env, spawn
        self.stdout = stdout  # where its log goes when there is no log_path (make serve: the terminal)
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The OpenAI base URL (what ``OpenAI(base_url=...)`` takes)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "pyramid_gateway", "--triton", self.triton_url,
            "--host", self.host, "--port", str(self.port), *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout_s: float = 30.0, wait_ready: bool = True) -> GatewayProcess:
        """Start it and wait until it answers (``/health/ready`` when ``wait_ready``, else ``/health/live``)."""
        out = self.stdout
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = out = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ if self.env is None else self.env)
        self.proc = self.spawn(self.command(), env, out)
        path = "/health/ready" if wait_ready else "/health/live"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise GatewayError(f"the gateway exited with code {code} before it answered{self._tail()}")
            try:
                with urllib.request.urlopen(self.root + path, timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise GatewayError(f"the gateway did not answer {path} within {timeout_s:.0f} s{self._tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _tail(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        return f"; {self.log_path} ends with:\n" + "\n".join(lines)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGINT (uvicorn's graceful stop), then SIGKILL if it lingers; by its own PID only."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> GatewayProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
