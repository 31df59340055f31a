"""`tritonserver --model-repository model_repository`, as the README says, serves the committed
replay repository: the venv's `tritonserver` (pyramid_ops/launcher.py), started from the
checkout with nothing else, answers as the offline router with the committed calibration."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def test_the_committed_repository_serves_as_is(tmp_path):
    launcher = Path(sys.executable).parent / "tritonserver"
    if not launcher.is_file():
        pytest.skip(f"{launcher} is not installed (make setup)")
    from pyramid_client import PyramidClient
    from pyramid_moa.artifact import load_artifact
    from pyramid_moa.traces import TraceSet
    from pyramid_ops.server import SHM_GLOB, TritonServer, free_ports, stop_child

    http, grpc, metrics = free_ports(3)
    shm_before = {str(p) for p in Path("/dev/shm").glob(SHM_GLOB)}
    log = (tmp_path / "tritonserver.log").open("wb")
    proc = subprocess.Popen(
        [str(launcher), "--model-repository", "model_repository", f"--http-port={http}", f"--grpc-port={grpc}",
         f"--metrics-port={metrics}"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _ready(f"127.0.0.1:{http}"):
            assert proc.poll() is None, (tmp_path / "tritonserver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "not ready within 120 s"
            time.sleep(0.5)
        text = (tmp_path / "tritonserver.log").read_text()
        assert "127.0.0.1:" in text and "0.0.0.0" not in text, "the launcher binds to loopback by default"

        router = load_artifact(ROOT / "model_repository" / "pyramid" / "calibration.json").router()
        ts = TraceSet.open(ROOT / "data" / "gsm8k")
        fitted = set(json.loads((ROOT / "deploy" / "replay.calibration.json").read_text())["fitted_on"]["idx"])
        held_out = [i for i in sorted(ts.questions) if i not in fitted][:12]

        with PyramidClient(f"127.0.0.1:{grpc}") as client:
            for idx in held_out:
                want = router.route(ts.questions[idx].question, lambda agent, idx=idx: ts.output(agent, idx))
                got = client.ask(ts.questions[idx].question)
                assert (got.answer, got.tier) == (want.answer or "", "oracle" if want.escalated else "committee"), idx
    finally:
        stop_child(proc, 30)
        log.close()
        TritonServer._remove_shm(shm_before)
