#!/usr/bin/env python3
"""``make demo``: a real tritonserver with the rendered replay profile, GSM8K questions through it.

1. start ``tritonserver`` on free ports with the model repository rendered by ``make render``
   (``pyramid_ops.server.TritonServer``; stopped by its PID however this script ends);
2. ``pyramid run-gsm8k`` over gRPC on a sample of questions the calibration was *not* fitted on
   (its ``fitted_on.idx``): the per-question table and the summary (accuracy, oracle-call rate,
   cost relative to always-oracle, latency); results in ``--json``;
3. one escalating question of the sample streamed over HTTP (``pyramid ask --stream``): the
   committee's provisional answer, then the oracle's;
4. the OpenAI-compatible gateway (gateway/, ``pyramid_gateway``) started beside the server, and that
   question asked once more through the official ``openai`` Python SDK.

Exit status: 0 when every request succeeded; 1 when the server failed to start or a request
failed; 2 on bad arguments or a missing rendering/calibration.

usage: .venv/bin/python scripts/demo.py [--repository out/model_repository/replay]
           [--calibration out/calibration/replay.json] [--n 40] [--seed 0] [--json out/demo/run.json]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from pyramid_cli.gsm8k import run_gsm8k_main
from pyramid_client.cli import ask_main
from pyramid_ops.server import ServerError, TritonServer

ROOT = Path(__file__).resolve().parents[1]


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the server's context manager, which stops it


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Pyramid MoA demo: a real tritonserver, GSM8K questions through it")
    ap.add_argument("--repository", default=str(ROOT / "out" / "model_repository" / "replay"))
    ap.add_argument("--calibration", default=str(ROOT / "out" / "calibration" / "replay.json"))
    ap.add_argument("--questions", default=str(ROOT / "data" / "gsm8k" / "questions.jsonl"))
    ap.add_argument("--n", type=int, default=40, help="questions, drawn from those the calibration was not fitted on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--json", default=str(ROOT / "out" / "demo" / "run.json"))
    ap.add_argument("--log", default=str(ROOT / "out" / "demo" / "tritonserver.log"))
    ap.add_argument("--start-timeout", type=float, default=180.0, help="seconds for the server to become ready")
    args = ap.parse_args(argv)

    repo, calibration = Path(args.repository), Path(args.calibration)
    for path, how in ((repo / "pyramid" / "config.pbtxt", "make render"), (calibration, "make render")):
        if not path.is_file():
            print(f"demo: error: {path} is missing; run `{how}` first", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _terminate)
    log = Path(args.log)
    if log.exists():
        log.unlink()
    print(f"starting tritonserver on {repo} (log {log}) ...", flush=True)
    try:
        with TritonServer(repo, log_path=log).start(timeout_s=args.start_timeout) as server:
            print(f"ready: gRPC {server.grpc_url}, HTTP {server.http_url}\n", flush=True)
            print(
                f"== pyramid run-gsm8k: {args.n} questions the calibration was not fitted on "
                f"(seed {args.seed}), gRPC ==",
                flush=True,
            )
            rc = run_gsm8k_main(
                [
                    "--url", server.grpc_url, "--protocol", "grpc", "--questions", args.questions,
                    "--n", str(args.n), "--seed", str(args.seed), "--exclude-fitted", str(calibration),
                    "--concurrency", str(args.concurrency), "--table", "--json", args.json,
                ]
            )  # fmt: skip
            print(f"results: {args.json}\n", flush=True)
            escalated = _first_escalated(Path(args.json), Path(args.questions))
            if escalated is not None:
                idx, question = escalated
                print(f"== pyramid ask --stream (question {idx}, escalated above), HTTP ==", flush=True)
                rc = max(rc, ask_main([question, "--url", f"http://{server.http_url}", "--stream"]))
            question = escalated[1] if escalated is not None else _first_question(Path(args.questions))
            rc = max(rc, _ask_openai(server.grpc_url, repo, log.with_name("gateway.log"), question))
    except ServerError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    print(f"\ntritonserver stopped; demo {'ok' if rc == 0 else 'FAILED'}", flush=True)
    return rc


def _ask_openai(grpc_url: str, repo: Path, log: Path, question: str) -> int:
    """Step 4: the gateway on a free port, one question through the official OpenAI SDK."""
    import openai

    from pyramid_gateway.process import GatewayError, GatewayProcess
    from pyramid_ops.server import free_ports

    port = free_ports(1)[0]
    print(f"\n== the openai SDK through the OpenAI-compatible gateway (port {port}, log {log}) ==", flush=True)
    try:
        with GatewayProcess(grpc_url, port, log_path=log, extra_args=["--model-repository", str(repo)]) as gw:
            client = openai.OpenAI(base_url=gw.url, api_key="unused")
            print(f'client = openai.OpenAI(base_url="{gw.url}", api_key="unused")')
            print('client.chat.completions.create(model="pyramid", messages=[{"role": "user", "content": question}])')
            r = client.chat.completions.create(model="pyramid", messages=[{"role": "user", "content": question}])
    except (GatewayError, openai.OpenAIError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    p = r.model_extra["pyramid"]
    print(f"question: {question}")
    print(f"answer:   {p['answer']} (tier {p['tier']}, escalated {p['escalated']}, cost {p['cost']})")
    print(
        f"usage:    {r.usage.prompt_tokens} prompt + {r.usage.completion_tokens} completion tokens over {len(p['calls'])} calls"
    )
    print(f"text:     {r.choices[0].message.content[:300]}", flush=True)
    return 0


def _first_question(questions: Path) -> str:
    line = next(ln for ln in questions.read_text(encoding="utf-8").splitlines() if ln.strip())
    return json.loads(line)["question"]


def _first_escalated(results: Path, questions: Path) -> tuple[int, str] | None:
    try:
        rows = json.loads(results.read_text(encoding="utf-8"))["results"]
    except (OSError, ValueError, KeyError):
        return None
    idx = next((r["idx"] for r in rows if r.get("escalated")), None)
    if idx is None:
        return None
    for line in questions.read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            if q["idx"] == idx:
                return idx, q["question"]
    return None


if __name__ == "__main__":
    sys.exit(main())
