"""`Client`: the tuneforge gRPC API, typed, with retries, deadlines, `watch` and `wait`.

    from tuneforge import Client

    with Client("127.0.0.1:50051") as client:
        job = client.create_job({...}).job        # the same body as REST's POST /v1/jobs
        for update in client.watch(job.job_id):   # RUNNING, progress..., COMPLETED
            print(update.state, update.progress.step)
        for event in client.events(job.job_id, follow=True):  # ... until the last one
            print(event.sequence, event.type, event.message)

Every method raises a `tuneforge.errors.ApiError` subclass on failure. Calls are
retried on UNAVAILABLE (and on CANCELLED, which a stopping server answers to calls it
had not started) with exponential backoff; every call is safe to repeat, `create_job`
because it sends a client request token (one is made up when the request has none).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import grpc

from tuneforge import convert
from tuneforge.errors import ApiError, DeadlineExceeded, Unavailable, from_grpc
from tuneforge.following import follow_events
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

DEFAULT_ENDPOINT = "127.0.0.1:50051"
T = TypeVar("T")


class Client:
    """A connection to a tuneforge server's gRPC API.

    `endpoint` is `host:port`. `timeout` is the deadline, in seconds, of each call
    (a method's own `timeout=` overrides it); `max_attempts` bounds tries of a call
    that meets UNAVAILABLE (1: no retry), waiting `backoff` seconds after the first,
    doubling, at most `max_backoff`. Pass `credentials` for TLS, or a ready `channel`;
    `api_key` (from `tuneforge keys create`) when the server requires one.
    `poll_interval` is how often, in seconds, `events(follow=True)` looks for new events.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout: float = 30.0,
        max_attempts: int = 5,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.Channel | None = None,
        metadata: Mapping[str, str] | None = None,
        api_key: str | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.poll_interval = poll_interval
        sent = dict(metadata or {})
        if api_key:  # sent as the `authorization` metadata of every call
            sent["authorization"] = f"Bearer {api_key}"
        self.metadata = tuple(sent.items())
        if channel is None:
            channel = (
                grpc.secure_channel(endpoint, credentials)
                if credentials is not None
                else grpc.insecure_channel(endpoint)
            )
        self._channel = channel
        self._stub = pb_grpc.FineTuningServiceStub(channel)

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------

    def create_job(
        self,
        request: pb.CreateJobRequest | Mapping[str, Any],
        *,
        timeout: float | None = None,
    ) -> pb.CreateJobResponse:
        """Create a job from a CreateJobRequest or a REST create body (camelCase JSON).

        `.job` is the job; `.created` is False when the request's client request token
        had made it before. Raises ValueError for a body that does not fit the
        message, before anything is sent.
        """
        message = pb.CreateJobRequest()
        message.CopyFrom(convert.create_request(request))
        if not message.HasField("client_request_token"):
            message.client_request_token = uuid.uuid4().hex
        response: pb.CreateJobResponse = self._call(self._stub.CreateJob, message, timeout)
        return response

    def get_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        job: pb.Job = self._call(self._stub.GetJob, pb.GetJobRequest(job_id=job_id), timeout)
        return job

    def list_jobs(
        self,
        *,
        state: str | int | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> pb.ListJobsResponse:
        """One page of jobs, newest first; pass `next_page_token` on for the next."""
        request = pb.ListJobsRequest(
            state=convert.state_value(state) if state is not None else pb.JOB_STATE_UNSPECIFIED,
            page_size=page_size,
            page_token=page_token,
        )
        response: pb.ListJobsResponse = self._call(self._stub.ListJobs, request, timeout)
        return response

    def iter_jobs(
        self, *, state: str | int | None = None, page_size: int = 100
    ) -> Iterator[pb.Job]:
        """Every job, newest first, fetching page after page."""
        token = ""
        while True:
            page = self.list_jobs(state=state, page_size=page_size, page_token=token)
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    def stop_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        """Ask the job to stop; it shows STOPPING at once and ends STOPPED."""
        job: pb.Job = self._call(self._stub.StopJob, pb.StopJobRequest(job_id=job_id), timeout)
        return job

    def pause_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        """Ask the job to pause: a committed checkpoint, then PAUSED until resumed."""
        job: pb.Job = self._call(self._stub.PauseJob, pb.PauseJobRequest(job_id=job_id), timeout)
        return job

    def resume_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        """Queue a paused job again; it goes on from its newest checkpoint."""
        job: pb.Job = self._call(self._stub.ResumeJob, pb.ResumeJobRequest(job_id=job_id), timeout)
        return job

    def list_job_events(
        self, job_id: str, *, page_size: int = 100, timeout: float | None = None
    ) -> list[pb.JobEvent]:
        """Every event of the job, oldest first, read `page_size` at a time."""
        events: list[pb.JobEvent] = []
        token = ""
        while True:
            page, token = self._events_page(job_id, token, page_size, timeout)
            events.extend(page)
            if not token:
                return events

    def list_checkpoints(self, job_id: str, *, timeout: float | None = None) -> list[pb.Checkpoint]:
        request = pb.ListCheckpointsRequest(job_id=job_id)
        response: pb.ListCheckpointsResponse = self._call(
            self._stub.ListCheckpoints, request, timeout
        )
        return list(response.checkpoints)

    def read_job_log(
        self,
        job_id: str,
        *,
        offset: int = 0,
        max_bytes: int = 0,
        attempt: int | None = None,
        timeout: float | None = None,
    ) -> pb.ReadJobLogResponse:
        """Bytes of one attempt's trainer log (None: the current attempt's) from
        `offset` (negative: from the end)."""
        request = pb.ReadJobLogRequest(
            job_id=job_id, offset=offset, max_bytes=max_bytes, attempt=attempt
        )
        response: pb.ReadJobLogResponse = self._call(self._stub.ReadJobLog, request, timeout)
        return response

    # -- following a job -------------------------------------------------------------

    def watch(self, job_id: str, *, timeout: float | None = None) -> Iterator[pb.Job]:
        """The job now, then at every change of state or progress, until it ends.

        A stream cut by UNAVAILABLE (a server restart) is opened again, within the
        retry budget; an update seen before the cut is not repeated. `timeout`
        bounds the whole watch (None: no bound); past it, DeadlineExceeded.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: pb.Job | None = None
        failures = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            stream = self._stub.WatchJob(
                pb.WatchJobRequest(job_id=job_id), timeout=remaining, metadata=self.metadata
            )
            try:
                for response in stream:
                    failures = 0
                    if last is None or not convert.same_view(last, response.job):
                        last = response.job
                        yield response.job
                    if convert.is_terminal(response.job):
                        return
            except grpc.RpcError as error:
                failure = from_grpc(error)
                failures += 1
                if not isinstance(failure, Unavailable) or failures >= self.max_attempts:
                    raise failure from None
                self._sleep_before_retry(failures, deadline)
                continue
            finally:
                stream.cancel()
            if last is not None and convert.is_terminal(last):
                return
            # The stream ended without a terminal state: an older server, or a proxy.
            failures += 1
            if failures >= self.max_attempts:
                raise Unavailable(f"the watch of job {job_id} ended before the job did")
            self._sleep_before_retry(failures, deadline)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_progress: Callable[[pb.Job], object] | None = None,
    ) -> pb.Job:
        """Block until the job is COMPLETED, FAILED or STOPPED; return it.

        `on_progress(job)` is called with the job now and then at every change of its
        state or progress (`watch`'s updates), the final one included, in this thread;
        what it raises ends the wait. `timeout` bounds the whole wait (DeadlineExceeded).
        """
        final: pb.Job | None = None
        for job in self.watch(job_id, timeout=timeout):
            final = job
            if on_progress is not None:
                on_progress(job)
        if final is None:  # pragma: no cover - watch always yields at least once
            raise ApiError(f"no state seen for job {job_id}")
        return final

    def events(
        self, job_id: str, *, follow: bool = False, page_size: int = 100
    ) -> Iterator[pb.JobEvent]:
        """The job's events, oldest first, each once (read `page_size` at a time).

        With `follow`, new events as they are written (looked for every
        `poll_interval` seconds), until the job has ended and its terminal event (the
        one with state COMPLETED, FAILED or STOPPED) has been yielded; then the
        iterator ends. Breaking out of the loop (or `close()`) stops it at once: it
        holds no thread and no open stream between two events.
        """
        return follow_events(
            lambda token, size: self._events_page(job_id, token, size),
            lambda: self.get_job(job_id),
            follow=follow,
            page_size=page_size,
            poll_interval=self.poll_interval,
        )

    # -- plumbing --------------------------------------------------------------------

    def _events_page(
        self, job_id: str, token: str, page_size: int, timeout: float | None = None
    ) -> tuple[list[pb.JobEvent], str]:
        """One page of the job's events from `token`, and the next page's token ("" last)."""
        request = pb.ListJobEventsRequest(job_id=job_id, page_size=page_size, page_token=token)
        response: pb.ListJobEventsResponse = self._call(self._stub.ListJobEvents, request, timeout)
        return list(response.events), response.next_page_token

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        deadline = self.timeout if timeout is None else timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=deadline, metadata=self.metadata)
            except grpc.RpcError as error:
                # CANCELLED on a call this client never cancels: a stopping server dropped
                # it before running it. Like UNAVAILABLE, worth another try; every call
                # here is safe to repeat (create_job carries a request token).
                retry = error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                if not retry or attempt >= self.max_attempts:
                    raise from_grpc(error) from None
            self._sleep_before_retry(attempt, None)

    def _sleep_before_retry(self, attempt: int, deadline: float | None) -> None:
        delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: replicas of a caller spread out
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= delay:
                raise DeadlineExceeded("the watch ran past its timeout")
        time.sleep(delay)
