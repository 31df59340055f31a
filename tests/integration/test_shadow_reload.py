"""The label-free loop against a real tritonserver (replay engines): shadow sampling at rate 1.0 and
0.1 writes complete, parseable records; ``pyramid calibrate --labels oracle`` fits an artifact on
them; ``pyramid deploy-calibration`` swaps it in (the router's watched calibration file) under 16
concurrent clients with no failed request, each request answered wholly under the old or the new
artifact; a bad artifact is refused and the old one keeps serving; an injected shift turns the drift
gauge on, with one log line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import COMMITTEE, ORACLE, SHIPPED, SPEC, _offline_route, scrape, serve

SECONDS_PER_TOKEN = 0.0005  # a call takes tens of ms: requests overlap the reload


def _calibrate(out: Path, *flags: str, traces: Path = SHIPPED) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pyramid_moa", "calibrate", "--traces", str(traces), "--committee", ",".join(COMMITTEE),
         "--oracle", ORACLE, "--cost", "usd", *flags, "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A replay deployment shadowing every request, with small drift windows."""
    try:
        import tritonclient.grpc  # noqa: F401

        from pyramid_ops.server import find_tritonserver

        find_tritonserver()
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"tritonserver is not installed ({exc}); run scripts/install_triton.sh")
    import yaml

    tmp = tmp_path_factory.mktemp("loop")
    calibration = tmp / "calibration.json"
    r = _calibrate(calibration, "--fit-fraction", "0.5")
    assert r.returncode == 0, r.stderr
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    spec["engine"]["traces"] = str(SHIPPED)
    spec["engine"]["seconds_per_token"] = SECONDS_PER_TOKEN
    spec.pop("calibration", None)
    spec["router"].update(
        shadow_rate=1.0,
        shadow_dir=str(tmp / "shadow"),
        shadow_max_concurrent=64,  # every sampled request recorded (the unit tests count skips)
        drift_window=40,
        drift_fidelity_window=40,
        calibration_watch_s=0.5,
    )
    spec_path = tmp / "replay.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    # explicit model control and the supervisor, as make serve runs it
    with serve(spec_path, calibration, tmp / "repo", tmp / "tritonserver.log", supervise=True) as server:
        yield {"server": server, "tmp": tmp, "calibration": calibration, "shadow": tmp / "shadow", "state": {},
               "spec": spec_path}  # fmt: skip


def _questions(n: int, start: int = 0) -> list[tuple[int, str]]:
    lines = [json.loads(x) for x in (SHIPPED / "questions.jsonl").read_text().splitlines() if x.strip()]
    return [(q["idx"], q["question"]) for q in lines[start : start + n]]


async def _ask_all(url: str, questions: list[str], concurrency: int = 8):
    from pyramid_client import AsyncPyramidClient

    sem = asyncio.Semaphore(concurrency)
    async with AsyncPyramidClient(url, retries=0) as c:

        async def one(q):
            async with sem:
                return await c.ask(q)

        return await asyncio.gather(*(one(q) for q in questions), return_exceptions=True)


