"""`RestClient`: the same methods as `Client`, over the REST API, for where gRPC cannot go.

    from tuneforge import RestClient

    with RestClient("http://127.0.0.1:8000") as client:
        job = client.create_job({...}).job
        final = client.wait(job.job_id)

It gives back the same proto messages and raises the same errors as the gRPC client,
so code written against one runs against the other. `watch` (and so `wait`) follows
the job's Server-Sent Events stream (`GET /v1/jobs/{id}/stream`), the REST twin of
gRPC's WatchJob; `events(follow=True)` polls the events listing every `poll_interval`
seconds, as the gRPC client does.
"""

from __future__ import annotations

import json
import random
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

import httpx

from tuneforge import convert
from tuneforge.errors import ApiError, DeadlineExceeded, Unavailable, from_rest
from tuneforge.following import follow_events
from tuneforge.v1 import fine_tuning_pb2 as pb

DEFAULT_URL = "http://127.0.0.1:8000"
# The server sends a keep-alive comment every 15 s on a quiet stream; one silent for this
# long is dead, and is opened again.
STREAM_SILENCE_SECONDS = 45.0


class RestClient:
    """A connection to a tuneforge server's REST API (`base_url`, e.g. http://host:8000).

    `timeout`, `max_attempts`, `backoff` and `max_backoff` mean what they mean for
    `Client`: UNAVAILABLE (HTTP 502/503/504, or no connection) is retried. `api_key` is
    sent as `Authorization: Bearer <key>`. `poll_interval` is how often, in seconds,
    `events(follow=True)` looks for new events.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 30.0,
        max_attempts: int = 5,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
        poll_interval: float = 1.0,
        headers: Mapping[str, str] | None = None,
        http: httpx.Client | None = None,
        api_key: str | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.poll_interval = poll_interval
        sent = dict(headers or {})
        if api_key:
            sent["Authorization"] = f"Bearer {api_key}"
        self._http = http or httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=sent
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RestClient:
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
        message = pb.CreateJobRequest()
        message.CopyFrom(convert.create_request(request))
        if not message.HasField("client_request_token"):
            message.client_request_token = uuid.uuid4().hex
        response = self._request("POST", "/v1/jobs", timeout, json=convert.create_body(message))
        if message.validate_only:  # a dry run: the report, no job
            return pb.CreateJobResponse(
                validation_report=convert.validation_report_from_dict(response.json())
            )
        return pb.CreateJobResponse(
            job=convert.job_from_dict(response.json()), created=response.status_code == 201
        )

    def get_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        response = self._request("GET", f"/v1/jobs/{_segment(job_id)}", timeout)
        return convert.job_from_dict(response.json())

    def list_jobs(
        self,
        *,
        state: str | int | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> pb.ListJobsResponse:
        params: dict[str, Any] = {}
        if state is not None and convert.state_value(state) != pb.JOB_STATE_UNSPECIFIED:
            params["status"] = convert.state_name(convert.state_value(state))
        if page_size:
            params["limit"] = page_size
        if page_token:
            params["pageToken"] = page_token
        body = self._request("GET", "/v1/jobs", timeout, params=params).json()
        return pb.ListJobsResponse(
            jobs=[convert.job_from_dict(job) for job in body["jobs"]],
            next_page_token=body.get("nextPageToken") or "",
        )

    def iter_jobs(
        self, *, state: str | int | None = None, page_size: int = 100
    ) -> Iterator[pb.Job]:
        token = ""
        while True:
            page = self.list_jobs(state=state, page_size=page_size, page_token=token)
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    def stop_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        response = self._request("POST", f"/v1/jobs/{_segment(job_id)}/stop", timeout)
        return convert.job_from_dict(response.json())

    def pause_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        response = self._request("POST", f"/v1/jobs/{_segment(job_id)}/pause", timeout)
        return convert.job_from_dict(response.json())

    def resume_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        response = self._request("POST", f"/v1/jobs/{_segment(job_id)}/resume", timeout)
        return convert.job_from_dict(response.json())

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
        body = self._request("GET", f"/v1/jobs/{_segment(job_id)}/checkpoints", timeout).json()
        return [convert.checkpoint_from_dict(item) for item in body["checkpoints"]]

    def read_job_log(
        self,
        job_id: str,
        *,
        offset: int = 0,
        max_bytes: int = 0,
        attempt: int | None = None,
        timeout: float | None = None,
    ) -> pb.ReadJobLogResponse:
        params: dict[str, Any] = {"offset": offset}
        if max_bytes:
            params["maxBytes"] = max_bytes
        if attempt is not None:
            params["attempt"] = attempt
        response = self._request("GET", f"/v1/jobs/{_segment(job_id)}/logs", timeout, params=params)
        return pb.ReadJobLogResponse(
            data=response.content,
            next_offset=int(response.headers.get("x-next-offset", "0")),
            size=int(response.headers.get("x-log-size", "0")),
            attempt=int(response.headers.get("x-log-attempt", "0")),
        )

    # -- following a job -------------------------------------------------------------

    def watch(self, job_id: str, *, timeout: float | None = None) -> Iterator[pb.Job]:
        """The job now, then at every change of state or progress, until it ends.

        Read from the job's Server-Sent Events stream. A stream cut (a server restart,
        a proxy) is opened again, within the retry budget; an update seen before the
        cut is not repeated. `timeout` bounds the whole watch (None: no bound); past
        it, DeadlineExceeded. Closing the iterator closes the stream.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        path = f"/v1/jobs/{_segment(job_id)}/stream"
        last: pb.Job | None = None
        failures = 0
        while True:
            silence = STREAM_SILENCE_SECONDS
            if deadline is not None:
                silence = min(silence, max(0.001, deadline - time.monotonic()))
            limits = httpx.Timeout(self.timeout, read=silence)
            failure: ApiError
            try:
                with self._http.stream(
                    "GET", path, timeout=limits, headers={"Accept": "text/event-stream"}
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        failure = from_rest(response.status_code, _json_or_none(response))
                    else:
                        for data in _server_sent_data(response.iter_lines()):
                            failures = 0
                            job = convert.job_from_dict(json.loads(data))
                            if last is None or not convert.same_view(last, job):
                                last = job
                                yield job
                            if convert.is_terminal(job):
                                return
                            if deadline is not None and time.monotonic() >= deadline:
                                raise DeadlineExceeded(_too_long(job_id, timeout))
                        # Ended without a terminal state: a proxy, or a stopping server.
                        failure = Unavailable(f"the stream of job {job_id} ended before the job")
            except httpx.TimeoutException as error:
                if deadline is not None and time.monotonic() >= deadline:
                    raise DeadlineExceeded(_too_long(job_id, timeout)) from None
                failure = Unavailable(f"the stream of job {job_id} went silent: {error}")
            except httpx.TransportError as error:
                failure = Unavailable(f"cannot reach {self._http.base_url}: {error}")
            failures += 1
            if not isinstance(failure, Unavailable) or failures >= self.max_attempts:
                raise failure
            self._sleep_before_retry(failures, deadline, job_id, timeout)

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
        holds no thread and no open connection between two events.
        """
        return follow_events(
            lambda token, size: self._events_page(job_id, token, size),
            lambda: self.get_job(job_id),
            follow=follow,
            page_size=page_size,
            poll_interval=self.poll_interval,
        )

    # -- plumbing --------------------------------------------------------------------

    def _request(
        self, method: str, path: str, timeout: float | None, **arguments: Any
    ) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(
                    method, path, timeout=self.timeout if timeout is None else timeout, **arguments
                )
            except httpx.TimeoutException as error:
                raise DeadlineExceeded(f"{method} {path}: {error}") from None
            except httpx.TransportError as error:
                failure: ApiError = Unavailable(f"cannot reach {self._http.base_url}: {error}")
            else:
                if response.status_code < 400:
                    return response
                try:
                    body = response.json()
                except ValueError:
                    body = None
                failure = from_rest(response.status_code, body)
            if not isinstance(failure, Unavailable) or attempt >= self.max_attempts:
                raise failure
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
            time.sleep(delay * random.uniform(0.5, 1.0))

    def _events_page(
        self, job_id: str, token: str, page_size: int, timeout: float | None = None
    ) -> tuple[list[pb.JobEvent], str]:
        """One page of the job's events from `token`, and the next page's token ("" last)."""
        params: dict[str, Any] = {"pageSize": page_size}
        if token:
            params["pageToken"] = token
        path = f"/v1/jobs/{_segment(job_id)}/events"
        body = self._request("GET", path, timeout, params=params).json()
        events = [convert.event_from_dict(event) for event in body["events"]]
        return events, body.get("nextPageToken") or ""

    def _sleep_before_retry(
        self, attempt: int, deadline: float | None, job_id: str, timeout: float | None
    ) -> None:
        delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)
        if deadline is not None and deadline - time.monotonic() <= delay:
            raise DeadlineExceeded(_too_long(job_id, timeout))
        time.sleep(delay)


def _server_sent_data(lines: Iterator[str]) -> Iterator[str]:
    """The `data` of each Server-Sent Event in `lines` (comments and other fields
    skipped; a message's data lines joined by newlines, as the standard says)."""
    data: list[str] = []
    for line in lines:
        if not line:  # a blank line ends a message
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            value = line[len("data:") :]
            data.append(value[1:] if value.startswith(" ") else value)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _too_long(job_id: str, timeout: float | None) -> str:
    return f"job {job_id} did not end within {timeout} s"


def _segment(job_id: str) -> str:
    """A job id as one path segment: nothing in it can reach another route."""
    return urllib.parse.quote(job_id, safe="")
