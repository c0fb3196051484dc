"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from jobstore.storage import S3Location
from service.errors import TuneforgeError
from service.faces.rest.deps import ContextDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the store answers and passed the probe")
def readyz(context: ContextDep) -> JSONResponse:
    if not context.store_conformant:
        return JSONResponse({"status": "not ready", "reason": "store probe not passed"}, 503)
    try:
        context.store.storage.head(S3Location(context.store.bucket, "_ready"))
    except TuneforgeError as error:
        return JSONResponse({"status": "not ready", "reason": error.message}, 503)
    return JSONResponse({"status": "ready"})
