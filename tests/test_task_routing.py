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
    with pytest.raises(ValueError, match="must name the default"):
        TaskRouters(_set("gsm8k", "choice"))
    with pytest.raises(ValueError, match="default task 'text' has no calibration"):
        TaskRouters(_set("gsm8k"), default_task="text")
    with pytest.raises(ValueError, match="needs an embedder model"):
        TaskRouters(_set("semantic"))
    with pytest.raises(ValueError, match="task_fallback must be one of"):
        TaskRouters(_set("gsm8k"), fallback="committee")
