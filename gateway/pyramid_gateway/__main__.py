"""``python -m pyramid_gateway`` / ``pyramid-gateway``: serve the OpenAI-compatible API with uvicorn.

pyramid-gateway --triton localhost:8001 --port 9000

Where Triton puts inference behind a key (a spec's ``security.inference_key``), the gateway sends it from
``$PYRAMID_INFERENCE_KEY_FILE`` (a file only its owner can read) or ``$PYRAMID_INFERENCE_KEY``.
"""

from __future__ import annotations

import argparse
import os
import sys

from pyramid_client.keys import inference_key_from_env

from .app import GatewayConfig, create_app
from .auth import ENV_VAR, KeyAuth
from .upstream import Deployment, deployment_from_repository

DEFAULT_PORT = 9000


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyramid-gateway", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--triton", default=os.environ.get("TRITON_GRPC_URL", "localhost:8001"), help="Triton gRPC host:port"
    )
    ap.add_argument("--router", default="pyramid", help="the router's Triton model name")
    ap.add_argument("--model-repository", help="read the router's engines from this rendered repository's config")
    ap.add_argument("--committee", help="the router's committee engines, comma-separated (with --oracle)")
    ap.add_argument("--oracle", help="the router's oracle engine")
    ap.add_argument("--default-max-tokens", type=int, default=512, help="max_tokens of a direct engine call")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=int(os.environ.get("OPENAI_PORT", DEFAULT_PORT)))
    ap.add_argument("--timeout-s", type=float, default=300.0, help="bound on one request's route")
    ap.add_argument("--retries", type=int, default=1, help="retries of a call that finds Triton unavailable")
    ap.add_argument("--retry-after-s", type=int, default=1, help="Retry-After of a 503 / 429")
    ap.add_argument(
        "--api-keys-file", help=f"require 'Authorization: Bearer KEY' (lines: KEY [MAX_CONCURRENT]); also ${ENV_VAR}"
    )
    ap.add_argument("--max-concurrent-per-key", type=int, default=0, help="429 past this many requests per key")
    ap.add_argument("--access-log", action="store_true", help="uvicorn's per-request access log")
    ap.add_argument("--log-level", default="info")
    return ap


def config_from(args: argparse.Namespace) -> GatewayConfig:
    """The config; ValueError / OSError naming the flag or file at fault."""
    auth = KeyAuth.load(args.api_keys_file, None, args.max_concurrent_per_key, args.retry_after_s)
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
        key.value if key is not None else None,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = parser().parse_args(argv)
    try:
        config = config_from(args)
    except (OSError, ValueError) as exc:  # AccessError (a bad key or key file) is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(config), host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
