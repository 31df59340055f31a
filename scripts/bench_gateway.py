#!/usr/bin/env python3
"""The OpenAI gateway's cost, measured side by side with the gRPC path it wraps (``make perf-gateway``).

On one real tritonserver (a rendered replay repository, zero-latency engines, so the router and the
transport are all there is) and one gateway process in front of it, the same GSM8K questions go:

* **gRPC**: ``pyramid_client``'s asyncio client (the router's own client, the one the gateway uses);
* **gateway**: ``POST /v1/chat/completions`` over keep-alive HTTP (httpx2, the HTTP client of the
  ``openai`` SDK, without the SDK's response parsing, so the gateway's own cost is what differs).

Latency at concurrency 1: every question once per round on each path, the two paths interleaved per
question (order alternating by round: the VM's speed drifts); p50 / p99 per path and the added p50.
Throughput at concurrency 16: time windows, the paths alternating; completed requests / window, the
median window per path, and the ratio. Targets (issue 15): <= 1 ms added at p50, >= 90% of the gRPC
path's throughput. With ``--genai-perf``: genai-perf ``--endpoint-type chat`` against the gateway
(needs ``make setup-perf``). Not a test: timings depend on the machine and what else runs on it.

Output: ``--out DIR`` / ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_ADDED_P50_MS = 1.0
TARGET_THROUGHPUT_RATIO = 0.90


def pct(xs: list[float], q: float) -> float:
    """The ``q`` (0..1) percentile, as every benchmark here computes it (``pyramid_bench.perf.percentile``)."""
    from pyramid_bench.perf import percentile

    return percentile(xs, q * 100)  # type: ignore[return-value]  # never empty here


def latency_phase(grpc_url: str, gw_url: str, questions: list[str], rounds: int) -> dict:
    """Concurrency 1, both paths from one asyncio loop: the gRPC path is the same asyncio client the
    gateway itself uses, so the difference is the gateway (HTTP hop, validation, response building)."""
    import httpx2 as httpx

    from pyramid_client import AsyncPyramidClient

    grpc_ms: list[float] = []
    gw_ms: list[float] = []

    async def run() -> None:
        async with AsyncPyramidClient(grpc_url, timeout_s=60) as g, httpx.AsyncClient(base_url=gw_url, timeout=60) as h:

            async def via_grpc(q: str) -> float:
                t0 = time.perf_counter()
                await g.ask(q)
                return (time.perf_counter() - t0) * 1000

            async def via_gateway(q: str) -> float:
                t0 = time.perf_counter()
                body = {"model": "pyramid", "messages": [{"role": "user", "content": q}]}
                (await h.post("/chat/completions", json=body)).raise_for_status()
                return (time.perf_counter() - t0) * 1000

            for q in questions[:5]:  # warm-up: connections, caches
                await via_grpc(q)
                await via_gateway(q)
            for r in range(rounds):
                for q in questions:
                    if r % 2 == 0:
                        grpc_ms.append(await via_grpc(q))
                        gw_ms.append(await via_gateway(q))
                    else:
                        gw_ms.append(await via_gateway(q))
                        grpc_ms.append(await via_grpc(q))

    asyncio.run(run())
    paired = [b - a for a, b in zip(grpc_ms, gw_ms)]
    return {
        "requests_per_path": len(grpc_ms),
        "grpc_ms": {"p50": pct(grpc_ms, 0.5), "p99": pct(grpc_ms, 0.99)},
        "gateway_ms": {"p50": pct(gw_ms, 0.5), "p99": pct(gw_ms, 0.99)},
        "added_p50_ms": pct(gw_ms, 0.5) - pct(grpc_ms, 0.5),
        "added_p99_ms": pct(gw_ms, 0.99) - pct(grpc_ms, 0.99),
        "paired_median_added_ms": statistics.median(paired),
    }


async def _window(path: str, grpc_url: str, gw_url: str, questions: list[str], conc: int, seconds: float) -> int:
    import httpx2 as httpx

    from pyramid_client import AsyncPyramidClient

    done = 0
    stop = time.monotonic() + seconds
    async with (
        AsyncPyramidClient(grpc_url, timeout_s=60) as g,
        httpx.AsyncClient(
            base_url=gw_url, timeout=60, limits=httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
        ) as h,
    ):

        async def worker(k: int) -> None:
            nonlocal done
            i = k
            while time.monotonic() < stop:
                q = questions[i % len(questions)]
                i += conc
                if path == "grpc":
                    await g.ask(q)
                else:
                    r = await h.post(
                        "/chat/completions", json={"model": "pyramid", "messages": [{"role": "user", "content": q}]}
                    )
                    r.raise_for_status()
                if time.monotonic() < stop:
                    done += 1

        await asyncio.gather(*(worker(k) for k in range(conc)))
    return done


def throughput_phase(grpc_url: str, gw_url: str, questions: list[str], conc: int, seconds: float, rounds: int) -> dict:
    per: dict[str, list[float]] = {"grpc": [], "gateway": []}
    asyncio.run(_window("gateway", grpc_url, gw_url, questions, conc, 1.0))  # warm-up
    for r in range(rounds):
        for path in ("grpc", "gateway") if r % 2 == 0 else ("gateway", "grpc"):
            per[path].append(asyncio.run(_window(path, grpc_url, gw_url, questions, conc, seconds)) / seconds)
    g, w = statistics.median(per["grpc"]), statistics.median(per["gateway"])
    return {"concurrency": conc, "window_s": seconds, "rps": per, "grpc_rps": g, "gateway_rps": w, "ratio": w / g}


def genai_perf_chat(server, gw_port: int, questions: list[str], n: int, out: Path) -> dict:
    """genai-perf profile --endpoint-type chat against the gateway, without and with --streaming, and, for the
    same C++ client on the gRPC path, --endpoint-type kserve against ``pyramid`` on ``server`` (a
    ``TritonServer``). Skipped when not installed; where and how genai-perf is installed, its input format and
    the kserve run: ``pyramid_bench.perf``, which runs them for make perf."""
    from pyramid_bench.perf import admin_headers, genai_perf_setup, run_genai_perf

    gdir = out / "genai_perf_chat"
    setup = genai_perf_setup(gdir, questions)
    if isinstance(setup, str):
        return {"skipped": setup}
    exe, tok, inp = setup
    res = {}
    for streaming in (False, True):
        key = "streaming" if streaming else "non_streaming"
        art = gdir / key
        cmd = [str(exe), "profile", "-m", "pyramid", "--endpoint-type", "chat"]  # 0.0.16: OpenAI service implied
        cmd += ["-u", f"127.0.0.1:{gw_port}", "--tokenizer", str(tok), "--input-file", str(inp)]
        cmd += ["--concurrency", "1", "--request-count", str(n), "--artifact-dir", str(art)]
        cmd += ["--streaming"] if streaming else []
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        log = gdir / f"genai_perf_{key}.log"
        log.write_text(" ".join(cmd) + "\n\n" + r.stdout + "\n" + r.stderr, encoding="utf-8")
        exports = sorted(art.rglob("profile_export_genai_perf.json"))
        if r.returncode != 0 or not exports:
            res[key] = {"ok": False, "rc": r.returncode, "log": str(log)}
            continue
        data = json.loads(exports[0].read_text(encoding="utf-8"))
        keep = ("request_latency", "time_to_first_token", "request_throughput")
        res[key] = {"ok": True, "command": cmd, **{k: data[k] for k in keep if k in data}}
    metrics_url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    res["grpc_kserve"] = run_genai_perf(
        exe, tok, server.grpc_url, metrics_url, inp, gdir / "kserve", False, n, admin_headers(server)
    )
    return res


def main(argv: list[str] | None = None) -> int:
    from pyramid_gateway.process import GatewayProcess
    from pyramid_ops.server import TritonServer, free_ports

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", default=str(ROOT / "model_repository"), help="a rendered replay repository")
    ap.add_argument("--questions", default=str(ROOT / "data" / "gsm8k" / "questions.jsonl"))
    ap.add_argument("--n", type=int, default=40, help="questions")
    ap.add_argument("--rounds", type=int, default=5, help="latency rounds (every question once per path each)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--window-s", type=float, default=5.0, help="throughput window per path and round")
    ap.add_argument("--throughput-rounds", type=int, default=3)
    ap.add_argument("--genai-perf", action="store_true", help="also genai-perf --endpoint-type chat (make setup-perf)")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench_gateway"))
    a = ap.parse_args(argv)
    lines = [ln for ln in Path(a.questions).read_text(encoding="utf-8").splitlines() if ln.strip()]
    questions = [json.loads(ln)["question"] for ln in lines[: a.n]]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    repo = Path(a.repository)
    summary: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at start",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "questions": len(questions),
    }
    with TritonServer(repo, log_path=out / "tritonserver.log").start(timeout_s=180) as server:
        args = ["--model-repository", str(repo)]
        with GatewayProcess(server.grpc_url, free_ports(1)[0], log_path=out / "gateway.log", extra_args=args) as gw:
            summary["latency_c1"] = latency_phase(server.grpc_url, gw.url, questions, a.rounds)
            print(json.dumps(summary["latency_c1"], indent=1), flush=True)
            summary["throughput"] = throughput_phase(
                server.grpc_url, gw.url, questions, a.concurrency, a.window_s, a.throughput_rounds
            )
            print(json.dumps(summary["throughput"], indent=1), flush=True)
            if a.genai_perf:
                summary["genai_perf"] = genai_perf_chat(server, gw.port, questions, 2 * len(questions), out)
    lat, thr = summary["latency_c1"], summary["throughput"]
    summary["targets"] = {
        "added_p50_ms": {"target": TARGET_ADDED_P50_MS, "met": lat["added_p50_ms"] <= TARGET_ADDED_P50_MS},
        "throughput_ratio": {"target": TARGET_THROUGHPUT_RATIO, "met": thr["ratio"] >= TARGET_THROUGHPUT_RATIO},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    md = [
        f"Gateway vs gRPC, {summary['machine']}, {summary['date']}: `{summary['command']}`",
        "",
        "| | gRPC (pyramid_client) | gateway (chat/completions) | added |",
        "|---|---|---|---|",
        f"| p50 latency, c=1 | {lat['grpc_ms']['p50']:.2f} ms | {lat['gateway_ms']['p50']:.2f} ms | "
        f"{lat['added_p50_ms']:+.2f} ms (target <= {TARGET_ADDED_P50_MS} ms) |",
        f"| p99 latency, c=1 | {lat['grpc_ms']['p99']:.2f} ms | {lat['gateway_ms']['p99']:.2f} ms | "
        f"{lat['added_p99_ms']:+.2f} ms |",
        f"| throughput, c={thr['concurrency']} | {thr['grpc_rps']:.1f} req/s | {thr['gateway_rps']:.1f} req/s | "
        f"ratio {thr['ratio']:.2f} (target >= {TARGET_THROUGHPUT_RATIO}) |",
    ]
    (out / "summary.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
