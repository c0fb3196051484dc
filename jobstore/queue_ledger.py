"""Per-tenant queue ledger: which of a tenant's jobs hold a place in the queue.

One document per tenant, `queues/<tenant>.json` in the state bucket:
`{"jobs": [job ids]}`, changed only by compare-and-swap (`If-None-Match: *` for the
first version, `If-Match: <etag>` after). Invariants:

- A create adds its job id before it writes the job, and only while fewer than the
  tenant's `max_queued_jobs` ids are listed. Every add is a CAS on the one document, so
  across any number of replicas a tenant never has more jobs waiting than its limit.
- An id leaves the ledger only when its job has left the queue for good (launched or
  ended: states never go back to waiting), or when its create was abandoned (no job
  record `ABANDONED_SECONDS` after the id was made). The reconciler does both
  (`settle`), so a replica that dies between reserving and writing leaks no place for
  longer than that.
- A refusal is decided on a fresh read, never on this process's cached copy.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from jobstore.documents import job_id_created_ms
from jobstore.storage import ObjectStore, PreconditionFailed, S3Location

_PREFIX = "queues/"
_TENANT = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAX_ATTEMPTS = 100


class QueueFull(Exception):
    """The tenant already has `waiting` jobs holding places, its limit or more."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} jobs waiting")
        self.waiting = waiting


class QueueLedger:
    def __init__(self, storage: ObjectStore, bucket: str) -> None:
        self.storage = storage
        self.bucket = bucket
        # The last version this process read or wrote, per tenant: a write is tried on it
        # first (one PUT, no GET), and a stale one just fails its If-Match.
        self._known: dict[str, tuple[list[str], str]] = {}
        # One writer per tenant per process: threads of one replica queue here instead of
        # racing each other's CAS (replicas still race, and the CAS settles that).
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _location(self, tenant: str) -> S3Location:
        if not _TENANT.match(tenant):
            raise ValueError(f"invalid tenant {tenant!r}")
        return S3Location(self.bucket, f"{_PREFIX}{tenant}.json")

    def _lock(self, tenant: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(tenant, threading.Lock())

    def read(self, tenant: str) -> tuple[list[str], str | None]:
        """The tenant's ids holding places, and the document's ETag (None: no document)."""
        found = self.storage.get_json(self._location(tenant))
        if found is None:
            return [], None
        document, etag = found
        ids = document.get("jobs")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{self._location(tenant).uri} is not a queue ledger")
        return ids, etag

    def tenants(self) -> list[str]:
        """Tenants that have a ledger document."""
        names = [
            item["key"][len(_PREFIX) :].removesuffix(".json")
            for item in self.storage.list_objects(S3Location(self.bucket, _PREFIX))
        ]
        return [name for name in names if _TENANT.match(name)]

    def _change(self, tenant: str, change: Callable[[list[str]], list[str] | None]) -> None:
        """CAS loop: `change(ids)` returns the new ids, or None to leave the document.

        It may raise to refuse; a refusal or a no-op on the cached copy is re-checked on
        a fresh read before it counts.
        """
        location = self._location(tenant)
        etag_or_none: str | None
        with self._lock(tenant):
            for attempt in range(_MAX_ATTEMPTS):
                known = self._known.get(tenant) if attempt == 0 else None
                if known is not None:
                    ids, etag_or_none = list(known[0]), known[1]
                    try:
                        new = change(ids)
                    except QueueFull:
                        new = None
                    if new is None:  # decided on a cached copy: decide again, fresh
                        self._known.pop(tenant, None)
                        continue
                else:
                    ids, etag_or_none = self.read(tenant)
                    new = change(list(ids))
                    if new is None:
                        if etag_or_none is not None:
                            self._known[tenant] = (ids, etag_or_none)
                        return
                body: dict[str, Any] = {"jobs": new}
                try:
                    if etag_or_none is None:
                        etag = self.storage.put_json(location, body, if_none_match=True)
                    else:
                        etag = self.storage.put_json(location, body, if_match=etag_or_none)
                except PreconditionFailed:
                    self._known.pop(tenant, None)
                    # Another replica wrote in between: back off a little, so that two
                    # replicas in a burst do not keep beating each other.
                    time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 20)))
                    continue
                self._known[tenant] = (new, etag)
                return
        raise RuntimeError(f"queue ledger of tenant {tenant} kept changing; gave up")

    def reserve(self, tenant: str, job_id: str, limit: int) -> None:
        """Give `job_id` a place in the tenant's queue, or raise QueueFull at `limit`."""

        def add(ids: list[str]) -> list[str] | None:
            if job_id in ids:
                return None  # already holds one (a repeated create)
            if len(ids) >= limit:
                raise QueueFull(len(ids))
            return [*ids, job_id]

        self._change(tenant, add)

    def release(self, tenant: str, job_ids: Collection[str]) -> None:
        """Free the places of `job_ids` (those not holding one are ignored)."""
        leaving = set(job_ids)

        def remove(ids: list[str]) -> list[str] | None:
            kept = [i for i in ids if i not in leaving]
            return kept if len(kept) != len(ids) else None

        if leaving:
            self._change(tenant, remove)

    def settle(
        self, seen: Collection[str], waiting: Collection[str], *, abandoned_seconds: float
    ) -> None:
        """Free the places of jobs that left the queue: called by the reconciler after a
        pass that read every job in `seen` (active jobs whose records it read), of which
        those in `waiting` are still queued and not launched.

        An id not in `seen` is kept unless it is older than `abandoned_seconds`: it may be
        a create still being written, or listed after the pass began.
        """
        now_ms = time.time() * 1000
        for tenant in self.tenants():
            ids, _ = self.read(tenant)
            gone = [
                job_id
                for job_id in ids
                if (job_id in seen and job_id not in waiting)
                or (job_id not in seen and now_ms - _created_ms(job_id) > abandoned_seconds * 1000)
            ]
            if gone:
                self.release(tenant, gone)


def _created_ms(job_id: str) -> float:
    try:
        return float(job_id_created_ms(job_id))
    except ValueError:  # not a job id this service made: nothing can ever launch it
        return 0.0
