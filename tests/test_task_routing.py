"""A task per request (pyramid_triton.tasks): the calibrated router of the request's task, a declared
fallback, and clear errors otherwise."""

from __future__ import annotations

import pytest
from test_calibration_set import _artifact

from pyramid_triton.protocol import InvalidArgument, ServeError
from pyramid_triton.tasks import TaskRouters


def _set(*tasks: str) -> dict:
    return {t: _artifact(t) for t in tasks}


def test_request_task_picks_its_router_and_default_applies():
    tr = TaskRouters(_set("gsm8k", "semantic"), default_task="gsm8k", embedder="embedder")
    r = tr.resolve(None)
    assert (r.task.name, r.fallback, r.embed, r.use_parsed) == ("gsm8k", False, False, True)
    r = tr.resolve("semantic", force_tier="committee")
    assert (r.task.name, r.router.task.name, r.force_tier, r.embed, r.use_parsed) == (
        "semantic",
        "semantic",
        "committee",
        True,
        False,
    )
    assert r.router is tr.routers["semantic"]
    assert tr.resolve("  ").task.name == "gsm8k"  # an empty optional string means the default


def test_unknown_task_is_invalid_arg_naming_it():
    tr = TaskRouters(_set("gsm8k"))
    with pytest.raises(InvalidArgument, match="invalid input 'task': unknown task 'poetry'; known: choice, gsm8k"):
        tr.resolve("poetry")


def test_uncalibrated_task_errors_unless_a_fallback_is_declared():
    tr = TaskRouters(_set("gsm8k"))
    with pytest.raises(ServeError, match="task 'choice' has no calibration in this deployment") as exc:
        tr.resolve("choice")
    assert exc.value.code == "UNSUPPORTED"
    fb = TaskRouters(_set("gsm8k"), fallback="oracle").resolve("choice", force_tier="committee")
    # The oracle alone answers, and the answer is read with the requested task's rule.
    assert (fb.force_tier, fb.fallback, fb.embed, fb.task.name) == ("oracle", True, False, "choice")
    assert fb.extract("I pick Mars.", "Which?\nA) Venus\nB) Mars") == "B"


def test_deployment_errors_name_the_fix():
    with pytest.raises(ValueError, match="default task 'text' has no calibration"):
        TaskRouters(_set("gsm8k"), default_task="text")
    with pytest.raises(
        ValueError, match=r"task\(s\) \['semantic'\] compare answers' embeddings: .*needs an embedder model"
    ):
        TaskRouters(_set("semantic"))
    with pytest.raises(ValueError, match="task_fallback must be one of"):
        TaskRouters(_set("gsm8k"), fallback="committee")


def test_a_semantic_calibration_without_the_cosine_signal_needs_no_embedder():
    """``pyramid calibrate --task semantic --no-embedding``: its pair model reads the answers' cores only,
    so the deployment serves it without an embedder model and never embeds a stage's answers."""
    tr = TaskRouters({"semantic": _artifact("semantic", with_cosine=False)})
    r = tr.resolve("semantic")
    assert (r.task.name, r.embed, r.router.uses_embedding) == ("semantic", False, False)
    assert TaskRouters(_set("semantic"), embedder="embedder").resolve(None).embed


# ---- the router model (bls) with a task per request, on the fake pb_utils -------------------------------

FREE_Q = "Why is the sky blue?"
FREE = {
    "a": "Sunlight is scattered by air molecules, blue light the most.",
    "b": "Air molecules in the atmosphere scatter sunlight, blue light the most (Rayleigh scattering).",
    "c": "Bananas are rich in potassium.",
    "o": "Rayleigh scattering: air scatters short blue wavelengths more than long red ones.",
}


