"""Router overhead and throughput on a real tritonserver (replay profile, zero-latency engines).

Side by side in one run, against the same server: the ``pyramid`` router and one engine
called directly (the first committee agent), both over the same transport (one gRPC stream
per request, asyncio client), so the difference is what the router adds in the server. The
engine over unary gRPC is reported too, for reference.

* Concurrency 1: latency percentiles of each; router overhead = pyramid p50 - direct p50
  (end to end, as a client sees it), and the router's own in-server step times.
* Concurrency C (default 16): requests per second of each over a fixed duration; the ratio
  routed / direct. A routed request makes 3-4 engine calls, so about 1/3 is the ceiling.

Usage: python scripts/bench_serving.py [--calibration out/calibration/replay.json] [--out out/bench_serving]
Writes ``summary.json`` and ``summary.md`` in --out and prints the markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pyramid_bench.perf import percentile, render_spec
from pyramid_client.wire import DEFAULT_MAX_TOKENS
from pyramid_moa.traces import TraceSet
from pyramid_ops.server import TritonServer

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_CAL = "out/calibration/replay.json"


def _input(grpc, name: str, arr: np.ndarray, dtype: str):
    t = grpc.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


class Target:
    """One model to load: ``call(question)`` sends one request and waits for its answer."""

    def __init__(self, client, model: str, stream: bool, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        import tritonclient.grpc as grpc

        self.grpc, self.client, self.model, self.stream, self.max_tokens = grpc, client, model, stream, max_tokens
        self.key = model if stream else f"{model} (unary)"
        self.router_ms: list[dict[str, float]] = []

    def _inputs(self, question: str) -> list:
        g = self.grpc
        return [
            _input(g, "text_input", np.array([[question.encode()]], dtype=np.object_), "BYTES"),
            _input(g, "max_tokens", np.array([[self.max_tokens]], dtype=np.int32), "INT32"),
        ]

    async def call(self, question: str) -> None:
        if not self.stream:
            await self.client.infer(self.model, self._inputs(question))
            return

        async def requests():
            yield {"model_name": self.model, "inputs": self._inputs(question)}

        async for result, error in self.client.stream_infer(requests()):
            if error is not None:
                raise RuntimeError(str(error))
            details = result.as_numpy("agent_answers")
            if details is not None:
                self.router_ms.append(json.loads(details.reshape(-1)[0]).get("latency_ms", {}))


async def latency(target: Target, questions: list[str], n: int, warmup: int) -> list[float]:
    for q in questions[:warmup]:
        await target.call(q)
    target.router_ms.clear()
    out = []
    for k in range(n):
        t0 = time.perf_counter()
        await target.call(questions[k % len(questions)])
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def throughput(target: Target, questions: list[str], concurrency: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await target.call(questions[next(counter) % len(questions)])
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


async def measure(server: TritonServer, engine: str, questions: list[str], a: argparse.Namespace) -> dict:
    """Interleaved rounds (this VM's speed drifts by tens of percent within a minute): each round
    measures every target's latency block and throughput block back to back; ratios are taken
    within a round and summarised by their median over rounds."""
    import tritonclient.grpc.aio as aio

    client = aio.InferenceServerClient(server.grpc_url)
    try:
        unary = Target(client, engine, stream=False)
        direct = Target(client, engine, stream=True)
        routed = Target(client, "pyramid", stream=True)
        targets = (unary, direct, routed)
        for t in targets:  # warm every path
            await latency(t, questions, 0, a.warmup)
            await throughput(t, questions, a.concurrency, 1.0)
        lat: dict[str, list[float]] = {t.key: [] for t in targets}
        thr: dict[str, list[float]] = {t.key: [] for t in targets}
        router_ms: list[dict[str, float]] = []
        overheads, ratios = [], []
        for _ in range(a.rounds):
            for t in targets:
                lat_r = await latency(t, questions, a.n // a.rounds, 0)
                lat[t.key] += lat_r
            router_ms += routed.router_ms
            overheads.append(
                percentile(lat[routed.key][-(a.n // a.rounds) :], 50)
                - percentile(lat[direct.key][-(a.n // a.rounds) :], 50)
            )
            for t in targets:
                thr[t.key].append(await throughput(t, questions, a.concurrency, a.seconds / a.rounds))
            ratios.append(thr[routed.key][-1] / thr[direct.key][-1])
    finally:
        await client.close()
    stages = {}
    for k in sorted({k for d in router_ms for k in d}):
        stages[k] = statistics.median(d[k] for d in router_ms if k in d)
    return {
        "c1": {
            m: {"p50_ms": percentile(v, 50), "p90_ms": percentile(v, 90), "p99_ms": percentile(v, 99), "n": len(v)}
            for m, v in lat.items()
        },
        "router_overhead_p50_ms": statistics.median(overheads),
        "router_overhead_p50_ms_rounds": overheads,
        "router_step_median_ms": stages,
        "throughput_rps": {m: statistics.median(v) for m, v in thr.items()},
        "throughput_rps_rounds": thr,
        "throughput_ratio": statistics.median(ratios),
        "throughput_ratio_rounds": ratios,
        "direct_engine": engine,
        "rounds": a.rounds,
    }


def markdown(s: dict) -> str:
    e = s["direct_engine"]
    c1 = s["c1"]
    lines = [
        f"Serving overhead, replay engines at zero latency ({s['machine']}, {s['date']}, `{s['command']}`)",
        "",
        "| | p50 ms | p90 ms | p99 ms | req/s at c=" + str(s["concurrency"]) + " (median of rounds) |",
        "|---|---|---|---|---|",
    ]
    rows = (
        (f"{e} (unary)", f"direct engine `{e}`, unary gRPC"),
        (e, f"direct engine `{e}`, gRPC stream"),
        ("pyramid", "`pyramid` router, gRPC stream"),
    )
    for m, label in rows:
        v = c1[m]
        lines.append(
            f"| {label} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} | {v['p99_ms']:.2f} | {s['throughput_rps'][m]:.1f} |"
        )
    steps = ", ".join(f"{k} {v:.2f} ms" for k, v in s["router_step_median_ms"].items())
    lines += [
        "",
        f"- Router overhead p50 at c=1 (routed p50 - direct-stream p50, median of {s['rounds']} interleaved rounds): "
        f"**{s['router_overhead_p50_ms']:.2f} ms** (rounds {_span(s['router_overhead_p50_ms_rounds'], '{:.2f}')}; "
        "target <= 1 ms)",
        f"- Routed / direct-stream throughput at c={s['concurrency']} (median of rounds): "
        f"**{s['throughput_ratio']:.1%}** (rounds {_span(s['throughput_ratio_rounds'], '{:.0%}')}; target >= 30%)",
        f"- In-router step medians: {steps}",
        f"- Escalated share of the routed questions: {s['escalated_share']:.1%}; schedule {s['schedule']}",
    ]
    return "\n".join(lines) + "\n"


def _span(xs: list[float], fmt: str) -> str:
    return f"{fmt.format(min(xs))}-{fmt.format(max(xs))}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "deploy" / "replay.yaml"))
    ap.add_argument("--calibration", default=DEFAULT_CAL)
    ap.add_argument("--traces", default=str(ROOT / "data" / "gsm8k"))
    ap.add_argument("--out", default=str(ROOT / "out" / "bench_serving"))
    ap.add_argument("--n", type=int, default=500, help="requests per target at concurrency 1 (over all rounds)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=15.0, help="total duration of each target's throughput runs")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    a = ap.parse_args(argv)

    from pyramid_moa.artifact import load_artifact

    art = load_artifact(a.calibration)
    ts = TraceSet.open(a.traces)
    names = [*art.committee, art.oracle]
    ok = [i for i in sorted(ts.questions) if all(ts.samples(m).get(i) for m in names)]
    questions = [ts.questions[i].question for i in ok]
    router = art.router()
    escalated = sum(router.route(q, lambda n, i=i: _offline(ts, n, i)).escalated for i, q in zip(ok, questions))
    with tempfile.TemporaryDirectory() as tmp:
        repo = render_spec(Path(a.spec), Path(a.traces), a.calibration, Path(tmp) / "repo", None)
        with TritonServer(repo, log_path=Path(tmp) / "server.log") as server:
            s = asyncio.run(measure(server, art.committee[0], questions, a))
    s.update(
        {
            "concurrency": a.concurrency,
            "escalated_share": escalated / len(questions),
            "machine": f"{platform.machine()}, {_cores()} cores, Python {platform.python_version()}",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "command": "make bench-serving" + (f" CALIBRATION={a.calibration}" if a.calibration != DEFAULT_CAL else ""),
            "schedule": " -> ".join("+".join(st["agents"]) for st in art.stages),
        }
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(s, indent=1) + "\n", encoding="utf-8")
    md = markdown(s)
    (out / "summary.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


def _offline(ts: TraceSet, name: str, idx: int):
    from pyramid_moa.features import AgentOutput

    r = ts.samples(name)[idx][0]
    return AgentOutput(name, r.text, r.answer, r.output_tokens, r.prompt_tokens, r.cum_log_prob)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
