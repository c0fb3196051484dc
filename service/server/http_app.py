"""The one HTTP application: the REST, Bedrock and OpenAI faces on one port, error mapping,
the request size limits. Assembles the faces; no face imports another."""

from __future__ import annotations

import json

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.faces.bedrock import routes as bedrock_routes
from service.faces.context import ServiceContext
from service.faces.openai import routes as openai_routes
from service.faces.openai.errors import error_body as openai_error_body
from service.faces.rest.errors import error_body, install_error_handlers
from service.faces.rest.routes import admin, health, jobs, metrics_data, ui, webhook_secret
from service.faces.rest.routes import metrics as prometheus_metrics
from service.faces.rest.routes import stream as job_stream
from service.observability.middleware import RequestObservation

# File uploads (the OpenAI face's POST /v1/files) have a limit of their own.
UPLOAD_PATH = "/v1/files"


class BodySizeLimit:
    """Refuse request bodies over their limit with 413, before they are read whole:
    `max_bytes`, or `max_upload_bytes` for a file upload."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"] == UPLOAD_PATH
        limit = self.max_upload_bytes if upload else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit, upload=upload)
            return
        received = 0
        exceeded = False  # a body without Content-Length (chunked) grew past the limit
        app_started = False  # the app's own answer began before that
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                exceeded = True
                raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # A route reading its body itself (a multipart form) catches _TooLarge and
            # answers 400 ("error parsing the body"): the caller gets the 413 instead.
            nonlocal app_started, refused
            if exceeded and not app_started:
                if not refused:
                    refused = True
                    await self._refuse(send, limit, upload=upload)
                return
            app_started = app_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if app_started:  # its answer is half sent: the connection is cut, not ended
                raise
            if not refused:
                refused = True
                await self._refuse(send, limit, upload=upload)

    async def _refuse(self, send: Send, limit: int, *, upload: bool) -> None:
        if upload:  # in the shape the OpenAI face answers in
            answer = openai_error_body(
                f"the file is larger than this service takes ({limit} bytes with the form; "
                "TUNEFORGE_MAX_FILE_BYTES)",
                kind="invalid_request_error",
                param="file",
                code="file_too_large",
            )
        else:
            answer = error_body(
                "PAYLOAD_TOO_LARGE", f"the request body is larger than {limit} bytes"
            )
        body = json.dumps(answer).encode()
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
    app.include_router(openai_routes.router)  # OpenAI-compatible face (own error shape)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=context.settings.max_request_bytes,
        max_upload_bytes=context.settings.max_file_bytes,
    )
    # Outermost: every response, a refused one included, carries its request id.
    app.add_middleware(RequestObservation, metrics=context.metrics)
    return app
