"""What the semantic task's embedding costs a routed request, on a real tritonserver (issue 14, step 5).

The replay deployment (zero-latency engines on the shipped GSM8K traces) with the embedder as its own
model and a calibration set of two tasks: ``gsm8k`` (deploy/replay.calibration.json) and ``semantic``
(fitted here on the same traces, oracle labels; only its timing matters). The same questions are asked
with ``force_tier=committee``, so both tasks make exactly the same engine calls (every agent, no
oracle), once with ``task=gsm8k`` and once with ``task=semantic``, interleaved, at concurrency 1:

* added latency: p50 (and p90) of semantic minus gsm8k, as the client sees it (the embedder's three
  BLS calls, one per agent answer, plus the vote on embeddings);
* the embedder model alone, called directly with one recorded answer per request: p50 latency at
  concurrency 1 and throughput (answers per second) at concurrency 1 and 2 over a fixed duration.

    .venv/bin/python scripts/semantic_perf.py [--n 200] [--seconds 10] [--out out/semantic_perf]

Timings are of this machine (printed with the result); nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from pyramid_bench.perf import percentile
from pyramid_deploy.render import render
from pyramid_moa.artifact import load_artifact, save_calibration_set
from pyramid_moa.dataset import load_routing_data
from pyramid_moa.fitting import RouterFit, Target
from pyramid_moa.semantic import DEFAULT_EMBEDDING_CACHE, prepare
from pyramid_ops.server import TritonServer

ROOT = Path(__file__).resolve().parents[1]

TRACES = ROOT / "data" / "gsm8k"
GSM8K_CAL = ROOT / "deploy" / "replay.calibration.json"


def calibration_set(out: Path) -> tuple[Path, list[str], list[str]]:
    """(the set, questions, one recorded committee answer per question)."""
    gsm = load_artifact(GSM8K_CAL)
    d = load_routing_data(str(TRACES), gsm.committee, gsm.oracle, task="semantic", labels="oracle")
    prepare(d, DEFAULT_EMBEDDING_CACHE)
    sem = RouterFit(d, np.arange(d.n), "usd", "semantic").artifact(Target("oracle_rate", 0.3))
    save_calibration_set(out, [gsm, sem])
    answers = [o.answer or "" for o in d.outputs[gsm.committee[0]]]
    return out, d.questions, answers


def spec(tmp: Path) -> Path:
    s = yaml.safe_load((ROOT / "deploy" / "replay.yaml").read_text(encoding="utf-8"))
    s.pop("calibration", None)
    s["engine"]["traces"] = str(TRACES)
    s["router"]["task"] = "gsm8k"
    s["embedder"] = {"model_name": "embedder", "instance_count": 1}
    path = tmp / "semantic_perf.yaml"
    path.write_text(yaml.safe_dump(s, sort_keys=False), encoding="utf-8")
    return path


def routed_latency(url: str, questions: list[str], n: int) -> dict[str, list[float]]:
    from pyramid_client import PyramidClient

    out: dict[str, list[float]] = {"gsm8k": [], "semantic": []}
    with PyramidClient(url) as c:
        for q in questions[:10]:  # warm-up
            c.ask(q, task="semantic", force_tier="committee")
        for k in range(n):
            q = questions[10 + k % (len(questions) - 10)]
            for task in ("gsm8k", "semantic") if k % 2 == 0 else ("semantic", "gsm8k"):
                t0 = time.perf_counter()
                c.ask(q, task=task, force_tier="committee")
                out[task].append((time.perf_counter() - t0) * 1000)
    return out


def embedder_calls(url: str, answers: list[str], n: int, concurrency: int, seconds: float) -> tuple[list[float], float]:
    """(per-call ms at concurrency 1 over ``n`` calls, answers/s at ``concurrency`` over ``seconds``)."""
    import tritonclient.grpc as grpc

    def call(client, text: str) -> None:
        t = grpc.InferInput("text", [1], "BYTES")
        t.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
        client.infer("embedder", [t], outputs=[grpc.InferRequestedOutput("embedding")])

    client = grpc.InferenceServerClient(url)
    for a in answers[:5]:
        call(client, a)
    lat = []
    for k in range(n):
        t0 = time.perf_counter()
        call(client, answers[k % len(answers)])
        lat.append((time.perf_counter() - t0) * 1000)
    done = [0] * concurrency
    stop = time.perf_counter() + seconds

    def worker(w: int) -> None:
        c = grpc.InferenceServerClient(url)
        k = w
        while time.perf_counter() < stop:
            call(c, answers[k % len(answers)])
            done[w] += 1
            k += concurrency

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, sum(done) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="routed requests per task at concurrency 1")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each embedder throughput run")
    ap.add_argument("--out", default=str(ROOT / "out" / "semantic_perf"))
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        cal, questions, answers = calibration_set(tmp / "calibration.json")
        repo = render(spec(tmp), tmp / "repo", calibration=cal).out
        with TritonServer(repo, log_path=tmp / "server.log") as server:
            routed = routed_latency(server.grpc_url, questions, a.n)
            lat1, tput1 = embedder_calls(server.grpc_url, answers, a.n, 1, a.seconds)
            _, tput2 = embedder_calls(server.grpc_url, answers, 0, 2, a.seconds)
    p = {t: {q: percentile(v, q) for q in (50, 90)} for t, v in routed.items()}
    s = {
        "routed_ms": p,
        "added_ms_p50": p["semantic"][50] - p["gsm8k"][50],
        "added_ms_p90": p["semantic"][90] - p["gsm8k"][90],
        "embedder_ms_p50_c1": percentile(lat1, 50),
        "embedder_answers_per_s": {"c1": tput1, "c2": tput2},
        "n": a.n,
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, Python "
        f"{platform.python_version()}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "command": "python scripts/semantic_perf.py" + (f" --n {a.n}" if a.n != 200 else ""),
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(s, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
