"""The gRPC face's request observation: an interceptor, the gRPC twin of
service/observability/middleware.py.

For every call: take the request id from the `x-request-id` metadata or make one, send
it back in the initial metadata, bind it for the call's log lines (store calls in
worker threads included: `asyncio.to_thread` copies contextvars), count the call and
time it under face `grpc` and its method name (`GetJob`), and write one log line.
It is the outermost interceptor, so refused calls (authentication) are counted too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import grpc

from service.faces.grpc.interceptors import wrap_method_handler
from service.observability.metrics import Metrics
from service.observability.request_context import (
    GRPC_REQUEST_ID_KEY,
    accepted_request_id,
    bind_request,
)

log = logging.getLogger("tuneforge.access")


def operation_name(method: str) -> str:
    """`GetJob` for `/tuneforge.v1.FineTuningService/GetJob`; other services keep their
    full name (`/grpc.health.v1.Health/Check`), so names never collide."""
    if method.startswith("/tuneforge.v1.FineTuningService/"):
        return method.rsplit("/", 1)[-1]
    return method


class ObservationInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def _begin(self, context: grpc.aio.ServicerContext) -> str:
        metadata = context.invocation_metadata() or ()
        offered = next(
            (str(value) for key, value in metadata if key.lower() == GRPC_REQUEST_ID_KEY), None
        )
        request_id = accepted_request_id(offered)
        await context.send_initial_metadata(((GRPC_REQUEST_ID_KEY, request_id),))
        return request_id

    def _end(self, operation: str, context: grpc.aio.ServicerContext, started: float) -> None:
        code = context.code()
        name = code.name if isinstance(code, grpc.StatusCode) else "OK"
        seconds = time.perf_counter() - started
        self.metrics.observe_request("grpc", operation, name, seconds)
        log.info(
            "request",
            extra={
                "face": "grpc",
                "operation": operation,
                "status": name,
                "duration_ms": round(seconds * 1000, 1),
            },
        )

    @asynccontextmanager
    async def _observed(
        self, operation: str, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        started = time.perf_counter()
        with bind_request(await self._begin(context)):
            try:
                yield
            finally:
                self._end(operation, context, started)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        operation = operation_name(details.method)
        wrapped = wrap_method_handler(handler, partial(self._observed, operation))
        # Other kinds (reflection's stream-stream method) pass unobserved.
        return handler if wrapped is None else wrapped
