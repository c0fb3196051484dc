"""Request ids and job context carried by every log line, through contextvars.

Invariants:
- A request id comes from the caller's `X-Request-Id` header (REST) or `x-request-id`
  metadata (gRPC) when it is a short, printable token; otherwise one is generated. The
  edge returns it to the caller and binds it here, so every log line written while the
  request is served (store calls in worker threads included: `asyncio.to_thread` and
  Starlette's thread pool copy contextvars) carries it.
- Job lines carry `job_id`, `tenant` and `attempt`, bound with `bind_job()` by whoever
  works on one job (the reconciler, the core, the trainer).
- Binding is scoped: leaving the `with` block restores what was bound before.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

REQUEST_ID_HEADER = "X-Request-Id"
GRPC_REQUEST_ID_KEY = "x-request-id"
# Anything else (control characters, JSON fragments, very long values) is replaced, so
# a caller cannot forge log lines through the header.
_ACCEPTED_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(offered: str | None) -> str:
    """The caller's request id if it is acceptable, else a new one."""
    if offered and _ACCEPTED_REQUEST_ID.match(offered):
        return offered
    return new_request_id()


def current_request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


@contextmanager
def bind_request(request_id: str) -> Iterator[None]:
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        yield


@contextmanager
def bind_job(job_id: str, tenant: str, attempt: int) -> Iterator[None]:
    """Every log line inside the block is about this job."""
    with structlog.contextvars.bound_contextvars(job_id=job_id, tenant=tenant, attempt=attempt):
        yield
