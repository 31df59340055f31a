"""A pyramid of three stages served by a real tritonserver: the router asks one agent, then a second,
then the third, then the oracle, deciding after each stage exactly as the offline ``Router.route``."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import COMMITTEE, ORACLE, SHIPPED, SPEC, serve, yaml_spec


@pytest.fixture(scope="module")
def three_stages(tmp_path_factory):
    from pyramid_moa.dataset import load_routing_data
    from pyramid_moa.fitting import RouterFit, Target

    d = load_routing_data(str(SHIPPED), COMMITTEE, ORACLE)
    rows = np.arange(0, d.n, 2)
    art = RouterFit(d, rows, "usd", max_depth=3).artifact(Target("oracle_rate", 0.3), depth=3)
    assert len(art.stages) == 3 and [len(s["agents"]) for s in art.stages] == [1, 2, 3]
    tmp = tmp_path_factory.mktemp("tiers")
    art.save(tmp / "calibration.json")
    spec = tmp / "replay.yaml"
    spec.write_text(yaml_spec(SPEC, SHIPPED), encoding="utf-8")
    with serve(spec, tmp / "calibration.json", tmp / "repo", tmp / "tritonserver.log") as server:
        yield server, art, d, [r for r in range(d.n) if r % 2 == 1]


def test_every_stage_is_served_as_offline(three_stages):
    from pyramid_client import PyramidClient

    server, art, d, held_out = three_stages
    router = art.router()
    depths = set()
    with PyramidClient(server.grpc_url) as client:
        for r in held_out[:120]:
            want = router.route(d.questions[r], lambda m, r=r: d.outputs[m][r])
            got = client.ask(d.questions[r])
            where = f"question idx {d.idxs[r]}"
            assert got.calls == want.calls, where
            assert (got.answer or None, got.tier) == (want.answer, want.tier), where
            assert got.confidence == pytest.approx(want.confidence, abs=1e-6), where
            # the metadata names the models that answered: the oracle, or the deciding stage's voters
            assert got.answered_by == want.answered_by and got.answered_by, where
            depths.add(len(got.calls))
    # routes that stopped at three different places of the pyramid (after 1, 2 or 3 agents, or at the oracle)
    assert len(depths) >= 3 and 4 in depths, depths
