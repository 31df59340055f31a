"""The HTTP transport: a FastAPI app (served by uvicorn) with OpenAI's routes, one module per family.

    GET  /v1/models             pyramid, pyramid-committee, pyramid-oracle, each engine     routes_models
    GET  /v1/models/{id}        one of them (404 for another name)
    POST /v1/chat/completions   stream or not                                               routes_completions
    POST /v1/completions        stream or not
    GET  /health/ready          Triton and the router model ready (503 + Retry-After otherwise)   routes_health
    GET  /health/live           the gateway process answers
    GET  /metrics               the gateway's Prometheus metrics (the router's are on Triton's /metrics)

As vLLM's entrypoints do, protocol (``protocol``, ``responses``), serving (``serving``: the rules, no HTTP)
and transport (the routes) are kept apart; the routes share one ``state.GatewayState`` (configuration,
the Triton side, metrics) on ``app.state.pyramid``. This module assembles them: the state, the lifespan
(the Triton side made at startup, closed at shutdown), the error handlers (every error in OpenAI's format)
and the routers.

Why FastAPI + uvicorn: the most used ASGI stack for OpenAI-compatible servers (vLLM's and Triton's
own frontends use it), kept up, and asyncio-native like the router's gRPC client, so one event loop
carries every request with no thread hand-offs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import routes_completions, routes_health, routes_models
from .errors import ApiError, clip, internal_error
from .serving import Gateway
from .state import GatewayConfig, GatewayState, error_response
from .upstream import Upstream

__all__ = ["GatewayConfig", "create_app"]


def create_app(config: GatewayConfig, upstream: Upstream | None = None) -> FastAPI:
    """The app. ``upstream``: an already built Triton side (tests); else made at startup."""
    st = GatewayState(config)  # ValueError: an unreadable budget state file

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if st.book is not None:  # what a restart keeps of the keys' budgets, said at every start
            log = logging.getLogger("uvicorn.error")
            (log.info if st.book.state_path else log.warning)("API key budgets: %s", st.book_note)
        up = upstream or Upstream(
            config.triton_url, config.router, config.timeout_s, config.retries, config.deployment, config.inference_key
        )
        st.serving = Gateway(up, config.retry_after_s)
        with contextlib.suppress(Exception):  # Triton may start later: discovered on first use then
            await up.catalog()
        try:
            yield
        finally:
            await up.close()

    app = FastAPI(title="Pyramid MoA OpenAI-compatible API", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.pyramid = st
    app.state.metrics = st.metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(internal_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else None
        message = f"{clip(request.method, 16)} {clip(request.url.path)}: {exc.detail}"
        return error_response(ApiError(exc.status_code, message, code=code))

    for family in (routes_models, routes_health, routes_completions):
        app.include_router(family.router)
    return app
