"""The core's rules: create, get, list and stop jobs, their events, checkpoints and logs.
Transport-free.
Long because it is every rule of the core; the reads of a job's records end it.

Faces never call these directly: they call `JobService` (service/core/job_service.py),
which adds what every face needs around them (the operator's settings, waking the
reconciler). The core writes only the spec, the control document and events; launching
is the reconciler's, observed state the trainer's. Another tenant's job is answered as
not found, the same as no job at all (`owned_spec`), so that nobody learns which ids exist.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, Field

from jobstore.documents import (
    JobControl,
    JobEvent,
    JobRequest,
    JobResources,
    JobSpec,
    JobState,
    job_id_created_ms,
    new_job_id,
    utc_now,
)
from jobstore.queue_ledger import QueueFull
from jobstore.storage import ObjectMissing, S3Location, parse_s3_uri
from jobstore.store import Job, JobStore
from service.auth.limits import TenantPolicy
from service.core import paging
from service.core.integrations import check_mlflow_tracking_uri
from service.core.schemas import JobCreate
from service.errors import (
    CorruptDocument,
    FailedPrecondition,
    IdempotencyConflict,
    InvalidArgument,
    JobNotFound,
    TooManyRequests,
)
from service.webhooks.delivery import check_webhook_url

log = logging.getLogger(__name__)

# REST and gRPC pages hold at most this many jobs; Bedrock's up to MAX_LIST_LIMIT.
MAX_PAGE_SIZE = 100
MAX_LIST_LIMIT = 1000
# List with a state filter reads each job's status; bound the work per request and
# hand back a page token to go on from where the scan stopped.
_MAX_SCANNED_PER_PAGE = 1000


def request_fingerprint(request: JobCreate) -> str:
    """A hash of the request as it will be executed (defaults filled in), token aside."""
    body = request.model_dump(mode="json", exclude={"clientRequestToken"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def stored_request(request: JobCreate) -> dict[str, Any]:
    """The create request's fields as the job spec stores them (`JobRequest`): the API's
    nested shapes become plain data, the shared documents are kept as they are."""
    shared = {"hyperParameters": request.hyperParameters, "resources": request.resources}
    return {
        **request.model_dump(include=set(JobRequest.model_fields), exclude=set(shared)),
        **shared,
    }


def check_buckets(request: JobCreate, policy: TenantPolicy) -> None:
    """PermissionDenied naming the field when a URI is outside the tenant's grants
    (InvalidArgument for one no tenant may use: the state bucket, a bucket root)."""
    policy.check_uri(request.baseModelIdentifier, "baseModelIdentifier")
    policy.check_uri(request.trainingDataConfig.s3Uri, "trainingDataConfig.s3Uri")
    if request.validationDataConfig is not None:
        policy.check_uri(request.validationDataConfig.s3Uri, "validationDataConfig.s3Uri")
    policy.check_uri(request.outputDataConfig.s3Uri, "outputDataConfig.s3Uri")


def _reserve_queue_place(store: JobStore, policy: TenantPolicy, job_id: str) -> None:
    """Give the new job one of the tenant's `max_queued_jobs` places in the queue, or
    refuse the create. A compare-and-swap on the tenant's ledger (jobstore/queue_ledger.py):
    exact across replicas, and one or two store calls whatever the number of jobs."""
    if policy.max_queued_jobs <= 0:
        return
    try:
        store.queue_ledger.reserve(policy.tenant, job_id, policy.max_queued_jobs)
    except QueueFull as full:
        raise TooManyRequests(
            f"tenant '{policy.tenant}' already has {full.waiting} jobs waiting in the queue, "
            f"the most it may have ({policy.max_queued_jobs}); wait for some to start, or "
            "stop some, then create this one again",
            retry_after_seconds=30,
        ) from full


def check_create(
    request: JobCreate,
    policy: TenantPolicy,
    *,
    webhook_hosts: Collection[str] = (),
    mlflow_hosts: Collection[str] = (),
    check_resources: Callable[[JobResources], None] | None = None,
) -> None:
    """Every check of a create that needs no store write: the webhook and MLflow hosts
    the operator allows, the tenant's grants, and what the launcher can ever run."""
    if request.notifications is not None:
        check_webhook_url(request.notifications.webhookUrl, webhook_hosts)
    mlflow = request.integrations.mlflow if request.integrations is not None else None
    if mlflow is not None:  # the trainer will connect there: only to allowed hosts
        check_mlflow_tracking_uri(mlflow.trackingUri, mlflow_hosts)
    check_buckets(request, policy)
    if check_resources is not None:  # more GPUs / nodes than the launcher can ever give
        check_resources(request.resources)


