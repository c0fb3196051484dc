"""Following a job through both faces, on a real server: SSE streams and gRPC WatchJob calls
share one feed of the job (service/core/job_feed.py), count against the same limits (429
with Retry-After / RESOURCE_EXHAUSTED past them, a closed stream frees its place; /metrics
counts the open ones), number
on from Last-Event-ID, and each gets the job's end and then ends.

The trainer only sleeps (the job waits QUEUED, launched): what is followed is the job's
record, changed here by a stop."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from service.server.embedded_s3 import EmbeddedS3
from tests.prometheus_text import samples
from tests.servers import ApiServer, demo_job, waiting_trainer

LIMIT = 3


@pytest.fixture(scope="module")
def server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    home: Path = tmp_path_factory.mktemp("watchers")
    sleeper = waiting_trainer(home)
    started = ApiServer(
        s3_server,
        home / "server",
        state_bucket=f"watchers-{uuid.uuid4().hex[:10]}",
        extra_env={
            "TUNEFORGE_TRAINER_PYTHON": str(sleeper),
            "TUNEFORGE_MAX_WATCHERS_PER_TENANT": str(LIMIT),
            "TUNEFORGE_GRPC_WATCH_POLL_SECONDS": "0.2",
            # The stand-in trainer ignores a stop: it is killed soon after, and the job
            # ends STOPPED within seconds.
            "TUNEFORGE_STOP_GRACE_SECONDS": "1",
            "TUNEFORGE_KILL_GRACE_SECONDS": "1",
        },
    )
    started.start()
    yield started
    started.stop()
    started.kill_trainers()


def _create(server: ApiServer, name: str) -> str:
    with server.client() as client:
        created = client.post("/v1/jobs", json=demo_job(name))
        assert created.status_code == 201, created.text
        return str(created.json()["jobId"])


class SseFollower(threading.Thread):
    """One SSE stream of a job, read in a thread: each message's id and state."""

    def __init__(self, server: ApiServer, job_id: str, last_event_id: str | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.job_id = server.url, job_id
        self.headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self.messages: list[tuple[int, str]] = []
        self.status: int | None = None
        self.opened = threading.Event()
        self.ended = threading.Event()
        self.close = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.url, timeout=httpx.Timeout(30, read=60)) as client,
                client.stream(
                    "GET", f"/v1/jobs/{self.job_id}/stream", headers=self.headers
                ) as response,
            ):
                self.status = response.status_code
                self.opened.set()
                sequence = None
                for line in response.iter_lines():
                    if line.startswith("id: "):
                        sequence = int(line[4:])
                    elif line.startswith("data: "):
                        state = line.split('"state":"', 1)[1].split('"', 1)[0]
                        assert sequence is not None
                        self.messages.append((sequence, state))
                    if self.close.is_set():
                        return  # leaves the stream: the server frees its place
        except BaseException as error:
            self.error = error
        finally:
            self.opened.set()
            self.ended.set()


def _wait_for(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.1)


def test_streams_past_the_limit_are_refused_and_a_closed_one_frees_its_place(
    server: ApiServer,
) -> None:
    job_id = _create(server, "limited")
    followers = [SseFollower(server, job_id) for _ in range(LIMIT)]
    try:
        _refused_past_the_limit(server, job_id, followers)
    finally:  # the job's end ends every stream: the next test starts with no place taken
        with server.client() as client:
            client.post(f"/v1/jobs/{job_id}/stop")
        for follower in followers:
            if follower.ident is not None:  # started
                assert follower.ended.wait(60), "a stream did not end with its job"


def _refused_past_the_limit(server: ApiServer, job_id: str, followers: list[SseFollower]) -> None:
    for follower in followers:
        follower.start()
        follower.opened.wait(30)
        assert follower.status == 200, follower.error
    _wait_for(lambda: all(follower.messages for follower in followers), "first messages")

    with server.client() as client:
        refused = client.get(f"/v1/jobs/{job_id}/stream")
    assert refused.status_code == 429, refused.text
    _wait_for(lambda: _open_streams(server) == LIMIT, f"{LIMIT} open streams in /metrics")
    assert int(refused.headers["Retry-After"]) >= 1
    said = refused.json()["error"]["message"]
    assert "already follows 3 job streams" in said and "MAX_WATCHERS_PER_TENANT" in said
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.FineTuningServiceStub(channel)
        with pytest.raises(grpc.RpcError) as exhausted:
            next(iter(stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=30)))
    assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already follows 3 job streams" in (exhausted.value.details() or "")

    # A stream the client leaves gives its place back.
    followers[0].close.set()
    with server.client() as client:
        client.post(f"/v1/jobs/{job_id}/pause")  # a change, so the reader wakes and leaves
    assert followers[0].ended.wait(30)

    def reopened() -> bool:
        with server.client() as client, client.stream("GET", f"/v1/jobs/{job_id}/stream") as tried:
            return tried.status_code == 200

    _wait_for(reopened, "a place freed")
    _wait_for(lambda: _open_streams(server) == LIMIT - 1, "a closed stream counted out")


def _open_streams(server: ApiServer) -> float:
    with server.client() as client:
        (value,) = samples(client.get("/metrics").text, "tuneforge_open_job_streams")
    return value


def test_every_watcher_of_both_faces_gets_the_end_and_numbering_goes_on(
    server: ApiServer,
) -> None:
    job_id = _create(server, "followed")
    first = SseFollower(server, job_id)
    resumed = SseFollower(server, job_id, last_event_id="7")
    grpc_states: list[str] = []
    grpc_done = threading.Event()

    def watch() -> None:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.FineTuningServiceStub(channel)
            for answer in stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=60):
                grpc_states.append(pb.JobState.Name(answer.job.state))
        grpc_done.set()

    for follower in (first, resumed):
        follower.start()
    threading.Thread(target=watch, daemon=True).start()
    _wait_for(lambda: first.messages and resumed.messages and grpc_states, "first messages")

    with server.client() as client:
        assert client.post(f"/v1/jobs/{job_id}/stop").status_code == 202
    for follower in (first, resumed):
        assert follower.ended.wait(60), "the stream did not end"
        assert follower.error is None, follower.error
        # The change in between too (STOPPING lasts the stop's grace, several polls).
        assert [state for _, state in follower.messages][-2:] == ["STOPPING", "STOPPED"]
    assert grpc_done.wait(60) and grpc_states[-2:] == ["STOPPING", "STOPPED"], grpc_states
    # Numbering: from 1, or after the Last-Event-ID sent, one up per message.
    assert [sequence for sequence, _ in first.messages] == list(range(1, len(first.messages) + 1))
    assert [sequence for sequence, _ in resumed.messages] == list(
        range(8, 8 + len(resumed.messages))
    )
    assert first.messages[0][1] == "QUEUED"
