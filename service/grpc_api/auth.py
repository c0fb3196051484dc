"""Who is calling, on gRPC: the `authorization` metadata (`Bearer <key>`), per call.

`AuthInterceptor` wraps every FineTuningService method (health and reflection stay
open): it authenticates the key, counts the call against the tenant's rate limit, and
ends it UNAUTHENTICATED or RESOURCE_EXHAUSTED (service/grpc_api/errors.py) before the
method runs; otherwise the method reads its caller with `current_policy()`.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from service.auth.limits import TenantPolicy
from service.auth.tenants import DEFAULT_TENANT
from service.context import ServiceContext
from service.grpc_api.errors import abort

_POLICY: contextvars.ContextVar[TenantPolicy] = contextvars.ContextVar("tuneforge_tenant")


def current_policy() -> TenantPolicy:
    """The caller of the method being served (set by `AuthInterceptor`)."""
    return _POLICY.get()


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, context: ServiceContext, service_name: str) -> None:
        self.context = context
        self.prefix = f"/{service_name}/"

    def _admit(self, metadata: tuple[tuple[str, Any], ...]) -> TenantPolicy:
        access = self.context.access
        if access is None:
            return TenantPolicy.unlimited(DEFAULT_TENANT, self.context.store.bucket)
        authorization = next(
            (str(value) for key, value in metadata if key.lower() == "authorization"), None
        )
        return access.authenticate(authorization)

    async def _policy(self, context: grpc.aio.ServicerContext) -> TenantPolicy:
        try:
            # A key is read from the store (cached briefly): not on the event loop.
            return await asyncio.to_thread(self._admit, tuple(context.invocation_metadata() or ()))
        except Exception as error:
            await abort(context, error)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                _POLICY.set(await self._policy(context))
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
                _POLICY.set(await self._policy(context))
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        raise RuntimeError(f"{details.method}: a method kind the auth interceptor does not wrap")
