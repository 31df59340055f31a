"""OpenAI-compatible HTTP API in front of a Pyramid MoA Triton deployment (FastAPI + uvicorn).

A Triton client: it calls the router with ``pyramid_client``'s asyncio gRPC client and the engines
with ``tritonclient.grpc.aio``. Modules: ``protocol`` (OpenAI request types and what each field
maps to), ``conversation`` (messages -> the router's question), ``serving`` (the routing logic),
``responses`` (OpenAI bodies, stream chunks, ``x-pyramid-*`` headers), ``upstream`` (Triton),
``app`` (the app's assembly), ``routes_models`` / ``routes_completions`` (streaming, disconnects) /
``routes_health`` (the HTTP routes, one module per endpoint family), ``state`` (what the routes share),
``auth`` (API keys), ``metrics``.
"""

from .app import GatewayConfig, create_app

__all__ = ["GatewayConfig", "create_app"]