def create_job(
    store: JobStore,
    request: JobCreate,
    policy: TenantPolicy,
    *,
    webhook_hosts: Collection[str] = (),
    mlflow_hosts: Collection[str] = (),
    check_resources: Callable[[JobResources], None] | None = None,
) -> tuple[Job, bool]:
    """Create a job for `policy.tenant`; return it and whether it is new (False: an
    idempotent repeat). Refused before anything is written when a URI is outside the
    tenant's buckets, its queue is full, or its webhook host is not in `webhook_hosts`."""
    tenant = policy.tenant
    check_create(
        request,
        policy,
        webhook_hosts=webhook_hosts,
        mlflow_hosts=mlflow_hosts,
        check_resources=check_resources,
    )
    token = request.clientRequestToken
    repeat = token is not None and store.find_idempotency_token(tenant, token) is not None
    spec = JobSpec(
        **stored_request(request), jobId=new_job_id(), tenant=tenant, createdAt=utc_now()
    )
    # A place in the queue before anything is written: a refused create leaves nothing.
    # (Should this create die half-way, the reconciler frees the place: queue_ledger.py.)
    if not repeat:
        _reserve_queue_place(store, policy, spec.jobId)
    if request.clientRequestToken is None:
        return _finish_create(store, spec, first_writer=True), True

    fingerprint = request_fingerprint(request)
    record = store.claim_idempotency_token(tenant, request.clientRequestToken, fingerprint, spec)
    if record.fingerprint != fingerprint:
        raise IdempotencyConflict(
            f"clientRequestToken '{request.clientRequestToken}' was already used for job "
            f"{record.job_id} with a different request; send the same request to get that "
            "job back, or use a new token to create another job",
            field="clientRequestToken",
        )
    # The replica that claimed the token may have died before writing the job; finishing
    # its create here is safe because the spec is the same document.
    created = record.job_id == spec.jobId
    if not created and not repeat and policy.max_queued_jobs > 0:
        # A concurrent request with the same token won: ours will never be written.
        store.queue_ledger.release(tenant, [spec.jobId])
    return _finish_create(store, record.spec, first_writer=created), created


def dry_run_spec(request: JobCreate, tenant: str) -> JobSpec:
    """The spec a create would store, for a dry run: checked as a create is (the caller
    ran check_create), with a fresh id that nothing is ever written under."""
    return JobSpec(
        **stored_request(request), jobId=new_job_id(), tenant=tenant, createdAt=utc_now()
    )


def _finish_create(store: JobStore, spec: JobSpec, *, first_writer: bool) -> Job:
    """Write the job (or finish writing it: the same spec) and return it. The job just
    written is answered from what was written, without reading it back."""
    status = store.create(spec)
    if first_writer:
        store.append_event(spec.jobId, "CREATED", "job created", JobState.QUEUED, first=True)
    if first_writer and status is not None:
        return Job(spec, status, JobControl())
    return store.get(spec.jobId)


def owned_spec(store: JobStore, job_id: str, tenant: str) -> JobSpec:
    """The job's spec if it belongs to `tenant`; another tenant's job is JobNotFound, the
    same answer as no job at all, so that nobody learns which ids exist."""
    spec = store.get_spec(job_id)
    if spec.tenant != tenant:
        raise JobNotFound(job_id)
    return spec