def _wait_metric(metrics_url: str, key: str, want: float, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        m = scrape(metrics_url)
        if m.get(key, 0.0) >= want or time.monotonic() > deadline:
            return m
        time.sleep(0.3)


def _records(shadow: Path) -> list[dict]:
    return [
        json.loads(line)
        for seg in sorted(p for p in shadow.iterdir() if p.is_dir())
        if (seg / "questions.jsonl").is_file()
        for line in (seg / "questions.jsonl").read_text().splitlines()
    ]


def _deploy(server, path: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pyramid_cli", "deploy-calibration", "--repository", str(server.model_repository),
         "--metrics", f"127.0.0.1:{server.metrics_port}", *flags, str(path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _reload_with(server, **params) -> None:
    """Load the router again, idle, with some parameters overridden (model control, with the admin key)."""
    from pyramid_ops.supervisor import admin_request

    cfg = admin_request(server.http_url, "/v2/models/pyramid/config", server.admin_key)
    for k, v in params.items():
        cfg["parameters"][k] = {"string_value": str(v)}
    body = {"parameters": {"config": json.dumps(cfg)}}
    admin_request(server.http_url, "/v2/repository/models/pyramid/load", server.admin_key, body)


def _live(server) -> str:
    m = scrape(f"127.0.0.1:{server.metrics_port}", "pyramid_calibration_info")
    live = [k for k, v in m.items() if v == 1.0]
    assert len(live) == 1, m
    return live[0].split('id="')[1].split('"')[0]


def test_shadow_at_rate_1_records_every_request_completely(loop):
    from pyramid_moa.traces import SHADOW_MARKER, TraceSet
    from pyramid_triton.hot_reload import artifact_id

    server, shadow = loop["server"], loop["shadow"]
    qs = _questions(120)
    results = asyncio.run(_ask_all(server.grpc_url, [q for _, q in qs]))
    assert not [r for r in results if isinstance(r, BaseException)]
    m = _wait_metric(
        f"127.0.0.1:{server.metrics_port}", 'pyramid_shadow_total{model="pyramid",outcome="recorded"}', 120
    )
    assert m['pyramid_shadow_total{model="pyramid",outcome="recorded"}'] == 120
    assert m['pyramid_shadow_total{model="pyramid",outcome="skipped"}'] == 0
    assert m['pyramid_shadow_cost_oracle_calls_total{model="pyramid"}'] > 0
    recs = _records(shadow)
    assert len(recs) == 120 and (shadow / SHADOW_MARKER).is_file()
    by_q = {r["question"]: r for r in recs}
    want_id = artifact_id(json.loads(loop["calibration"].read_text()))
    for res, (_, q) in zip(results, qs):
        d = by_q[q]["shadow"]["decision"]
        assert (d["tier"], d["answer"], d["escalated"], d["calls"]) == (res.tier, res.answer, res.escalated, res.calls)
        assert by_q[q]["shadow"]["calibration"]["id"] == want_id and by_q[q]["gold"] is None
    ts = TraceSet.open(shadow)
    idxs, aligned = ts.first_samples([*COMMITTEE, ORACLE])
    assert len(idxs) == 120
    served = {n: {json.loads(x)["idx"]: json.loads(x)["samples"][0] for x in (SHIPPED / "traces" / f"{n}.jsonl").read_text().splitlines()}
              for n in [*COMMITTEE, ORACLE]}  # fmt: skip
    qidx = {q: i for i, q in qs}
    for n, samples in aligned.items():
        for i, s in zip(idxs, samples):
            want = served[n][qidx[ts.questions[i].question]]
            assert s is not None and (s.text, s.answer) == (want["text"], want["answer"])
    for f in shadow.rglob("*"):
        assert stat.S_IMODE(f.stat().st_mode) == (0o700 if f.is_dir() else 0o600), f


def test_calibrate_labels_oracle_on_the_shadow_records(loop):
    out = loop["tmp"] / "from-shadow.json"
    r = _calibrate(out, "--labels", "oracle", traces=loop["shadow"])
    assert r.returncode == 0, r.stderr
    art = json.loads(out.read_text())
    assert art["fitted_on"]["labels"] == "oracle" and art["fitted_on"]["n_questions"] == 120
    assert art["arbiter"] is None and art["target"]["kind"] == "max_disagreement"
    r = _calibrate(loop["tmp"] / "x.json", "--labels", "gold", traces=loop["shadow"])
    assert r.returncode == 2 and "questions.jsonl" in r.stderr and "no gold" in r.stderr
    loop["state"]["new"] = out


def test_bad_artifacts_are_refused_and_the_old_one_keeps_serving(loop):
    from pyramid_client import PyramidClient
    from pyramid_triton.hot_reload import artifact_id

    server, tmp = loop["server"], loop["tmp"]
    good = json.loads(loop["calibration"].read_text())
    good_id = artifact_id(good)
    assert _live(server) == good_id
    repo_cal = server.model_repository / "pyramid" / "calibration.json"
    wrong_version = tmp / "v99.json"
    wrong_version.write_text(json.dumps({**good, "version": 99}))
    r = _deploy(server, wrong_version)
    assert r.returncode == 2 and "version 99 is not supported" in r.stderr and "nothing was written" in r.stderr
    other = tmp / "other-oracle.json"
    other.write_text(json.dumps({**good, "oracle": "tora_70b"}))
    r = _deploy(server, other)
    assert r.returncode == 2 and "does not have" in r.stderr
    assert json.loads(repo_cal.read_text()) == good
    # Past the command's checks (someone writes the file by hand): the router refuses it itself.
    mu = f"127.0.0.1:{server.metrics_port}"
    bad = {**good, "stages": [{**good["stages"][0], "feature_names": ["no_such_feature"]}]}
    tmp_bad = repo_cal.with_name(".bad.json")
    tmp_bad.write_text(json.dumps(bad))
    os.replace(tmp_bad, repo_cal)
    m = _wait_metric(mu, 'pyramid_calibration_reloads_total{model="pyramid",outcome="refused"}', 1, 20)
    assert m['pyramid_calibration_reloads_total{model="pyramid",outcome="refused"}'] == 1
    assert _live(server) == good_id
    with PyramidClient(server.grpc_url, retries=0) as c:
        assert c.ask(_questions(1)[0][1]).answer is not None
    log = server.log_path.read_text()
    assert "calibration" in log and "refused" in log and f"calibration {good_id} keeps serving" in log
    tmp_bad.write_text(json.dumps(good, indent=1))
    os.replace(tmp_bad, repo_cal)  # back to the good one (reloaded: the same calibration)
    _wait_metric(mu, 'pyramid_calibration_reloads_total{model="pyramid",outcome="ok"}', 1, 20)
    assert _live(server) == good_id


def test_hot_reload_under_16_clients_drops_nothing(loop, traces_router_pair):
    """16 clients ask in a loop while the new artifact goes live; every request succeeds, and each was
    answered wholly under the old or the new artifact (never a mix); after the swap, under the new."""
    from pyramid_client import AsyncPyramidClient

    server = loop["server"]
    new = loop["state"]["new"]
    old_router, new_router, ts = traces_router_pair(loop["calibration"], new)
    qs = _questions(400, start=200)
    done: list[tuple[float, float, int, object]] = []
    swapped: dict[str, float] = {}

    def going() -> bool:
        """Until 3 s after the swap and at least 80 requests in all (however slow this machine is), at most 300 s."""
        if time.monotonic() - started > 300:
            return False
        return "end" not in swapped or time.monotonic() < swapped["end"] or len(done) <= 80

    started = time.monotonic()

    async def client(k: int, c) -> None:
        j = k
        while going():
            idx, q = qs[j % len(qs)]
            t0 = time.monotonic()
            try:
                res = await c.ask(q)
            except Exception as exc:  # noqa: BLE001 - counted: the test wants none
                res = exc
            done.append((t0, time.monotonic(), idx, res))
            j += 16

    async def main() -> subprocess.CompletedProcess:
        async with AsyncPyramidClient(server.grpc_url, retries=0, timeout_s=60) as c:
            tasks = [asyncio.ensure_future(client(k, c)) for k in range(16)]
            await asyncio.sleep(1.0)
            swapped["start"] = time.monotonic()
            r = await asyncio.to_thread(_deploy, server, new)
            swapped["done"] = time.monotonic()
            swapped["end"] = time.monotonic() + 3.0
            await asyncio.gather(*tasks)
            return r

    r = asyncio.run(main())
    assert r.returncode == 0, r.stderr
    assert "live: pyramid serves calibration" in r.stdout
    failed = [(idx, res) for _, _, idx, res in done if isinstance(res, BaseException)]
    assert not failed, failed[:3]
    assert len(done) > 60
    mixed, late_old, differ = [], [], 0
    for t0, _t1, idx, res in done:
        o = _offline_route(old_router, ts, idx)
        n = _offline_route(new_router, ts, idx)
        got = (res.tier, res.answer, res.calls)
        as_old, as_new = got == (o.tier, o.answer, o.calls), got == (n.tier, n.answer, n.calls)
        differ += (o.tier, o.answer, o.calls) != (n.tier, n.answer, n.calls)
        if not (as_old or as_new):
            mixed.append(idx)
        if t0 > swapped["done"] and not as_new:
            late_old.append(idx)
    assert not mixed and not late_old
    assert differ > 0  # the two artifacts route some of these questions differently


def test_shadow_at_rate_0_1(loop):
    from pyramid_moa.traces import TraceSet

    server, tmp = loop["server"], loop["tmp"]
    shadow2 = tmp / "shadow-0.1"
    _reload_with(server, shadow_rate=0.1, shadow_dir=str(shadow2))
    qs = _questions(400, start=600)
    results = asyncio.run(_ask_all(server.grpc_url, [q for _, q in qs], concurrency=16))
    assert not [r for r in results if isinstance(r, BaseException)]
    time.sleep(2.0)  # the last shadow calls
    recs = _records(shadow2)
    assert 15 <= len(recs) <= 70  # 400 x 0.1 = 40 expected (binomial: 99.99% within)
    ts = TraceSet.open(shadow2)
    idxs, aligned = ts.first_samples([*COMMITTEE, ORACLE])
    assert len(idxs) == len(recs) and all(s is not None for v in aligned.values() for s in v)


def test_an_injected_shift_turns_the_drift_gauge_on(loop, traces_router_pair):
    """Questions the committee disagrees on, far more often than at fit time: the escalation rate
    leaves its interval within one window (40 requests), the gauge turns on, one log line says so."""
    server = loop["server"]
    mu = f"127.0.0.1:{server.metrics_port}"
    router, _, ts = traces_router_pair(loop["state"]["new"], loop["state"]["new"])
    _reload_with(server, shadow_rate=0.0)  # a fresh router: empty windows, shadow off
    asyncio.run(_ask_all(server.grpc_url, [_questions(1)[0][1]]))
    m = _wait_metric(mu, 'pyramid_requests_total{model="pyramid",outcome="ok"}', 1, 10)
    assert m['pyramid_drift{figure="escalation_rate",model="pyramid"}'] == 0.0
    assert 0.0 < m['pyramid_expected_escalation_rate{model="pyramid"}'] < 0.7
    escalating = [i for i in range(1319) if _offline_route(router, ts, i).escalated][:60]
    assert len(escalating) == 60
    q = {i: ts.questions[i].question for i in escalating}
    results = asyncio.run(_ask_all(server.grpc_url, [q[i] for i in escalating]))
    assert all(not isinstance(r, BaseException) and r.escalated for r in results)
    m = _wait_metric(mu, 'pyramid_drift{figure="escalation_rate",model="pyramid"}', 1.0, 10)
    assert m['pyramid_drift{figure="escalation_rate",model="pyramid"}'] == 1.0
    assert m['pyramid_live_escalation_rate{model="pyramid"}'] == 1.0
    log = server.log_path.read_text().splitlines()
    lines = [
        x
        for x in log[max(i for i, x in enumerate(log) if x.rstrip().rstrip('"').endswith("shadow rate 0")) :]
        if ": drift: " in x
    ]
    assert len(lines) == 1 and "pyramid: drift: escalation_rate left its 99% binomial interval" in lines[0]
    got = re.search(r"expected ([0-9.]+) \(interval ([0-9.]+)\.\.([0-9.]+) over 40\), observed ([0-9.]+)", lines[0])
    assert got is not None and float(got[4]) > float(got[3])
    assert float(got[1]) == pytest.approx(m['pyramid_expected_escalation_rate{model="pyramid"}'], abs=1e-4)


@pytest.fixture(scope="module")
def traces_router_pair():
    """(old router, new router, the replay traces) for two artifact files."""
    from pyramid_moa.artifact import load_artifact
    from pyramid_moa.traces import TraceSet

    ts = TraceSet.open(SHIPPED)

    def make(old: Path, new: Path):
        return load_artifact(old).router(), load_artifact(new).router(), ts

    return make


def test_the_repository_holds_the_deployed_calibration_beside_the_rendered_one(loop):
    """deploy-calibration leaves the rendered file alone (tracked in the committed replay repository) and
    writes the deployed one beside it; nothing was deployed before it, so there is no history yet."""
    from pyramid_triton.hot_reload import DEPLOYED_FILE, history

    rdir = loop["server"].model_repository / "pyramid"
    assert json.loads((rdir / "calibration.json").read_text()) == json.loads(loop["calibration"].read_text())
    assert json.loads((rdir / DEPLOYED_FILE).read_text()) == json.loads(loop["state"]["new"].read_text())
    assert history(rdir / "calibration.json") == []


def test_the_dashboard_names_only_metrics_this_server_exports(loop):
    """Every metric a query of deploy/grafana/pyramid-moa.json reads from Triton is on this real server's /metrics
    (the gateway's own ``pyramid_gateway_*`` series are on the gateway's /metrics: tests/test_grafana.py holds them
    to what the gateway exports)."""
    import urllib.request

    from test_grafana import DASHBOARD, metric_names, queries

    with urllib.request.urlopen(f"http://127.0.0.1:{loop['server'].metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    used = set().union(*(metric_names(e) for _, e in queries(json.loads(DASHBOARD.read_text()))))
    used = {m for m in used if not m.startswith("pyramid_gateway_")}
    assert used and not used - exported, sorted(used - exported)


def test_a_deployed_calibration_survives_a_render_and_a_restart(loop):
    """What make serve does on its next start (render the spec again, start tritonserver) serves the
    calibration deployed before it, not the spec's; a rollback then puts the spec's back, live."""
    from pyramid_deploy.render import render
    from pyramid_triton.hot_reload import DEPLOYED_FILE, artifact_id

    server = loop["server"]
    new_id = artifact_id(json.loads(loop["state"]["new"].read_text()))
    old_id = artifact_id(json.loads(loop["calibration"].read_text()))
    assert _live(server) == new_id
    server.stop()
    render(loop["spec"], server.model_repository, calibration=loop["calibration"])
    rdir = server.model_repository / "pyramid"
    assert json.loads((rdir / DEPLOYED_FILE).read_text()) == json.loads(loop["state"]["new"].read_text())
    server.start(timeout_s=120)
    assert _live(server) == new_id  # from the first scrape, before any request
    expected = scrape(f"127.0.0.1:{server.metrics_port}", "pyramid_expected_escalation_rate")
    assert 0 < expected['pyramid_expected_escalation_rate{model="pyramid"}'] < 1, expected
    r = _deploy(server, loop["calibration"])  # deployed again: the previous deployed one is history 1
    assert r.returncode == 0, r.stderr
    assert _live(server) == old_id
    assert json.loads((rdir / f"{DEPLOYED_FILE}.1").read_text()) == json.loads(loop["state"]["new"].read_text())
    r = _deploy(server, "--rollback")
    assert r.returncode == 0, r.stderr
    assert _live(server) == new_id and not (rdir / f"{DEPLOYED_FILE}.1").exists()
