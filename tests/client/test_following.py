"""Following a job from Python: `wait(job_id, on_progress=...)` and
`events(job_id, follow=True)`, the same on `Client` (gRPC) and `RestClient` (REST).

Against a real server, store and trainer: a demo job followed to COMPLETED through both
at once. Then the paging rules of `tuneforge.following` on a scripted event log.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from tuneforge import Client, RestClient, convert
from tuneforge.following import follow_events
from tuneforge.v1 import fine_tuning_pb2 as pb

from tests.servers import ApiServer, demo_job


@pytest.fixture(params=["grpc", "rest"])
def sdk(request: pytest.FixtureRequest, lively_server: ApiServer) -> Iterator[Client | RestClient]:
    # REST's events(follow=True) polls: often, so that a short job shows it following.
    opened: Client | RestClient
    if request.param == "grpc":
        opened = Client(lively_server.grpc_target, timeout=30, poll_interval=0.2)
    else:
        opened = RestClient(lively_server.url, timeout=30, poll_interval=0.2)
    with opened:
        yield opened


def test_wait_reports_progress_and_events_follow_the_job_to_its_end(
    sdk: Client | RestClient,
) -> None:
    job_id = sdk.create_job(demo_job("following", epochCount=1)).job.job_id

    # A follower closed early stops at once and leaves the others unaffected.
    early = sdk.events(job_id, follow=True)
    assert next(early).type == "CREATED"
    early.close()
    with pytest.raises(StopIteration):
        next(early)
    watch = sdk.watch(job_id)
    assert not convert.is_terminal(next(watch))
    watch.close()

    followed: list[tuple[float, pb.JobEvent]] = []
    failures: list[BaseException] = []

    def follow() -> None:
        try:
            # Two a page: the follower walks pages and re-reads from the last token.
            for event in sdk.events(job_id, follow=True, page_size=2):
                followed.append((time.monotonic(), event))
        except BaseException as error:  # reported by the assertion below
            failures.append(error)

    follower = threading.Thread(target=follow)
    follower.start()

    progress: list[tuple[float, pb.Job]] = []
    final = sdk.wait(
        job_id, timeout=240, on_progress=lambda job: progress.append((time.monotonic(), job))
    )
    waited_at = time.monotonic()

    # on_progress: every change once, progress going up, the final job last.
    updates = [job for _, job in progress]
    assert final.state == pb.COMPLETED
    assert updates[-1] == final
    assert all(not convert.is_terminal(job) for job in updates[:-1])
    for earlier, later in itertools.pairwise(updates):
        assert not convert.same_view(earlier, later), "called for a job that had not changed"
    steps = [job.progress.step for job in updates]
    assert steps == sorted(steps), steps
    running = {job.progress.step for job in updates if job.state == pb.RUNNING}
    assert len(running) >= 2, f"no progress seen while RUNNING: {steps}"
    assert final.progress.step == final.progress.total_steps > 0
    assert updates[0].state in (pb.QUEUED, pb.VALIDATING)
    assert pb.RUNNING in [job.state for job in updates]

    # events(follow=True): ends by itself, soon after the job did.
    follower.join(30)
    assert not follower.is_alive(), "events(follow=True) did not end after the job did"
    assert not failures, failures
    events = [event for _, event in followed]
    assert [event.sequence for event in events] == list(range(len(events)))  # each once
    assert events[0].type == "CREATED"
    assert events[-1].type == "STATE_CHANGED" and events[-1].state == pb.COMPLETED
    assert [event.state for event in events if event.state in convert.TERMINAL_STATES] == [
        pb.COMPLETED
    ]
    assert events == sdk.list_job_events(job_id), "an event missed, or one that is not there"
    # ... and as they came: the first ones while the job was still running.
    started = min(at for at, job in progress if job.state == pb.RUNNING)
    assert followed[0][0] < started < followed[-1][0] <= waited_at + 30

    # Without follow: what there is now, every page, then the end.
    assert list(sdk.events(job_id, page_size=3)) == events
    assert list(sdk.events(job_id, follow=True)) == events  # an ended job: at once


def test_rest_wait_goes_on_across_a_server_restart(api_server: ApiServer) -> None:
    """REST's watch is a Server-Sent Events stream: cut by a server restart, it is opened
    again (within the retry budget) and does not repeat what it had yielded."""
    body = demo_job("rest-restart", epochCount=1)
    body["trainingDataConfig"]["s3Uri"] = "s3://demo/datasets/does-not-exist.jsonl"
    # The wait's own timeout, not a count of attempts, bounds the retries: a server start
    # on a loaded 2-core machine can take 40 s or more.
    client = RestClient(api_server.url, max_attempts=10_000, backoff=0.2, max_backoff=1.0)
    job_id = client.create_job(body).job.job_id
    updates: list[pb.Job] = []
    finals: list[pb.Job] = []
    failures: list[BaseException] = []

    def wait() -> None:
        try:
            finals.append(client.wait(job_id, timeout=180, on_progress=updates.append))
        except BaseException as error:  # reported by the assertion below
            failures.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    while not updates and waiter.is_alive():
        waiter.join(0.1)
    api_server.kill()  # the stream breaks
    before_the_cut = list(updates)

    restarted = ApiServer(
        api_server.s3, api_server.home, state_bucket=api_server.state_bucket, port=api_server.port
    )
    restarted.grpc_port = api_server.grpc_port
    try:
        restarted.start()
        waiter.join(180)
        assert not failures, failures
        assert finals and finals[0].state == pb.FAILED and updates[-1] == finals[0]
        assert not any(convert.is_terminal(job) for job in before_the_cut)
        assert not any(convert.same_view(a, b) for a, b in itertools.pairwise(updates))
    finally:
        restarted.stop()
        restarted.kill_trainers()
        client.close()


# -- the paging rules, on a scripted event log ---------------------------------------


class ScriptedJob:
    """A job's event log and state, and the calls made to read them, as a server keeps
    them: a page token names the last event of its page (service/core/jobs.py)."""

    def __init__(self) -> None:
        self.events: list[pb.JobEvent] = []
        self.state = pb.QUEUED
        self.reads: list[tuple[str, int]] = []
        self.on_poll: list[str] = []  # per poll: "event:<STATE>" or "state:<STATE>"

    def add(self, kind: str, state: int = pb.JOB_STATE_UNSPECIFIED) -> None:
        self.events.append(pb.JobEvent(sequence=len(self.events), type=kind, state=state))

    def read_page(self, token: str, size: int) -> tuple[Sequence[pb.JobEvent], str]:
        self.reads.append((token, size))
        after = int(token) if token else -1
        rest = [event for event in self.events if event.sequence > after]
        page = rest[:size]
        return page, str(page[-1].sequence) if len(rest) > size else ""

    def get_job(self) -> pb.Job:
        return pb.Job(state=self.state)


def test_follow_rereads_one_event_a_poll_and_ends_after_the_terminal_event() -> None:
    job = ScriptedJob()
    for kind in ("CREATED", "LAUNCHED", "STATE_CHANGED", "DEVICES", "STATE_CHANGED"):
        job.add(kind)
    script = iter(
        [
            lambda: None,  # a quiet poll
            lambda: job.add("CHECKPOINT_COMMITTED"),
            lambda: setattr(job, "state", pb.COMPLETED),  # the status first ...
            lambda: job.add("STATE_CHANGED", pb.COMPLETED),  # ... then its event
        ]
    )
    events = follow_events(
        job.read_page,
        job.get_job,
        follow=True,
        page_size=2,
        poll_interval=0.0,
        sleep=lambda seconds: next(script)(),
    )
    seen = [event.sequence for event in events]
    assert seen == list(range(7))
    assert next(script, None) is None, "it ended before the terminal event, or polled after it"
    # Page after page from the start; then each poll reads from the token of the last
    # page, moved (one read with a page one short) to just before the newest event once
    # new ones came: a quiet poll re-reads one event, not the history.
    assert job.reads == [
        ("", 2),
        ("1", 2),
        ("3", 2),  # [4]: the last page
        ("3", 2),  # the quiet poll: [4] again
        ("3", 2),  # [4, 5]: 5 is new
        ("3", 1),  # -> token "4"
        ("4", 2),  # the job ended, its event not yet written: [5]
        ("4", 2),  # [5, 6]: 6 carries COMPLETED, the end
        ("4", 1),
    ]


def test_follow_stops_without_a_terminal_event_after_the_grace() -> None:
    job = ScriptedJob()
    job.add("CREATED")
    job.state = pb.FAILED  # a writer that died between the status and its event
    polls: list[float] = []
    events = follow_events(
        job.read_page,
        job.get_job,
        follow=True,
        page_size=10,
        poll_interval=0.01,
        end_event_grace=0.05,
        sleep=lambda seconds: (polls.append(seconds), time.sleep(seconds)),
    )
    assert [event.type for event in events] == ["CREATED"]
    assert 1 <= len(polls) < 50


def test_without_follow_every_page_then_the_end() -> None:
    job = ScriptedJob()
    for _ in range(5):
        job.add("X")
    polls: list[float] = []
    events = follow_events(
        job.read_page,
        job.get_job,
        follow=False,
        page_size=2,
        poll_interval=1.0,
        sleep=polls.append,
    )
    assert [event.sequence for event in events] == [0, 1, 2, 3, 4]
    assert polls == []
