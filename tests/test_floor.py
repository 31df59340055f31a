"""The bare-BLS floor (pyramid_bench.floor): per question exactly the router's calls, stage by stage."""

from __future__ import annotations

import asyncio
import json

import fake_pb_utils as pb
import pytest
from test_router import caller, two_stage_router
from test_triton_glue import request

from pyramid_bench.floor import FloorModel, route_plans, route_stages


def test_a_route_becomes_its_stages_of_calls():
    router = two_stage_router()
    agree = router.route("q", caller({"a": "1", "b": "1", "c": "2", "o": "3"}, []))
    assert route_stages(router, agree) == [["a", "b"]]
    split = router.route("q", caller({"a": "1", "b": "2", "c": "3", "o": "9"}, []))
    assert route_stages(router, split) == [["a", "b"], ["c"], ["o"]]
    plans = route_plans(router, [("q1", caller({"a": "1", "b": "1", "c": "1", "o": "1"}, []))])
    assert plans == {"q1": [["a", "b"]]}


@pytest.fixture()
def floor(tmp_path):
    plan = {"q": [["a", "b"], ["c"], ["o"]], "easy": [["a", "b"]]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    cfg = {"name": "floor", "parameters": {"plan": {"string_value": "plan.json"}}}
    calls: list[str] = []

    def engine(name):
        def run(req):
            from pyramid_triton.protocol import EngineResponse

            calls.append(name)
            return EngineResponse(f"{name} says {req.text_input}", output_tokens=3)

        return run

    saved = dict(pb.engines)
    pb.engines.update({n: engine(n) for n in ("a", "b", "c", "o")})
    yield FloorModel(pb, {"model_config": json.dumps(cfg), "model_repository": str(tmp_path)}), calls
    pb.engines.clear()
    pb.engines.update(saved)


def test_the_floor_makes_the_planned_calls_and_answers_with_the_last(floor):
    model, calls = floor
    r = request(text_input="q")
    asyncio.run(model.execute([r]))
    assert sorted(calls[:2]) == ["a", "b"] and calls[2:] == ["c", "o"]
    (response, flags), *rest = r.sender.sent
    assert not rest and flags == pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    (out,) = response.output_tensors()  # one output tensor: the answering model's text
    assert out.name() == "text_output" and out.as_numpy().reshape(-1)[0] == b"o says q"
    calls.clear()
    easy = request(text_input="easy")
    asyncio.run(model.execute([easy]))
    assert sorted(calls) == ["a", "b"]


def test_a_question_without_a_plan_is_an_error_response(floor):
    model, calls = floor
    r = request(text_input="never seen")
    asyncio.run(model.execute([r]))
    (response, _flags), *_ = r.sender.sent
    assert response.has_error() and "[NOT_FOUND]" in response.error().message() and calls == []
