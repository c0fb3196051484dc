"""`GET /v1/jobs/{id}/stream`: a job's live progress as Server-Sent Events.

The same source as gRPC's WatchJob (`service.core.jobs.JobWatch`): the current job first,
then the job again each time what a reader sees of it changes (state, progress,
failure), ending after a terminal state. Every message is a whole `JobPublic`, so a
client that reconnects misses nothing it needs: it gets the current job at once.

    event: job
    id: 7
    data: {"jobId": "...", "state": "RUNNING", "progress": {...}, ...}

`id` counts the messages of a stream; a reconnect sending `Last-Event-ID: 7` goes on
counting from 8. Comment lines (`: keep-alive`) go out while nothing changes, so
proxies keep the connection open. Works with `curl -N`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Path
from fastapi.responses import StreamingResponse

from jobstore.store import Job
from service.core.schemas import JobPublic
from service.faces.http_auth import CurrentTenant
from service.faces.rest.deps import ContextDep
from service.faces.rest.errors import ERROR_RESPONSES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)

KEEP_ALIVE_SECONDS = 15.0


def _message(job: Job, sequence: int) -> bytes:
    data = json.dumps(JobPublic.from_job(job).model_dump(mode="json"), separators=(",", ":"))
    return f"event: job\nid: {sequence}\ndata: {data}\n\n".encode()


@router.get(
    "/{job_id}/stream",
    response_class=StreamingResponse,
    summary="Follow a job: Server-Sent Events until it ends",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`event: job` messages whose data is the job (JobPublic JSON).",
        }
    },
)
async def stream_job(
    job_id: Annotated[str, Path(description="The job's id.")],
    context: ContextDep,
    caller: CurrentTenant,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="Resume numbering after this id.")
    ] = None,
) -> StreamingResponse:
    watch = context.jobs.watch(job_id, tenant=caller.tenant)
    # Read once before answering, so an unknown job is a 404, not an empty stream.
    first = await asyncio.to_thread(watch.poll)
    assert first is not None  # the first poll always returns the job
    start = int(last_event_id) + 1 if last_event_id and last_event_id.isdigit() else 1
    poll_seconds = context.settings.grpc_watch_poll_seconds

    async def events() -> AsyncIterator[bytes]:
        sequence = start
        yield _message(first, sequence)
        last_sent = time.monotonic()
        while not watch.done:
            await asyncio.sleep(poll_seconds)
            job = await asyncio.to_thread(watch.poll)
            if job is not None:
                sequence += 1
                yield _message(job, sequence)
                last_sent = time.monotonic()
            elif time.monotonic() - last_sent >= KEEP_ALIVE_SECONDS:
                yield b": keep-alive\n\n"
                last_sent = time.monotonic()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
