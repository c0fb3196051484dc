"""The one HTTP application: the REST face and the Bedrock face on one port, error mapping,
the request size limit. Assembles the faces; no face imports another."""

from __future__ import annotations

import json

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.faces.bedrock import routes as bedrock_routes
from service.faces.context import ServiceContext
from service.faces.rest.errors import error_body, install_error_handlers
from service.faces.rest.routes import admin, health, jobs, metrics_data, ui, webhook_secret
from service.faces.rest.routes import metrics as prometheus_metrics
from service.faces.rest.routes import stream as job_stream
from service.observability.middleware import RequestObservation


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, before they are read whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            error_body(
                "PAYLOAD_TOO_LARGE", f"the request body is larger than {self.max_bytes} bytes"
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(context: ServiceContext) -> FastAPI:
    app = FastAPI(
        title="tuneforge",
        version="1.0",
        description="Self-hosted fine-tuning jobs over S3-compatible object storage.",
    )
    app.state.context = context
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(metrics_data.router)  # GET /v1/jobs/{id}/metrics
    app.include_router(ui.router)  # the dashboard at /ui (static files)
    app.include_router(health.router)
    app.include_router(admin.router)  # /v1/admin/keys (TUNEFORGE_ADMIN_KEY)
    app.include_router(webhook_secret.router)  # /v1/webhook-secret: the caller's own
    app.include_router(prometheus_metrics.router)  # GET /metrics
    app.include_router(job_stream.router)  # GET /v1/jobs/{id}/stream (Server-Sent Events)
    app.include_router(bedrock_routes.router)  # Bedrock-compatible face (own error shape)
    app.add_middleware(BodySizeLimit, max_bytes=context.settings.max_request_bytes)
    # Outermost: every response, a refused one included, carries its request id.
    app.add_middleware(RequestObservation, metrics=context.metrics)
    return app
