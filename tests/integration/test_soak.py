"""A short soak through the session deployment: 64 concurrent clients, nothing lost or mixed up.

The long run (minutes, with the router's RSS growth) is ``scripts/soak.py``; its figures are in
BENCHMARKS.md. This test runs the same code for a few seconds.
"""

from __future__ import annotations

import asyncio


def test_64_clients_nothing_lost_or_mismatched(deployment):
    from pyramid_bench import soak

    cases = [c for c in soak.expected_cases(deployment.calibration, deployment.traces)]
    res = asyncio.run(soak.soak(deployment.grpc_url, None, cases, clients=64, seconds=8.0))
    assert res.sent > 64
    assert res.answered == res.sent, res
    assert res.mismatched == 0 and not res.errors and res.unanswered == 0, res
