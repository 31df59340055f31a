"""Micro-benchmark of one routing decision (features + calibrator + policy); `make bench` reports it."""

import numpy as np

from pyramid_moa.fitting import RouterFit, Target


def test_routing_decision_speed(benchmark, routing_data):
    d = routing_data
    router = RouterFit(d, np.arange(d.n), "usd", adaptive=False).artifact(Target("max_accuracy_drop", 0.0)).router()
    outs = [d.outputs[a][7] for a in router.stages[0].agents]
    q = d.questions[7]
    decision = benchmark(router.decide, 0, q, outs)
    assert decision.action in ("accept", "escalate")
