"""Rules that must stay twice because of the layers (``pyramid_moa`` imports nothing of the client, the gateway
nothing of the router library) give the same answers in both homes."""

from __future__ import annotations

import pytest

from pyramid_client import wire
from pyramid_moa import cost
from pyramid_triton.protocol import ROUTER_PARAMS


@pytest.mark.parametrize("text", ["", "a", "ab", "abc", "abcd", "abcdef", "x" * 10, "é" * 7, "Ali had $21. " * 13])
def test_the_token_estimate_is_one_rule(text):
    assert wire.estimate_tokens(text) == cost.estimate_tokens(text)


def test_the_default_max_tokens_is_one_number():
    assert ROUTER_PARAMS["default_max_tokens"] == wire.DEFAULT_MAX_TOKENS
