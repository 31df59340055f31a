"""``pyramid ask``, ``pyramid run-gsm8k`` and ``pyramid record`` (subcommands of the ``pyramid`` entry point).

Exit codes: 0 ok; 1 the server answered an error or could not be reached (run-gsm8k: any
question failed; the summary is printed all the same); 2 usage errors (bad flags, unreadable
questions or calibration file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from .client import AsyncPyramidClient, PyramidClient, resolve_endpoint
from .types import TIERS, PyramidError, PyramidResult


def _add_connection(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--url",
        help="server HOST:PORT, or grpc:// / http:// URL (default localhost:8001 for gRPC, localhost:8000 for HTTP)",
    )
    ap.add_argument("--protocol", choices=["grpc", "http"], help="default: from the URL's scheme, else grpc")
    ap.add_argument("--model", default="pyramid", help="router model name (default pyramid)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per request, retries included (default 60)")
    ap.add_argument("--retries", type=int, default=3, help="retries when the server is unavailable (default 3)")


def _add_routing(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--threshold", type=float, help="per-request escalation threshold in [0, 1]")
    ap.add_argument("--force-tier", choices=list(TIERS))
    ap.add_argument(
        "--deadline-ms", type=int, help="return the committee's answer, provisional, if the oracle is slower"
    )
    ap.add_argument("--strict", action="store_true", help="an oracle failure is an error, not a degraded answer")
    ap.add_argument("--max-tokens", type=int)


def _routing_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "threshold": args.threshold,
        "force_tier": args.force_tier,
        "deadline_ms": args.deadline_ms,
        "strict": True if args.strict else None,
        "max_tokens": args.max_tokens,
    }


def _endpoint(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, str]:
    try:
        return resolve_endpoint(args.url, args.protocol)
    except ValueError as exc:
        ap.error(str(exc))  # exits 2
        raise


def format_result(r: PyramidResult) -> str:
    flags = [f for f, on in (("provisional", r.provisional), ("degraded", r.degraded)) if on]
    costs = ", ".join(f"{v:.3f} ({k})" for k, v in r.costs.items() if v is not None)
    if not costs and r.cost is not None:
        costs = f"{r.cost:.3f}"
    lines = [
        f"answer: {r.answer}",
        f"tier: {r.tier}{' (' + ', '.join(flags) + ')' if flags else ''}  escalated: {r.escalated}  "
        f"confidence: {r.confidence:.3f}  agreement: {r.agreement:.2f}",
        f"agents: {', '.join(f'{a}={v}' for a, v in r.agent_answers.items()) or '-'}"
        + (f"  failed: {', '.join(r.failed_agents)}" if r.failed_agents else ""),
        f"cost vs one oracle call: {costs or 'n/a'}",
        f"latency: {r.latency_s * 1000:.1f} ms",
    ]
    return "\n".join(lines)


def ask_main(argv: list[str] | None = None) -> int:
    """``pyramid ask "question" [--url HOST:PORT] [--protocol grpc|http] [--threshold T]
    [--force-tier TIER] [--deadline-ms MS] [--strict] [--stream] [--json]``."""
    ap = argparse.ArgumentParser(prog="pyramid ask", description="Ask a Pyramid MoA Triton deployment one question")
    ap.add_argument("question")
    _add_connection(ap)
    _add_routing(ap)
    ap.add_argument("--stream", action="store_true", help="print the provisional answer too, as it arrives")
    ap.add_argument("--json", action="store_true", help="the whole result as JSON (--stream: one JSON line each)")
    args = ap.parse_args(argv)
    protocol, url = _endpoint(ap, args)
    try:
        with PyramidClient(url, args.model, args.timeout, args.retries, protocol=protocol) as client:
            kwargs = _routing_kwargs(args)
            if args.stream:
                n = 0
                for r in client.ask_stream(args.question, **kwargs):
                    n += 1
                    if args.json:
                        print(json.dumps(r.to_dict()), flush=True)
                    else:
                        head = "provisional" if r.provisional else "final"
                        print(f"{'' if n == 1 else chr(10)}[{head}]\n{format_result(r)}", flush=True)
                if n == 0:
                    raise PyramidError("the server ended the request without a response", "INTERNAL")
                return 0
            r = client.ask(args.question, **kwargs)
    except PyramidError as exc:
        print(f"pyramid ask: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"pyramid ask: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(r.to_dict(), indent=1) if args.json else format_result(r))
    return 0


def gsm8k_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pyramid run-gsm8k",
        description="Send GSM8K questions through a Pyramid MoA deployment; print accuracy, oracle-call rate, "
        "cost relative to always-oracle and latency",
    )
    ap.add_argument("--n", type=int, help="number of questions (default: all eligible)")
    ap.add_argument("--questions", help="questions.jsonl (default data/gsm8k/questions.jsonl)")
    ap.add_argument("--seed", type=int, help="sample the questions at random with this seed (default: the first N)")
    ap.add_argument("--idx", help="comma-separated question ids to choose from (default: all)")
    ap.add_argument(
        "--exclude-fitted", metavar="CALIBRATION", help="skip the questions this calibration artifact was fitted on"
    )
    _add_connection(ap)
    _add_routing(ap)
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    ap.add_argument("--table", action="store_true", help="print a table of the per-question decisions")
    ap.add_argument("--json", metavar="FILE", help="write the summary and every result to FILE")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def run_gsm8k_main(argv: list[str] | None = None) -> int:
    from . import gsm8k  # noqa: PLC0415

    ap = gsm8k_parser()
    args = ap.parse_args(argv)
    protocol, url = _endpoint(ap, args)
    try:
        if args.concurrency < 1:
            raise gsm8k.UsageError(f"--concurrency must be >= 1, got {args.concurrency}")
        questions = gsm8k.load_questions(args.questions or gsm8k.default_questions_path())
        only = None
        if args.idx:
            try:
                only = [int(x) for x in args.idx.split(",") if x.strip()]
            except ValueError:
                raise gsm8k.UsageError(f"--idx must be comma-separated integers, got {args.idx!r}") from None
        exclude = gsm8k.fitted_indices(args.exclude_fitted) if args.exclude_fitted else set()
        chosen = gsm8k.select(questions, args.n, args.seed, exclude, only)
    except gsm8k.UsageError as exc:
        print(f"pyramid run-gsm8k: error: {exc}", file=sys.stderr)
        return 2

    progress = gsm8k.Progress(len(chosen), sys.stderr, enabled=not args.quiet)

    async def run() -> list[gsm8k.Outcome]:
        async with AsyncPyramidClient(url, args.model, args.timeout, args.retries, protocol=protocol) as client:
            return await gsm8k.run_questions(
                client,
                chosen,
                args.concurrency,
                on_done=lambda o: progress.update(o.error is None),
                **_routing_kwargs(args),
            )

    try:
        outcomes = asyncio.run(run())
    except ValueError as exc:
        print(f"pyramid run-gsm8k: error: {exc}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    summary = gsm8k.summarize(outcomes)
    if args.table:
        print(gsm8k.format_table(outcomes))
        print()
    print(gsm8k.format_summary(summary))
    errors = [o for o in outcomes if o.error is not None]
    for o in errors[:5]:
        print(f"error on idx {o.question.idx}: {o.error}", file=sys.stderr)
    if len(errors) > 5:
        print(f"... and {len(errors) - 5} more errors", file=sys.stderr)
    if args.json:
        from pyramid_moa.artifact import write_json_atomic  # noqa: PLC0415

        write_json_atomic(
            Path(args.json),
            {
                "summary": summary,
                "url": url,
                "protocol": protocol,
                "model": args.model,
                "request": {k: v for k, v in _routing_kwargs(args).items() if v is not None},
                "results": [o.to_dict() for o in outcomes],
            },
        )
    return 1 if errors else 0


def record_main(argv: list[str] | None = None) -> int:
    """``pyramid record --questions FILE --out DIR [--url ...]``: see ``pyramid_client.record``."""
    from .record import main as record  # noqa: PLC0415

    return record(argv)


def main(argv: list[str] | None = None) -> int:
    """``python -m pyramid_client ask|run-gsm8k|record ...``"""
    argv = sys.argv[1:] if argv is None else argv
    commands = {"ask": ask_main, "run-gsm8k": run_gsm8k_main, "record": record_main}
    if not argv or argv[0] not in commands:
        print(f"usage: pyramid {{{','.join(commands)}}} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])
