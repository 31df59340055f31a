"""``python -m pyramid_gateway`` / ``pyramid-gateway``: serve the OpenAI-compatible API with uvicorn.

pyramid-gateway --triton localhost:8001 --port 9000

It listens on 127.0.0.1 unless ``--host`` says otherwise, and refuses to listen beyond loopback without API keys
(``--api-keys-file`` / ``$PYRAMID_GATEWAY_API_KEYS``) unless ``--insecure-no-keys`` (docs/SECURITY.md).

Where Triton puts inference behind a key (a spec's ``security.inference_key``), the gateway sends it from
``$PYRAMID_INFERENCE_KEY_FILE`` (a file only its owner can read) or ``$PYRAMID_INFERENCE_KEY``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from pyramid_client.keys import inference_key_from_env
from pyramid_client.wire import DEFAULT_MAX_TOKENS

from .app import GatewayConfig, create_app
from .auth import ENV_VAR, KeyAuth
from .budget import DEFAULT_BASE_THRESHOLD
from .limits import DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, protocol_class
from .upstream import Deployment, deployment_from_repository

DEFAULT_PORT = 9000
DEFAULT_HOST = "127.0.0.1"
MAX_BODY_ENV = "PYRAMID_GATEWAY_MAX_BODY_BYTES"


def is_loopback(host: str) -> bool:
    """``host`` (what ``--host`` binds) listens on loopback only: ``localhost`` or a loopback address."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pyramid-gateway",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument(
        "--triton", default=os.environ.get("TRITON_GRPC_URL", "localhost:8001"), help="Triton gRPC host:port"
    )
    ap.add_argument("--router", default="pyramid", help="the router's Triton model name")
    ap.add_argument("--model-repository", help="read the router's engines from this rendered repository's config")
    ap.add_argument("--committee", help="the router's committee engines, comma-separated (with --oracle)")
    ap.add_argument("--oracle", help="the router's oracle engine")
    ap.add_argument(
        "--default-max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="max_tokens of a direct engine call"
    )
    ap.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on; beyond loopback only with API keys (or --insecure-no-keys)",
    )
    ap.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("OPENAI_PORT", DEFAULT_PORT)),
        help="port to listen on (also $OPENAI_PORT)",
    )
    ap.add_argument("--timeout-s", type=float, default=300.0, help="bound on one request's route")
    ap.add_argument("--retries", type=int, default=1, help="retries of a call that finds Triton unavailable")
    ap.add_argument("--retry-after-s", type=int, default=1, help="Retry-After of a 503 / 429")
    ap.add_argument(
        "--api-keys-file",
        help="require 'Authorization: Bearer KEY' (lines: KEY [MAX_CONCURRENT] [name=NAME] "
        f"[budget=calls:N/hour|cost:X/day] [on_exhausted=committee|refuse] [low=F] [threshold=T]); also ${ENV_VAR}",
    )
    ap.add_argument(
        "--budget-state",
        help="keep the API keys' budget spend of the current hour / day in this file (JSON, mode 0600), so a restart "
        "keeps it; without it a restart resets every key's spend (the gateway logs a warning at start)",
    )
    ap.add_argument(
        "--budget-base-threshold",
        type=float,
        default=DEFAULT_BASE_THRESHOLD,
        help="the escalation threshold a key's lowered threshold starts from when its budget runs low (a key's "
        "threshold= overrides it); set it at or under the deployment's fitted thresholds",
    )
    ap.add_argument("--max-concurrent-per-key", type=int, default=0, help="429 past this many requests per key")
    ap.add_argument(
        "--insecure-no-keys",
        action="store_true",
        help="listen beyond loopback without API keys (anyone who reaches the port may use the models)",
    )
    ap.add_argument(
        "--max-body-bytes",
        type=int,
        default=os.environ.get(MAX_BODY_ENV, str(DEFAULT_MAX_BODY_BYTES)),  # argparse applies type= to it
        help=f"a larger request body is a 413 (also ${MAX_BODY_ENV})",
    )
    ap.add_argument(
        "--header-timeout-s",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT_S,
        help="request line and headers must arrive within this (else 408, connection closed)",
    )
    ap.add_argument(
        "--body-timeout-s",
        type=float,
        default=DEFAULT_BODY_TIMEOUT_S,
        help="the request body must arrive within this after the headers (else 408, connection closed)",
    )
    ap.add_argument("--access-log", action="store_true", help="uvicorn's per-request access log")
    ap.add_argument("--log-level", default="info", help="uvicorn's log level")
    return ap


def config_from(args: argparse.Namespace) -> GatewayConfig:
    """The config; ValueError / OSError naming the flag or file at fault."""
    auth = KeyAuth.load(args.api_keys_file, None, args.max_concurrent_per_key, args.retry_after_s)
    if auth is None and not is_loopback(args.host) and not args.insecure_no_keys:
        raise ValueError(
            f"--host {args.host} listens beyond loopback and no API keys are set: anyone who reaches the port could "
            f"use the models. Give keys (--api-keys-file FILE or ${ENV_VAR}), listen on {DEFAULT_HOST}, or pass "
            "--insecure-no-keys (e.g. behind a proxy that authenticates)"
        )
    for flag, value in (("--max-body-bytes", args.max_body_bytes), ("--header-timeout-s", args.header_timeout_s),
                        ("--body-timeout-s", args.body_timeout_s)):  # fmt: skip
        if value <= 0:
            raise ValueError(f"{flag} must be > 0, got {value}")
    if not 0.0 <= args.budget_base_threshold <= 1.0:
        raise ValueError(f"--budget-base-threshold must be in [0, 1], got {args.budget_base_threshold}")
    deployment = None
    if args.model_repository:
        deployment = deployment_from_repository(args.model_repository, args.router)
    elif args.committee or args.oracle:
        if not (args.committee and args.oracle):
            raise ValueError("--committee and --oracle go together")
        committee = tuple(a.strip() for a in args.committee.split(",") if a.strip())
        deployment = Deployment(committee, args.oracle.strip(), args.default_max_tokens)
    key = inference_key_from_env()  # $PYRAMID_INFERENCE_KEY_FILE / $PYRAMID_INFERENCE_KEY: a server that keys inference
    return GatewayConfig(
        args.triton, args.router, args.timeout_s, args.retries, args.retry_after_s, auth, deployment,
        key.value if key is not None else None, args.max_body_bytes, args.body_timeout_s, args.budget_state,
        args.budget_base_threshold,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = parser().parse_args(argv)
    try:
        config = config_from(args)
        app = create_app(config)  # reads the budget state file
    except (OSError, ValueError) as exc:  # AccessError (a bad key or key file) is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        http=protocol_class(args.header_timeout_s, drain_timeout_s=args.body_timeout_s),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
