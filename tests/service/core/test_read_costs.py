"""What describe, list and create read from a real SeaweedFS: stop requests seen through
the stop markers, other tenants' jobs skipped on cached specs, a bounded number of store
calls per operation whatever the number of jobs (the API is never the
bottleneck)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobstore.documents import JobState, JobStatus
from jobstore.storage import S3Location
from jobstore.store import JobStore
from service.auth.limits import TenantPolicy
from service.control.launch.local import LocalLauncher
from service.control.reconciler import Reconciler
from service.core import jobs
from service.core.schemas import JobCreate
from tests.servers import demo_job


def _policy(tenant: str, bucket: str) -> TenantPolicy:
    return TenantPolicy(tenant, 0, 1000, 0.0, 1, ("*",), bucket)


def _create(store: JobStore, tenant: str, name: str) -> str:
    body = JobCreate.model_validate(demo_job(name))
    job, created = jobs.create_job(store, body, _policy(tenant, store.bucket))
    assert created
    return job.spec.jobId


def test_list_shows_stops_and_reads_a_bounded_number_of_documents(
    counted: tuple[JobStore, Counter[str]],
) -> None:
    store, calls = counted
    mine = [_create(store, "mine", f"m{n}") for n in range(4)]
    theirs = [_create(store, "theirs", f"t{n}") for n in range(30)]  # newer than mine
    stopped = jobs.stop_job(store, mine[1], tenant="mine")
    assert stopped.control.stopRequested
    jobs.stop_job(store, theirs[0], tenant="theirs")

    calls.clear()
    found, token = jobs.list_jobs(store, tenant="mine", state=None, limit=20, page_token=None)
    assert token is None
    assert [job.spec.jobId for job in found] == list(reversed(mine))
    by_id = {job.spec.jobId: job for job in found}
    assert by_id[mine[1]].control.stopRequested
    assert not any(by_id[i].control.stopRequested for i in (mine[0], mine[2], mine[3]))
    # Listings (job ids, stop markers), a status per own job, control for the stopped
    # one only; no reads for the other tenant's 30 jobs (their specs were cached).
    assert calls["GetObject"] == len(mine) + 1, calls
    assert calls["ListObjectsV2"] <= 3, calls

    only_stopping, _ = jobs.list_jobs(
        store, tenant="mine", state=JobState.STOPPING, limit=20, page_token=None
    )
    assert [job.spec.jobId for job in only_stopping] == [mine[1]]


def _all_pages(store: JobStore, tenant: str, state: JobState | None, limit: int) -> list[str]:
    listed: list[str] = []
    token: str | None = None
    for _ in range(100):
        page, token = jobs.list_jobs(
            store, tenant=tenant, state=state, limit=limit, page_token=token
        )
        assert len(page) <= limit
        listed += [job.spec.jobId for job in page]
        if token is None:
            return listed
    raise AssertionError(f"no last page after 100: {listed}")


def test_pages_cover_the_tenants_jobs_once_newest_first_whatever_the_filter(
    counted: tuple[JobStore, Counter[str]],
) -> None:
    """Pages read their jobs' statuses together (JobStore.get_many); whatever the page size
    and filter, the pages hold each of the caller's matching jobs once, in order."""
    store, _ = counted
    mine: list[str] = []
    for n in range(17):  # interleaved with another tenant's, so pages skip theirs
        mine.append(_create(store, "mine", f"m{n}"))
        _create(store, "theirs", f"t{n}")
    stopping = set(mine[1::3])
    for job_id in stopping:
        jobs.stop_job(store, job_id, tenant="mine")
    newest_first = list(reversed(mine))

    for limit in (1, 3, 5, 20):
        assert _all_pages(store, "mine", None, limit) == newest_first, limit
        assert _all_pages(store, "mine", JobState.STOPPING, limit) == [
            job_id for job_id in newest_first if job_id in stopping
        ], limit
        assert _all_pages(store, "mine", JobState.QUEUED, limit) == [
            job_id for job_id in newest_first if job_id not in stopping
        ], limit
    assert _all_pages(store, "nobody", None, 5) == []