def get_job(
    store: JobStore,
    job_id: str,
    *,
    tenant: str,
    max_age: float = 0.0,
    markers_listed_at: float | None = None,
) -> Job:
    """The tenant's job; `max_age`: how many seconds old an answer may be (0: read it now;
    jobstore/recent_jobs.py). Checks before a change (stop, pause) read it now.
    `markers_listed_at`: a listing of control markers begun then showed none for the job
    (jobstore/control_markers.py), so its control is not read."""
    # The owner check first, on the (cached) spec: another tenant's id costs no more reads.
    owned_spec(store, job_id, tenant)
    job = store.get(
        job_id,
        max_age=max_age,
        read_control=markers_listed_at is None,
        markers_listed_at=markers_listed_at,
    )
    return _with_queue_position(store, job)


def remembered_job(store: JobStore, job_id: str, *, tenant: str, max_age: float) -> Job | None:
    """What `get_job` would answer, when it can be answered from this replica's memory
    alone (no store read, so an event loop may call it); else None, and the caller calls
    `get_job` (which also says why a job is not there)."""
    job = store.remembered(job_id, max_age=max_age)
    if job is None or job.spec.tenant != tenant:
        return None
    if job.status.state == JobState.QUEUED and job.status.launch is None:
        known, position = store.queue_order.remembered_position(job_id)
        if not known:
            return None
        job.status.queuePosition = position
    else:
        job.status.queuePosition = None
    return job


def _with_queue_position(store: JobStore, job: Job) -> Job:
    """A waiting job's place in line, from the queue order the reconciler publishes
    (read, not stored in the job's status: jobstore/queue_order.py)."""
    if job.status.state == JobState.QUEUED and job.status.launch is None:
        job.status.queuePosition = store.queue_order.position(job.spec.jobId)
    else:
        job.status.queuePosition = None
    return job


@dataclass(frozen=True)
class JobFilter:
    """Which of a tenant's jobs a listing shows. Every face's filters are one of these."""

    # The state a reader sees (STOPPING while a stop request is pending); None: any.
    states: frozenset[JobState] | None = None
    # Creation time bounds, exclusive, in ms since the epoch (job ids carry it).
    created_after_ms: int | None = None
    created_before_ms: int | None = None
    # A case-insensitive part of the job's name.
    name_contains: str | None = None
    # Tags the job must have, with these values (OpenAI's metadata[key]=value).
    tags: tuple[tuple[str, str], ...] = ()

    def older_than_the_window(self, job_id: str) -> bool:
        after = self.created_after_ms
        return after is not None and job_id_created_ms(job_id) <= after

    def newer_than_the_window(self, job_id: str) -> bool:
        before = self.created_before_ms
        return before is not None and job_id_created_ms(job_id) >= before

    def in_window(self, job_id: str) -> bool:
        return not self.older_than_the_window(job_id) and not self.newer_than_the_window(job_id)

    def matches(self, job: Job) -> bool:
        if self.states is not None and _visible_state(job) not in self.states:
            return False
        if any(job.spec.tags.get(key) != value for key, value in self.tags):
            return False
        return not self.name_contains or (self.name_contains.lower() in job.spec.jobName.lower())


