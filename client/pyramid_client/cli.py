"""``pyramid ask`` (``python -m pyramid_client ask``, ``pyramid-client ask``): one question to a
running deployment; and the connection and routing flags the ``pyramid`` command's other
deployment subcommands share (``pyramid_cli``).

Exit codes: 0 ok; 1 the server answered an error or could not be reached; 2 usage errors (bad
flags).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .client import PyramidClient, resolve_endpoint
from .keys import inference_key_from_env
from .types import PyramidError, PyramidResult
from .wire import INTERNAL, TIERS


def add_connection_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--url",
        help="server HOST:PORT, or grpc:// / http:// URL (default localhost:8001 for gRPC, localhost:8000 for HTTP)",
    )
    ap.add_argument("--protocol", choices=["grpc", "http"], help="default: from the URL's scheme, else grpc")
    ap.add_argument("--model", default="pyramid", help="router model name (default pyramid)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per request, retries included (default 60)")
    ap.add_argument("--retries", type=int, default=3, help="retries when the server is unavailable (default 3)")


def add_routing_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--threshold",
        "--escalation-threshold",
        dest="escalation_threshold",
        type=float,
        help="per-request escalation threshold in [0, 1] (the option escalation_threshold)",
    )
    ap.add_argument("--force-tier", choices=list(TIERS))
    ap.add_argument(
        "--deadline-ms", type=int, help="return the committee's answer, provisional, if the oracle is slower"
    )
    ap.add_argument("--strict", action="store_true", help="an oracle failure is an error, not a degraded answer")
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument(
        "--task",
        help="answer task: gsm8k, semantic (any prompt), choice, text, or auto (detected from the prompt) "
        "(default: the deployment's)",
    )


def routing_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``ask`` options of ``add_routing_args``' flags."""
    return {
        "escalation_threshold": args.escalation_threshold,
        "force_tier": args.force_tier,
        "deadline_ms": args.deadline_ms,
        "strict": True if args.strict else None,
        "max_tokens": args.max_tokens,
        "task": args.task,
    }


def parse_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, str, str]:
    """(arguments, protocol, url): ``ap``'s arguments and the endpoint of its ``add_connection_args``
    flags; a usage error (exit 2) when they disagree."""
    args = ap.parse_args(argv)
    try:
        return args, *resolve_endpoint(args.url, args.protocol)
    except ValueError as exc:
        ap.error(str(exc))  # exits 2
        raise


def env_inference_key() -> str | None:
    """The inference key of a server that keys inference, from ``$PYRAMID_INFERENCE_KEY_FILE`` (a file only
    its owner can read) or ``$PYRAMID_INFERENCE_KEY``; None if neither is set. A bad one: ``AccessError``
    (a ValueError) naming its source."""
    key = inference_key_from_env()
    return key.value if key is not None else None


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


def stream_head(r: PyramidResult, n: int) -> str:
    """The label of the ``n``-th streamed response. A stream's later response is its last (the router
    sends at most the committee's provisional answer, then the final one); when the oracle missed the
    deadline the final one is the committee's answer again, still provisional, and says so."""
    if not r.provisional:
        return "final"
    if n == 1:
        return "provisional"
    return (
        "final: the committee's answer, provisional (the oracle did not answer by --deadline-ms; its call is paid for)"
    )


def ask_main(argv: list[str] | None = None) -> int:
    """``pyramid ask "question" [--url HOST:PORT] [--protocol grpc|http] [--threshold T]
    [--force-tier TIER] [--deadline-ms MS] [--strict] [--stream] [--json]``."""
    ap = argparse.ArgumentParser(
        prog="pyramid ask",
        description="Ask a Pyramid MoA Triton deployment one question",
        epilog="A server that keys inference: the key is read from $PYRAMID_INFERENCE_KEY_FILE or $PYRAMID_INFERENCE_KEY.",
    )
    ap.add_argument("question")
    add_connection_args(ap)
    add_routing_args(ap)
    ap.add_argument("--stream", action="store_true", help="print the provisional answer too, as it arrives")
    ap.add_argument("--json", action="store_true", help="the whole result as JSON (--stream: one JSON line each)")
    args, protocol, url = parse_args(ap, argv)
    try:
        key = env_inference_key()
        with PyramidClient(url, args.model, args.timeout, args.retries, protocol=protocol, inference_key=key) as client:
            kwargs = routing_kwargs(args)
            if args.stream:
                n = 0
                for r in client.ask_stream(args.question, **kwargs):
                    n += 1
                    if args.json:
                        print(json.dumps(r.to_dict()), flush=True)
                    else:
                        head = stream_head(r, n)
                        print(f"{'' if n == 1 else chr(10)}[{head}]\n{format_result(r)}", flush=True)
                if n == 0:
                    raise PyramidError("the server ended the request without a response", INTERNAL)
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


def main(argv: list[str] | None = None) -> int:
    """``python -m pyramid_client ask ...`` (the ``pyramid`` command has ``run-gsm8k``, ``record``,
    ``calibrate`` and ``evaluate`` too: ``pip install`` the project for it)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "ask":
        print(
            "usage: pyramid-client ask QUESTION ... (the other subcommands are the pyramid command's)", file=sys.stderr
        )
        return 2
    return ask_main(argv[1:])
