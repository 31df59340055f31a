"""A real tritonserver for the integration tests: rendered from deploy/replay.yaml, started once per session.

The fixture skips (with the reason) only when tritonserver / tritonclient are not installed
(``scripts/install_triton.sh``); any other failure to start is a test error.

Fault injection without fakes: the engines serve a copy of the shipped traces in which
the agent ``FAULTY_AGENT`` has no record for ``AGENT_MISSING`` questions and the oracle none
for ``ORACLE_MISSING`` questions, so those real replay engines answer NOT_FOUND there. Offline,
the same copy gives the same failed calls (a missing record is a failed call), so every
routing decision can still be compared with ``Router.route``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for _p in (ROOT / "python_backend", ROOT / "client"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

SHIPPED = ROOT / "data" / "gsm8k"
SPEC = ROOT / "deploy" / "replay.yaml"
COMMITTEE = ["faithfulcot_gpt-3.5-turbo_COT", "reread_gpt-3.5-turbo_re2_cot", "faithfulcot_gpt-3.5-turbo_noNL"]
ORACLE = "faithfulcot_gpt4_COT"
FAULTY_AGENT = "faithfulcot_gpt-3.5-turbo_COT"
AGENT_MISSING = (2, 11)  # FAULTY_AGENT has no record: the router goes on with the others, degraded
ORACLE_MISSING_CANDIDATES = range(20, 200)  # the first few that escalate lose their oracle record
N_ORACLE_MISSING = 2


@dataclass
class Deployment:
    grpc_url: str
    http_url: str
    repository: Path
    calibration: Path
    traces: Path
    log: Path
    oracle_missing: tuple[int, ...]
    metrics_url: str = ""
    admin_key: object = None  # the server's admin key (pyramid_ops.access.Key): model control and configs


def scrape(metrics_url: str, prefix: str = "pyramid_") -> dict[str, float]:
    """Triton's /metrics as {'name{labels}': value}, for the series starting with ``prefix``."""
    import urllib.request

    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def _offline_route(router, ts, idx: int, threshold=None, force_tier=None):
    return router.route(ts.questions[idx].question, lambda agent: ts.output(agent, idx), threshold, force_tier)


@pytest.fixture(scope="session")
def router(deployment):
    """The session deployment's router, as offline evaluation builds it from the same artifact."""
    from pyramid_moa.artifact import load_artifact

    return load_artifact(deployment.calibration).router()


@pytest.fixture(scope="session")
def traces(deployment):
    """The traces the session deployment's replay engines serve (with the fault-injection drops)."""
    from pyramid_moa.traces import TraceSet

    return TraceSet.open(deployment.traces)


@pytest.fixture(scope="session")
def offline_route():
    """``offline_route(router, traceset, idx, threshold=None, force_tier=None) -> RouteResult``."""
    return _offline_route


def _drop(path: Path, idxs: set[int]) -> None:
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln)["idx"] not in idxs]
    assert len(kept) == len(lines) - len(idxs)
    path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")


@pytest.fixture(scope="session")
def deployment(tmp_path_factory) -> Deployment:
    try:
        import tritonclient.grpc  # noqa: F401

        from pyramid_ops.server import find_tritonserver

        find_tritonserver()
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"tritonserver is not installed ({exc}); run scripts/install_triton.sh")

    from pyramid_moa.artifact import load_artifact
    from pyramid_moa.traces import TraceSet

    tmp = tmp_path_factory.mktemp("triton")
    calibration = tmp / "calibration.json"
    subprocess.run(
        [sys.executable, "-m", "pyramid_moa", "calibrate", "--traces", str(SHIPPED), "--committee", ",".join(COMMITTEE),
         "--oracle", ORACLE, "--cost", "usd", "--fit-fraction", "0.5", "--out", str(calibration)],
        check=True, capture_output=True,
    )  # fmt: skip

    traces = tmp / "traces"
    (traces / "traces").mkdir(parents=True)
    shutil.copy(SHIPPED / "questions.jsonl", traces)
    shutil.copy(SHIPPED / "sources.json", traces)
    for name in [*COMMITTEE, ORACLE]:
        shutil.copy(SHIPPED / "traces" / f"{name}.jsonl", traces / "traces")
    _drop(traces / "traces" / f"{FAULTY_AGENT}.jsonl", set(AGENT_MISSING))
    router = load_artifact(calibration).router()
    ts = TraceSet.open(traces)
    escalating = [i for i in ORACLE_MISSING_CANDIDATES if _offline_route(router, ts, i).escalated]
    oracle_missing = tuple(escalating[:N_ORACLE_MISSING])
    assert len(oracle_missing) == N_ORACLE_MISSING
    _drop(traces / "traces" / f"{ORACLE}.jsonl", set(oracle_missing))

    spec_path = tmp / "replay.yaml"
    spec_path.write_text(yaml_spec(SPEC, traces), encoding="utf-8")
    with serve(spec_path, calibration, tmp / "model_repository", tmp / "tritonserver.log") as server:
        yield Deployment(
            server.grpc_url,
            server.http_url,
            server.model_repository,
            calibration,
            traces,
            server.log_path,
            oracle_missing,
            f"127.0.0.1:{server.metrics_port}",
            server.admin_key,
        )


@contextlib.contextmanager
def serve(spec_path: Path, calibration: Path, repo: Path, log: Path, **server_kw):
    """Render ``spec_path`` into ``repo`` and run a real tritonserver on it (stopped on exit)."""
    from pyramid_deploy.render import render
    from pyramid_ops.server import ServerError, TritonServer

    repo = render(spec_path, repo, calibration=calibration).out
    server = TritonServer(repo, log_path=log, **server_kw)
    try:
        server.start(timeout_s=120)
    except ServerError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()


def yaml_spec(spec: Path, traces: Path) -> str:
    """deploy/replay.yaml with the engines pointed at ``traces`` (everything else as shipped)."""
    import yaml

    d = yaml.safe_load(spec.read_text(encoding="utf-8"))
    d["engine"]["traces"] = str(traces)
    d.pop("calibration", None)
    return yaml.safe_dump(d, sort_keys=False)
