"""``GET /health/ready`` (Triton and the router model ready; 503 + Retry-After otherwise), ``GET /health/live``
(the gateway process answers) and ``GET /metrics`` (the gateway's Prometheus metrics; the router's are on
Triton's /metrics)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from .errors import unavailable
from .state import GatewayState, error_response, state

router = APIRouter()


@router.get("/health/ready")
async def ready(st: GatewayState = Depends(state)) -> JSONResponse:  # noqa: B008 - FastAPI's dependency idiom
    ok, why = await st.gateway.upstream.ready()
    if not ok:
        return error_response(unavailable(why, st.config.retry_after_s))
    return JSONResponse({"status": "ready"})


@router.get("/health/live")
async def live() -> JSONResponse:
    return JSONResponse({"status": "live"})


@router.get("/metrics")
async def prometheus(st: GatewayState = Depends(state)) -> PlainTextResponse:  # noqa: B008 - FastAPI's dependency idiom
    return PlainTextResponse(st.metrics.render(), media_type="text/plain; version=0.0.4")
