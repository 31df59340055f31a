"""``strict`` means the router's one thing (an oracle failure is an error); what the gateway does with a
provisional answer (``deadline_ms`` passed before the oracle answered) is its own option,
``pyramid.provisional``: "allow" returns it, "error" answers 504; unset, ``strict`` still implies "error"."""

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
from pyramid_gateway.errors import ApiError  # noqa: E402
from pyramid_gateway.protocol import parse_request  # noqa: E402
from pyramid_gateway.serving import Gateway  # noqa: E402
from pyramid_gateway.upstream import Catalog, Target  # noqa: E402

USER = [{"role": "user", "content": "What is 2 + 2?"}]
TARGET = Target("pyramid", "pyramid", "router")
CATALOG = Catalog("pyramid", ["a", "b"], "o", 512)


def _provisional() -> PyramidResult:
    return PyramidResult(
        answer="4", text="4", tier="committee", escalated=True, confidence=0.4, agreement=0.5, provisional=True
    )


@pytest.mark.parametrize(
    "options, refused",
    [
        ({"deadline_ms": 1}, False),
        ({"deadline_ms": 1, "strict": True}, True),  # as before the option had its own name
        ({"deadline_ms": 1, "provisional": "error"}, True),
        ({"deadline_ms": 1, "strict": True, "provisional": "allow"}, False),  # strict: only the router's meaning
        ({"deadline_ms": 1, "strict": False, "provisional": "error"}, True),
    ],
)
def test_a_provisional_answer_is_refused_under_provisional_error(options, refused):
    req = parse_request("chat", {"model": "pyramid", "messages": USER, "pyramid": options})
    gw = Gateway(SimpleNamespace())
    args = gw._router_args(req, TARGET, "rid")
    assert "provisional" not in args and args["strict"] == options.get("strict")  # the router gets strict alone
    if not refused:
        assert gw._router_answer(req, CATALOG, TARGET, _provisional()).pyramid["provisional"] is True
        return
    with pytest.raises(ApiError) as e:
        gw._router_answer(req, CATALOG, TARGET, _provisional())
    assert e.value.status == 504 and e.value.code == "deadline_exceeded" and "deadline_ms=1" in e.value.message


def test_provisional_takes_allow_or_error_only():
    with pytest.raises(ApiError) as e:
        parse_request("chat", {"model": "pyramid", "messages": USER, "pyramid": {"provisional": "maybe"}})
    assert e.value.status == 400 and e.value.param == "pyramid.provisional"
    with pytest.raises(ApiError) as e:
        parse_request("chat", {"model": "pyramid", "messages": USER, "pyramid": {"provisonal": "error"}})
    assert "provisional" in e.value.message  # the known keys list it
