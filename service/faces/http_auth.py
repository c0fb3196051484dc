"""Who is calling, for the faces served over HTTP with API keys (REST, OpenAI).

`current_tenant` authenticates the caller (`Authorization: Bearer <key>`), counts the
request against its tenant's rate limit, and gives the tenant's `TenantPolicy`. It is
`async def`: FastAPI runs a sync dependency in the thread pool, and that hop cost more
CPU than the work itself; what may block (a key's first store read) is sent to the
thread pool explicitly.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from service.auth.limits import TenantPolicy
from service.auth.tenants import DEFAULT_TENANT
from service.faces.context import ServiceContext

# Declares the scheme in /openapi.json; the header itself is read below, so that a
# missing or malformed one gets the face's own 401 body rather than FastAPI's 403.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `tuneforge keys create`.")


async def current_tenant(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> TenantPolicy:
    context: ServiceContext = request.app.state.context
    if context.access is None:
        return TenantPolicy.unlimited(DEFAULT_TENANT, context.store.bucket)
    authorization = request.headers.get("authorization")
    client = request.client.host if request.client is not None else ""
    if context.access.authenticates_without_io(authorization):
        return context.access.authenticate(authorization, client)
    return await run_in_threadpool(context.access.authenticate, authorization, client)


CurrentTenant = Annotated[TenantPolicy, Depends(current_tenant)]
