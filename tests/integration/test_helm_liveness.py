"""The Helm chart's liveness probe against a real tritonserver whose engine stub was killed (issue 10 item 9).

The chart is rendered from deploy/replay.yaml (project root: this checkout). The agents tier's pod is
reproduced as the manifest says: its spec rendered into a repository (as its init container does), its
container command run as written (Kubernetes' ``$(PYRAMID_ADMIN_KEY)`` filled in from the rendered
Secret; only the repository path and Triton's backend directory differ from the pod), in a network
namespace of its own so that the probe's ``127.0.0.1:8000`` is that server. Then the very
``livenessProbe.exec.command`` of the manifest runs there, with the pod's environment: healthy at first;
after one engine stub (found among the children of the server's own PID) is SIGKILLed, it fails and
names the model, while Triton's own readiness still says the model is ready.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import COMMITTEE, ROOT
from .test_lifecycle import network_namespace

FULL = "pyramid-pyramid-moa"


def _pod(calibration: Path, tmp: Path) -> tuple[list[str], list[str], dict[str, str], Path]:
    """(container command, liveness command, the container's environment, rendered repository) of the agents tier."""
    from pyramid_ops import helm_check
    from pyramid_ops.helm_values import make_values

    values = make_values(ROOT / "deploy" / "replay.yaml", calibration, image="x/y:1", project_root=str(ROOT))
    docs = helm_check.manifests(helm_check.render_chart(values, "pyramid", "llm"))
    helm_check.render_tier_specs(docs, values, calibration, tmp)  # as the init containers do
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == f"{FULL}-agents")
    secret = next(d for d in docs if d["kind"] == "Secret")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for e in c["env"]:
        ref = e["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        env[e["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return c["command"], c["livenessProbe"]["exec"]["command"], env, tmp / "repo-agents"


@pytest.fixture
def namespace():
    with network_namespace("h") as ns:  # port 8000 is free there, as in a pod
        yield ns


def test_rendered_liveness_probe_fails_when_an_engine_stub_is_dead(deployment, namespace, tmp_path):
    from pyramid_ops.server import find_tritonserver, mapped_shm_files, server_env, spawn_child, stop_child
    from pyramid_ops.supervisor import stub_processes

    command, probe, pod_env, repo = _pod(deployment.calibration, tmp_path)
    assert command[0] == "tritonserver"
    binary, backends = find_tritonserver()
    args = [a.replace("$(PYRAMID_ADMIN_KEY)", pod_env["PYRAMID_ADMIN_KEY"]) for a in command[1:]]
    args = [f"--model-repository={repo}" if a.startswith("--model-repository=") else a for a in args]
    env = {**server_env(), **pod_env}
    launcher = ["ip", "netns", "exec", namespace]
    log = open(tmp_path / "tritonserver.log", "wb")  # noqa: SIM115 - closed below
    proc = spawn_child([*launcher, str(binary), *args, f"--backend-directory={backends}"], env, log)
    regions: set[str] = set()

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([*launcher, *cmd], env=env, capture_output=True, text=True, timeout=60)

    def ready(model: str = "") -> bool:
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        code = f"import urllib.request as u; u.urlopen('http://127.0.0.1:8000{path}', timeout=2)"
        return run([sys.executable, "-c", code]).returncode == 0

    try:
        deadline = time.monotonic() + 180
        while not ready():
            assert proc.poll() is None, (tmp_path / "tritonserver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the agents tier's server did not become ready"
            time.sleep(0.5)
        stubs = stub_processes(proc.pid)  # `ip netns exec` execs tritonserver: proc.pid is the server's own
        regions = mapped_shm_files([proc.pid, *(pid for _, pid in stubs.values())])
        assert {m for m, _ in stubs.values()} == set(COMMITTEE)

        healthy = run(probe)
        assert healthy.returncode == 0, healthy.stderr

        victim = COMMITTEE[0]
        os.kill(next(pid for m, pid in stubs.values() if m == victim), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while victim in {m for m, _ in stub_processes(proc.pid).values()}:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        dead = run(probe)
        assert dead.returncode == 1
        assert f"model {victim!r}" in dead.stderr and "gone" in dead.stderr
        assert ready(victim) and ready()  # what Triton itself says: still ready, so an HTTP probe could not tell
    finally:
        stop_child(proc, 30)
        log.close()
        for r in regions:
            Path(r).unlink(missing_ok=True)