def test_describe_and_create_cost_the_same_whatever_the_number_of_jobs(
    counted: tuple[JobStore, Counter[str]],
) -> None:
    store, calls = counted
    first = _create(store, "busy", "first")
    for n in range(40):
        _create(store, "busy", f"n{n}")

    calls.clear()
    job = jobs.get_job(store, first, tenant="busy")
    assert job.spec.jobId == first and job.status.state == JobState.QUEUED
    # Status, control and the queue order (a queued job's place in line, cached for a
    # second); the spec is cached.
    assert sum(calls.values()) == 3, calls
    assert job.status.queuePosition is None  # no reconcile pass has placed it yet

    calls.clear()
    _create(store, "busy", "one-more")
    # Queue ledger (one CAS), marker, spec, status, first event: no read per other job.
    assert sum(calls.values()) <= 7, calls


def test_a_reconcile_pass_reads_what_changed_and_rewrites_nothing_unchanged(
    counted: tuple[JobStore, Counter[str]], tmp_path: Path
) -> None:
    """Waiting jobs read once are not read again while their markers say nothing changed
    (tests/service/control/test_waiting_reads.py has the other replica's side)."""
    store, calls = counted
    queued = [_create(store, "waits", f"q{n}") for n in range(5)]
    jobs.stop_job(store, queued[2], tenant="waits")
    # No slots: every job waits, so the pass only orders the queue.
    reconciler = Reconciler(store, LocalLauncher(tmp_path), {}, slots=0)

    reconciler.run_once()
    assert store.get(queued[2]).status.state == JobState.STOPPED  # the stop was seen
    waiting = [job_id for job_id in queued if job_id != queued[2]]  # oldest first
    assert _positions(store, waiting) == [1, 2, 3, 4]

    calls.clear()
    reconciler.run_once()
    # No status (every job was read waiting and nothing changed it), the tenant's queue
    # ledger, four listings (active jobs, stop markers, changed markers, ledgers); no
    # writes when every job already carries its place.
    assert reconciler.last_pass_known_waiting == len(waiting)
    assert calls["GetObject"] == 1, calls
    assert calls["ListObjectsV2"] == 4, calls
    assert calls["PutObject"] == 0, calls

    jobs.stop_job(store, waiting[0], tenant="waits")
    calls.clear()
    reconciler.run_once()
    # The stopped job's status (its control marker is new) and control, its fresh read
    # before it is finished, the ledger. The three others move up one place: one write of
    # the queue order, not one per queued job (the other PUTs finish the stopped job:
    # its changed marker, status and event).
    assert calls["GetObject"] == 1 + 1 + 1 + 1, calls
    puts_for_the_stop = calls["PutObject"]
    assert store.get(waiting[0]).status.state == JobState.STOPPED
    assert _positions(store, waiting[1:]) == [1, 2, 3]
    assert store.get(waiting[0]).status.queuePosition is None

    # More waiting jobs cost the pass no more writes when one leaves the line.
    more = [_create(store, "waits", f"m{n}") for n in range(10)]
    reconciler.run_once()
    jobs.stop_job(store, waiting[1], tenant="waits")
    calls.clear()
    reconciler.run_once()
    assert calls["PutObject"] == puts_for_the_stop, calls
    assert _positions(store, [*waiting[2:], *more]) == list(range(1, 13))


def _positions(store: JobStore, job_ids: list[str]) -> list[int | None]:
    """Places in line as a describe answers them (read afresh: no cached order)."""
    store.queue_order.cache_seconds = 0
    return [jobs.get_job(store, i, tenant="waits").status.queuePosition for i in job_ids]


def _fail(store: JobStore, job_id: str) -> None:
    assert store.update_status(job_id, lambda status: status.moved_to(JobState.FAILED))


def test_a_finished_job_is_read_from_the_store_once_and_a_running_one_every_time(
    counted: tuple[JobStore, Counter[str]],
) -> None:
    store, calls = counted
    finished = [_create(store, "done", f"f{n}") for n in range(5)]
    for job_id in finished:
        _fail(store, job_id)
    waiting = _create(store, "done", "waiting")

    jobs.get_job(store, finished[0], tenant="done")
    listed, _ = jobs.list_jobs(store, tenant="done", state=None, limit=20, page_token=None)
    assert len(listed) == 6
    calls.clear()
    for _ in range(3):
        job = jobs.get_job(store, finished[0], tenant="done")
        assert job.status.state == JobState.FAILED
    assert sum(calls.values()) == 0, calls  # served from memory: it cannot change

    calls.clear()
    listed, _ = jobs.list_jobs(store, tenant="done", state=None, limit=20, page_token=None)
    assert [job.spec.jobId for job in listed] == [waiting, *reversed(finished)]
    # The listings, the status of the one job not finished and, when its one-second cache
    # has expired, the queue order; none of the finished jobs' documents.
    assert calls["GetObject"] <= 2, calls

    # A job not finished is read afresh every time: a change is seen at once.
    _fail(store, waiting)
    assert jobs.get_job(store, waiting, tenant="done").status.state == JobState.FAILED


