#!/usr/bin/env python3
"""Issue 13's two serving figures, on a real tritonserver with the replay profile (deploy/replay.yaml):

``loop``: the label-free loop in one run. A calibration fitted (gold labels) on half of the shipped
GSM8K questions serves the other half with shadow sampling at 0.2; a new calibration is fitted on the
shadow records alone (``--labels oracle``, no gold read); ``pyramid deploy-calibration`` puts it live;
the same half is served again. Gold accuracy and cost (relative to always-oracle, from the router's
own per-request cost) before and after, on all of that half and on the questions the refit never saw.

``latency``: client p50 at c=16 with shadow sampling off and at 1.0 (every request shadowed: the
worst case), in alternating rounds on one server (the router reloaded idle between rounds).

    .venv/bin/python scripts/bench_shadow.py loop    [--out out/bench-shadow]
    .venv/bin/python scripts/bench_shadow.py latency [--rounds 3] [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "gsm8k"
SECONDS_PER_TOKEN = 0.0002  # engines answer in tens of ms, as a small served model would


def _spec(tmp: Path, **router) -> Path:
    import yaml

    spec = yaml.safe_load((ROOT / "deploy" / "replay.yaml").read_text())
    spec["engine"]["traces"] = str(SHIPPED)
    spec["engine"]["seconds_per_token"] = SECONDS_PER_TOKEN
    spec.pop("calibration", None)
    spec["router"].update(router)
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _serve(tmp: Path, calibration: Path, **router):
    from pyramid_deploy.render import render
    from pyramid_ops.server import TritonServer

    repo = render(_spec(tmp, **router), tmp / "repo", calibration=calibration).out
    return TritonServer(repo, log_path=tmp / "tritonserver.log", supervise=True).start(timeout_s=180)


def _questions() -> list[dict]:
    return [json.loads(x) for x in (SHIPPED / "questions.jsonl").read_text().splitlines() if x.strip()]


async def _ask_all(url: str, questions: list[str], concurrency: int) -> list:
    from pyramid_client import AsyncPyramidClient

    sem = asyncio.Semaphore(concurrency)
    async with AsyncPyramidClient(url, retries=0, timeout_s=120) as c:

        async def one(q: str):
            async with sem:
                return await c.ask(q)

        return await asyncio.gather(*(one(q) for q in questions), return_exceptions=True)


def _score(results: list, golds: list[str]) -> dict:
    from pyramid_moa.answers import get_task

    eq = get_task("gsm8k").equal
    ok = [r for r in results if not isinstance(r, BaseException)]
    return {
        "n": len(results),
        "failed": len(results) - len(ok),
        "accuracy": sum(eq(r.answer, g) for r, g in zip(results, golds) if not isinstance(r, BaseException))
        / len(results),
        "oracle_call_rate": sum(r.escalated for r in ok) / len(ok),
        "mean_cost": statistics.fmean(r.cost for r in ok),  # relative to one oracle call, committee included
    }


def loop(args: argparse.Namespace) -> int:
    import yaml

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load((ROOT / "deploy" / "replay.yaml").read_text())
    committee = ",".join(a["name"] for a in spec["agents"])
    oracle = spec["oracle"]["name"]
    first = out / "calibration-half.json"
    base = [
        sys.executable,
        "-m",
        "pyramid_moa",
        "calibrate",
        "--committee",
        committee,
        "--oracle",
        oracle,
        "--cost",
        "usd",
    ]
    subprocess.run([*base, "--traces", str(SHIPPED), "--fit-fraction", "0.5", "--seed", "0", "--out", str(first)],
                   check=True, capture_output=True)  # fmt: skip
    seen = set(json.loads(first.read_text())["fitted_on"]["idx"])
    held = [q for q in _questions() if q["idx"] not in seen]
    texts, golds = [q["question"] for q in held], [q["gold"] for q in held]
    tmp = out / "run"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir()
    shadow = tmp / "shadow"
    server = _serve(
        tmp, first, shadow_rate=0.2, shadow_dir=str(shadow), calibration_watch_s=1.0, shadow_max_concurrent=32
    )
    report: dict = {"questions_served": len(held), "fitted_first_on": len(seen)}
    try:
        t0 = time.perf_counter()
        before = asyncio.run(_ask_all(server.grpc_url, texts, args.concurrency))
        report["serve_before_s"] = round(time.perf_counter() - t0, 1)
        time.sleep(3)  # the last shadow calls
        refit = out / "calibration-from-shadow.json"
        r = subprocess.run([*base, "--traces", str(shadow), "--labels", "oracle", "--out", str(refit)],
                           capture_output=True, text=True)  # fmt: skip
        if r.returncode != 0:
            raise SystemExit(f"refit failed: {r.stderr}")
        report["refit"] = r.stdout.strip()
        shadowed = {json.loads(line)["question"] for seg in shadow.iterdir() if seg.is_dir()
                    for line in (seg / "questions.jsonl").read_text().splitlines()}  # fmt: skip
        report["shadow_records"] = len(shadowed)
        d = subprocess.run(
            [sys.executable, "-m", "pyramid_cli", "deploy-calibration", "--repository", str(server.model_repository),
             "--metrics", server.metrics_url, str(refit)], capture_output=True, text=True,
        )  # fmt: skip
        report["deploy"] = (d.stdout + d.stderr).strip()
        if d.returncode != 0:
            raise SystemExit(f"deploy failed: {d.stderr}")
        after = asyncio.run(_ask_all(server.grpc_url, texts, args.concurrency))
    finally:
        server.stop()
    unseen = [i for i, t in enumerate(texts) if t not in shadowed]
    for name, res in (("before", before), ("after", after)):
        report[name] = _score(res, golds)
        report[f"{name}_unseen_by_refit"] = _score([res[i] for i in unseen], [golds[i] for i in unseen])
    (out / "loop.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


def _reload(server, **params) -> None:
    from pyramid_ops.supervisor import admin_request

    cfg = admin_request(server.http_url, "/v2/models/pyramid/config", server.admin_key)
    for k, v in params.items():
        cfg["parameters"][k] = {"string_value": str(v)}
    admin_request(server.http_url, "/v2/repository/models/pyramid/load", server.admin_key,
                  {"parameters": {"config": json.dumps(cfg)}})  # fmt: skip


def _shadow_counts(server) -> dict:
    """The router's shadow outcomes so far (counters since this router instance loaded)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("pyramid_shadow_total{"):
            out[line.split('outcome="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return out


def latency(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "latency"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir()
    qs = [q["question"] for q in _questions()][: args.requests]
    server = _serve(tmp, ROOT / "deploy" / "replay.calibration.json", shadow_rate=0.0, shadow_dir=str(tmp / "shadow"),
                    shadow_max_concurrent=args.max_concurrent)  # fmt: skip
    rows = []
    try:
        asyncio.run(_ask_all(server.grpc_url, qs[:64], 16))  # warm up
        for k in range(args.rounds):
            for rate in (0.0, *args.rates):
                _reload(server, shadow_rate=rate)
                asyncio.run(_ask_all(server.grpc_url, qs[:32], 16))  # warm the new instance
                time.sleep(2)
                t0 = time.perf_counter()
                res = asyncio.run(_ask_all(server.grpc_url, qs, 16))
                wall = time.perf_counter() - t0
                lat = sorted(r.latency_s for r in res if not isinstance(r, BaseException))
                m = _shadow_counts(server)
                rows.append({"round": k + 1, "shadow_rate": rate, "p50_ms": 1000 * statistics.median(lat), **m,
                             "p90_ms": 1000 * lat[int(0.9 * len(lat))], "req_s": len(res) / wall,
                             "failed": sum(isinstance(r, BaseException) for r in res)})  # fmt: skip
                print(rows[-1], flush=True)
                time.sleep(3)  # shadow calls of the last round finish before the next
    finally:
        server.stop()
    off = statistics.median(r["p50_ms"] for r in rows if r["shadow_rate"] == 0.0)
    summary: dict = {"rows": rows, "p50_off_ms": off, "max_concurrent": args.max_concurrent}
    for rate in args.rates:
        on = statistics.median(r["p50_ms"] for r in rows if r["shadow_rate"] == rate)
        summary[f"p50_at_{rate}_ms"], summary[f"increase_at_{rate}"] = on, on / off - 1
    (out / "latency.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["loop", "latency"])
    ap.add_argument("--out", default="out/bench-shadow")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.2, 1.0], help="shadow rates to compare with 0")
    ap.add_argument("--max-concurrent", type=int, default=8, help="shadow_max_concurrent (default: the router's, 8)")
    a = ap.parse_args()
    return loop(a) if a.what == "loop" else latency(a)


if __name__ == "__main__":
    sys.exit(main())
