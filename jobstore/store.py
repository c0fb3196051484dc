"""Job documents in the state bucket, with conditional writes as the only lock.
Long because every job-document key and compare-and-swap lives here, once.

Invariants:
- `spec.json` and the first `status.json` are created with `If-None-Match: *`; a job id
  is never written twice.
- `status.json` only changes through `update_status()`: read, apply a pure function,
  write with `If-Match: <etag>`, and on 412 start again from a fresh read.
- A terminal status is final: `update_status()` never writes over one. So a finished job
  (spec, status and control: a stop is refused once it ended) never changes, and `get()`
  serves one it has read from memory.
- A job not finished comes from memory only to a reader that says how old an answer it
  accepts (`get(max_age=...)`), and only as old as that (jobstore/recent_jobs.py); every
  write here to a status or control makes this process's next read of it fresh.
- Keys are built here, from job ids that match `JOB_ID_PATTERN`, never from user text.
- Every job has a marker in its tenant's index, `tenants/<tenant>/jobs/<job-id>`, written
  before its spec: a tenant's listing reads only its own jobs. Jobs created before the
  index existed get theirs from `backfill_tenant_index()`, which ends by writing
  `tenants/.complete`; until that marker exists, listings walk every job instead.
- Every write that changes the status of a waiting job (QUEUED, not launched: a launch
  claim, a stop or pause before launch, a refusal) is followed by a new version of its
  `changed/<job-id>` marker (`changed_markers()`). So a reader that read a job waiting
  after listing the markers, and sees that marker's etag unchanged in a later listing,
  knows the job was still waiting when that listing was made, without reading it (the
  reconciler's passes); unless the writer died between the two writes, which the reader's
  periodic re-read bounds.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from jobstore.control_markers import ControlMarkers
from jobstore.documents import (
    JOB_ID_PATTERN,
    JobControl,
    JobEvent,
    JobSpec,
    JobState,
    JobStatus,
    utc_now,
)
from jobstore.errors import CorruptDocument, JobNotFound, StatusContention
from jobstore.queue_ledger import QueueLedger
from jobstore.queue_order import QueueOrder
from jobstore.recent_jobs import RecentJobs
from jobstore.storage import ObjectStore, PreconditionFailed, S3Location, StorageError

log = logging.getLogger(__name__)

_JOB_ID = re.compile(JOB_ID_PATTERN)
_TENANT = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Specs kept in memory per process. A spec never changes once written (If-None-Match)
# and jobs are never deleted, so a cached one is never stale; the bound only caps memory
# (a spec is a few KB).
SPEC_CACHE_SIZE = 10_000
# Finished jobs kept in memory per process (a status is a few KB; they never change).
FINISHED_CACHE_SIZE = 5_000
# Store reads one get_many call has in flight at most (a list page: 20 by default).
_CONCURRENT_READS = 8
# Keys per page of a listing of control markers over a range of job ids.
_MARKER_PAGE = 200

Document = TypeVar("Document", bound=BaseModel)


@dataclass
class Job:
    spec: JobSpec
    status: JobStatus
    control: JobControl
    # The ETag `status` was read with (None: no status written yet): a compare-and-swap
    # can try it first instead of reading the status again (`update_status(known=)`).
    status_etag: str | None = None


@dataclass
class IdempotencyRecord:
    job_id: str
    fingerprint: str
    spec: JobSpec


def check_job_id(job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise JobNotFound(job_id)
    return job_id


class JobStore:
    _INDEX_COMPLETE_KEY = "tenants/.complete"

    def __init__(
        self, storage: ObjectStore, bucket: str, *, spec_cache_size: int = SPEC_CACHE_SIZE
    ) -> None:
        self.storage = storage
        self.bucket = bucket
        # Read-through cache of immutable specs: describe, list and every reconcile pass
        # read a job's spec, and without it each of those is one more store GET.
        self._specs: OrderedDict[str, JobSpec] = OrderedDict()
        self._specs_lock = threading.Lock()
        self._spec_cache_size = spec_cache_size
        # Which jobs hold a place in each tenant's queue (jobstore/queue_ledger.py).
        self.queue_ledger = QueueLedger(storage, bucket)
        # Where waiting jobs stand in line (jobstore/queue_order.py).
        self.queue_order = QueueOrder(storage, bucket)
        # Jobs read in a terminal state: describe and list of a finished job (most jobs,
        # in a history that grows) then cost no store reads.
        self._finished: OrderedDict[str, Job] = OrderedDict()
        self._finished_lock = threading.Lock()
        # Jobs not finished, as read lately: for readers that accept an answer a moment old.
        self.recent = RecentJobs()
        # Which jobs the latest listings of `stops/` showed with no control (a job's feed
        # then reads its status alone: jobstore/control_markers.py).
        self.markers = ControlMarkers()
        # Whether every job is in its tenant's index (`tenants/.complete` seen).
        self._index_complete = False
        # Threads for get_many, started on first use.
        self._readers: ThreadPoolExecutor | None = None
        self._readers_lock = threading.Lock()

    # -- keys ----------------------------------------------------------------

    def _job(self, job_id: str, *parts: str) -> S3Location:
        return S3Location(self.bucket, "/".join(("jobs", check_job_id(job_id), *parts)))

    def _active(self, job_id: str) -> S3Location:
        return S3Location(self.bucket, f"active/{check_job_id(job_id)}")

    def list_active_job_ids(self) -> list[str]:
        """Ids of jobs not yet seen terminal by a reconciler, oldest first."""
        ids = [
            item["key"][len("active/") :]
            for item in self.storage.list_objects(S3Location(self.bucket, "active/"))
        ]
        return sorted((i for i in ids if _JOB_ID.match(i)), reverse=True)

    def _control_marker(self, job_id: str) -> S3Location:
        # `stops/`: named when a stop was the only request a job could have; a pause
        # writes the same marker, and stores written before keep theirs.
        return S3Location(self.bucket, f"stops/{check_job_id(job_id)}")

    def control_marked(self, first: str, last: str, *, page_size: int = _MARKER_PAGE) -> set[str]:
        """Ids from `first` to `last` (in key order, i.e. newest to oldest) that have a
        `control.json` (a stop or a pause was requested): one listing of `stops/`, so a
        list page reads `control.json` only for those jobs. Markers are sparse.
        `page_size`: keys per page of the listing (a reconcile pass, over every active
        job, asks for large pages)."""
        prefix = S3Location(self.bucket, "stops/")
        marked: set[str] = set()
        started = time.monotonic()
        # StartAfter is exclusive: start after a key just below `first`.
        # The first page of the listing is `page_size` keys: the range is usually a list
        # page's worth of jobs, and a page of the listing costs the parsing of every key
        # in it. Other tenants' markers may lie in the range too (`stops/` is shared):
        # past the first page, pages of at least _MARKER_PAGE.
        start_after, size = f"stops/{check_job_id(first)[:-1]}", page_size
        while True:
            listed = 0
            for item in self.storage.list_objects(prefix, start_after=start_after, page_size=size):
                listed += 1
                start_after = item["key"]
                job_id = start_after[len(prefix.key) :]
                if job_id > last:
                    break
                if job_id >= first:
                    marked.add(job_id)
                if listed == size:
                    break  # this page is used up: the rest in larger ones
            if listed < size or job_id > last:
                break
            size = max(size, _MARKER_PAGE)
        self.markers.listed(started, first, last, marked)
        return marked

    def _changed_marker(self, job_id: str) -> S3Location:
        return S3Location(self.bucket, f"changed/{check_job_id(job_id)}")

    def changed_markers(self) -> dict[str, str]:
        """Per job id, the etag of its `changed/` marker, which gets a new version
        before every write that changes the status of a waiting job: one listing."""
        prefix = S3Location(self.bucket, "changed/")
        return {
            item["key"][len(prefix.key) :]: item["etag"]
            for item in self.storage.list_objects(prefix)
        }

    # -- the per-tenant index -----------------------------------------------------

    def _tenant_prefix(self, tenant: str) -> str:
        if not _TENANT.match(tenant):
            raise ValueError(f"invalid tenant {tenant!r}")
        return f"tenants/{tenant}/jobs/"

    def _index_marker(self, spec: JobSpec) -> S3Location:
        return S3Location(self.bucket, self._tenant_prefix(spec.tenant) + check_job_id(spec.jobId))

    def tenant_index_complete(self) -> bool:
        """Whether every job is in its tenant's index (read once; it never reverts)."""
        if not self._index_complete:
            self._index_complete = (
                self.storage.head(S3Location(self.bucket, self._INDEX_COMPLETE_KEY)) is not None
            )
        return self._index_complete

    def list_tenant_job_ids(self, tenant: str, *, after: str | None, limit: int) -> list[str]:
        """The tenant's job ids newest first (ids sort that way), starting after `after`:
        one LIST of its own index, whatever other tenants hold."""
        prefix = self._tenant_prefix(tenant)
        start_after = prefix + check_job_id(after) if after else None
        ids = []
        for item in self.storage.list_objects(
            S3Location(self.bucket, prefix), start_after=start_after, page_size=limit
        ):
            job_id = item["key"][len(prefix) :]
            if _JOB_ID.match(job_id):
                ids.append(job_id)
            if len(ids) >= limit:
                break
        return ids

    def backfill_tenant_index(self) -> int:
        """Put every job in its tenant's index (those created before it existed), then
        mark the index complete; return how many markers were written. Safe to run on
        several replicas at once: markers are empty objects, written again the same."""
        if self.tenant_index_complete():
            return 0
        written, after = 0, None
        while batch := self.list_job_ids(after=after, limit=1000):
            for job_id in batch:
                try:
                    spec = self.get_spec(job_id)
                except (JobNotFound, CorruptDocument):
                    continue  # a create in flight writes its own; a damaged one has no tenant
                marker = self._index_marker(spec)
                if self.storage.head(marker) is None:
                    self.storage.put_bytes(marker, b"")
                    written += 1
            after = batch[-1]
        self.storage.put_bytes(S3Location(self.bucket, self._INDEX_COMPLETE_KEY), b"")
        self._index_complete = True
        return written

    def mark_inactive(self, job_id: str) -> None:
        # The changed marker first: killed between the two, the job is still active (and
        # finished), and the next pass retires it again.
        self.storage.delete(self._changed_marker(job_id))
        self.storage.delete(self._active(job_id))

    def log_location(self, job_id: str, attempt: int) -> S3Location:
        """One attempt's trainer log. Each attempt keeps its own, so the log of a killed
        or preempted attempt (the one that says why) survives its relaunch."""
        return self._job(job_id, "logs", f"attempt-{attempt}", "trainer.log")

    def legacy_log_location(self, job_id: str) -> S3Location:
        """Where trainers wrote the log before logs were kept per attempt (read only)."""
        return self._job(job_id, "logs", "trainer.log")

    def _idempotency(self, tenant: str, token: str) -> S3Location:
        if not _TENANT.match(tenant):
            raise ValueError(f"invalid tenant {tenant!r}")
        digest = hashlib.sha256(token.encode()).hexdigest()
        return S3Location(self.bucket, f"idempotency/{tenant}/{digest}.json")

    # -- create --------------------------------------------------------------

    def create(self, spec: JobSpec) -> JobStatus | None:
        """Write the active marker, the spec, then the initial status; return that status,
        or None when a status was there already (the create was finished before).

        Safe to repeat for the same spec (an idempotent retry finishing a create that
        another replica began): whichever writes first wins, and both are equal.
        The marker goes first: the reconciler walks `active/` rather than every job ever
        created, so a job must never exist without one.
        """
        self.storage.put_bytes(self._active(spec.jobId), b"")
        self.storage.put_bytes(self._index_marker(spec), b"")
        try:
            self.storage.put_json(
                self._job(spec.jobId, "spec.json"), spec.model_dump(mode="json"), if_none_match=True
            )
            self._remember_spec(spec)  # ours is the stored one: no GET to describe it
        except PreconditionFailed:
            pass  # written before, by the replica that began this create (same document)
        status = JobStatus(updatedAt=spec.createdAt, stateTimes={"QUEUED": spec.createdAt})
        try:
            self.storage.put_json(
                self._job(spec.jobId, "status.json"),
                status.model_dump(mode="json"),
                if_none_match=True,
            )
        except PreconditionFailed:
            return None
        finally:
            self.recent.written(spec.jobId)
        return status

    def claim_idempotency_token(
        self, tenant: str, token: str, fingerprint: str, spec: JobSpec
    ) -> IdempotencyRecord:
        """Record token -> job; return the record that won (ours or an earlier one)."""
        location = self._idempotency(tenant, token)
        document = {
            "jobId": spec.jobId,
            "fingerprint": fingerprint,
            "spec": spec.model_dump(mode="json"),
        }
        try:
            self.storage.put_json(location, document, if_none_match=True)
            return IdempotencyRecord(spec.jobId, fingerprint, spec)
        except PreconditionFailed:
            found = self.storage.get_json(location)
            if found is None:  # deleted in between; nothing deletes these today
                raise
            existing, _ = found
            return IdempotencyRecord(
                existing["jobId"], existing["fingerprint"], JobSpec.model_validate(existing["spec"])
            )

    def find_idempotency_token(self, tenant: str, token: str) -> str | None:
        """The job id a tenant's token was claimed for, or None if it never was."""
        found = self.storage.get_json(self._idempotency(tenant, token))
        return None if found is None else str(found[0]["jobId"])

    # -- read ----------------------------------------------------------------

    def remembered(self, job_id: str, *, max_age: float) -> Job | None:
        """The job from memory only, never the store: what `get(job_id, max_age=...)`
        answers without a read (the job finished, or known at most `max_age` seconds
        ago), else None. For callers that must not block."""
        finished = self._finished_copy(job_id)
        if finished is not None:
            return finished
        return self.recent.fresh(job_id, max_age) if max_age > 0 else None

    def get_spec(self, job_id: str) -> JobSpec:
        """The job's spec: from memory when this process has read it before (specs never
        change), else one GET. Callers must not modify the returned object."""
        with self._specs_lock:
            cached = self._specs.get(job_id)
            if cached is not None:
                self._specs.move_to_end(job_id)
                return cached
        found = self._read(self._job(job_id, "spec.json"), JobSpec)
        if found is None:  # not cached: a create in flight may write it any moment
            raise JobNotFound(job_id)
        spec = found[0]
        self._remember_spec(spec)
        return spec

    def _remember_spec(self, spec: JobSpec) -> None:
        with self._specs_lock:
            self._specs[spec.jobId] = spec
            self._specs.move_to_end(spec.jobId)
            while len(self._specs) > self._spec_cache_size:
                self._specs.popitem(last=False)

    def get_status(self, job_id: str) -> tuple[JobStatus, str | None]:
        """The status and its ETag; a job whose status was never written is QUEUED."""
        found = self._read(self._job(job_id, "status.json"), JobStatus)
        if found is None:
            return JobStatus(updatedAt=utc_now()), None
        return found

    def get_control(self, job_id: str) -> JobControl:
        found = self._read(self._job(job_id, "control.json"), JobControl)
        return JobControl() if found is None else found[0]

    def _read(self, location: S3Location, model: type[Document]) -> tuple[Document, str] | None:
        """The document and its ETag, None when absent; `CorruptDocument` (naming the
        object and what is wrong) when it is not JSON or not a valid `model`."""
        found = self.storage.get_bytes(location)
        if found is None:
            return None
        body, etag = found
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError) as error:  # not JSON (or absurdly nested)
            raise CorruptDocument(location.uri, _what_is_wrong(error), is_json=False) from error
        try:
            return model.model_validate(parsed), etag
        except ValueError as error:  # ValidationError
            raise CorruptDocument(location.uri, _what_is_wrong(error), is_json=True) from error

    def set_aside_corrupt_status(
        self, job_id: str, replacement: Callable[[str], JobStatus]
    ) -> JobStatus | None:
        """Replace a `status.json` that is not JSON with `replacement(kept)`, keeping
        the unreadable bytes beside it (at the URI `kept`: `status.corrupt-<etag>.json`)
        for whoever looks for the cause. Return the status written; None, changing
        nothing, when the status reads fine now or changed meanwhile (the reconciler
        looks again next pass)."""
        location = self._job(job_id, "status.json")
        found = self.storage.get_bytes(location)
        if found is None:
            return None
        body, etag = found
        try:
            json.loads(body)
            return None  # JSON now: repaired meanwhile, or another release's to read
        except (ValueError, RecursionError):
            pass
        kept = self._job(job_id, f"status.corrupt-{etag.strip(chr(34))[:32]}.json")
        self.storage.put_bytes(kept, body)
        new = replacement(kept.uri)
        try:
            self.storage.put_json(location, new.model_dump(mode="json"), if_match=etag)
        except PreconditionFailed:
            return None
        finally:
            self.recent.written(job_id)
        return new

    def get(
        self,
        job_id: str,
        *,
        read_control: bool = True,
        max_age: float = 0.0,
        markers_listed_at: float | None = None,
    ) -> Job:
        """The job; `read_control=False` when the caller knows no stop was requested (no
        control marker: `control_marked`, listed at the monotonic time `markers_listed_at`),
        saving the GET of an absent control document.

        A job this process has read finished comes from memory (it never changes again:
        see the invariants). One not finished comes from memory when this process knew
        it at most `max_age` seconds ago (0: read it now). Callers may set top-level
        fields of the returned status (queuePosition), not modify what it holds."""
        remembered = self.remembered(job_id, max_age=max_age)
        if remembered is not None:
            return remembered
        started = time.monotonic()
        spec = self.get_spec(job_id)
        status, etag = self.get_status(job_id)
        control = self.get_control(job_id) if read_control else JobControl()
        job = Job(spec, status, control, etag)
        if status.state.is_terminal():
            # A stop racing with the job's end may leave its control unseen here; it
            # changes nothing for a finished job (the stop was answered by its end).
            with self._finished_lock:
                self._finished[job_id] = job
                while len(self._finished) > FINISHED_CACHE_SIZE:
                    self._finished.popitem(last=False)
            self.recent.written(job_id)  # its entry as not finished is done with
            return replace(job, status=status.model_copy())
        # What this read knows holds from when it began; its control (when not read)
        # from when the markers were listed.
        known_at = started if read_control else markers_listed_at
        if known_at is not None:
            self.recent.remember(job, min(known_at, started))
        return job

    def _finished_copy(self, job_id: str) -> Job | None:
        """The job from memory if this process has read it finished, else None."""
        with self._finished_lock:
            finished = self._finished.get(job_id)
            if finished is None:
                return None
            self._finished.move_to_end(job_id)
        return replace(finished, status=finished.status.model_copy())

    def get_many(
        self,
        job_ids: Sequence[str],
        *,
        stopped: Set[str],
        max_age: float = 0.0,
        markers_listed_at: float | None = None,
    ) -> list[Job | None]:
        """The jobs, in the order given, read concurrently: a page of a listing is one
        status GET per job, and one after the other those add up to its latency.
        `stopped`: the ids with a control marker (`control_marked`, listed at the monotonic
        time `markers_listed_at`), whose control is read too. `max_age`: as `get`'s.
        None for an id whose spec is not written yet (a create in flight), or whose spec
        or status cannot be read (logged; the reconciler fails such a job, or reports it:
        service/control/reconcile_faults.py), so one damaged record does not break every page."""
        context = contextvars.copy_context()  # the caller's request id, for store logs

        def read(job_id: str) -> Job | None:
            # Only jobs memory did not answer (below) come here: read them now.
            try:
                return self.get(
                    job_id, read_control=job_id in stopped, markers_listed_at=markers_listed_at
                )
            except JobNotFound:
                return None
            except CorruptDocument as error:
                log.error("job %s left out of a listing: %s", job_id, error.message)
                return None

        # Finished jobs (and recent ones, within max_age) come from memory here; only the
        # others go to the threads.
        found: dict[str, Job | None] = {}
        for job_id in job_ids:
            # A job with a control marker only if finished: its control is read now.
            remembered = self.remembered(job_id, max_age=0.0 if job_id in stopped else max_age)
            if remembered is not None:
                found[job_id] = remembered
        unread = [job_id for job_id in job_ids if job_id not in found]
        if len(unread) < 2:
            found.update((job_id, read(job_id)) for job_id in unread)
        else:
            with self._readers_lock:
                if self._readers is None:
                    self._readers = ThreadPoolExecutor(
                        _CONCURRENT_READS, thread_name_prefix="store-read"
                    )
                readers = self._readers
            jobs = readers.map(lambda job_id: context.copy().run(read, job_id), unread)
            found.update(zip(unread, jobs, strict=True))
        return [found[job_id] for job_id in job_ids]

    def list_job_ids(self, *, after: str | None, limit: int) -> list[str]:
        """Job ids newest first (ids sort that way), starting after `after`."""
        start_after = f"jobs/{check_job_id(after)}/" if after else None
        prefixes = self.storage.list_common_prefixes(
            S3Location(self.bucket, "jobs/"), start_after=start_after, limit=limit
        )
        ids = [p[len("jobs/") :].rstrip("/") for p in prefixes]
        return [i for i in ids if _JOB_ID.match(i)]

    # -- write ---------------------------------------------------------------

    def update_status(
        self,
        job_id: str,
        change: Callable[[JobStatus], JobStatus | None],
        *,
        max_attempts: int = 50,
        known: tuple[JobStatus, str | None] | None = None,
    ) -> JobStatus | None:
        """Compare-and-swap `status.json`.

        `change` gets the current status and returns the new one, or None to leave it
        as it is (then None is returned). It may run several times, so it must be pure.
        What it returns for a terminal status is not written (a terminal status is
        final): None is returned.
        `known` is a (status, etag) the caller read moments ago: the first try uses it
        instead of a GET, and a stale one just fails its If-Match (the next try reads
        afresh). A None from `change` on `known` is final, so pass it only where leaving
        the status alone on a just-read copy is right (the reconciler: the next pass
        looks again).
        """
        location = self._job(job_id, "status.json")
        for attempt in range(max_attempts):
            if attempt == 0 and known is not None:
                current, etag = known
            else:
                current, etag = self.get_status(job_id)
            new = change(current)  # called even so: it may raise (a trainer's fencing)
            if new is None or current.state.is_terminal():
                return None
            new.updatedAt = utc_now()
            waiting = current.state == JobState.QUEUED and current.launch is None
            try:
                if etag is None:
                    self.storage.put_json(location, new.model_dump(mode="json"), if_none_match=True)
                else:
                    self.storage.put_json(location, new.model_dump(mode="json"), if_match=etag)
            except PreconditionFailed:
                continue
            except Exception:
                if waiting:  # perhaps written (an error after the PUT was sent)
                    self._say_changed(job_id)
                raise
            finally:  # written, or perhaps written
                self.recent.written(job_id)
            if waiting:
                self._say_changed(job_id)
            return new
        raise StatusContention(
            f"the status of job {job_id} kept changing under {max_attempts} tries to write it"
        )

    def _say_changed(self, job_id: str) -> None:
        """A new version of the job's changed marker, after a write that changed (or may
        have changed) its status while it waited. After, never before: a reader that
        lists the marker and then reads the status must not see the new marker with the
        old status (see the invariants). Not written (the store away), readers see the
        change when they read the job again anyway (the reconciler's refresh): logged,
        not raised, as the status write itself is done."""
        try:
            self.storage.put_bytes(self._changed_marker(job_id), uuid.uuid4().bytes)
        except StorageError as error:
            log.warning(
                "job %s: its changed marker was not written (%s); other replicas see the "
                "change when they next read the job",
                job_id,
                error,
            )

    def put_control(self, job_id: str, control: JobControl) -> None:
        # The marker first: a reader that sees no marker has not missed a request that
        # was answered; one that sees it reads control.json, absent until written.
        self.storage.put_bytes(self._control_marker(job_id), b"")
        try:
            self.storage.put_json(
                self._job(job_id, "control.json"), control.model_dump(mode="json")
            )
        finally:
            self.recent.written(job_id)
            self.markers.written(job_id)

    def update_control(
        self, job_id: str, change: Callable[[JobControl], JobControl | None], *, tries: int = 20
    ) -> JobControl:
        """Compare-and-swap `control.json`: `change` gets the current control and returns
        the new one, or None to leave it (the current one is returned). A stop and a pause
        requested at once both land: neither overwrites the other."""
        location = self._job(job_id, "control.json")
        self.storage.put_bytes(self._control_marker(job_id), b"")  # first, as above
        for _ in range(tries):
            found = self._read(location, JobControl)
            current, etag = found if found is not None else (JobControl(), None)
            new = change(current)
            if new is None:
                return current
            try:
                if etag is None:
                    self.storage.put_json(location, new.model_dump(mode="json"), if_none_match=True)
                else:
                    self.storage.put_json(location, new.model_dump(mode="json"), if_match=etag)
                return new
            except PreconditionFailed:
                continue
            finally:
                self.recent.written(job_id)
                self.markers.written(job_id)  # listings begun before say nothing of it now
        raise StatusContention(f"the control of job {job_id} kept changing under {tries} tries")

    def _is_this_event(self, location: S3Location, event: JobEvent) -> bool:
        try:
            taken = self._read(location, JobEvent)
        except CorruptDocument:
            return False  # someone else's, in a shape this release does not read
        return taken is not None and taken[0] == event

    def append_event(
        self,
        job_id: str,
        event_type: str,
        message: str,
        state: JobState | None = None,
        *,
        first: bool = False,
    ) -> JobEvent:
        """Append an event with the next free sequence number (create-if-absent).

        `first=True` (a job's first event) starts at 0 without listing the events: the
        create-if-absent moves on past any taken number, so that stays correct.
        """
        if first:
            sequence = 0
        else:
            prefix = self._job(job_id, "events/")
            sequence = sum(1 for _ in self.storage.list_objects(prefix))
        while True:
            event = JobEvent(
                sequence=sequence, time=utc_now(), type=event_type, message=message, state=state
            )
            location = self._job(job_id, "events", f"{sequence:08d}.json")
            try:
                self.storage.put_json(location, event.model_dump(mode="json"), if_none_match=True)
                return event
            except PreconditionFailed:
                # Taken; perhaps by this very write, retried after its answer was lost
                # (a store outage): then it is not written twice.
                if self._is_this_event(location, event):
                    return event
                sequence += 1

    def list_events(self, job_id: str) -> list[JobEvent]:
        events = []
        for item in self.storage.list_objects(self._job(job_id, "events/")):
            found = self.storage.get_json(S3Location(self.bucket, item["key"]))
            if found is not None:
                events.append(JobEvent.model_validate(found[0]))
        return events

    def list_events_page(
        self, job_id: str, *, after: int | None, limit: int
    ) -> tuple[list[JobEvent], bool]:
        """Up to `limit` events with a sequence above `after`, in order, and whether more
        follow. Event keys never change once written, so a page boundary is stable."""
        prefix = self._job(job_id, "events/")
        keys: list[str] = []
        for item in self.storage.list_objects(prefix):
            name = item["key"][len(prefix.key) :].removesuffix(".json")
            if not name.isdigit() or (after is not None and int(name) <= after):
                continue
            keys.append(item["key"])
            if len(keys) > limit:
                break
        events = []
        for key in keys[:limit]:
            found = self.storage.get_json(S3Location(self.bucket, key))
            if found is not None:
                events.append(JobEvent.model_validate(found[0]))
        return events, len(keys) > limit

    def upload_log(self, job_id: str, attempt: int, path: Path) -> None:
        self.storage.upload_file(path, self.log_location(job_id, attempt))


def _what_is_wrong(error: ValueError | RecursionError) -> str:
    """One line on why a document did not parse: the first field at fault, or where the
    JSON breaks."""
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the document"
        more = error.error_count() - 1
        return f"{where}: {first['msg']}" + (f" (and {more} more)" if more else "")
    if isinstance(error, json.JSONDecodeError):
        return f"not JSON ({error})"
    if isinstance(error, RecursionError):
        return "not JSON this service reads (nested too deeply)"
    return str(error).splitlines()[0]
