"""``GET /v1/models`` and ``GET /v1/models/{id}``: pyramid, pyramid-committee, pyramid-oracle, each engine
(404 for another name)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .state import GatewayState, state
from .upstream import Target

OWNER = "pyramid-moa"
router = APIRouter()


def model_card(t: Target, created: int) -> dict[str, Any]:
    info: dict[str, Any] = {"kind": t.kind}
    if t.force_tier:
        info["force_tier"] = t.force_tier
    if t.tier:
        info["tier"] = t.tier
    return {"id": t.name, "object": "model", "created": created, "owned_by": OWNER, "pyramid": info}


@router.get("/v1/models")
async def list_models(request: Request, st: GatewayState = Depends(state)) -> JSONResponse:  # noqa: B008 - FastAPI's dependency idiom
    with st.admit(request):
        cat = await st.gateway.catalog()
        return JSONResponse({"object": "list", "data": [model_card(t, st.created) for t in cat.targets.values()]})


@router.get("/v1/models/{model:path}")
async def retrieve_model(request: Request, model: str, st: GatewayState = Depends(state)) -> JSONResponse:  # noqa: B008 - FastAPI's dependency idiom
    with st.admit(request):
        _, target = await st.gateway.resolve(model)
        return JSONResponse(model_card(target, st.created))
