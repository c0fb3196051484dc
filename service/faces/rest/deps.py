"""FastAPI dependencies, as `Annotated` aliases the routes declare.

`CurrentTenant` authenticates the caller (`Authorization: Bearer <key>`), counts the
request against its tenant's rate limit, and gives the tenant's `TenantPolicy`; every
route that touches jobs declares it and passes `.tenant` to the core.

The dependencies are `async def`: FastAPI runs a sync dependency in the thread pool, and
that hop (a queue put, a thread wake-up, a GIL hand-off) cost more CPU than the work
itself, several times per request. What may block (a key's first store read) is sent to
the thread pool explicitly.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from jobstore.store import JobStore
from service.auth.limits import TenantPolicy
from service.auth.tenants import DEFAULT_TENANT
from service.core.job_service import JobService
from service.errors import Unauthenticated
from service.faces.context import ServiceContext

# Declares the scheme in /openapi.json; the header itself is read below, so that a
# missing or malformed one gets the service's own 401 body rather than FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API key: `tuneforge keys create`.")


async def get_context(request: Request) -> ServiceContext:
    context: ServiceContext = request.app.state.context
    return context


async def get_store(request: Request) -> JobStore:
    context: ServiceContext = request.app.state.context
    return context.store


async def get_job_service(request: Request) -> JobService:
    context: ServiceContext = request.app.state.context
    return context.jobs


async def current_tenant(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TenantPolicy:
    context: ServiceContext = request.app.state.context
    if context.access is None:
        return TenantPolicy.unlimited(DEFAULT_TENANT, context.store.bucket)
    authorization = request.headers.get("authorization")
    client = request.client.host if request.client is not None else ""
    if context.access.authenticates_without_io(authorization):
        return context.access.authenticate(authorization, client)
    return await run_in_threadpool(context.access.authenticate, authorization, client)


async def require_admin(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    context: ServiceContext = request.app.state.context
    if context.access is None:
        raise Unauthenticated("key administration needs the server's TUNEFORGE_ADMIN_KEY")
    context.access.check_admin(request.headers.get("authorization"))


ContextDep = Annotated[ServiceContext, Depends(get_context)]
StoreDep = Annotated[JobStore, Depends(get_store)]
JobsDep = Annotated[JobService, Depends(get_job_service)]
CurrentTenant = Annotated[TenantPolicy, Depends(current_tenant)]
AdminDep = Annotated[None, Depends(require_admin)]
