"""Who is calling, on gRPC: the `authorization` metadata (`Bearer <key>`), per call.

`AuthInterceptor` wraps every FineTuningService method (health and reflection stay
open): it authenticates the key, counts the call against the tenant's rate limit, and
ends it UNAUTHENTICATED or RESOURCE_EXHAUSTED (service/faces/grpc/errors.py) before the
method runs; otherwise the method reads its caller with `current_policy()`.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from service.auth.limits import TenantPolicy
from service.auth.tenants import DEFAULT_TENANT
from service.faces.context import ServiceContext
from service.faces.grpc.errors import abort
from service.faces.grpc.interceptors import wrap_method_handler

_POLICY: contextvars.ContextVar[TenantPolicy] = contextvars.ContextVar("tuneforge_tenant")


def current_policy() -> TenantPolicy:
    """The caller of the method being served (set by `AuthInterceptor`)."""
    return _POLICY.get()


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, context: ServiceContext, service_name: str) -> None:
        self.context = context
        self.prefix = f"/{service_name}/"

    def _admit(self, metadata: tuple[tuple[str, Any], ...], peer: str) -> TenantPolicy:
        access = self.context.access
        if access is None:
            return TenantPolicy.unlimited(DEFAULT_TENANT, self.context.store.bucket)
        authorization = next(
            (str(value) for key, value in metadata if key.lower() == "authorization"), None
        )
        return access.authenticate(authorization, peer_address(peer))

    async def _policy(self, context: grpc.aio.ServicerContext) -> TenantPolicy:
        try:
            # A key is read from the store (cached briefly): not on the event loop.
            metadata = tuple(context.invocation_metadata() or ())
            return await asyncio.to_thread(self._admit, metadata, context.peer() or "")
        except Exception as error:
            await abort(context, error)

    @asynccontextmanager
    async def _authenticated(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        _POLICY.set(await self._policy(context))
        yield

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler
        wrapped = wrap_method_handler(handler, self._authenticated)
        if wrapped is None:
            raise RuntimeError(
                f"{details.method}: a method kind the auth interceptor does not wrap"
            )
        return wrapped


def peer_address(peer: str) -> str:
    """The client's address from a gRPC peer ("ipv4:10.0.0.7:51234", "ipv6:[::1]:5",
    "unix:/path"), without the port: what its budget of unknown-key lookups is kept by."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")] if "]" in rest else rest
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer
