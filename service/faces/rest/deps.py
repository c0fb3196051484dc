"""FastAPI dependencies, as `Annotated` aliases the routes declare.

`CurrentTenant` (service/faces/http_auth.py, shared with the OpenAI face) authenticates
the caller and gives the tenant's `TenantPolicy`; every route that touches jobs declares
it and passes `.tenant` to the core.

The dependencies are `async def`: FastAPI runs a sync dependency in the thread pool, and
that hop (a queue put, a thread wake-up, a GIL hand-off) cost more CPU than the work
itself, several times per request. What may block (a key's first store read) is sent to
the thread pool explicitly.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from jobstore.store import JobStore
from service.core.job_service import JobService
from service.errors import Unauthenticated
from service.faces.context import ServiceContext
from service.faces.http_auth import bearer_scheme


async def get_context(request: Request) -> ServiceContext:
    context: ServiceContext = request.app.state.context
    return context


async def get_store(request: Request) -> JobStore:
    context: ServiceContext = request.app.state.context
    return context.store


async def get_job_service(request: Request) -> JobService:
    context: ServiceContext = request.app.state.context
    return context.jobs


async def require_admin(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    context: ServiceContext = request.app.state.context
    if context.access is None:
        raise Unauthenticated("key administration needs the server's TUNEFORGE_ADMIN_KEY")
    context.access.check_admin(request.headers.get("authorization"))


ContextDep = Annotated[ServiceContext, Depends(get_context)]
StoreDep = Annotated[JobStore, Depends(get_store)]
JobsDep = Annotated[JobService, Depends(get_job_service)]
AdminDep = Annotated[None, Depends(require_admin)]
