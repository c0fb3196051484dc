"""`GET /metrics`: this replica's Prometheus metrics (service/observability/metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.faces.rest.deps import ContextDep

router = APIRouter(tags=["monitoring"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics of this replica",
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
def metrics(context: ContextDep) -> Response:
    body, content_type = context.metrics.exposition()
    return Response(body, media_type=content_type)
