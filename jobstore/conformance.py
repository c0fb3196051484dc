"""Start-up check that the object store really honours conditional writes.

The guarantee that no job is lost or duplicated (docs/architecture.md) rests on `If-None-Match: *`
and `If-Match` being enforced. Some S3-compatible stores accept the headers and ignore
them; the service must refuse to run on such a store rather than corrupt jobs later.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from jobstore.errors import StoreNotConformant
from jobstore.storage import ObjectStore, PreconditionFailed, S3Location

PARALLEL_WRITERS = 16


def check_conditional_writes(storage: ObjectStore, bucket: str) -> None:
    """Raise `StoreNotConformant` unless exactly one of 16 racing creates wins and a
    stale `If-Match` is refused."""
    location = S3Location(bucket, f"_conformance/{uuid.uuid4().hex}.json")

    def create(writer: int) -> bool:
        try:
            storage.put_json(location, {"writer": writer}, if_none_match=True)
            return True
        except PreconditionFailed:
            return False

    try:
        with ThreadPoolExecutor(PARALLEL_WRITERS) as pool:
            winners = sum(pool.map(create, range(PARALLEL_WRITERS)))
        if winners != 1:
            raise StoreNotConformant(
                f"the object store at this endpoint does not honour 'If-None-Match: *': "
                f"{winners} of {PARALLEL_WRITERS} parallel create-if-absent writes of one key "
                "succeeded (exactly one must). tuneforge uses conditional writes as its only "
                "lock; use a store that supports them (AWS S3, SeaweedFS >= 4.48, MinIO, ...)."
            )
        found = storage.get_json(location)
        if found is None:
            raise StoreNotConformant("the object store lost an object just written")
        _, etag = found
        storage.put_json(location, {"writer": "update"}, if_match=etag)
        try:
            storage.put_json(location, {"writer": "stale"}, if_match=etag)
        except PreconditionFailed:
            return
        raise StoreNotConformant(
            "the object store at this endpoint does not honour 'If-Match': a write with a "
            "stale ETag succeeded. tuneforge needs compare-and-swap writes."
        )
    finally:
        storage.delete(location)