def test_a_terminal_status_is_never_written_over(
    counted: tuple[JobStore, Counter[str]],
) -> None:
    store, _ = counted
    job_id = _create(store, "done", "final")
    _fail(store, job_id)
    before = store.get_status(job_id)

    def change(status: JobStatus) -> JobStatus:
        rewritten = status.model_copy(deep=True)
        rewritten.progress.step = 99
        return rewritten

    assert store.update_status(job_id, change) is None
    assert store.get_status(job_id) == before  # same document, same ETag


def _fresh(store: JobStore) -> JobStore:
    """Another replica's view of the same bucket: nothing cached."""
    return JobStore(store.storage, store.bucket)


def _bucket_with(counted: tuple[JobStore, Counter[str]], theirs: int) -> tuple[JobStore, list[str]]:
    store, _ = counted
    bucket = JobStore(store.storage, f"index-{uuid.uuid4().hex[:10]}")
    bucket.storage.ensure_bucket(bucket.bucket)
    mine = [_create(bucket, "mine", f"m{n}") for n in range(5)]
    for n in range(theirs):  # newer than mine: a walk of every job meets them first
        _create(bucket, "theirs", f"t{n}")
    assert bucket.backfill_tenant_index() == 0  # every job was indexed at create
    return bucket, mine


def test_a_tenants_list_page_costs_the_same_whatever_another_tenant_owns(
    counted: tuple[JobStore, Counter[str]],
) -> None:
    """A list page reads the caller's own index: another tenant's 300 jobs (none of
    their specs cached: another replica) cost no store call at all."""
    _, calls = counted
    costs = []
    for theirs in (0, 300):
        bucket, mine = _bucket_with(counted, theirs)
        reader = _fresh(bucket)
        reader.tenant_index_complete()  # read once per replica, then known
        calls.clear()
        found, token = jobs.list_jobs(reader, tenant="mine", state=None, limit=20, page_token=None)
        assert [job.spec.jobId for job in found] == list(reversed(mine)) and token is None
        costs.append(dict(calls))
    assert costs[0] == costs[1], costs
    assert costs[1]["GetObject"] == 2 * 5 + 1, costs  # a spec and a status each, the queue


def test_jobs_from_before_the_index_are_listed_before_and_after_the_backfill(
    counted: tuple[JobStore, Counter[str]],
) -> None:
    store, _ = counted
    mine = [_create(store, "mine", f"m{n}") for n in range(3)]
    theirs = [_create(store, "theirs", f"t{n}") for n in range(3)]
    for job_id in mine + theirs:  # as if created by a release without the index
        tenant = "mine" if job_id in mine else "theirs"
        store.storage.delete(S3Location(store.bucket, f"tenants/{tenant}/jobs/{job_id}"))
    old = _fresh(store)
    assert not old.tenant_index_complete()
    assert _all_pages(old, "mine", None, 2) == list(reversed(mine))  # walks every job
    assert old.backfill_tenant_index() == 6
    new = _fresh(store)
    assert new.tenant_index_complete()
    assert new.list_tenant_job_ids("mine", after=None, limit=10) == list(reversed(mine))
    assert _all_pages(new, "mine", None, 2) == list(reversed(mine))
    assert _all_pages(new, "theirs", None, 5) == list(reversed(theirs))


