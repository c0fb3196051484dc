"""One helper for server interceptors: run a method handler inside a per-call scope.

`grpc.aio` interceptors see a method's `RpcMethodHandler`, not the call; to act around
each call (authenticate it, observe it) an interceptor returns a new handler whose
behaviour enters a scope, awaits or iterates the original, and leaves the scope. The
scope is an async context manager made per call from the call's `ServicerContext`;
contextvars it sets are visible to the method (async generators share the caller's
context).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

CallScope = Callable[[grpc.aio.ServicerContext], AbstractAsyncContextManager[None]]


def wrap_method_handler(
    handler: grpc.RpcMethodHandler, scope: CallScope
) -> grpc.RpcMethodHandler | None:
    """`handler`, with each unary-unary or unary-stream call run inside `scope(context)`.

    None for the streaming-request kinds (reflection's is one): the caller decides
    whether such a method may pass unwrapped.
    """
    if handler.unary_unary is not None:
        inner_unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(context):
                return await inner_unary(request, context)

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
            async with scope(context):
                async for item in inner_stream(request, context):
                    yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return None
