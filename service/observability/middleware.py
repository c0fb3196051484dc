"""The REST edge's request observation (ASGI middleware), for the native and Bedrock faces.

For every HTTP request: accept the caller's `X-Request-Id` or make one, bind it for the
request's log lines, return it in the response header, count the request and time it
under its face and route template, and write one access log line.

The operation label is the matched route's template (`GET /v1/jobs/{job_id}`); a path
no route matches is `unmatched`, so scanners cannot create label values.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.observability.metrics import Metrics
from service.observability.request_context import (
    REQUEST_ID_HEADER,
    accepted_request_id,
    bind_request,
)

log = logging.getLogger("tuneforge.access")

_HEADER = REQUEST_ID_HEADER.lower().encode()


def route_labels(scope: Scope) -> tuple[str, str]:
    """(face, operation) of the route that served `scope`."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return "rest", "unmatched"
    face = "bedrock" if "bedrock" in (getattr(route, "tags", None) or []) else "rest"
    return face, f"{scope.get('method', '')} {path}"


class RequestObservation:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope["headers"]).get(_HEADER)
        request_id = accepted_request_id(offered.decode("latin-1") if offered else None)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != _HEADER]
                headers.append((_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with bind_request(request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                seconds = time.perf_counter() - started
                face, operation = route_labels(scope)
                self.metrics.observe_request(face, operation, str(status), seconds)
                log.info(
                    "request",
                    extra={
                        "face": face,
                        "operation": operation,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 1),
                    },
                )
