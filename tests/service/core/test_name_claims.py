"""Names claimed by compare-and-swap on a real SeaweedFS: one winner, no stale overwrite."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.core.name_claims import ClaimRecord, NameClaims


class Record(ClaimRecord):
    owner: str


@pytest.fixture
def claims(object_store: ObjectStore) -> NameClaims[Record]:
    bucket = f"claims-{uuid.uuid4().hex[:10]}"
    object_store.ensure_bucket(bucket)
    return NameClaims(JobStore(object_store, bucket), "names", Record, re.compile(r"^[a-z0-9-]+$"))


def test_of_concurrent_claims_of_one_name_exactly_one_wins(claims: NameClaims[Record]) -> None:
    owners = [f"create-{index}" for index in range(8)]
    with ThreadPoolExecutor(len(owners)) as pool:
        results = list(pool.map(lambda o: claims.claim("acme", "x", Record(owner=o)), owners))

    winners = [holder.owner for holder, ours in results if ours]
    assert len(winners) == 1
    # Every loser was handed the winner's record, and the store holds it.
    assert {holder.owner for holder, _ in results} == set(winners)
    stored = claims.get("acme", "x")
    assert stored is not None and stored.owner == winners[0]


def test_tenants_do_not_share_names(claims: NameClaims[Record]) -> None:
    assert claims.claim("acme", "x", Record(owner="acme's"))[1]
    assert claims.claim("globex", "x", Record(owner="globex's"))[1]
    assert [record.owner for record in claims.list("acme")] == ["acme's"]


def test_replace_loses_to_a_change_made_since_it_read(claims: NameClaims[Record]) -> None:
    first, _ = claims.claim("acme", "x", Record(owner="first"))
    claims.set_job_id("acme", "x", "job-1")  # the record changed after `first` was read

    assert not claims.replace("acme", "x", Record(owner="second"), first)
    current = claims.get("acme", "x")
    assert current is not None and current.owner == "first" and current.jobId == "job-1"

    assert claims.replace("acme", "x", Record(owner="second"), current)
    replaced = claims.get("acme", "x")
    assert replaced is not None and replaced.owner == "second"


def test_the_job_id_is_written_once(claims: NameClaims[Record]) -> None:
    claims.claim("acme", "x", Record(owner="first"))
    claims.set_job_id("acme", "x", "job-1")
    claims.set_job_id("acme", "x", "job-2")
    record = claims.get("acme", "x")
    assert record is not None and record.jobId == "job-1"


def test_a_released_name_can_be_claimed_again(claims: NameClaims[Record]) -> None:
    claims.claim("acme", "x", Record(owner="first"))
    claims.release("acme", "x")
    holder, ours = claims.claim("acme", "x", Record(owner="second"))
    assert ours and holder.owner == "second"


@pytest.mark.parametrize(("tenant", "name"), [("acme", "Not Valid"), ("../acme", "x")])
def test_names_and_tenants_outside_their_patterns_have_no_record(
    claims: NameClaims[Record], tenant: str, name: str
) -> None:
    assert claims.location(tenant, name) is None
    assert claims.get(tenant, name) is None
    claims.release(tenant, name)  # nothing to release, nothing raised
