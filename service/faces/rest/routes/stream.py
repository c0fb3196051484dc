"""`GET /v1/jobs/{id}/stream`: a job's live progress as Server-Sent Events.

The same source as gRPC's WatchJob (a watcher of the replica's job feeds,
service/core/job_feed.py: one read per poll for all who follow the job): the current job
first, then the job again each time what a reader sees of it changes (state, progress,
failure), ending after a terminal state. Every message is a whole `JobPublic`, so a
client that reconnects misses nothing it needs: it gets the current job at once, and a
slow client skips to the newest. Past the replica's limits on open streams (per tenant,
in all) the answer is 429 with Retry-After. While the store is down the stream sends
keep-alives; a job that can no longer be read (gone, or its record broken) ends it, and a
reconnect is answered that error.

    event: job
    id: 7
    data: {"jobId": "...", "state": "RUNNING", "progress": {...}, ...}

`id` counts the messages of a stream; a reconnect sending `Last-Event-ID: 7` goes on
counting from 8. Comment lines (`: keep-alive`) go out while nothing changes, so
proxies keep the connection open. Works with `curl -N`.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Path
from fastapi.responses import StreamingResponse

from jobstore.store import Job
from service.core.job_feed import Rendered
from service.core.schemas import JobPublic
from service.errors import TuneforgeError
from service.faces.http_auth import CurrentTenant
from service.faces.rest.deps import ContextDep
from service.faces.rest.errors import ERROR_RESPONSES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)

KEEP_ALIVE_SECONDS = 15.0


# A job handed to many streams is turned into JSON once.
_rendered = Rendered()


def _data(job: Job) -> str:
    return json.dumps(JobPublic.from_job(job).model_dump(mode="json"), separators=(",", ":"))


def _message(job: Job, sequence: int) -> bytes:
    return f"event: job\nid: {sequence}\ndata: {_rendered.get(job, _data)}\n\n".encode()


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
    # An id that is not ASCII digits (Last-Event-ID is the client's) starts again at 1.
    resumed = last_event_id is not None and last_event_id.isascii() and last_event_id.isdigit()
    start = int(last_event_id) + 1 if resumed and last_event_id else 1
    # Opened (the job read) before answering: an unknown job is a 404 and a stream past
    # the limits a 429, not an empty stream.
    watcher = await context.jobs.watch(job_id, tenant=caller.tenant)

    async def events() -> AsyncIterator[bytes]:
        try:
            sequence = start
            yield _message(watcher.first, sequence)
            while not watcher.done:
                try:
                    job = await watcher.next(timeout=KEEP_ALIVE_SECONDS)
                except TuneforgeError:
                    # The job can no longer be read (logged by the feed): the stream ends,
                    # and the client's reconnect is answered the error itself.
                    return
                if job is None:
                    yield b": keep-alive\n\n"
                    continue
                sequence += 1
                yield _message(job, sequence)
        finally:
            watcher.close()

    stream = events()
    # A client gone before its stream began never runs the finally above.
    weakref.finalize(stream, watcher.close)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