@pytest.fixture()
def task_model(tmp_path):
    import json

    import fake_pb_utils as pb
    from test_embedder_model import _model as embedder_model
    from test_triton_glue import AGENTS, ORACLE, engine

    from pyramid_moa.artifact import save_calibration_set
    from pyramid_moa.calibration import LogisticCalibrator
    from pyramid_moa.cores import default_pair_model
    from pyramid_moa.cost import CostModel, ModelCost
    from pyramid_moa.features import make_feature_set
    from pyramid_triton.bls import PyramidModel
    from pyramid_triton.protocol import EngineResponse

    def art(task: str):
        a = _artifact(task)
        if task == "semantic":  # the built-in pair model, reading the cosine of the core texts' embeddings
            a.task_options = {"pair_model": default_pair_model(with_cosine=True).to_dict()}
        fs = make_feature_set(a.feature_set, AGENTS, **a.task_options)
        weights = [5.0] + [0.0] * (len(fs.names) - 1)  # P = sigmoid(5 x vote_share - 3): 2 of 3 accept
        a.committee, a.oracle = AGENTS, ORACLE
        a.cost_model = CostModel({m: ModelCost(params_b=7.0) for m in [*AGENTS, ORACLE]})
        a.stages = [
            {
                "agents": AGENTS,
                "feature_names": fs.names,
                "calibrator": LogisticCalibrator(weights, -3.0).to_dict(),
                "threshold": 0.5,
            }
        ]
        return a

    def run_engine(model):
        numeric = engine(model)

        def run(req):
            if req.text_input == FREE_Q:
                return EngineResponse(FREE[model], output_tokens=12)
            return numeric(req)

        return run

    def make(fallback: str = "error", task: str = "gsm8k"):
        save_calibration_set(tmp_path / "calibration.json", [art("gsm8k"), art("semantic")])
        params = {
            "calibration": "calibration.json",
            "agents": ",".join(AGENTS),
            "oracle": ORACLE,
            "task": task,
            "task_fallback": fallback,
            "embedder": "embedder",
        }
        args = {
            "model_config": json.dumps(
                {"name": "pyramid", "parameters": {k: {"string_value": v} for k, v in params.items()}}
            ),
            "model_repository": str(tmp_path),
        }
        emb = embedder_model(tmp_path, max_chars=1000)
        pb.engines.clear()
        pb.engines.update({m: run_engine(m) for m in [*AGENTS, ORACLE]})
        pb.models.clear()
        pb.models["embedder"] = lambda req: emb.execute([req])[0]
        pb.calls.clear()
        return PyramidModel(pb, args)

    yield make
    pb.models.clear()


def _ask(model, **inputs):
    from test_triton_glue import outputs, request, run

    r = request(**inputs)
    run(model, r)
    resp = r.sender.sent[0][0]
    return resp if resp.has_error() else outputs(resp)


def test_semantic_request_embeds_the_answers_and_returns_a_members_text(task_model):
    import fake_pb_utils as pb

    model = task_model()
    out = _ask(model, text_input=FREE_Q, task="semantic")
    # Two of three agents mean the same thing: accepted, and the answer is one of their texts verbatim.
    assert (out["tier"], bool(out["escalated"])) == ("committee", False)
    assert out["answer"] in (FREE["a"], FREE["b"])
    # The stage's three answers are embedded in one embedder call.
    assert [m for m, _ in pb.calls].count("embedder") == 1 and "o" not in [m for m, _ in pb.calls]


def test_default_task_needs_no_embedder_and_unknown_or_uncalibrated_tasks_are_clear_errors(task_model):
    import fake_pb_utils as pb
    from test_triton_glue import Q_AGREE

    model = task_model()
    out = _ask(model, text_input=Q_AGREE)
    assert (out["answer"], out["tier"]) == ("4", "committee")
    assert "embedder" not in [m for m, _ in pb.calls]
    err = _ask(model, text_input=Q_AGREE, task="poetry")
    assert err.error().message().startswith("[INVALID_ARG] invalid input 'task': unknown task 'poetry'")
    err = _ask(model, text_input=Q_AGREE, task="choice")
    assert err.error().message().startswith("[UNSUPPORTED] task 'choice' has no calibration in this deployment")


def test_declared_fallback_sends_an_uncalibrated_task_to_the_oracle(task_model):
    import fake_pb_utils as pb
    from test_triton_glue import Q_AGREE

    model = task_model(fallback="oracle")
    pb.calls.clear()
    out = _ask(model, text_input=Q_AGREE, task="choice")
    assert (out["tier"], out["calls"]) == ("oracle", ["o"])
    assert [m for m, _ in pb.calls] == ["o"]


def test_an_answer_the_embedder_cannot_embed_leaves_its_agent_out(task_model):
    import fake_pb_utils as pb

    model = task_model()
    real = pb.models["embedder"]

    def flaky(req):
        texts = [t.decode() for t in req.inputs()[0].as_numpy().reshape(-1)]
        return (
            pb.InferenceResponse(error=pb.TritonError("[INTERNAL] out of memory"))
            if any("Bananas" in t for t in texts)
            else real(req)
        )

    pb.models["embedder"] = flaky
    out = _ask(model, text_input=FREE_Q, task="semantic")
    assert (out["tier"], bool(out["degraded"]), out["failed"]) == ("committee", True, ["c"])
    # The stage's call failed, so each answer was tried alone: 1 + 3 embedder calls.
    assert [m for m, _ in pb.calls].count("embedder") == 4
    assert out["answer"] in (FREE["a"], FREE["b"])


# ---- task auto: detected from the prompt among the calibrated tasks -----------------------------------------

