"""The gateway and task ``auto`` (issue 21 item 7): a routed request naming no task is sent with task ``auto``
(the router detects it from the prompt), one naming its task keeps it, and the ``pyramid`` object says which
task routed the request and how it was chosen."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "client", ROOT / "gateway"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

pytest.importorskip("fastapi")

from pyramid_client import PyramidResult  # noqa: E402
from pyramid_client.wire import RoutedAnswer, answer_fields, answer_outputs  # noqa: E402
from pyramid_gateway.protocol import parse_request  # noqa: E402
from pyramid_gateway.responses import router_metadata  # noqa: E402
from pyramid_gateway.serving import DEFAULT_TASK, Gateway  # noqa: E402
from pyramid_gateway.upstream import Target  # noqa: E402

USER = [{"role": "user", "content": "What is the capital of France?"}]
TARGET = Target("pyramid", "pyramid", "router")
AUTO = {"name": "semantic", "source": "auto", "detected": "semantic", "reason": "free text"}


def _args(pyramid: dict | None = None, gw: Gateway | None = None) -> dict:
    body = {"model": "pyramid", "messages": USER, **({"pyramid": pyramid} if pyramid is not None else {})}
    return (gw or Gateway(SimpleNamespace()))._router_args(parse_request("chat", body), TARGET, "rid")


def test_a_request_without_a_task_is_sent_with_auto_and_a_named_task_is_kept():
    assert DEFAULT_TASK == "auto"
    assert _args()["task"] == "auto"
    assert _args({"task": ""})["task"] == "auto"  # the option's "unset" value
    assert _args({"task": "gsm8k"})["task"] == "gsm8k"
    assert _args({"task": "auto"})["task"] == "auto"
    assert _args(gw=Gateway(SimpleNamespace(), default_task=None))["task"] is None  # the router's own default


def test_the_pyramid_object_says_the_task_and_how_it_was_chosen():
    r = PyramidResult(answer="Paris", tier="committee", escalated=False, confidence=0.9, agreement=1.0, task=AUTO)
    meta = router_metadata("pyramid", r, oracle="o")
    assert (meta["task"], meta["task_source"], meta["task_detected"], meta["task_reason"]) == (
        "semantic", "auto", "semantic", "free text",
    )  # fmt: skip
    assert "task_fallback" not in meta
    fell = {"name": "gsm8k", "source": "auto", "detected": "semantic", "reason": "r", "fallback": "default"}
    assert router_metadata("pyramid", PyramidResult(answer="1", tier="committee", escalated=False, confidence=1.0,
                           agreement=1.0, task=fell), oracle="o")["task_fallback"] == "default"  # fmt: skip
    named = PyramidResult(answer="1", tier="oracle", escalated=True, confidence=0.1, agreement=0.3,
                          task={"name": "gsm8k", "source": "request"})  # fmt: skip
    meta = router_metadata("pyramid", named, oracle="o")
    assert (meta["task"], meta["task_source"]) == ("gsm8k", "request") and "task_detected" not in meta
    old = PyramidResult(answer="1", tier="oracle", escalated=True, confidence=0.1, agreement=0.3)
    assert "task" not in router_metadata("pyramid", old, oracle="o")  # a router that does not say


def test_the_task_travels_in_the_wire_format():
    a = RoutedAnswer(answer="Paris", tier="committee", escalated=False, confidence=0.9, agreement=1.0, task=AUTO)
    fields, _, _ = answer_fields(answer_outputs(a, "Paris", {}))
    assert fields["task"] == AUTO
    fields, _, _ = answer_fields(answer_outputs(RoutedAnswer("1", "oracle", True, 0.1, 0.2), "1", {}))
    assert fields["task"] is None