def list_jobs(
    store: JobStore,
    *,
    tenant: str,
    state: JobState | None,
    limit: int,
    page_token: str | None,
    where: JobFilter | None = None,
    ascending: bool = False,
    token_field: str = "pageToken",
    max_age: float = 0.0,
) -> tuple[list[Job], str | None]:
    """The tenant's jobs, newest first (oldest first when `ascending`), those that `state`
    and `where` let through; returns (jobs, the next page's token or None). A page ends
    after `limit` jobs or `_MAX_SCANNED_PER_PAGE` jobs looked at, whichever comes first:
    a page may hold fewer jobs and still have a token. `token_field` is what the face
    calls the token, for the error when it is not one of ours. `max_age`: as get_job's."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_LIST_LIMIT}", field="limit")
    where = where or JobFilter()
    if state is not None:
        where = replace(where, states=frozenset({state}))
    after = paging.job_after(page_token, field=token_field) if page_token else None
    if ascending:
        return _list_oldest_first(store, tenant, where, limit, after, max_age)
    jobs: list[Job] = []
    scanned = 0
    # The tenant's own index when every job is in it: other tenants' jobs cost nothing.
    own_index = store.tenant_index_complete()
    # Unfiltered, every id of the tenant's own index is a job of the page: the page's
    # worth of ids and one more (is there a next page?) is all it lists, however many
    # jobs the tenant has. Filtered, batches of 100 pass over the jobs left out.
    batch_size = limit + 1 if own_index and where == JobFilter() else 100
    while len(jobs) < limit and scanned < _MAX_SCANNED_PER_PAGE:
        if own_index:
            batch = store.list_tenant_job_ids(tenant, after=after, limit=batch_size)
        else:
            batch = store.list_job_ids(after=after, limit=100)
        if not batch:
            return jobs, None
        stopped: set[str] | None = None  # listed once per batch, when first needed
        markers_listed_at = 0.0
        unread = iter(batch)
        looked_at = 0
        past_the_window = False
        while len(jobs) < limit and scanned < _MAX_SCANNED_PER_PAGE:
            # The caller's next jobs, as many as the page still needs. Specs are cached
            # (immutable), so skipping other tenants' jobs costs no store reads.
            wanted: list[str] = []
            for job_id in unread:
                if where.older_than_the_window(job_id):
                    past_the_window = True  # ids go newest first: the rest are older still
                    break
                looked_at += 1
                after = job_id  # the page goes on after the last id looked at
                if where.newer_than_the_window(job_id):
                    continue  # passed over, not counted against the page's scan
                scanned += 1
                # In the tenant's own index every id is theirs (get_many reads the spec).
                if own_index or _is_tenants(store, job_id, tenant):
                    wanted.append(job_id)
                if len(wanted) == limit - len(jobs) or scanned >= _MAX_SCANNED_PER_PAGE:
                    break
            if not wanted:
                if past_the_window:
                    return jobs, None
                break  # the batch is used up
            if stopped is None:
                markers_listed_at = time.monotonic()
                # Markers are sparse: no more than the batch's ids in its range, unless
                # other tenants' jobs interleave (then more pages of the listing).
                stopped = store.control_marked(batch[0], batch[-1], page_size=len(batch) + 1)
            # Their statuses at once; control only for those with a stop marker.
            found = store.get_many(
                wanted, stopped=stopped, max_age=max_age, markers_listed_at=markers_listed_at
            )
            for job in found:
                if job is None or job.spec.tenant != tenant:
                    continue
                if where.matches(job):
                    jobs.append(_with_queue_position(store, job))
            if past_the_window:
                return jobs, None
        if looked_at < len(batch):
            # The page ended inside this batch: there is more after it, no listing needed.
            return jobs, (paging.job_token(after) if after else None)
    if not after:
        more = False
    elif own_index:
        more = bool(store.list_tenant_job_ids(tenant, after=after, limit=1))
    else:
        more = bool(store.list_job_ids(after=after, limit=1))
    return jobs, (paging.job_token(after) if more and after else None)


def _is_tenants(store: JobStore, job_id: str, tenant: str) -> bool:
    try:
        return store.get_spec(job_id).tenant == tenant
    except JobNotFound:
        return False  # a create in flight: its spec is not written yet
    except CorruptDocument as error:  # no tenant can be shown it; the loop fails it
        log.error("job %s left out of a listing: %s", job_id, error.message)
        return False


def _list_oldest_first(
    store: JobStore, tenant: str, where: JobFilter, limit: int, after: str | None, max_age: float
) -> tuple[list[Job], str | None]:
    """Oldest first: ids are listed newest first, so this reads every id of the tenant's
    (one LIST per 1,000 jobs; every job's before the tenant index is complete), then only
    the jobs the page needs."""
    own_index = store.tenant_index_complete()
    ids: list[str] = []
    while True:
        last = ids[-1] if ids else None
        if own_index:
            listed = store.list_tenant_job_ids(tenant, after=last, limit=1000)
        else:
            listed = store.list_job_ids(after=last, limit=1000)
        if not listed:
            break
        ids.extend(listed)
    ids.reverse()
    if after is not None:  # newer than the token's job (smaller ids), whether it still exists
        ids = [job_id for job_id in ids if job_id < after]
    jobs: list[Job] = []
    scanned = 0
    for position, job_id in enumerate(ids):
        if not where.in_window(job_id):
            continue
        scanned += 1
        if own_index or _is_tenants(store, job_id, tenant):
            # Control read too.
            found = store.get_many([job_id], stopped={job_id}, max_age=max_age)[0]
            if found is not None and found.spec.tenant == tenant and where.matches(found):
                jobs.append(_with_queue_position(store, found))
        if len(jobs) == limit or scanned >= _MAX_SCANNED_PER_PAGE:
            more = position + 1 < len(ids)
            return jobs, (paging.job_token(job_id) if more else None)
    return jobs, None


def _visible_state(job: Job) -> JobState:
    if job.control.stopRequested and not job.status.state.is_terminal():
        return JobState.STOPPING
    return job.status.state


def is_visibly_terminal(job: Job) -> bool:
    """Whether the job, as a reader sees it, has ended (nothing about it changes again)."""
    return _visible_state(job).is_terminal()


def stop_job(store: JobStore, job_id: str, *, tenant: str) -> Job:
    """Record a stop request. The trainer sees it and stops; the reconciler escalates."""
    job = get_job(store, job_id, tenant=tenant)
    if job.status.state.is_terminal():
        raise FailedPrecondition(
            f"job {job_id} is already {job.status.state.value}; only QUEUED, VALIDATING or "
            "RUNNING jobs can be stopped"
        )
    if not job.control.stopRequested:

        def request_stop(control: JobControl) -> JobControl | None:
            if control.stopRequested:
                return None
            return control.model_copy(update={"stopRequested": True, "stopRequestedAt": utc_now()})

        store.update_control(job_id, request_stop)
        store.append_event(job_id, "STOP_REQUESTED", "stop requested")
    return store.get(job_id)


def pause_job(store: JobStore, job_id: str, *, tenant: str) -> Job:
    """Record a pause request. A running trainer commits a checkpoint and leaves, and
    writes PAUSED; a job not launched yet is PAUSED by the reconciler. Pausing a job
    that is already paused (or pausing) changes nothing."""
    job = get_job(store, job_id, tenant=tenant)
    if job.status.state.is_terminal() or job.control.stopRequested:
        state = _visible_state(job).value
        raise FailedPrecondition(
            f"job {job_id} is {state}; only QUEUED, VALIDATING or RUNNING jobs can be paused"
        )
    if job.control.pauseRequested:
        return job  # already paused, or pausing (a PAUSED job resumed since is paused again)

    def request_pause(control: JobControl) -> JobControl | None:
        if control.pauseRequested or control.stopRequested:
            return None
        return control.model_copy(update={"pauseRequested": True, "pauseRequestedAt": utc_now()})

    store.update_control(job_id, request_pause)
    store.append_event(job_id, "PAUSE_REQUESTED", "pause requested")
    return store.get(job_id)


def resume_job(store: JobStore, job_id: str, *, policy: TenantPolicy) -> Job:
    """Take back a pause: a PAUSED job is queued again (the reconciler moves it to QUEUED,
    and its next attempt resumes from its newest checkpoint, exactly as after a crash); a
    pause not yet carried out is simply withdrawn. It takes a place in the tenant's queue
    like a create (refused when the queue is full)."""
    job = get_job(store, job_id, tenant=policy.tenant)
    if not job.control.pauseRequested or job.control.stopRequested:
        state = _visible_state(job).value
        raise FailedPrecondition(f"job {job_id} is {state}, not paused; only a paused job resumes")
    if job.status.state == JobState.PAUSED:
        _reserve_queue_place(store, policy, job_id)

    def withdraw_pause(control: JobControl) -> JobControl | None:
        if not control.pauseRequested:
            return None
        return control.model_copy(update={"pauseRequested": False, "pauseRequestedAt": None})

    store.update_control(job_id, withdraw_pause)
    store.append_event(job_id, "RESUME_REQUESTED", "resume requested")
    return store.get(job_id)


# -- events, checkpoints, logs, watching (both edges call these) ---------------------


def list_job_events(store: JobStore, job_id: str, *, tenant: str) -> list[JobEvent]:
    """The job's lifecycle events, oldest first."""
    owned_spec(store, job_id, tenant)  # JobNotFound for an unknown job, not an empty list
    return sorted(store.list_events(job_id), key=lambda event: event.sequence)


MAX_EVENTS_PAGE_SIZE = 1000
DEFAULT_EVENTS_PAGE_SIZE = 100


def list_job_events_page(
    store: JobStore, job_id: str, *, tenant: str, page_size: int, page_token: str | None
) -> tuple[list[JobEvent], str | None]:
    """One page of the job's events, oldest first, and the token of the next page (None
    on the last). A token names the last event of its page, so it stays valid while
    events are appended: the next page starts right after it."""
    if not 1 <= page_size <= MAX_EVENTS_PAGE_SIZE:
        raise InvalidArgument(
            f"pageSize must be between 1 and {MAX_EVENTS_PAGE_SIZE}", field="pageSize"
        )
    after = paging.event_after(page_token) if page_token else None
    owned_spec(store, job_id, tenant)
    events, more = store.list_events_page(job_id, after=after, limit=page_size)
    if not more or not events:
        return events, None
    return events, paging.event_token(events[-1].sequence)


class Checkpoint(BaseModel):
    """A checkpoint whose COMMITTED marker exists: every file under it is complete."""

    step: int = Field(description="The optimizer step it was taken at.")
    s3Uri: str = Field(description="Its folder: <output>checkpoints/step-<n>/.")
    committedAt: str | None = Field(default=None, description="When its marker was written.")
    epoch: int | None = Field(default=None, description="The epoch (1-based) it was taken in.")
    trainingLoss: float | None = Field(
        default=None, description="Training loss of its step (mean per target token)."
    )
    validationLoss: float | None = Field(
        default=None, description="Validation loss, when the step was evaluated."
    )
    validationMetrics: dict[str, float] = Field(
        default={},
        description="Of that evaluation: a classifier's accuracy, precision, recall, f1; "
        "a PREFERENCE job's reward_accuracy, reward_margin, chosen_reward, rejected_reward; "
        "another job's token_accuracy.",
    )
    trainingTokenAccuracy: float | None = Field(
        default=None,
        description="Share of its step's target tokens predicted right (not classification "
        "or PREFERENCE).",
    )


_COMMITTED_MARKER = re.compile(r"^step-(\d+)/COMMITTED$")


def list_checkpoints(store: JobStore, job_id: str, *, tenant: str) -> list[Checkpoint]:
    """Committed checkpoints under the job's output prefix, lowest step first.

    A folder without its COMMITTED marker (an upload cut short) is not listed: readers
    trust only committed checkpoints (docs/architecture.md, "The state bucket").
    """
    spec = owned_spec(store, job_id, tenant)
    prefix = parse_s3_uri(spec.output_prefix + "checkpoints/", field="outputDataConfig.s3Uri")
    found: list[Checkpoint] = []
    try:
        for item in store.storage.list_objects(prefix):
            match = _COMMITTED_MARKER.match(item["key"][len(prefix.key) :])
            if match is None:
                continue
            folder = S3Location(prefix.bucket, item["key"][: -len("COMMITTED")])
            committed_at = None
            try:
                marker = store.storage.get_json(S3Location(prefix.bucket, item["key"]))
            except ValueError:  # not JSON: the marker still marks the commit
                marker = None
            if marker is not None and isinstance(marker[0].get("committedAt"), str):
                committed_at = marker[0]["committedAt"]
            found.append(
                Checkpoint(
                    step=int(match.group(1)),
                    s3Uri=folder.uri,
                    committedAt=committed_at,
                    **_manifest_fields(store, folder),
                )
            )
    except ObjectMissing:  # the output bucket does not exist (yet): nothing committed
        return []
    return sorted(found, key=lambda checkpoint: checkpoint.step)


def _manifest_fields(store: JobStore, folder: S3Location) -> dict[str, Any]:
    """Epoch, losses and metrics from a checkpoint's manifest.json (the trainer writes it
    before COMMITTED); none when it is missing or unreadable (an older trainer's)."""
    try:
        found = store.storage.get_json(folder.child("manifest.json"))
    except ValueError:
        return {}
    if found is None:
        return {}
    manifest = found[0]
    fields: dict[str, Any] = {}
    if isinstance(manifest.get("epoch"), int):
        fields["epoch"] = manifest["epoch"]
    for name in ("trainingLoss", "validationLoss", "trainingTokenAccuracy"):
        if isinstance(manifest.get(name), int | float):
            fields[name] = float(manifest[name])
    metrics = manifest.get("validationMetrics")
    if isinstance(metrics, dict):
        fields["validationMetrics"] = {
            str(k): float(v) for k, v in metrics.items() if isinstance(v, int | float)
        }
    return fields


DEFAULT_LOG_BYTES = 1_048_576
MAX_LOG_BYTES = 2_097_152


@dataclass
class LogSlice:
    data: bytes
    next_offset: int
    size: int
    attempt: int | None = None  # whose log it is; None before the first launch


def read_job_log(
    store: JobStore,
    job_id: str,
    *,
    tenant: str,
    offset: int = 0,
    max_bytes: int = DEFAULT_LOG_BYTES,
    attempt: int | None = None,
) -> LogSlice:
    """Up to `max_bytes` of one attempt's trainer log from byte `offset` (negative: from
    the end); the current (latest launched) attempt's unless `attempt` names an earlier one.

    The slice never ends inside a UTF-8 character, so the next one starts on one; a slice
    counted from the end starts on one too. A log the trainer has not uploaded yet is
    empty. The store is read with HTTP Range: the slice (and a byte), not the log.
    """
    if not 1 <= max_bytes <= MAX_LOG_BYTES:
        raise InvalidArgument(f"maxBytes must be between 1 and {MAX_LOG_BYTES}", field="maxBytes")
    job = get_job(store, job_id, tenant=tenant)
    launch = job.status.launch
    # A job queued again after a resume: its last attempt until the next is launched.
    current = launch.attempt if launch is not None else (job.status.previousAttempts or None)
    if attempt is not None and (current is None or not 1 <= attempt <= current):
        launched = "has not been launched yet" if current is None else f"has attempts 1-{current}"
        raise InvalidArgument(f"attempt {attempt}: job {job_id} {launched}", field="attempt")
    chosen = attempt if attempt is not None else current
    found = None
    if chosen is not None:
        found = _log_window(store, store.log_location(job_id, chosen), offset, max_bytes)
        if found is None and attempt is None:
            # A job that ran before logs were kept per attempt has its one log here.
            found = _log_window(store, store.legacy_log_location(job_id), offset, max_bytes)
    window, start, size = found if found is not None else (b"", 0, 0)
    if offset < 0:  # counted from the end: start on the next whole character
        skipped = 0
        while skipped < len(window) and (window[skipped] & 0xC0) == 0x80:
            skipped += 1
        window, start = window[skipped:], start + skipped
    end = min(size, start + max_bytes)
    while start < end < size and (window[end - start] & 0xC0) == 0x80:
        end -= 1  # a continuation byte: end before the character it belongs to
    return LogSlice(data=window[: end - start], next_offset=end, size=size, attempt=chosen)


def _log_window(
    store: JobStore, location: S3Location, offset: int, max_bytes: int
) -> tuple[bytes, int, int] | None:
    """(bytes from `start`, `start`, the log's size) for a slice of up to `max_bytes`
    from `offset` (negative: from the end), plus the byte after it (to end the slice on
    a character), read with HTTP Range: a slice of a long log downloads the slice only.
    None: no log there."""
    if offset < 0 and -offset <= max_bytes + 1:
        found = store.storage.get_range(location, offset, 0)  # the last -offset bytes
        if found is None:
            return None
        tail, size = found
        return tail, size - len(tail), size
    negative = offset < 0
    if negative:  # a window far from the end: its start needs the size first
        head = store.storage.head(location)
        if head is None:
            return None
        offset = max(0, int(head["ContentLength"]) + offset)
    # The byte after the slice, and for a slice counted from the end up to 3 more: it
    # may start inside a character, which it then skips.
    found = store.storage.get_range(location, offset, max_bytes + 1 + (3 if negative else 0))
    if found is None:
        return None
    window, size = found
    return window, min(offset, size), size