def test_a_describe_from_memory_reads_nothing_and_answers_as_the_store_path_does(
    counted: tuple[JobStore, Counter[str]],
) -> None:
    store, calls = counted
    waiting = _create(store, "mine", "waiting")
    _create(store, "mine", "behind")
    done = _create(store, "mine", "done")
    _fail(store, done)
    store.queue_order.publish([waiting])
    store.queue_order.cache_seconds = 30  # no expiry within the test, however slow
    # Nothing known yet: memory has no answer, the store path has one.
    assert jobs.remembered_job(store, waiting, tenant="mine", max_age=30.0) is None
    read = jobs.get_job(store, waiting, tenant="mine", max_age=30.0)
    jobs.get_job(store, done, tenant="mine", max_age=30.0)

    calls.clear()
    remembered = jobs.remembered_job(store, waiting, tenant="mine", max_age=30.0)
    finished = jobs.remembered_job(store, done, tenant="mine", max_age=30.0)
    assert sum(calls.values()) == 0, calls
    assert remembered is not None and remembered.status == read.status
    assert remembered.status.queuePosition == 1
    assert finished is not None and finished.status.state == JobState.FAILED
    # Another tenant's job has no answer from memory (the store path says not found);
    # with no staleness allowed, only a finished job comes from memory.
    assert jobs.remembered_job(store, waiting, tenant="theirs", max_age=30.0) is None
    assert jobs.remembered_job(store, waiting, tenant="mine", max_age=0.0) is None
    assert jobs.remembered_job(store, done, tenant="mine", max_age=0.0) is not None
    # Once the queue order is older than its cache, a waiting job's place needs a read.
    store.queue_order.cache_seconds = 0
    assert jobs.remembered_job(store, waiting, tenant="mine", max_age=30.0) is None


def test_a_list_page_asks_the_store_for_a_pages_worth_of_keys_whatever_lies_beyond(
    counted: tuple[JobStore, Counter[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unfiltered page of 20 lists 21 ids of the tenant's index and the stop markers of
    their range, not a batch of 100 ids and 200 markers: with thousands of jobs (and of
    stopped jobs) beyond the page, each key listed costs parsing on the server's CPU."""
    store, _ = counted
    created = [_create(store, "many", f"j{n}") for n in range(60)]
    for job_id in created[::2]:  # a stop marker beside every other job, all the way down
        jobs.stop_job(store, job_id, tenant="many")
    store.backfill_tenant_index()  # as a server does at start: the tenant's own index
    asked = _record_listings(store, monkeypatch)
    found, token = jobs.list_jobs(store, tenant="many", state=None, limit=20, page_token=None)
    assert [job.spec.jobId for job in found] == list(reversed(created))[:20]
    assert token is not None
    stopped = {job.spec.jobId for job in found if job.control.stopRequested}
    assert stopped == set(created[::2]) & {job.spec.jobId for job in found}
    assert asked and all(page_size <= 22 for _, page_size in asked), asked

    # Filtered, the page passes over the jobs it leaves out (in larger batches).
    stopping, _ = jobs.list_jobs(
        store, tenant="many", state=JobState.STOPPING, limit=20, page_token=None
    )
    assert [job.spec.jobId for job in stopping] == list(reversed(created[::2]))[:20]


def test_other_tenants_stop_markers_in_a_pages_range_are_listed_in_large_pages(
    counted: tuple[JobStore, Counter[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stops/` is shared: a small tenant's page whose two jobs span another tenant's 30
    stopped jobs lists its own range's worth first, then the rest in pages of 200, not
    thirty listings of three keys."""
    store, calls = counted
    older = _create(store, "small", "older")
    theirs = [_create(store, "big", f"t{n}") for n in range(30)]
    for job_id in theirs:
        jobs.stop_job(store, job_id, tenant="big")
    newer = _create(store, "small", "newer")
    store.backfill_tenant_index()
    asked = _record_listings(store, monkeypatch)
    calls.clear()
    found, token = jobs.list_jobs(store, tenant="small", state=None, limit=20, page_token=None)
    assert [job.spec.jobId for job in found] == [newer, older] and token is None
    assert not any(job.control.stopRequested for job in found)
    assert [size for key, size in asked if key == "stops/"] == [3, 200], asked
    assert calls["ListObjectsV2"] <= 4, calls


def _record_listings(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """From now on, the prefix and page size of each listing the real store is asked for."""
    asked: list[tuple[str, int]] = []
    list_objects = store.storage.list_objects

    def recording(location: S3Location, **options: Any) -> Iterator[dict[str, Any]]:
        asked.append((location.key, options.get("page_size", 1000)))
        return list_objects(location, **options)

    monkeypatch.setattr(store.storage, "list_objects", recording)
    return asked
