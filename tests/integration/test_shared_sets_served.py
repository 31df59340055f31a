"""Multiple-choice and free-form questions of real recorded models, served (issue 21 item 6).

The shipped replay specs of the shared sets (deploy/replay-mmlu-pro.yaml: setup M, task choice;
deploy/replay-nq.yaml: setup N, task semantic by answer cores) are rendered and served by a real
tritonserver whose replay engines answer from ../shared/data. Each is calibrated here on part of its
questions, and 120 other questions are asked over gRPC: every decision (calls, answer, tier,
confidence) must be the offline ``Router.route``'s on the same recorded outputs. ``pyramid ask
--task`` and the OpenAI gateway (no task named: ``auto`` detects it from the prompt) answer them too.

The calibrations here use an oracle-call budget (half the questions), not the specs' parity target:
on MMLU-Pro parity is the oracle alone, which would leave the committee's path unserved. Skipped
when ../shared/data lacks the set.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from .conftest import ROOT, serve

SHARED = ROOT.parent / "shared" / "data"
N_SERVED = 120
N_FIT = 1200
SETS = {
    # set: (spec, task, cost model: the spec's own)
    "mmlu_pro": (ROOT / "deploy" / "replay-mmlu-pro.yaml", "choice", "flops"),
    "nq": (ROOT / "deploy" / "replay-nq.yaml", "semantic", "usd"),
}

if str(ROOT / "gateway") not in sys.path:
    sys.path.insert(0, str(ROOT / "gateway"))


def _spec_models(spec_path: Path) -> tuple[Path, list[str], str]:
    d = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    traces = (spec_path.parent / d["engine"]["traces"]).resolve()
    return traces, [a["name"] for a in d["agents"]], d["oracle"]["name"]


@pytest.fixture(scope="module", params=sorted(SETS))
def served_set(request, tmp_path_factory):
    from pyramid_moa.dataset import load_routing_data
    from pyramid_moa.fitting import RouterFit, Target
    from pyramid_moa.semantic import prepare

    name = request.param
    spec, task, cost = SETS[name]
    traces, committee, oracle = _spec_models(spec)
    if not (traces / "questions.jsonl").is_file():
        pytest.skip(f"{traces} is not here (the shared recorded sets, ../shared/data)")
    d = load_routing_data(str(traces), committee, oracle, task=task)
    if task == "semantic":
        prepare(d, embed=False)  # as the spec's calibrate block: cores only, no embedder
    order = np.random.default_rng(0).permutation(d.n)
    fit, served = np.sort(order[:N_FIT]), order[N_FIT : N_FIT + N_SERVED]
    target = Target("oracle_rate", 0.5)
    art = RouterFit(d, fit, cost, target=target).artifact(target)
    tmp = tmp_path_factory.mktemp(name)
    art.save(tmp / "calibration.json")
    with serve(spec, tmp / "calibration.json", tmp / "repo", tmp / "tritonserver.log") as server:
        yield name, task, server, art.router(), d, served, set(fit.tolist())


def test_served_decisions_are_the_offline_ones(served_set):
    from pyramid_client import PyramidClient

    name, task, server, router, d, served, fitted = served_set
    assert fitted.isdisjoint(served.tolist())  # scored on questions the calibration never saw
    tiers = set()
    with PyramidClient(server.grpc_url, timeout_s=60) as client:
        for r in served:
            want = router.route(d.questions[r], lambda m, r=r: d.outputs[m][r])
            got = client.ask(d.questions[r], task=task)
            where = f"{name} question {d.idxs[r]}"
            assert got.calls == want.calls, where
            assert (got.answer, got.tier) == (want.answer, want.tier), where
            assert got.confidence == pytest.approx(want.confidence, abs=1e-5), where
            assert got.task["name"] == task and got.task["source"] == "request", where
            tiers.add(got.tier)
    assert tiers == {"committee", "oracle"}, f"{name}: one tier only; the comparison would miss a path"


def test_pyramid_ask_names_the_task(served_set):
    name, task, server, router, d, served, _ = served_set
    r = int(served[0])
    want = router.route(d.questions[r], lambda m: d.outputs[m][r])
    cmd = [
        sys.executable,
        "-m",
        "pyramid_cli",
        "ask",
        d.questions[r],
        "--url",
        server.grpc_url,
        "--task",
        task,
        "--json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    got = json.loads(out)
    assert (got["answer"], got["tier"], got["calls"]) == (want.answer, want.tier, want.calls), name
    assert got["task"]["name"] == task


def test_the_openai_gateway_detects_the_task(served_set, tmp_path):
    import openai

    from pyramid_client import PyramidClient
    from pyramid_gateway.process import GatewayProcess
    from pyramid_ops.server import free_ports

    name, task, server, _, d, served, _ = served_set
    with (
        GatewayProcess(
            server.grpc_url,
            free_ports(1)[0],
            log_path=tmp_path / "gateway.log",
            extra_args=["--model-repository", str(server.model_repository)],
        ) as gw,
        openai.OpenAI(base_url=gw.url, api_key="unused", max_retries=0, timeout=120) as oa,
        PyramidClient(server.grpc_url, timeout_s=60) as client,
    ):
        for r in served[:5]:
            q = d.questions[r]
            c = oa.chat.completions.create(model="pyramid", messages=[{"role": "user", "content": q}])
            p = c.model_extra["pyramid"]
            # no task named: the gateway sends auto, the router detects the set's task from the prompt
            assert (p["task"], p["task_source"], p["task_detected"]) == (task, "auto", task), f"{name} {d.idxs[r]}"
            g = client.ask(q, task=task)
            assert c.choices[0].message.content == g.text and (p["answer"], p["tier"]) == (g.answer, g.tier)
