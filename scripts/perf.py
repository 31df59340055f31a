"""Load tests of the Triton deployment with perf_analyzer and genai-perf (``make perf``).

One run, two servers, both rendered from ``deploy/replay.yaml``:

1. **Zero-latency replay engines.** perf_analyzer over gRPC against ``pyramid`` (decoupled, so
   ``--streaming``) and, on the same server, directly against one engine (the first committee
   agent; unary gRPC and gRPC streaming), with GSM8K questions as ``--input-data``:

   * a concurrency sweep per target (one perf_analyzer run, time windows, stability check); the
     CSV must hold a row for every level asked for: perf_analyzer can exit 0 with a partial CSV
     when a level does not stabilise, and a missing level is measured again on its own (three
     windows, no stability check) and marked ``filled``;
   * interleaved rounds at concurrency 1 and 16 (three time windows per run, every target in every
     round, the order rotated per round), because this VM's speed drifts by tens of percent within
     a minute: router overhead = pyramid p50 - direct p50 at c=1, throughput ratio = pyramid /
     direct at c=16, each taken within a round and summarised by the median over rounds. (Not
     ``--request-count``: perf_analyzer's throughput for such a run is quantised to whole seconds.)
   * genai-perf 0.0.16 against ``pyramid`` in its Triton TensorRT-LLM mode (``--backend
     tensorrtllm --endpoint-type kserve``), non-streaming and streaming, to show that the text API is
     compatible.

2. **A GPU-like latency model**: the replay engines sleep ``seconds_per_token`` x the recorded
   output tokens (``--agent-spt`` for the committee, ``--oracle-spt`` for the oracle). Sequential
   requests (concurrency 1; the replay engines have one instance and serve one request at a
   time) through ``PyramidClient``, each compared with its expected latency, the critical path of
   the route it took: the sum over the committee stages actually run of the slowest *newly asked*
   agent of that stage (stage 1 asks two agents at once, stage 2 the third), plus the oracle's
   time when it escalated. Then a short perf_analyzer sweep on this server too.

Writes under ``--out`` (default ``out/perf``): ``inputs.json`` (perf_analyzer ``--input-data``),
``csv/*.csv`` (one per perf_analyzer run), ``gpu_requests.csv``, ``genai_perf/``, ``perf.png``,
``summary.json``, ``summary.md`` (also printed), the server logs and perf_analyzer outputs.
Exit codes: 0 done (targets missed or not: the verdicts are in the summary), 1 a measurement
failed (perf_analyzer error, a CSV still incomplete after the retry, a request error), 2 usage.

The runner, the rounds and the summaries are ``pyramid_bench.perf``; this script picks the
questions, starts the servers and measures the GPU-like phase's requests with the router library.

Usage: python scripts/perf.py [--calibration out/calibration/replay.json] [--out out/perf] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from pyramid_bench.perf import (
    AGENT_SPT,
    FLOOR_MODEL,
    INSTALL_HINT,
    ORACLE_SPT,
    CpuMeter,
    PerfError,
    Target,
    add_floor,
    admin_headers,
    concurrency_levels,
    count_sweep,
    critical_path_s,
    find_perf_analyzer,
    genai_phase,
    input_data,
    loadavg,
    markdown,
    perf_analyzer_version,
    plot,
    render_spec,
    targets_table,
    tolerance_stats,
    wait_for_quiet,
    zero_latency_phase,
)

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_CAL = "out/calibration/replay.json"


def gpu_phase(server, pa_bin: Path, out: Path, art, ts, spt: dict[str, float], a, questions: list[str]) -> dict:
    from pyramid_client import PyramidClient

    router = art.router()
    stages = [router.new_agents(s) for s in range(len(router.stages))]
    fitted = art.fitted_idx()
    held_out = [i for i in sorted(ts.questions) if i not in fitted and _complete(ts, [*art.committee, art.oracle], i)]
    rng = random.Random(a.seed)
    rng.shuffle(held_out)
    esc, acc = [], []
    for i in held_out:
        r = router.route(ts.questions[i].question, lambda n, i=i: _offline(ts, n, i))
        (esc if r.escalated else acc).append((i, r.calls))
        if len(esc) >= a.gpu_escalated and len(acc) >= a.gpu_accepted:
            break
    sample = esc[: a.gpu_escalated] + acc[: a.gpu_accepted]
    rng.shuffle(sample)
    res: dict = {"load_before": loadavg(), "stages": stages, "spt": spt}
    rows = []
    with PyramidClient(server.grpc_url, timeout_s=120) as client:
        client.ask(ts.questions[held_out[-1]].question)  # warm-up, not counted
        for i, offline_calls in sample:
            r = client.ask(ts.questions[i].question)
            tokens = {m: (ts.samples(m)[i][0].output_tokens or 0) for m in [*art.committee, art.oracle]}
            committee_s, oracle_s = critical_path_s(stages, r.calls, art.oracle, tokens, spt)
            rows.append(
                {
                    "idx": i,
                    "escalated": r.escalated,
                    "stages_run": sum(1 for st in stages if set(st) & set(r.calls)),
                    "calls": "+".join(r.calls),
                    "calls_match_offline": list(r.calls) == list(offline_calls),
                    "degraded": r.degraded,
                    "committee_s": round(committee_s, 4),
                    "oracle_s": round(oracle_s, 4),
                    "expected_s": round(committee_s + oracle_s, 4),
                    "measured_s": round(r.latency_s, 4),
                    "excess": round(r.latency_s / (committee_s + oracle_s) - 1, 4),
                }
            )
    with (out / "gpu_requests.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for key, sel in (
        ("accepted", [r for r in rows if not r["escalated"]]),
        ("escalated", [r for r in rows if r["escalated"]]),
    ):
        res[key] = tolerance_stats([r["measured_s"] for r in sel], [r["expected_s"] for r in sel])
    res["calls_mismatch"] = [r["idx"] for r in rows if not r["calls_match_offline"]]
    res["degraded"] = [r["idx"] for r in rows if r["degraded"]]
    res["load_after_client"] = loadavg()

    # A short perf_analyzer sweep at this latency (per-level --request-count: long requests).
    targets = [Target("pyramid", "pyramid", True, ""), Target("direct_unary", art.committee[0], False, "")]
    res["sweep"], res["perf_analyzer_runs"] = count_sweep(
        pa_bin, server.grpc_url, out, targets, a.gpu_sweep, a.gpu_requests, 4.0 * a.gpu_requests, admin_headers(server)
    )
    res["load_after"] = loadavg()
    return res


def _complete(ts, names: list[str], idx: int) -> bool:
    return all(ts.samples(m).get(idx) for m in names)


def _offline(ts, name: str, idx: int):
    return ts.output(name, idx)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "deploy" / "replay.yaml"))
    ap.add_argument("--calibration", default=DEFAULT_CAL)
    ap.add_argument("--traces", default=str(ROOT / "data" / "gsm8k"))
    ap.add_argument("--out", default=str(ROOT / "out" / "perf"))
    ap.add_argument("--sweep", default="1:16:3", help="zero-latency sweep, perf_analyzer start:end:step")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved c=1 / c=16 rounds")
    ap.add_argument("--round-window-ms", type=int, default=1000, help="rounds: 3 time windows of this length per run")
    ap.add_argument("--agent-spt", type=float, default=AGENT_SPT, help="GPU-like model: s/token, committee")
    ap.add_argument("--oracle-spt", type=float, default=ORACLE_SPT, help="GPU-like model: s/token, oracle")
    ap.add_argument("--gpu-escalated", type=int, default=20, help="escalated questions in the 5%% check")
    ap.add_argument("--gpu-accepted", type=int, default=20, help="non-escalated questions in the 5%% check")
    ap.add_argument("--gpu-sweep", default="1:4:3", help="GPU-like perf_analyzer levels, start:end:step")
    ap.add_argument("--gpu-requests", type=int, default=24, help="requests per GPU-like perf_analyzer run")
    ap.add_argument("--genai-requests", type=int, default=200)
    ap.add_argument("--no-genai-perf", action="store_true")
    ap.add_argument("--max-load", type=float, default=0.7, help="wait for the 1-min load average to drop below this")
    ap.add_argument("--wait-load-s", type=float, default=300.0, help="... for at most this long, then go on (noted)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a short smoke run (numbers not for the record)")
    a = ap.parse_args(argv)
    if a.quick:
        a.sweep, a.rounds, a.round_window_ms = "1:16:15", 1, 300
        a.gpu_escalated, a.gpu_accepted, a.gpu_sweep, a.gpu_requests, a.genai_requests = 2, 2, "1", 4, 20
        a.wait_load_s = 0.0

    pa_bin = find_perf_analyzer()
    if pa_bin is None:
        print(f"error: perf_analyzer (the real 2.60 binary) not found; {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:
        levels = concurrency_levels(a.sweep)
        concurrency_levels(a.gpu_sweep)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if 1 not in levels or 16 not in levels:
        print(f"error: --sweep {a.sweep} must include concurrency 1 and 16 (the targets' levels)", file=sys.stderr)
        return 2

    from pyramid_moa.artifact import load_artifact
    from pyramid_moa.traces import TraceSet
    from pyramid_ops.server import TritonServer

    art = load_artifact(a.calibration)
    traces = Path(a.traces)
    ts = TraceSet.open(traces)
    names = [*art.committee, art.oracle]
    ok = [i for i in sorted(ts.questions) if _complete(ts, names, i)]
    random.Random(a.seed).shuffle(ok)
    questions = [ts.questions[i].question for i in ok]
    router = art.router()
    escalated = sum(router.route(ts.questions[i].question, lambda n, i=i: _offline(ts, n, i)).escalated for i in ok)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in ("csv", "logs"):
        shutil.rmtree(out / old, ignore_errors=True)
    (out / "inputs.json").write_text(json.dumps(input_data(questions)), encoding="utf-8")

    load_start, quiet = wait_for_quiet(a.max_load, a.wait_load_s)
    targets = [
        Target("pyramid", "pyramid", True, "`pyramid` router (gRPC stream)"),
        Target("direct_stream", art.committee[0], True, "one engine direct (gRPC stream)"),
        Target("direct_unary", art.committee[0], False, "one engine direct (unary gRPC)"),
        Target("floor", FLOOR_MODEL, True, "bare-BLS floor: the router's calls only (gRPC stream)"),
    ]
    spt = {**{m: a.agent_spt for m in art.committee}, art.oracle: a.oracle_spt}
    summary: dict = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}",
        "command": "make perf" + (" (--quick)" if a.quick else ""),
        "perf_analyzer": f"perf_analyzer 2.60.0 wheel ({perf_analyzer_version(pa_bin)}), {pa_bin}",
        "load_start": loadavg(),
        "load_start_1min_waited": round(load_start, 2),
        "quiet_at_start": quiet,
        "n_questions": len(questions),
        "escalated_share": escalated / len(ok),
        "direct_engine": art.committee[0],
        "schedule": " -> ".join("+".join(st["agents"]) for st in art.stages) + f" -> {art.oracle}",
        "sweep_spec": a.sweep,
        "round_window_ms": a.round_window_ms,
    }
    meter = CpuMeter()
    cpu = [meter.snapshot()]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            repo = render_spec(Path(a.spec), traces, a.calibration, Path(tmp) / "zero", None)
            add_floor(repo, a.calibration, traces)
            with TritonServer(repo, log_path=out / "tritonserver_zero.log") as server:
                summary["zero_latency"] = zero_latency_phase(
                    server.grpc_url, pa_bin, out, targets, a.sweep, a.rounds, a.round_window_ms, admin_headers(server)
                )
                summary["genai_perf"] = (
                    {"skipped": "--no-genai-perf"}
                    if a.no_genai_perf
                    else genai_phase(server, out, questions, a.genai_requests)
                )
            cpu.append(meter.snapshot())  # the server has stopped: its CPU time is in os.times()
            repo = render_spec(Path(a.spec), traces, a.calibration, Path(tmp) / "gpu", spt)
            with TritonServer(repo, log_path=out / "tritonserver_gpu.log") as server:
                summary["gpu"] = gpu_phase(server, pa_bin, out, art, ts, spt, a, questions)
                summary["gpu"].update({"spt_agent": a.agent_spt, "spt_oracle": a.oracle_spt})
            cpu.append(meter.snapshot())
    except PerfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary["load_end"] = loadavg()
    summary["cpu"] = {"zero_latency": meter.delta(cpu[0], cpu[1]), "gpu": meter.delta(cpu[1], cpu[2])}
    runs = summary["zero_latency"]["perf_analyzer_runs"] + summary["gpu"]["perf_analyzer_runs"]
    summary["pa_runs"] = len(runs)
    summary["pa_hung"] = [r["name"] for r in runs if r.get("hung")]
    summary["targets"] = targets_table(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    plot(summary, targets, out / "perf.png")
    md = markdown(summary, targets)
    (out / "summary.md").write_text(md, encoding="utf-8")
    print(md)
    failed_genai = [k for k, v in summary["genai_perf"].items() if isinstance(v, dict) and v.get("ok") is False]
    if failed_genai:
        print(
            f"warning: genai-perf failed ({', '.join(failed_genai)}); see the logs in {out / 'genai_perf'}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
