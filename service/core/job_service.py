"""JobService: the one object every face calls. Faces parse, call it, and map its answer.

It owns what each face would otherwise repeat: the operator's checks on a create (webhook
and MLflow hosts, what the launcher can ever run, the tenant's grants and queue limit),
idempotency, ownership (another tenant's job is not found), paging tokens, and waking
this replica's reconciler after a change it should act on now rather than on its next
pass. The rules themselves are service/core/jobs.py's; this adds the replica's settings
and notifications around them. Nothing here knows about HTTP or gRPC.
"""

from __future__ import annotations

from collections.abc import Callable

from jobstore.documents import JobEvent, JobState, JobValidationReport
from jobstore.store import Job, JobStore
from service.auth.limits import TenantPolicy
from service.control.dry_run import DryRunner
from service.control.launch.capacity import launch_capacity
from service.core import jobs
from service.core.job_feed import JobFeeds, Watcher
from service.core.jobs import Checkpoint, JobFilter, LogSlice
from service.core.schemas import JobCreate
from service.core.training_metrics import JobMetrics, read_job_metrics
from service.errors import DryRunUnavailable
from service.settings import Settings


class JobService:
    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        *,
        notify: Callable[[], None] | None = None,
        dry_runs: DryRunner | None = None,
        on_open_streams: Callable[[int], None] | None = None,
    ) -> None:
        """`notify` wakes the replica's reconciler (None: a replica without one);
        `dry_runs` runs `validate` (None: a replica that cannot); `on_open_streams` is
        told how many job streams are open whenever that changes (a gauge)."""
        self.store = store
        self.settings = settings
        self._notify = notify
        self._dry_runs = dry_runs
        # Every job this replica's streams follow, each read once per poll.
        self.feeds = JobFeeds(
            store,
            poll_seconds=settings.grpc_watch_poll_seconds,
            max_per_tenant=settings.max_watchers_per_tenant,
            max_total=settings.max_watchers,
            # A stop or pause made through another replica shows in this one's streams
            # with the next reconcile pass's listing of control markers.
            markers_max_age=2 * settings.reconcile_interval_seconds + 1,
            on_open_count=on_open_streams,
        )

    def _wake_reconciler(self) -> None:
        if self._notify is not None:
            self._notify()

    def check_create(
        self, request: JobCreate, policy: TenantPolicy, *, caller_resources: bool = True
    ) -> None:
        """Refuse a create that would be refused, writing nothing (the store-free checks;
        the queue limit and idempotency need the store and are the create's).
        `caller_resources`: the request's `resources` are the caller's to choose, so
        more than the launcher can ever run is the caller's error (not so for the
        Bedrock face, whose jobs get the operator's setting)."""
        jobs.check_create(
            request,
            policy,
            webhook_hosts=self.settings.webhook_allowed_hosts,
            mlflow_hosts=self.settings.mlflow_allowed_hosts,
            check_resources=launch_capacity(self.settings).check if caller_resources else None,
        )

    def create(
        self, request: JobCreate, policy: TenantPolicy, *, caller_resources: bool = True
    ) -> tuple[Job, bool]:
        """Create a job for `policy.tenant`: the job, and whether it is new (False: an
        idempotent repeat of an earlier create). Refused before anything is written."""
        job, created = jobs.create_job(
            self.store,
            request,
            policy,
            webhook_hosts=self.settings.webhook_allowed_hosts,
            mlflow_hosts=self.settings.mlflow_allowed_hosts,
            check_resources=launch_capacity(self.settings).check if caller_resources else None,
        )
        if created:
            self._wake_reconciler()
        return job, created

    def validate(
        self, request: JobCreate, policy: TenantPolicy, *, caller_resources: bool = True
    ) -> JobValidationReport:
        """A dry run (validateOnly): the request refused as a create would refuse it,
        then the job's VALIDATING stage run on its data and base model in a subprocess
        (service/control/dry_run.py), and its report returned. Nothing is written to the
        state bucket: no job, no queue place, no idempotency record, no cache entry."""
        self.check_create(request, policy, caller_resources=caller_resources)
        if self._dry_runs is None:
            raise DryRunUnavailable("this server runs no dry runs")
        return self._dry_runs.run(jobs.dry_run_spec(request, policy.tenant))

    def get(self, job_id: str, *, tenant: str, fresh: bool = False) -> Job:
        """The job, at most `read_staleness_seconds` old (a change through this replica
        shows at once); `fresh`: as the store holds it now (a face deciding on a change)."""
        max_age = 0.0 if fresh else self.settings.read_staleness_seconds
        return jobs.get_job(self.store, job_id, tenant=tenant, max_age=max_age)

    def remembered(self, job_id: str, *, tenant: str) -> Job | None:
        """`get(job_id, tenant=...)`'s answer when this replica's memory holds it (no
        store read: safe on an event loop), else None."""
        return jobs.remembered_job(
            self.store, job_id, tenant=tenant, max_age=self.settings.read_staleness_seconds
        )

    def list_jobs(
        self,
        *,
        tenant: str,
        limit: int,
        page_token: str | None,
        state: JobState | None = None,
        where: JobFilter | None = None,
        ascending: bool = False,
        token_field: str = "pageToken",
    ) -> tuple[list[Job], str | None]:
        """A page of the tenant's jobs (newest first unless `ascending`) and the next
        page's token, None on the last; each job at most `read_staleness_seconds` old."""
        return jobs.list_jobs(
            self.store,
            tenant=tenant,
            state=state,
            limit=limit,
            page_token=page_token,
            where=where,
            ascending=ascending,
            token_field=token_field,
            max_age=self.settings.read_staleness_seconds,
        )

    def stop(self, job_id: str, *, tenant: str) -> Job:
        job = jobs.stop_job(self.store, job_id, tenant=tenant)
        self._wake_reconciler()  # so that it escalates (or ends a queued job) at once
        return job

    def pause(self, job_id: str, *, tenant: str) -> Job:
        job = jobs.pause_job(self.store, job_id, tenant=tenant)
        self._wake_reconciler()  # a job not launched yet is paused at once
        return job

    def resume(self, job_id: str, policy: TenantPolicy) -> Job:
        job = jobs.resume_job(self.store, job_id, policy=policy)
        self._wake_reconciler()  # queued again at once
        return job

    def events(
        self, job_id: str, *, tenant: str, page_size: int, page_token: str | None
    ) -> tuple[list[JobEvent], str | None]:
        return jobs.list_job_events_page(
            self.store, job_id, tenant=tenant, page_size=page_size, page_token=page_token
        )

    def checkpoints(self, job_id: str, *, tenant: str) -> list[Checkpoint]:
        return jobs.list_checkpoints(self.store, job_id, tenant=tenant)

    def read_log(
        self,
        job_id: str,
        *,
        tenant: str,
        offset: int = 0,
        max_bytes: int = jobs.DEFAULT_LOG_BYTES,
        attempt: int | None = None,
    ) -> LogSlice:
        return jobs.read_job_log(
            self.store, job_id, tenant=tenant, offset=offset, max_bytes=max_bytes, attempt=attempt
        )

    def metrics(self, job_id: str, *, tenant: str) -> JobMetrics:
        return read_job_metrics(self.store, job_id, tenant=tenant)

    async def watch(self, job_id: str, *, tenant: str) -> Watcher:
        """A follower of one job for a face that streams it: the job now, then its changes
        (service/core/job_feed.py); the read runs in a thread. The face closes it when its
        stream ends."""
        return await self.feeds.open(job_id, tenant=tenant)
