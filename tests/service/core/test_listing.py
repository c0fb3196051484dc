"""The core's listing, whatever face asks: filters, both orders, page tokens.

Over a real store (SeaweedFS): a tenant's jobs created one after another, listed with a
creation-time window, a name filter and the visible state, newest or oldest first, page
by page. A window ends the listing where it ends (no empty pages after it), and a token
naming a job that is gone goes on after it in both orders.
"""

from __future__ import annotations

import time
import uuid

import pytest

from jobstore.documents import JobState, job_id_created_ms
from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.auth.limits import TenantPolicy
from service.core import jobs, paging
from service.core.jobs import JobFilter
from service.core.schemas import JobCreate
from tests.servers import demo_job


@pytest.fixture
def store(object_store: ObjectStore) -> JobStore:
    bucket = f"listing-{uuid.uuid4().hex[:10]}"
    object_store.ensure_bucket(bucket)
    return JobStore(object_store, bucket)


def _create(store: JobStore, tenant: str, name: str) -> str:
    body = JobCreate.model_validate(demo_job(name))
    policy = TenantPolicy(tenant, 0, 1000, 0.0, 1, ("*",), store.bucket)
    job, _ = jobs.create_job(store, body, policy)
    time.sleep(0.002)  # distinct creation milliseconds: the window's edges are exact
    return job.spec.jobId


def _every_page(
    store: JobStore, *, limit: int, where: JobFilter | None = None, ascending: bool = False
) -> list[list[str]]:
    pages: list[list[str]] = []
    token = None
    while True:
        found, token = jobs.list_jobs(
            store,
            tenant="mine",
            state=None,
            limit=limit,
            page_token=token,
            where=where,
            ascending=ascending,
        )
        pages.append([job.spec.jobId for job in found])
        if token is None:
            return pages


def test_a_creation_window_is_listed_without_empty_pages_in_either_order(store: JobStore) -> None:
    created = [_create(store, "mine", f"job-{n}") for n in range(12)]  # oldest first
    _create(store, "theirs", "other")
    inside = created[3:8]
    window = JobFilter(
        created_after_ms=job_id_created_ms(created[2]),
        created_before_ms=job_id_created_ms(created[8]),
    )

    newest_first = _every_page(store, limit=2, where=window)
    assert [job for page in newest_first for job in page] == list(reversed(inside))
    assert all(newest_first), newest_first  # no empty page, no token after the last

    oldest_first = _every_page(store, limit=2, where=window, ascending=True)
    assert [job for page in oldest_first for job in page] == inside
    assert all(oldest_first), oldest_first

    one_page = _every_page(store, limit=10, where=window)
    assert one_page == [list(reversed(inside))]


def test_name_and_visible_state_filter_the_tenants_jobs(store: JobStore) -> None:
    kept = _create(store, "mine", "keep-this")
    stopped = _create(store, "mine", "keep-that")
    _create(store, "mine", "other")
    jobs.stop_job(store, stopped, tenant="mine")

    named = _every_page(store, limit=10, where=JobFilter(name_contains="KEEP"))
    assert named == [[stopped, kept]]
    stopping = JobFilter(states=frozenset({JobState.STOPPING}), name_contains="keep")
    assert _every_page(store, limit=10, where=stopping) == [[stopped]]


@pytest.mark.parametrize("ascending", [False, True], ids=["newest-first", "oldest-first"])
def test_a_token_for_a_job_that_is_gone_goes_on_after_it(store: JobStore, ascending: bool) -> None:
    created = [_create(store, "mine", f"job-{n}") for n in range(5)]  # oldest first
    # A token naming an id no job has, between created[1] and created[2] in time.
    between = created[2][:10] + "zzzzzz"
    assert created[2] < between < created[1]
    found, _ = jobs.list_jobs(
        store,
        tenant="mine",
        state=None,
        limit=10,
        page_token=paging.job_token(between),
        ascending=ascending,
    )
    listed = [job.spec.jobId for job in found]
    assert listed == (created[2:] if ascending else [created[1], created[0]])


def test_a_token_that_is_not_ours_names_the_field_it_came_in(store: JobStore) -> None:
    with pytest.raises(jobs.InvalidArgument, match="nextToken is not a token"):
        jobs.list_jobs(
            store, tenant="mine", state=None, limit=5, page_token="!!", token_field="nextToken"
        )
    with pytest.raises(jobs.InvalidArgument, match="pageToken"):
        jobs.list_jobs(store, tenant="mine", state=None, limit=5, page_token=paging.encode("x"))
