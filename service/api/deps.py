"""FastAPI dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.context import ServiceContext
from service.store import JobStore


def get_context(request: Request) -> ServiceContext:
    context: ServiceContext = request.app.state.context
    return context


def get_store(request: Request) -> JobStore:
    return get_context(request).store


ContextDep = Annotated[ServiceContext, Depends(get_context)]
StoreDep = Annotated[JobStore, Depends(get_store)]
