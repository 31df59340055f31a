"""What semantic routing adds to a routed request (issue 21 item 5): the sentence embedder's cost.

Two measurements, at concurrency 1, a few seconds of CPU each:

1. The embedder alone, in process, on a committee stage's answers (the first N questions of the NQ
   traces, ``../shared/data/nq``: bing-chat, fid and gpt-3.5-turbo answer each one), each as its core
   text (``cores.embedding_text``), which is what a served stage embeds: numpy vs ONNX Runtime, one call
   per answer (the router before issue 21 item 5) vs one call for the stage (now), and, for ONNX, one
   padded batch per stage (``batch=n``) for comparison.
2. Through a real tritonserver (the replay engines serve those same answers, with no simulated decode time):
   the same questions asked with ``task=semantic`` and with ``task=gsm8k`` (both ``force_tier=committee``:
   the same three agent calls, then the decision); semantic routing adds the embedder request (one per
   stage, over BLS) and the semantic vote. Reported: p50/p90 of the client's latency per task, the added
   p50, and the server's own stage time. Once per embedder backend (``--backends onnx,none,numpy``; none:
   the semantic calibration fitted without the cosine signal, ``--no-embedding``, served with no embedder).

    .venv/bin/python scripts/bench_semantic.py [--nq ../shared/data/nq] [--n 40] [--rounds 3] [--out out/bench_semantic]

make perf runs it after its perf_analyzer sweeps. Prints a Markdown table; writes ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ["bing-chat", "fid", "gpt-3.5-turbo"]  # the NQ traces' three systems: the committee
COMMITTEE, ORACLE = ["a1", "a2", "a3"], "big"
FIT_MIN = 40  # the fewest questions a calibration is fitted on (fitting.RouterFit): the served one needs them


def load_stages(nq: Path, n: int) -> tuple[list[dict], list[list[str]]]:
    """The first ``n`` NQ questions that all three systems answered, and their answers."""
    questions = [json.loads(line) for line in (nq / "questions.jsonl").read_text().splitlines() if line.strip()]
    texts = []
    for s in SYSTEMS:
        rows = [json.loads(line) for line in (nq / "traces" / f"{s}.jsonl").read_text().splitlines() if line.strip()]
        texts.append({r["idx"]: r["samples"][0].get("text") for r in rows})
    keep = [q for q in questions if all(t.get(q["idx"]) for t in texts)][:n]
    return keep, [[t[q["idx"]] for t in texts] for q in keep]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def bench_direct(stages: list[list[str]], rounds: int) -> dict:
    """Milliseconds per stage (p50, p90): each backend, per answer vs one call per stage."""
    from pyramid_moa.embedding import MiniLMEmbedder, OnnxMiniLMEmbedder

    out = {}
    models = {"numpy": MiniLMEmbedder(), "onnx": OnnxMiniLMEmbedder()}
    for name, m in models.items():
        ways = {
            "one call per answer": lambda s, m=m: [m.embed([t]) for t in s],
            "one call per stage": lambda s, m=m: m.embed(s),
        }
        if name == "onnx":
            ways["one padded batch per stage"] = lambda s, m=m: m.embed(s, batch=len(s))
        reps = 1 if name == "numpy" else rounds  # numpy is slow: one pass is enough to see it
        for way, fn in ways.items():
            for s in stages[:3]:
                fn(s)  # warm up
            ts = []
            for _ in range(reps):
                for s in stages:
                    t0 = time.perf_counter()
                    fn(s)
                    ts.append((time.perf_counter() - t0) * 1000)
            out[f"{name}: {way}"] = {"p50_ms": pct(ts, 50), "p90_ms": pct(ts, 90), "n": len(ts)}
    return out


def build_deployment(tmp: Path, questions: list[dict], stages: list[list[str]], backend: str) -> tuple[Path, Path]:
    """Replay traces of the stages' answers (the oracle repeats gpt-3.5-turbo's), a calibration set with a
    fitted ``semantic`` calibration and a ``gsm8k`` one, and the spec serving them with an embedder on
    ``backend``; ``none``: the semantic calibration fitted without the cosine signal (``--no-embedding``),
    served with no embedder at all."""
    import dataclasses

    import yaml

    from pyramid_moa.artifact import CalibrationArtifact, save_calibration_set
    from pyramid_moa.calibration import LogisticCalibrator
    from pyramid_moa.dataset import load_routing_data
    from pyramid_moa.features import make_feature_set
    from pyramid_moa.fitting import RouterFit, Target
    from pyramid_moa.semantic import prepare

    root = tmp / "traces"
    embed = backend != "none"
    cal = tmp / f"calibration-{'embedding' if embed else 'cores'}.json"
    if not (root / "questions.jsonl").is_file():
        (root / "traces").mkdir(parents=True, exist_ok=True)
        qs = [{"idx": i, "question": q["question"], "gold": None} for i, q in enumerate(questions)]
        (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
        names = [*COMMITTEE, ORACLE]
        meta = [{"name": n, "params_b": 7, "license": "see ../shared/data/nq"} for n in names]
        (root / "sources.json").write_text(json.dumps(meta))
        for k, name in enumerate(names):
            lines = [
                json.dumps({"idx": i, "samples": [{"text": s[min(k, 2)], "answer": None, "output_tokens": 40}]})
                for i, s in enumerate(stages)
            ]
            (root / "traces" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    if not cal.is_file():
        d = load_routing_data(str(root), COMMITTEE, ORACLE, task="semantic", params={ORACLE: [70.0]})
        prepare(d, tmp / "embeddings.npz", embed=embed)
        fitted = RouterFit(d, np.arange(d.n), "flops", "semantic").artifact(Target("max_disagreement", 0.0))

        # Served as one stage of the whole committee, like the gsm8k calibration below, so both tasks make
        # the same three agent calls and the difference is the semantic stage's own work. (The fit keeps
        # fid alone here, the oracle being gpt-3.5-turbo's double: one answer embedded instead of three, as
        # in the runs recorded before this was fixed.) The fit supplies the pair model the features use.
        def whole_committee(feature_set: str, **options) -> list[dict]:
            """One stage of the whole committee with a constant calibrator (force_tier decides the route)."""
            names = make_feature_set(feature_set, COMMITTEE, **options).names
            calibrator = LogisticCalibrator([0.0] * len(names), 10.0).to_dict()
            return [{"agents": COMMITTEE, "feature_names": names, "calibrator": calibrator, "threshold": 0.5}]

        sem = dataclasses.replace(
            fitted, stages=whole_committee(fitted.feature_set, **d.feature_options), oracle_only=False
        )
        gsm = CalibrationArtifact(
            committee=COMMITTEE,
            oracle=ORACLE,
            feature_set="agreement",
            calibrator="logistic",
            stages=whole_committee("agreement"),
            target={"kind": "oracle_rate", "value": 0.0, "cost_model": "flops"},
            cost_model=sem.cost_model,
            fitted_on={"idx": []},
            task="gsm8k",
            fit_summary={"mean_output_tokens": sem.fit_summary["mean_output_tokens"]},
        )
        save_calibration_set(cal, [sem, gsm])
    spec = {
        "profile": "replay",
        "engine": {"kind": "replay", "traces": str(root), "seconds_per_token": 0.0, "instance_count": 1},
        "agents": [{"name": n} for n in COMMITTEE],
        "oracle": {"name": ORACLE},
        "router": {"model_name": "pyramid", "task": "semantic", "task_fallback": "oracle", "agent_timeout_s": 60},
    }
    if embed:
        spec["embedder"] = {"model_name": "embedder", "instance_count": 1, "backend": backend}
    spec_path = tmp / f"semantic-{backend}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return spec_path, cal


def bench_served(tmp: Path, questions: list[dict], stages: list[list[str]], backend: str, rounds: int, n: int) -> dict:
    from pyramid_client import PyramidClient
    from pyramid_deploy.render import render
    from pyramid_ops.server import TritonServer

    spec, cal = build_deployment(tmp, questions, stages, backend)
    repo = tmp / f"repo-{backend}"
    render(spec, repo, calibration=cal)
    lat: dict[str, list[float]] = {"semantic": [], "gsm8k": []}
    stage_ms: dict[str, list[float]] = {"semantic": [], "gsm8k": []}
    with TritonServer(repo, log_path=tmp / f"tritonserver-{backend}.log") as server:
        with PyramidClient(server.grpc_url) as client:
            for q in questions[:3]:  # warm up both paths
                for task in lat:
                    client.ask(q["question"], task=task, force_tier="committee")
            for _ in range(rounds):
                for q in questions[:n]:
                    for task in lat:  # interleaved: any drift of the machine hits both alike
                        r = client.ask(q["question"], task=task, force_tier="committee")
                        assert r.tier == "committee", (task, r.tier)
                        assert sorted(r.calls) == sorted(COMMITTEE), (task, r.calls)  # same calls, both tasks
                        lat[task].append(r.latency_s * 1000)
                        stage_ms[task].append(sum(v for k, v in r.server_latency_ms.items() if k.startswith("stage")))
    res = {
        task: {
            "p50_ms": pct(v, 50),
            "p90_ms": pct(v, 90),
            "stage_p50_ms": pct(stage_ms[task], 50),
            "n": len(v),
        }
        for task, v in lat.items()
    }
    res["added_p50_ms"] = res["semantic"]["p50_ms"] - res["gsm8k"]["p50_ms"]
    res["added_stage_p50_ms"] = res["semantic"]["stage_p50_ms"] - res["gsm8k"]["stage_p50_ms"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nq", type=Path, default=ROOT.parent / "shared" / "data" / "nq")
    ap.add_argument("--n", type=int, default=40, help="questions (stages of 3 answers)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--backends",
        default="onnx,none,numpy",
        help="embedder backends served, comma-separated (none: a cores-only calibration, no embedder)",
    )
    ap.add_argument("--no-direct", action="store_true", help="skip the in-process embedder measurement")
    ap.add_argument("--no-served", action="store_true", help="skip the tritonserver measurement")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_semantic")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")  # the small fit's CV folds
    if not (a.nq / "questions.jsonl").is_file():
        print(f"bench_semantic: no NQ traces at {a.nq} (--nq); skipped", file=sys.stderr)
        return 0
    questions, stages = load_stages(a.nq, max(a.n, FIT_MIN))
    from pyramid_moa.cores import embedding_text
    from pyramid_moa.embedding import MiniLMEmbedder, ort_threads

    # What a served semantic stage embeds: each answer's core text, not the whole answer.
    embedded = [[embedding_text(t, q.get("question")) for t in s] for q, s in zip(questions, stages[: a.n])]
    tok = MiniLMEmbedder().tokenizer
    ntok = [len(tok.encode(t)) for s in embedded for t in s]
    result: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{_cpu_model()}, {len(os.sched_getaffinity(0))} CPUs usable ({platform.machine()})",
        "stages": min(a.n, len(stages)),
        "answers_per_stage": 3,
        "tokens_per_answer": {"mean": statistics.mean(ntok), "median": statistics.median(ntok), "max": max(ntok)},
        "ort_threads": ort_threads(),
    }
    if not a.no_direct:
        result["direct"] = bench_direct(embedded, a.rounds)
    if not a.no_served:
        result["served"] = {}
        with tempfile.TemporaryDirectory(prefix="bench_semantic-") as tmp:
            for backend in [b for b in a.backends.split(",") if b]:
                result["served"][backend] = bench_served(Path(tmp), questions, stages, backend, a.rounds, a.n)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    tk = result["tokens_per_answer"]
    print(f"{result['stages']} stages of 3 NQ answers' core texts ({tk['mean']:.1f} tokens mean, {tk['max']} max); "
          f"ONNX Runtime intra-op threads {result['ort_threads']}")  # fmt: skip
    if "direct" in result:
        print("\n| embedder, in process | p50 ms / stage | p90 ms / stage |\n|---|---|---|")
        for k, v in result["direct"].items():
            print(f"| {k} | {v['p50_ms']:.1f} | {v['p90_ms']:.1f} |")
    for backend, r in result.get("served", {}).items():
        print(f"\n| tritonserver, embedder {backend} | p50 ms | p90 ms | router stage p50 ms |\n|---|---|---|---|")
        for task in ("gsm8k", "semantic"):
            v = r[task]
            print(
                f"| task={task} ({v['n']} requests) | {v['p50_ms']:.1f} | {v['p90_ms']:.1f} | {v['stage_p50_ms']:.1f} |"
            )
        print(f"| semantic adds (p50) | {r['added_p50_ms']:.1f} | | {r['added_stage_p50_ms']:.1f} |")
    print(f"\nresults: {a.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
