"""Free-form questions routed end to end by a real tritonserver with the ``semantic`` task.

Replay engines serve free-form answers (tests/test_semantic.py's traces: paraphrase families, and
questions where two agents wander off topic); the embedder is a Triton model of its own, called by
the router over BLS; the calibration set holds a ``semantic`` calibration (oracle-agreement labels)
and a ``gsm8k`` one. Every served decision must be the offline ``Router.route``'s on the same answers
and embeddings; the task input picks the calibration; an unknown task is INVALID_ARG; an
uncalibrated one goes to the oracle, as the spec declares.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from .conftest import scrape, serve

COMMITTEE, ORACLE = ["a1", "a2", "a3"], "big"


@pytest.fixture(scope="module")
def semantic_deployment(tmp_path_factory):
    from test_semantic import _free_form_traces

    from pyramid_moa.artifact import CalibrationArtifact, save_calibration_set
    from pyramid_moa.calibration import LogisticCalibrator
    from pyramid_moa.dataset import load_routing_data
    from pyramid_moa.features import make_feature_set
    from pyramid_moa.fitting import RouterFit, Target
    from pyramid_moa.semantic import prepare

    tmp = tmp_path_factory.mktemp("semantic")
    root = _free_form_traces(tmp)
    d = load_routing_data(str(root), COMMITTEE, ORACLE, task="semantic", params={ORACLE: [70.0]})
    prepare(d, tmp / "embeddings.npz")
    rows = np.arange(d.n)
    sem = RouterFit(d, rows, "flops", "semantic").artifact(Target("max_disagreement", 0.0))
    # A second task in the set: gsm8k, whose calibration always escalates (P = sigmoid(-10)): what
    # matters is that a request is routed by the calibration of the task it names.
    fs = make_feature_set("agreement", COMMITTEE)
    gsm = CalibrationArtifact(
        committee=COMMITTEE,
        oracle=ORACLE,
        feature_set="agreement",
        calibrator="logistic",
        stages=[
            {
                "agents": COMMITTEE,
                "feature_names": fs.names,
                "calibrator": LogisticCalibrator([0.0] * len(fs.names), -10.0).to_dict(),
                "threshold": 0.5,
            }
        ],
        target={"kind": "oracle_rate", "value": 1.0, "cost_model": "flops"},
        cost_model=sem.cost_model,
        fitted_on={"idx": []},
        task="gsm8k",
        fit_summary={"mean_output_tokens": sem.fit_summary["mean_output_tokens"]},
    )
    save_calibration_set(tmp / "calibration.json", [sem, gsm])
    spec = {
        "profile": "replay",
        "engine": {"kind": "replay", "traces": str(root), "seconds_per_token": 0.0, "instance_count": 1},
        "agents": [{"name": n} for n in COMMITTEE],
        "oracle": {"name": ORACLE},
        "router": {"model_name": "pyramid", "task": "semantic", "task_fallback": "oracle", "agent_timeout_s": 60},
        "embedder": {"model_name": "embedder", "instance_count": 1},
    }
    spec_path = tmp / "semantic.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    with serve(spec_path, tmp / "calibration.json", tmp / "repo", tmp / "tritonserver.log") as server:
        yield server, sem.router(), d


def test_free_form_questions_are_routed_as_offline(semantic_deployment):
    from pyramid_client import PyramidClient

    server, router, d = semantic_deployment
    tiers = set()
    stages = 0  # committee stages run: each stage's answers are embedded in one embedder request
    with PyramidClient(server.grpc_url) as client:
        for r in range(d.n):
            want = router.route(d.questions[r], lambda m, r=r: d.outputs[m][r])
            got = client.ask(d.questions[r], task="semantic")
            where = f"question {d.idxs[r]}"
            assert got.calls == want.calls, where
            assert (got.answer, got.tier) == (want.answer, want.tier), where
            assert got.confidence == pytest.approx(want.confidence, abs=1e-5), where
            if got.tier == "committee":  # the answer is a committee member's whole text, not a concatenation
                assert got.text == got.answer and got.answer in {d.outputs[a][r].answer for a in COMMITTEE}
            tiers.add(got.tier)
            stages += len(want.decisions)
            # The default task is semantic: no task input routes the same way.
            if r < 5:
                assert client.ask(d.questions[r]).calls == want.calls, where
                stages += len(want.decisions)
    assert tiers == {"committee", "oracle"}
    # The embedder ran as its own model: Triton counts its requests, one per committee stage (its answers
    # in one batch), not one per answer.
    assert _embedder_requests(server) == stages


def _embedder_requests(server) -> float:
    """Triton's count of successful requests to the embedder model, read until two reads 0.2 s apart
    agree (/metrics may trail the last response a little)."""
    import time

    last = None
    for _ in range(25):
        counts = scrape(f"127.0.0.1:{server.metrics_port}", "nv_inference_request_success")
        n = sum(v for k, v in counts.items() if 'model="embedder"' in k)
        if n == last:
            return n
        last = n
        time.sleep(0.2)
    return last


def test_task_input_picks_the_calibration_and_errors_are_clear(semantic_deployment):
    from pyramid_client import PyramidClient, PyramidError

    server, _, d = semantic_deployment
    q = d.questions[1]
    with PyramidClient(server.grpc_url) as client:
        client.ask(q)  # one semantic request first, so that the embedder has a count
        before = _embedder_requests(server)
        got = client.ask(q, task="gsm8k")  # the gsm8k calibration always escalates (P = sigmoid(-10))
        assert got.tier == "oracle" and got.calls == [*COMMITTEE, ORACLE]
        assert _embedder_requests(server) == before  # a keyed task never calls the embedder
        with pytest.raises(PyramidError, match="invalid input 'task': unknown task 'poetry'") as exc:
            client.ask(q, task="poetry")
        assert exc.value.code == "INVALID_ARG"
        # choice has no calibration here; the spec declares the oracle fallback.
        fb = client.ask(q, task="choice")
        assert (fb.tier, fb.calls) == ("oracle", [ORACLE])
