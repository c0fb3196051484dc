"""Job feeds on a real store (service/core/job_feed.py): many watchers of a job cost one
read per poll, each gets every change and the end, a slow one skips to the newest, the
limits refuse the one past them, the reads stop with the last watcher, and a job whose
record breaks ends its watchers with the error; while the replica's listing of control
markers is fresh, a read is of the status alone."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from jobstore.documents import (
    DataLocation,
    HyperParameters,
    JobSpec,
    JobState,
    JobStatus,
    new_job_id,
    utc_now,
)
from jobstore.errors import CorruptDocument, JobNotFound
from jobstore.storage import ObjectStore, S3Location
from jobstore.store import Job, JobStore
from service.core import job_feed
from service.core.job_feed import JobFeeds, Rendered, Watcher
from service.core.jobs import stop_job
from service.errors import TooManyRequests

POLL_SECONDS = 0.1


@pytest.fixture
def store(object_store: ObjectStore) -> JobStore:
    bucket = f"feeds-{uuid.uuid4().hex[:10]}"
    object_store.ensure_bucket(bucket)
    return JobStore(object_store, bucket)


def _create(store: JobStore, tenant: str = "watch") -> str:
    spec = JobSpec(
        jobId=new_job_id(),
        jobName="followed",
        tenant=tenant,
        createdAt=utc_now(),
        baseModelIdentifier="s3://demo/models/tiny-llama/",
        trainingDataConfig=DataLocation(s3Uri="s3://demo/datasets/sample-train.jsonl"),
        outputDataConfig=DataLocation(s3Uri="s3://demo/output/"),
        hyperParameters=HyperParameters(),
    )
    store.create(spec)
    return spec.jobId


def _write(store: JobStore, job_id: str, state: JobState | None = None, step: int = 0) -> None:
    """What a trainer writes: a state, or progress (through another replica's store)."""

    def change(status: JobStatus) -> JobStatus:
        moved = status.moved_to(state) if state else status.model_copy(deep=True)
        moved.progress.step = step or moved.progress.step
        return moved

    assert JobStore(store.storage, store.bucket).update_status(job_id, change)


async def _follow(watcher: Watcher) -> list[tuple[str, int]]:
    """(state, step) of every job the watcher gets, the first included, until done."""
    seen = [(watcher.first.status.state.value, watcher.first.status.progress.step)]
    while not watcher.done:
        job = await watcher.next(timeout=10)
        assert job is not None, f"no change in 10 s after {seen}"
        seen.append((job.status.state.value, job.status.progress.step))
    watcher.close()
    return seen


def test_many_watchers_cost_one_read_per_poll_and_each_gets_every_change_and_the_end(
    store: JobStore,
) -> None:
    job_id = _create(store)
    feeds = JobFeeds(store, poll_seconds=POLL_SECONDS)

    async def scenario() -> list[list[tuple[str, int]]]:
        watchers = [
            await asyncio.to_thread(feeds.watch, job_id, tenant="watch") for _ in range(200)
        ]
        assert feeds.open_watchers("watch") == 200
        followers = [asyncio.create_task(_follow(watcher)) for watcher in watchers]
        reads_before = feeds.reads
        started = time.monotonic()
        for state, step in [
            (JobState.VALIDATING, 0),
            (JobState.RUNNING, 1),
            (None, 2),
            (None, 3),
            (JobState.COMPLETED, 3),
        ]:
            await asyncio.to_thread(_write, store, job_id, state, step)
            await asyncio.sleep(10 * POLL_SECONDS)  # each change seen before the next
        results = await asyncio.wait_for(asyncio.gather(*followers), 30)
        elapsed = time.monotonic() - started
        # One read per poll for the 200 of them (a poll may run late, never more often).
        assert feeds.reads - reads_before <= elapsed / POLL_SECONDS + 2
        return results

    try:
        results = asyncio.run(scenario())
    finally:
        feeds.stop()
    expected = [
        ("QUEUED", 0),
        ("VALIDATING", 0),
        ("RUNNING", 1),
        ("RUNNING", 2),
        ("RUNNING", 3),
        ("COMPLETED", 3),
    ]
    assert all(result == expected for result in results), results[0]
    assert feeds.open_watchers() == 0


def test_a_slow_watcher_skips_to_the_newest_job(store: JobStore) -> None:
    job_id = _create(store)
    feeds = JobFeeds(store, poll_seconds=POLL_SECONDS)

    async def scenario() -> None:
        watcher = await asyncio.to_thread(feeds.watch, job_id, tenant="watch")
        for step in (1, 2, 3):  # three changes it does not take
            await asyncio.to_thread(_write, store, job_id, None, step)
            await asyncio.sleep(4 * POLL_SECONDS)
        job = await watcher.next(timeout=5)
        assert job is not None and job.status.progress.step == 3
        assert await watcher.next(timeout=4 * POLL_SECONDS) is None  # nothing older queued
        watcher.close()

    try:
        asyncio.run(scenario())
    finally:
        feeds.stop()


def test_the_limits_refuse_the_watcher_past_them_and_a_closed_one_frees_its_place(
    store: JobStore,
) -> None:
    mine, theirs = _create(store, "mine"), _create(store, "theirs")
    feeds = JobFeeds(store, poll_seconds=POLL_SECONDS, max_per_tenant=2, max_total=3)
    try:
        first = feeds.watch(mine, tenant="mine")
        feeds.watch(mine, tenant="mine")
        with pytest.raises(TooManyRequests) as refused:
            feeds.watch(mine, tenant="mine")
        assert "tenant mine already follows 2 job streams" in refused.value.message
        assert "TUNEFORGE_MAX_WATCHERS_PER_TENANT" in refused.value.message
        assert refused.value.retry_after_seconds > 0
        feeds.watch(theirs, tenant="theirs")  # another tenant's first: the third in all
        with pytest.raises(TooManyRequests) as full:
            feeds.watch(theirs, tenant="theirs")
        assert "already serves 3 job streams" in full.value.message
        first.close()
        first.close()  # twice changes nothing
        assert feeds.open_watchers("mine") == 1
        # Another tenant's job is not found, and holds no place.
        with pytest.raises(JobNotFound):
            feeds.watch(theirs, tenant="mine")
        assert feeds.open_watchers("mine") == 1
        feeds.watch(mine, tenant="mine")
        assert (feeds.open_watchers("mine"), feeds.open_watchers()) == (2, 3)
    finally:
        feeds.stop()


def test_reads_stop_with_the_last_watcher(store: JobStore) -> None:
    job_id = _create(store)
    feeds = JobFeeds(store, poll_seconds=POLL_SECONDS)
    try:
        watchers = [feeds.watch(job_id, tenant="watch") for _ in range(3)]
        time.sleep(5 * POLL_SECONDS)
        assert feeds.reads >= 2
        for watcher in watchers:
            watcher.close()
        settled = feeds.reads
        time.sleep(5 * POLL_SECONDS)
        assert feeds.reads <= settled + 1  # one read may have been under way
        assert feeds.open_watchers() == 0
    finally:
        feeds.stop()


def test_a_finished_job_is_handed_once_and_not_read(store: JobStore) -> None:
    job_id = _create(store)
    _write(store, job_id, JobState.FAILED)
    feeds = JobFeeds(store, poll_seconds=POLL_SECONDS)
    try:
        watcher = feeds.watch(job_id, tenant="watch")
        assert watcher.done and watcher.first.status.state == JobState.FAILED
        time.sleep(3 * POLL_SECONDS)
        assert feeds.reads == 0 and feeds.open_watchers() == 0
    finally:
        feeds.stop()


def test_what_a_face_makes_of_a_job_is_made_once_per_job(store: JobStore) -> None:
    job_id = _create(store)
    first, second = store.get(job_id), store.get(job_id)  # equal, but two objects
    rendered, made = Rendered(size=2), []

    def make(job: object) -> str:
        made.append(job)
        return f"rendered {len(made)}"

    assert {rendered.get(first, make) for _ in range(1000)} == {"rendered 1"}
    assert rendered.get(second, make) == "rendered 2"
    assert made == [first, second] and made[0] is first


def test_a_close_from_inside_the_feeds_own_locked_code_waits_and_never_deadlocks(
    store: JobStore,
) -> None:
    """As when the garbage collector closes a stream's watcher while this thread holds
    the feeds' lock: the close is queued, and its place given back at the next open."""
    job_id = _create(store)
    feeds = JobFeeds(store, poll_seconds=POLL_SECONDS, max_per_tenant=1)
    try:
        watcher = feeds.watch(job_id, tenant="watch")
        with feeds._lock:  # what the collector would interrupt
            watcher.close()  # must return at once
        feeds.watch(job_id, tenant="watch").close()  # the place was given back
        assert feeds.open_watchers() == 0
    finally:
        feeds.stop()


def test_an_open_whose_caller_is_cancelled_leaves_no_watcher(store: JobStore) -> None:
    job_id = _create(store)
    feeds = JobFeeds(store, poll_seconds=POLL_SECONDS)

    async def scenario() -> None:
        opening = asyncio.create_task(feeds.open(job_id, tenant="watch"))
        await asyncio.sleep(0)  # the read has started in its thread
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        for _ in range(100):  # the read ends, then what it opened is closed
            await asyncio.sleep(0.05)
            if feeds.open_watchers() == 0 and not feeds._feeds:
                return
        raise AssertionError(f"{feeds.open_watchers()} watcher(s) left open")

    try:
        asyncio.run(scenario())
    finally:
        feeds.stop()


def test_a_watcher_never_gets_its_first_view_again(store: JobStore) -> None:
    """One watcher opens after a change the feed has not read yet: the feed's next read
    hands that change to the others, not again to it."""
    job_id = _create(store)
    feeds = JobFeeds(store, poll_seconds=POLL_SECONDS)

    async def scenario() -> tuple[Job | None, Job | None]:
        early = await feeds.open(job_id, tenant="watch")
        await asyncio.to_thread(_write, store, job_id, None, 5)
        late = await feeds.open(job_id, tenant="watch")  # reads step 5 itself
        assert late.first.status.progress.step == 5
        handed_early = await early.next(timeout=5)
        handed_late = await late.next(timeout=10 * POLL_SECONDS)
        early.close()
        late.close()
        return handed_early, handed_late

    try:
        handed_early, handed_late = asyncio.run(scenario())
    finally:
        feeds.stop()
    assert handed_early is not None and handed_early.status.progress.step == 5
    assert handed_late is None


def test_a_job_whose_record_breaks_ends_its_watchers_with_the_error(
    store: JobStore,
) -> None:
    """Not keep-alives forever: after a few reads in a row that fail (the store itself
    answering), each watcher's next() raises why, and the job is read no more."""
    job_id = _create(store)
    feeds = JobFeeds(store, poll_seconds=POLL_SECONDS)

    async def scenario() -> None:
        watchers = [await asyncio.to_thread(feeds.watch, job_id, tenant="watch") for _ in range(3)]
        status = S3Location(store.bucket, f"jobs/{job_id}/status.json")
        await asyncio.to_thread(store.storage.put_bytes, status, b"{not json")
        for watcher in watchers:
            with pytest.raises(CorruptDocument, match=r"status\.json"):
                while await watcher.next(timeout=5) is not None:
                    pass  # nothing changed before the break: no job comes first
            assert watcher.done
            watcher.close()
        reads = feeds.reads
        await asyncio.sleep(5 * POLL_SECONDS)
        assert feeds.reads == reads  # no feed left to read

    try:
        asyncio.run(scenario())
    finally:
        feeds.stop()
    assert feeds.open_watchers() == 0


def test_a_feed_reads_the_status_alone_while_a_fresh_listing_shows_no_control(
    counted: tuple[JobStore, Counter[str]],
) -> None:
    """A reconcile pass lists the control markers anyway; with that listing fresh, one GET
    per read (the status), not two. A stop made through this store shows at the next
    read all the same (control read again), and with no fresh listing control is read."""
    store, calls = counted
    job_id = _create(store)
    for state in (JobState.VALIDATING, JobState.RUNNING):  # no queue position to read
        _write(store, job_id, state)
    feeds = JobFeeds(store, poll_seconds=POLL_SECONDS, markers_max_age=60)

    async def gets_per_read() -> float:
        await asyncio.sleep(2 * POLL_SECONDS)  # a read under way ends first
        gets, reads = calls["GetObject"], feeds.reads
        await asyncio.sleep(30 * POLL_SECONDS)
        # At least 10 reads: a read cut at either end of the window moves this by 0.1.
        assert feeds.reads - reads >= 10
        return (calls["GetObject"] - gets) / (feeds.reads - reads)

    listing = threading.Event()
    done = threading.Event()

    def list_markers() -> None:  # what every reconcile pass does
        while not done.wait(POLL_SECONDS):
            if listing.is_set():
                store.control_marked(job_id, job_id)

    lister = threading.Thread(target=list_markers, daemon=True)
    lister.start()

    async def scenario() -> None:
        watcher = await asyncio.to_thread(feeds.watch, job_id, tenant="watch")
        assert await gets_per_read() >= 1.7  # no listing yet: status and control
        listing.set()
        assert await gets_per_read() <= 1.3
        await asyncio.to_thread(stop_job, store, job_id, tenant="watch")
        job = await watcher.next(timeout=5)
        assert job is not None and job.control.stopRequested
        watcher.close()

    try:
        asyncio.run(scenario())
    finally:
        done.set()
        feeds.stop()
        lister.join()


def test_a_watcher_that_opens_while_its_feed_reads_gets_what_that_read_found(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read under way goes only to the watchers it began with; one that opened
    meanwhile (with the view the feed had) is caught up by the next read, not left
    behind until some later change."""
    job_id = _create(store)
    for state in (JobState.VALIDATING, JobState.RUNNING):
        _write(store, job_id, state, step=1)
    feeds = JobFeeds(store, poll_seconds=POLL_SECONDS)
    reading, release = threading.Event(), threading.Event()
    hold_next_read = threading.Event()
    real_get_job = job_feed.get_job

    def slow_get_job(*args: Any, **kwargs: Any) -> Job:
        if threading.current_thread().name.startswith("job-feed") and hold_next_read.is_set():
            hold_next_read.clear()
            reading.set()
            release.wait(10)
        return real_get_job(*args, **kwargs)

    monkeypatch.setattr(job_feed, "get_job", slow_get_job)

    async def scenario() -> None:
        first = await asyncio.to_thread(feeds.watch, job_id, tenant="watch")
        hold_next_read.set()
        assert await asyncio.to_thread(reading.wait, 10)  # a read has begun, and waits
        late = await asyncio.to_thread(feeds.watch, job_id, tenant="watch")  # reads step 1
        await asyncio.to_thread(_write, store, job_id, None, 2)
        release.set()  # the read goes on, and finds step 2
        for watcher in (first, late):
            job = await watcher.next(timeout=5)
            assert job is not None and job.status.progress.step == 2
            watcher.close()

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        feeds.stop()


def test_a_watcher_holding_a_change_when_its_feed_ends_raises_at_its_next_call(
    store: JobStore,
) -> None:
    job_id = _create(store)
    feeds = JobFeeds(store, poll_seconds=POLL_SECONDS)

    async def scenario() -> None:
        watcher = await asyncio.to_thread(feeds.watch, job_id, tenant="watch")
        assert await watcher.next(timeout=2 * POLL_SECONDS) is None  # it waits on its loop
        await asyncio.to_thread(_write, store, job_id, JobState.VALIDATING)
        await asyncio.sleep(10 * POLL_SECONDS)  # the change is handed, not taken
        status = S3Location(store.bucket, f"jobs/{job_id}/status.json")
        await asyncio.to_thread(store.storage.put_bytes, status, b"{not json")
        await asyncio.sleep(10 * POLL_SECONDS)  # three failed reads end the feed
        job = await watcher.next(timeout=5)
        assert job is not None and job.status.state == JobState.VALIDATING
        started = time.monotonic()
        with pytest.raises(CorruptDocument):
            await watcher.next(timeout=5)
        assert time.monotonic() - started < 2  # at once, not after the timeout
        watcher.close()

    try:
        asyncio.run(scenario())
    finally:
        feeds.stop()


def test_a_request_that_comes_while_many_watchers_wake_waits_for_one_slice_of_them() -> None:
    """The feed wakes a change's watchers a slice at a time, each slice a turn of their
    loop: work the loop got meanwhile (here a callback that the first woken watcher
    schedules, as a describe's socket read would be) runs before the rest are resumed,
    not after every one of a thousand."""
    watchers = 1000

    async def follow() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        events = tuple(asyncio.Event() for _ in range(watchers))
        resumed: list[int] = []
        request_ran_after: list[int] = []

        async def watcher(index: int) -> None:
            await events[index].wait()
            if not resumed:
                loop.call_soon(lambda: request_ran_after.append(len(resumed)))
            resumed.append(index)

        tasks = [asyncio.create_task(watcher(index)) for index in range(watchers)]
        await asyncio.sleep(0)  # every watcher waits on its event
        job_feed._wake(loop, *events)
        await asyncio.gather(*tasks)
        return resumed, request_ran_after[0]

    resumed, request_ran_after = asyncio.run(follow())
    assert sorted(resumed) == list(range(watchers))  # every watcher woken, once
    assert request_ran_after <= 2 * job_feed._WAKE_SLICE, request_ran_after
