"""Client library for a Pyramid MoA Triton deployment: gRPC (``tritonclient``) or HTTP (Triton's
generate extension, standard library), sync and asyncio, streaming, typed results."""

from .cli import ask_main, run_gsm8k_main
from .client import DEFAULT_HTTP_URL, DEFAULT_URL, AsyncPyramidClient, PyramidClient, resolve_endpoint
from .types import PyramidError, PyramidResult

__all__ = [
    "DEFAULT_HTTP_URL",
    "DEFAULT_URL",
    "AsyncPyramidClient",
    "PyramidClient",
    "PyramidError",
    "PyramidResult",
    "ask_main",
    "resolve_endpoint",
    "run_gsm8k_main",
]
