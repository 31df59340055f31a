"""Every command block of the README, run as printed against the replay profile (tests/readme_blocks.py).

Where: a copy of the checkout's tracked files (as a fresh clone has them; the venv linked in), so the
commands' files (calib.json, out/traces/mine, a deployed calibration) land there, not here. Against
what: ``make serve`` in that copy, on free ports; a command's ``localhost:8000/8001/8002/9000`` and the
admin key file named by port are rewritten to that server's, the only change made to what is printed.
Blocks run in README order, so a block may use what an earlier one wrote (the README reads that way).
Not run: ``make test`` (this is part of it), and blocks marked ``skip`` with their reason.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from readme_blocks import blocks

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002, "openai": 9000}
COMMAND_TIMEOUT_S = 900  # make demo and make eval are the longest (a few minutes on 2 cores)


def _copy_checkout(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        src = ROOT / name
        if name and src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)  # mtimes kept: make sees the venv as up to date, as in the checkout
    (dest / ".venv").symlink_to(ROOT / ".venv")
    return dest


def _env(clone: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRAMID_")}
    # the venv is this checkout's, linked: make must not try to rebuild it in the copy
    env["MAKEFLAGS"] = "-o .venv/.installed"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen, log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    try:
        from pyramid_ops.server import find_tritonserver, free_ports

        find_tritonserver()
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"tritonserver is not installed ({exc}); run scripts/install_triton.sh")
    clone = _copy_checkout(tmp_path_factory.mktemp("readme"))
    ports = dict(zip(DEFAULT_PORTS, free_ports(4)))
    log = clone / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            ["make", "serve", *(f"{k.upper()}_PORT={v}" for k, v in ports.items())],
            cwd=clone, env=_env(clone), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{ports['http']}/v2/health/ready", 180, proc, log)
        _wait_http(f"http://127.0.0.1:{ports['openai']}/health/ready", 60, proc, log)
        yield clone, ports, log
    finally:
        _stop(proc)


def rewrite(command: str, ports: dict[str, int]) -> str:
    """The command with the README's default ports (and the admin key file named by the HTTP port) made
    the test server's."""
    for name, default in DEFAULT_PORTS.items():
        command = re.sub(rf"\blocalhost:{default}\b", f"localhost:{ports[name]}", command)
    return command.replace(f"admin-key-{DEFAULT_PORTS['http']}", f"admin-key-{ports['http']}")


def _run(cmd: list[str], clone: Path, where: str) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=clone, env=_env(clone), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert r.returncode == 0, f"{where} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _background(command: str, clone: Path, ports: dict[str, int], where: str) -> None:
    """A server command: it must become ready on its default HTTP port, and is stopped."""
    import socket

    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", DEFAULT_PORTS["http"])) == 0:
            pytest.skip(f"{where}: port {DEFAULT_PORTS['http']} is taken here; this block serves on the defaults")
    log = clone / "background.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(["bash", "-c", command], cwd=clone, env=_env(clone), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{DEFAULT_PORTS['http']}/v2/health/ready", 120, proc, log)
    finally:
        _stop(proc)


def test_every_command_block_runs_as_printed(served):
    clone, ports, log = served
    ran = 0
    for b in blocks((clone / "README.md").read_text(encoding="utf-8")):
        if b.skip is not None:
            continue
        where = f"README line {b.line}"
        if b.lang == "python":
            script = clone / f"readme_block_{b.line}.py"
            script.write_text(rewrite(b.code, ports), encoding="utf-8")
            _run([sys.executable, str(script)], clone, where)
            ran += 1
            continue
        for command in b.commands():
            if command.split("#")[0].strip() == "make test":  # the command that runs this test
                continue
            if b.background:
                _background(command, clone, ports, where)
            elif command.startswith("pip install"):
                # into a venv of its own, as a user would: the project's venv stays as make setup left it
                venv = clone / f".pip-venv-{b.line}"
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
                _run(["bash", "-c", f"PATH={venv}/bin:$PATH {rewrite(command, ports)}"], clone, where)
            else:
                _run(["bash", "-c", rewrite(command, ports)], clone, where)
            ran += 1
    assert ran >= 15
    assert "Traceback" not in log.read_text(errors="replace")
