"""FineTuningService: parse, call the core (`JobService`, service/core/job_service.py),
map. Nothing else.

The core is synchronous (it talks to S3 through boto3); each call runs it in a worker
thread, so a watch that waits between polls holds no thread while it waits.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from jobstore.store import Job
from service.core import jobs
from service.core.job_feed import Rendered, Watcher
from service.errors import InvalidArgument
from service.faces.context import ServiceContext
from service.faces.grpc import mapping
from service.faces.grpc.auth import current_policy
from service.faces.grpc.errors import ShuttingDown, abort

Response = TypeVar("Response")
DEFAULT_PAGE_SIZE = 20


# How long a WatchJob call waits for a change before it looks again (nothing is sent).
_WATCH_WAIT_SECONDS = 30.0

# A job handed to many WatchJob calls becomes one message, made once.
_rendered = Rendered()


def _watch_response(job: Job) -> pb.WatchJobResponse:
    return _rendered.get(job, lambda job: pb.WatchJobResponse(job=mapping.job_message(job)))


def mapped(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn whatever a handler raises into its gRPC status (service/faces/grpc/errors.py)."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def streaming(
            self: Any, request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await abort(context, error)

        return streaming

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort(context, error)

    return unary


class FineTuningServicer(pb_grpc.FineTuningServiceServicer):
    def __init__(self, context: ServiceContext) -> None:
        self.context = context
        self.jobs = context.jobs
        self._shutdown = asyncio.Event()
        self._watchers: set[Watcher] = set()  # of the WatchJob calls under way

    def shut_down(self) -> None:
        """End every watch (UNAVAILABLE: call again elsewhere); called on the server's loop."""
        self._shutdown.set()
        for watcher in list(self._watchers):
            watcher.end(ShuttingDown("the server is shutting down; watch the job again"))

    @staticmethod
    def _run(
        function: Callable[..., Response], *arguments: Any, **keywords: Any
    ) -> Awaitable[Response]:
        return asyncio.to_thread(function, *arguments, **keywords)

    @mapped
    async def CreateJob(
        self, request: pb.CreateJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateJobResponse:
        job_create = mapping.job_create(request)
        if request.validate_only:
            report = await self._run(self.jobs.validate, job_create, current_policy())
            return pb.CreateJobResponse(validation_report=mapping.validation_report_message(report))
        job, created = await self._run(self.jobs.create, job_create, current_policy())
        return pb.CreateJobResponse(job=mapping.job_message(job), created=created)

    @mapped
    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        job = await self._run(self.jobs.get, request.job_id, tenant=current_policy().tenant)
        return mapping.job_message(job)

    @mapped
    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsResponse:
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= page_size <= jobs.MAX_PAGE_SIZE:
            raise InvalidArgument(
                f"pageSize must be between 1 and {jobs.MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})",
                field="pageSize",
            )
        found, next_token = await self._run(
            self.jobs.list_jobs,
            tenant=current_policy().tenant,
            state=mapping.state_filter(request.state),
            limit=page_size,
            page_token=request.page_token or None,
        )
        return pb.ListJobsResponse(
            jobs=[mapping.job_message(job) for job in found], next_page_token=next_token or ""
        )

    @mapped
    async def StopJob(
        self, request: pb.StopJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.Job:
        job = await self._run(self.jobs.stop, request.job_id, tenant=current_policy().tenant)
        return mapping.job_message(job)

    @mapped
    async def PauseJob(
        self, request: pb.PauseJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.Job:
        job = await self._run(self.jobs.pause, request.job_id, tenant=current_policy().tenant)
        return mapping.job_message(job)

    @mapped
    async def ResumeJob(
        self, request: pb.ResumeJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.Job:
        job = await self._run(self.jobs.resume, request.job_id, current_policy())
        return mapping.job_message(job)

    @mapped
    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchJobResponse]:
        # The replica's feed of the job (service/core/job_feed.py): one read per poll for
        # every watcher; RESOURCE_EXHAUSTED past the limits on open streams.
        watcher = await self.jobs.watch(request.job_id, tenant=current_policy().tenant)
        self._watchers.add(watcher)
        try:
            yield _watch_response(watcher.first)
            while not watcher.done:
                if self._shutdown.is_set():
                    raise ShuttingDown("the server is shutting down; watch the job again")
                # Woken by a change, or by shut_down() (next() raises): no polling, which
                # for a thousand calls cost more than the messages they send.
                job = await watcher.next(timeout=_WATCH_WAIT_SECONDS)
                if job is not None:
                    yield _watch_response(job)
        finally:
            self._watchers.discard(watcher)
            watcher.close()

    @mapped
    async def ListJobEvents(
        self, request: pb.ListJobEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobEventsResponse:
        events, next_token = await self._run(
            self.jobs.events,
            request.job_id,
            tenant=current_policy().tenant,
            page_size=request.page_size or jobs.DEFAULT_EVENTS_PAGE_SIZE,
            page_token=request.page_token or None,
        )
        return pb.ListJobEventsResponse(
            events=[mapping.event_message(e) for e in events], next_page_token=next_token or ""
        )

    @mapped
    async def ListCheckpoints(
        self, request: pb.ListCheckpointsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCheckpointsResponse:
        found = await self._run(
            self.jobs.checkpoints, request.job_id, tenant=current_policy().tenant
        )
        return pb.ListCheckpointsResponse(
            checkpoints=[mapping.checkpoint_message(c) for c in found]
        )

    @mapped
    async def ReadJobLog(
        self, request: pb.ReadJobLogRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReadJobLogResponse:
        piece = await self._run(
            self.jobs.read_log,
            request.job_id,
            tenant=current_policy().tenant,
            offset=request.offset,
            max_bytes=request.max_bytes or jobs.DEFAULT_LOG_BYTES,
            attempt=request.attempt if request.HasField("attempt") else None,
        )
        return pb.ReadJobLogResponse(
            data=piece.data,
            next_offset=piece.next_offset,
            size=piece.size,
            attempt=piece.attempt or 0,
        )
