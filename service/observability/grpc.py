"""The gRPC edge's request observation: an interceptor, the gRPC twin of middleware.py.

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
from typing import Any

import grpc

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

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        operation = operation_name(details.method)
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                with bind_request(await self._begin(context)):
                    try:
                        return await inner_unary(request, context)
                    finally:
                        self._end(operation, context, started)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def unary_stream(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                started = time.perf_counter()
                with bind_request(await self._begin(context)):
                    try:
                        async for item in inner_stream(request, context):
                            yield item
                    finally:
                        self._end(operation, context, started)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # other kinds (none in this service) pass unobserved