CHOICE_Q = "Which planet is the largest?\nA) Venus\nB) Jupiter\nC) Mars"
FRANCE = "What is the capital of France?"
WORD = "Tom has 3 apples and buys 5 more. How many apples does he have now?"


def test_several_calibrations_default_to_auto_and_a_named_task_keeps_its_own():
    tr = TaskRouters(_set("gsm8k", "choice"))
    assert tr.auto and tr.default == "gsm8k"  # the set's first: for prompts no calibrated task fits
    r = tr.resolve(None, prompt=CHOICE_Q)
    assert (r.task.name, r.router, r.source, r.detected, r.fallback) == (
        "choice",
        tr.routers["choice"],
        "auto",
        "choice",
        False,
    )
    assert r.report() == {"name": "choice", "source": "auto", "detected": "choice", "reason": "lists options A, B, C"}
    r = tr.resolve(None, prompt=WORD)
    assert (r.task.name, r.source, r.use_parsed) == ("gsm8k", "auto", True)
    r = tr.resolve("choice", prompt=WORD)  # a request naming its task keeps it
    assert (r.task.name, r.source, r.detected) == ("choice", "request", None)
    assert r.report() == {"name": "choice", "source": "request"}
    assert tr.resolve("auto", prompt=CHOICE_Q).task.name == "choice"


def test_auto_falls_to_free_text_then_to_the_default_or_the_declared_fallback():
    # A word problem without a gsm8k calibration is free text: semantic answers it.
    tr = TaskRouters(_set("choice", "semantic"), embedder="embedder")
    r = tr.resolve(None, prompt=WORD)
    assert (r.task.name, r.detected, r.embed, r.fallback_to) == ("semantic", "gsm8k", True, None)
    assert "gsm8k has no calibration" in r.reason
    # No calibrated task fits a free-text prompt: the deployment's default, said so.
    tr = TaskRouters(_set("gsm8k", "choice"))
    r = tr.resolve(None, prompt=FRANCE)
    assert (r.task.name, r.router, r.force_tier, r.fallback_to) == ("gsm8k", tr.routers["gsm8k"], None, "default")
    assert r.report()["fallback"] == "default" and r.report()["detected"] == "semantic"
    # ... or the declared fallback: the oracle alone, the answer read as free text.
    fb = TaskRouters(_set("gsm8k", "choice"), fallback="oracle").resolve("auto", "committee", FRANCE)
    assert (fb.task.name, fb.force_tier, fb.fallback, fb.fallback_to, fb.source) == (
        "semantic", "oracle", True, "oracle", "auto",
    )  # fmt: skip


def test_a_single_task_deployment_keeps_its_default_and_accepts_auto():
    tr = TaskRouters(_set("gsm8k"))
    assert not tr.auto
    assert tr.resolve(None, prompt=FRANCE).report() == {"name": "gsm8k", "source": "default"}
    r = tr.resolve("auto", prompt=FRANCE)  # the gateway's default: the only calibration answers
    assert (r.task.name, r.fallback_to, r.use_parsed) == ("gsm8k", "default", True)
    assert TaskRouters(_set("gsm8k"), default_task="auto").auto
    with pytest.raises(InvalidArgument, match="known: .*auto"):
        tr.resolve("poetry")


def test_the_response_says_the_task_auto_chose(task_model):
    import fake_pb_utils as pb
    from test_triton_glue import Q_AGREE

    model = task_model(task="auto")
    out = _ask(model, text_input=Q_AGREE)  # "What is 2+2?": arithmetic
    assert (out["answer"], out["tier"]) == ("4", "committee")
    assert out["task"] == {
        "name": "gsm8k", "source": "auto", "detected": "gsm8k", "reason": "asks to evaluate an arithmetic expression",
    }  # fmt: skip
    pb.calls.clear()
    out = _ask(model, text_input=FREE_Q)
    assert (out["task"]["name"], out["task"]["source"]) == ("semantic", "auto")
    assert "embedder" in [m for m, _ in pb.calls]  # routed by the semantic calibration: answers embedded
    out = _ask(model, text_input=FREE_Q, task="semantic")
    assert out["task"] == {"name": "semantic", "source": "request"}


def test_a_request_asking_auto_of_a_named_default_deployment(task_model):
    from test_triton_glue import Q_AGREE

    model = task_model()  # router.task: gsm8k
    assert _ask(model, text_input=Q_AGREE)["task"] == {"name": "gsm8k", "source": "default"}
    out = _ask(model, text_input=FREE_Q, task="auto")
    assert (out["task"]["name"], out["task"]["source"], out["task"]["detected"]) == ("semantic", "auto", "semantic")
