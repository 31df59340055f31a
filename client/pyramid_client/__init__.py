"""Client library for a Pyramid MoA Triton deployment: gRPC (``tritonclient``) or HTTP (Triton's
generate extension, standard library), sync and asyncio, streaming, typed results.

Installable on its own (``pip install ./client``: the ``pyramid-client`` distribution); the wire
format it shares with the server is ``pyramid_client.wire``."""

from .cli import ask_main
from .client import DEFAULT_HTTP_URL, DEFAULT_URL, AskOptions, AsyncPyramidClient, PyramidClient, resolve_endpoint
from .types import PyramidError, PyramidResult

__all__ = [
    "DEFAULT_HTTP_URL",
    "DEFAULT_URL",
    "AskOptions",
    "AsyncPyramidClient",
    "PyramidClient",
    "PyramidError",
    "PyramidResult",
    "ask_main",
    "resolve_endpoint",
]
