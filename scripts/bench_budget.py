#!/usr/bin/env python3
"""Issue 24's difficulty-shift replay: the oracle budget (python_backend/pyramid_triton/budget.py) on a real
tritonserver with the replay profile (deploy/replay.yaml, the committed calibration, a 2-stage pyramid).

The shipped GSM8K questions are split by the offline router's score (the largest margin confidence minus
threshold over the stages it reached, the budget's own score): the easier half first, then the harder half,
each half shuffled (seed 0). They are sent through the router by ``--concurrency`` clients twice on one
server: budget off, then (the router reloaded with the budget parameters, so the window starts empty, as it
does at every load) ``budget_oracle_rate`` = ``--target`` over ``budget_window`` = ``--window``. Per window
of ``--window`` responses, in the order they came back: the oracle-call rate and the gold accuracy, with and
without the controller; next to an offline refit at the same rate (``pyramid calibrate --target-oracle-rate``
on every question, scored offline on the same questions: in-sample, so an optimistic reference).

    .venv/bin/python scripts/bench_budget.py [--questions 1200] [--window 100] [--target 0.2] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "gsm8k"
CALIBRATION = ROOT / "deploy" / "replay.calibration.json"
SECONDS_PER_TOKEN = 0.0002  # engines answer in tens of ms, as a small served model would


def offline(calibration: Path, idxs: list[int] | None = None) -> dict[int, dict]:
    """Every question routed offline by ``calibration`` on the recorded traces: score, escalated, correct."""
    from pyramid_moa.artifact import load_artifact
    from pyramid_moa.traces import TraceSet

    art = load_artifact(calibration)
    router = art.router()
    traces = TraceSet.open(SHIPPED)
    out = {}
    for idx in idxs if idxs is not None else sorted(traces.questions):
        q = traces.questions[idx]
        r = router.route(q.question, lambda n, i=idx: traces.output(n, i))
        taus = [s.threshold for s in router.stages]
        margins = [d.confidence - taus[d.stage] for d in r.decisions if not d.all_failed]
        out[idx] = {
            "score": max(margins) if margins else -2.0,
            "escalated": r.escalated,
            "correct": bool(q.gold is not None and router.task.grade(r.answer, router.task.gold_of(q.gold))),
        }
    return out


def shifted_order(n: int, seed: int = 0) -> list[int]:
    """``n`` questions, the easier half (offline score above the median) first, each half shuffled."""
    from pyramid_moa.traces import TraceSet

    traces = TraceSet.open(SHIPPED)
    scores = offline(CALIBRATION)
    idxs = sorted(scores, key=lambda i: -scores[i]["score"])
    rng = random.Random(seed)
    picked = sorted(rng.sample(idxs, min(n, len(idxs))), key=lambda i: -scores[i]["score"])
    easy, hard = picked[: len(picked) // 2], picked[len(picked) // 2 :]
    rng.shuffle(easy)
    rng.shuffle(hard)
    assert all(traces.questions[i].gold is not None for i in picked)
    return easy + hard


def _spec(tmp: Path) -> Path:
    import yaml

    spec = yaml.safe_load((ROOT / "deploy" / "replay.yaml").read_text())
    spec["engine"]["traces"] = str(SHIPPED)
    spec["engine"]["seconds_per_token"] = SECONDS_PER_TOKEN
    spec.pop("calibration", None)
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def serve(tmp: Path):
    from pyramid_deploy.render import render
    from pyramid_ops.server import TritonServer

    repo = render(_spec(tmp), tmp / "repo", calibration=CALIBRATION).out
    return TritonServer(repo, log_path=tmp / "tritonserver.log", supervise=True).start(timeout_s=180)


def reload(server, **params) -> None:
    """The router reloaded with ``params`` (the budget's window starts empty, as after a restart)."""
    from pyramid_ops.supervisor import admin_request

    cfg = admin_request(server.http_url, "/v2/models/pyramid/config", server.admin_key)
    for k, v in params.items():
        cfg["parameters"][k] = {"string_value": str(v)}
    admin_request(server.http_url, "/v2/repository/models/pyramid/load", server.admin_key,
                  {"parameters": {"config": json.dumps(cfg)}})  # fmt: skip


async def ask_all(url: str, questions: list[tuple[int, str]], concurrency: int) -> list[tuple[int, object]]:
    """(idx, result) in the order the responses came back."""
    from pyramid_client import AsyncPyramidClient

    sem = asyncio.Semaphore(concurrency)
    done: list[tuple[int, object]] = []
    async with AsyncPyramidClient(url, retries=0, timeout_s=120) as c:

        async def one(idx: int, q: str):
            async with sem:
                done.append((idx, await c.ask(q)))

        await asyncio.gather(*(one(i, q) for i, q in questions))
    return done


def windows(rows: list[tuple[bool, bool]], size: int) -> list[dict]:
    """Per consecutive window of ``size`` (escalated, correct) rows: its oracle-call rate and accuracy."""
    out = []
    for k in range(0, len(rows) - size + 1, size):
        w = rows[k : k + size]
        out.append({"rate": sum(e for e, _ in w) / size, "accuracy": sum(c for _, c in w) / size})
    return out


def refit(out: Path, target: float) -> Path:
    import yaml

    spec = yaml.safe_load((ROOT / "deploy" / "replay.yaml").read_text())
    path = out / f"calibration-refit-{target:g}.json"
    subprocess.run(
        [sys.executable, "-m", "pyramid_moa", "calibrate", "--traces", str(SHIPPED),
         "--committee", ",".join(a["name"] for a in spec["agents"]), "--oracle", spec["oracle"]["name"],
         "--cost", "usd", "--target-oracle-rate", str(target), "--out", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=1200)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--target", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--min-threshold", type=float, default=0.0)
    ap.add_argument("--out", default="out/bench-budget")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "run"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir()

    from pyramid_moa.answers import get_task
    from pyramid_moa.traces import TraceSet

    traces = TraceSet.open(SHIPPED)
    order = shifted_order(args.questions)
    questions = [(i, traces.questions[i].question) for i in order]
    gold = {i: traces.questions[i].gold for i in order}
    task = get_task("gsm8k")

    def eq(answer, gold):
        return task.grade(answer, task.gold_of(gold))

    report: dict = {"questions": len(order), "window": args.window, "target": args.target,
                    "concurrency": args.concurrency, "min_threshold": args.min_threshold}  # fmt: skip
    server = serve(tmp)
    runs = {}
    try:
        for name, rate in (("uncontrolled", 0.0), ("controlled", args.target)):
            reload(server, budget_oracle_rate=rate, budget_window=args.window, budget_min_threshold=args.min_threshold)
            t0 = time.perf_counter()
            got = asyncio.run(ask_all(server.grpc_url, questions, args.concurrency))
            rows = [(bool(r.escalated), bool(eq(r.answer, gold[i]))) for i, r in got]
            runs[name] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "rate": sum(e for e, _ in rows) / len(rows),
                "accuracy": sum(c for _, c in rows) / len(rows),
                "windows": windows(rows, args.window),
            }
            if name == "controlled":
                last = got[-1][1].budget or {}
                runs[name]["last_budget"] = last
    finally:
        server.stop()
    report.update(runs)
    fit = offline(refit(out, args.target), order)
    report["offline_refit"] = {
        "rate": sum(fit[i]["escalated"] for i in order) / len(order),
        "accuracy": sum(fit[i]["correct"] for i in order) / len(order),
    }
    base = offline(CALIBRATION, order)
    report["offline_calibration"] = {
        "rate": sum(base[i]["escalated"] for i in order) / len(order),
        "accuracy": sum(base[i]["correct"] for i in order) / len(order),
    }
    lo, hi = args.target * 0.9, args.target * 1.1
    after = [w["rate"] for w in runs["controlled"]["windows"][1:]]
    report["bar"] = {
        "within": [round(lo, 4), round(hi, 4)],
        "controlled_every_window_after_first_within": all(lo - 1e-9 <= r <= hi + 1e-9 for r in after),
        "controlled_worst_miss": round(max((max(lo - r, r - hi, 0.0) for r in after), default=0.0), 4),
        "uncontrolled_windows_outside": sum(
            not (lo - 1e-9 <= w["rate"] <= hi + 1e-9) for w in runs["uncontrolled"]["windows"][1:]
        ),
    }
    (out / "budget.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
