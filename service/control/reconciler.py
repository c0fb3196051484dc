"""The reconcile loop: moves the store's desired state towards the observed one.
Long because one pass over a job, launch to verdict, reads best in one place.

Every replica runs one; there is no leader and nothing in memory that matters. Each
pass walks `active/` (jobs not yet seen terminal) and, per job:

- QUEUED, not launched: launch it when there is room and its tenant runs fewer than its
  `tenant_running_limit` trainers; queued jobs start in creation order and carry their
  `queuePosition` meanwhile. Room is a slot (`slots` trainers at once) for a job
  without GPUs, or with a GPU inventory (local launcher, service/control/launch/gpus.py) that
  many free devices for a job with `resources.gpus` >= 1, leased before the claim. The
  GPU queue is first come, first served: once the first GPU job in line finds too few
  free devices, no GPU job behind it starts before it does (a 4-GPU job is never
  starved by a stream of 1-GPU jobs; devices may idle meanwhile). The launch is claimed
  by writing `status.launch` with compare-and-swap, so of all replicas exactly one
  starts the attempt.
- stop requested, not launched: STOPPED. Pause requested, not launched: PAUSED.
- PAUSED (its trainer committed a checkpoint and wrote it, or it had no trainer): holds
  no slot once its trainer process is gone (one still exiting holds its slot, and is
  SIGTERMed and SIGKILLed after the stop grace periods counted from PAUSED); STOPPED on
  a stop request; once resumed, back to QUEUED with `launch` cleared
  and `previousAttempts` set, so the next attempt (numbered after the earlier ones) starts
  in queue order and goes on from the newest checkpoint.
- stop requested, trainer alive: after `stop_grace_seconds` SIGTERM its process group,
  after `kill_grace_seconds` more SIGKILL it.
- trainer dead (process gone, or no heartbeat for `heartbeat_timeout_seconds`; for a
  trainer this replica cannot observe that has sent none since its launch,
  `start_timeout_seconds` since the launch; both counted from no earlier than the end of
  the last store outage this replica saw: a trainer cannot write heartbeats to a store
  that is down, and rides the outage out) and the
  job not terminal: STOPPED if a stop was requested, PAUSED if a pause was; else
  relaunched as the next
  attempt (the trainer resumes from the job's state), within a budget per cause: a
  preempted trainer (SIGTERM, exit 143) or a lost one (no heartbeat, exit unknown:
  node loss) does not count against `crash_retry_budget`, a crash does; no job gets
  more than `max_attempts` since it was last resumed (attempts a pause ended do not
  count). Past the budget: FAILED / TRAINER_CRASHED.
- terminal: drop the active marker.

A pass costs what changed, not every waiting job: a job this replica read QUEUED and not
launched is not read again while nothing says it changed. Stop, pause and resume requests
show as control markers, and every other change to a waiting job's status (a launch by
any replica, a refusal) is followed by a new version of its `changed/` marker
(jobstore/store.py); both are listed once per pass, before any job is read. Each such job
is read again anyway every `waiting_refresh_seconds` or so (jittered, so they spread over
passes): the bound on anything written behind the service's back. A launch decided on a
copy that turns out stale is still safe: its claim is a compare-and-swap on the etag of
that copy, so it fails and reads afresh.

The reconciler writes `status.launch`, and writes `status.state` only for a job with no
live trainer (or one it has given up on); the trainer writes state and progress while it
lives (docs/architecture.md).

No job stops the loop: whatever reading or acting on one job raises (a record that does
not parse, a launcher's API error, a bug) is confined to that job, counted and tried again
next pass; a job that keeps failing is failed or set aside (service/control/reconcile_faults.py).
"""

from __future__ import annotations

import json
import logging
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from jobstore.documents import (
    Failure,
    FailureReason,
    JobState,
    JobStatus,
    LaunchRecord,
    TrainerExit,
    job_id_created_ms,
    utc_now,
)
from jobstore.errors import StoreUnavailable
from jobstore.storage import parse_s3_uri
from jobstore.store import Job, JobStore
from service.control.launch.base import Launcher, Observed
from service.control.launch.gpus import DeviceLease, GpuInventory
from service.control.launch.memory import memory_failure_details
from service.control.reconcile_faults import (
    FaultTracker,
    JobFault,
    classify,
    fail_given_up,
    fail_unreadable_status,
)
from service.errors import JobNotFound, LauncherFailed
from service.observability.metrics import Metrics, RunningJob, is_running
from service.observability.request_context import bind_job
from service.webhooks.delivery import WebhookNotifier

log = logging.getLogger(__name__)

# A marker whose spec never appeared: the create died half-way. Forget it after this.
_ABANDONED_CREATE_SECONDS = 300.0

Answer = TypeVar("Answer")


def _age_seconds(timestamp: str | None) -> float:
    if timestamp is None:
        return float("inf")
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return (datetime.now(UTC) - then).total_seconds()


class Reconciler:
    def __init__(
        self,
        store: JobStore,
        launcher: Launcher,
        trainer_environment: dict[str, str],
        *,
        interval_seconds: float = 2.0,
        heartbeat_timeout_seconds: float = 60.0,
        start_timeout_seconds: float = 300.0,
        stop_grace_seconds: float = 20.0,
        kill_grace_seconds: float = 10.0,
        crash_retry_budget: int = 2,
        max_attempts: int = 10,
        slots: int = 1,
        tenant_running_limit: Callable[[str], int] | None = None,
        metrics: Metrics | None = None,
        notifier: WebhookNotifier | None = None,
        tenant_environment: Callable[[str], dict[str, str]] | None = None,
        gpus: GpuInventory | None = None,
        faults: FaultTracker | None = None,
        waiting_refresh_seconds: float = 300.0,
    ) -> None:
        self.store = store
        self.launcher = launcher
        self.trainer_environment = trainer_environment
        # Per tenant, variables that replace some of `trainer_environment` (its own store
        # credentials: service/control/trainer_credentials.py).
        self.tenant_environment = tenant_environment or (lambda tenant: {})
        self.interval_seconds = interval_seconds
        self.heartbeat_timeout_seconds = heartbeat_timeout_seconds
        # An attempt this replica cannot observe and has never heard from is given this
        # long (at least the heartbeat timeout) to send its first sign of life.
        self.start_timeout_seconds = max(start_timeout_seconds, heartbeat_timeout_seconds)
        self.stop_grace_seconds = stop_grace_seconds
        self.kill_grace_seconds = kill_grace_seconds
        self.crash_retry_budget = crash_retry_budget
        self.max_attempts = max_attempts
        self.slots = slots
        # Trainers one tenant may have at once (0: only the slots limit them); a tenant
        # at its limit has its queued jobs wait while other tenants' start.
        self.tenant_running_limit = tenant_running_limit or (lambda tenant: 0)
        # The host's GPUs (local launcher); empty or None: every job takes a slot.
        self.gpus = gpus if gpus is not None and len(gpus) else None
        # A dead trainer whose relaunch waits for its devices: what was observed of its
        # end, which the launcher tells once (the next pass would see "gone, unknown").
        self._ends_awaiting_devices: dict[tuple[str, int], Observed] = {}
        # PAUSED jobs whose trainer process still lives (it holds its slot until it is
        # gone), and the paused attempts seen gone (not asked about again).
        self._paused_trainers_alive: set[str] = set()
        self._paused_trainers_gone: set[tuple[str, int]] = set()
        self.replica_id = uuid.uuid4().hex[:12]
        # Waiting jobs as last read, not read again while unchanged (see the module
        # docstring); 0: every waiting job is read every pass.
        self.waiting_refresh_seconds = waiting_refresh_seconds
        self._known_waiting: dict[str, _KnownWaiting] = {}
        # Whether this replica found the store down since the last pass began (a whole
        # pass, or one job's read), and when a pass then first reached it again
        # (monotonic): heartbeat silence counts from no earlier than that.
        self._store_down = False
        self._store_back_at: float | None = None
        # Store reads of job records in the last pass, and the waiting jobs known
        # without one (tests and the pass's debug log).
        self.last_pass_reads = 0
        self.last_pass_known_waiting = 0
        # Jobs whose reconcile raised in recent passes: when to give up on one.
        self.faults = faults or FaultTracker()
        # Observability: pass timings, jobs by state, running jobs' gauges (/metrics);
        # webhook deliveries for jobs that end (a finished job stays active until its
        # delivery is settled).
        self.metrics = metrics
        self.notifier = notifier
        self._queue_length = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- loop ------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def kick(self) -> None:
        """Run a pass now (after a create or a stop) instead of at the next tick."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            started = time.perf_counter()
            try:
                self.run_once()
            except Exception as error:  # listing the active jobs failed (a store outage)
                self._pass_step_failed("the reconcile pass", error)
            took = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.reconcile_duration.observe(took)
            # A kick (a create, a stop) starts the next pass early, but no sooner than
            # the last pass took: under a stream of creates with many jobs active, the
            # loop then uses at most about half the process's time, not all of it.
            pause = min(took, self.interval_seconds)
            if self._stopping.wait(pause):
                return
            self._wake.wait(self.interval_seconds - pause)

    def run_once(self) -> None:
        waiting: list[Job] = []
        seen: list[Job] = []
        self._queue_length = 0
        occupied = 0  # launched jobs that hold a slot (no devices)
        # GPU jobs launched without a device lease (by a replica from before the GPU
        # inventory, during a rolling upgrade): their devices are unknown, so no GPU job
        # starts while one runs.
        unleased_gpu_jobs = 0
        running_by_tenant: dict[str, int] = {}
        read: set[str] = set()  # jobs whose records this pass read and acted on
        still_waiting: set[str] = set()  # of those, the ones still queued after it
        active = self.store.list_active_job_ids()  # oldest first
        if self._store_down:
            self._store_down = False
            self._store_back_at = time.monotonic()
        self.faults.forget_all_but(active)
        self._paused_trainers_alive.intersection_update(active)
        active_ids = set(active)
        self._paused_trainers_gone = {
            key for key in self._paused_trainers_gone if key[0] in active_ids
        }
        # control.json only for jobs with a stop marker (one listing; the marker is
        # written before control.json, so a stop missed here is seen next pass).
        markers_listed_at = time.monotonic()  # before the listing: what it shows holds since
        stopped = (
            self.store.control_marked(active[-1], active[0], page_size=1000) if active else set()
        )
        # Which waiting jobs changed since this replica read them (a second listing).
        changed = self.store.changed_markers() if self._known_waiting else {}
        for job_id in set(self._known_waiting) - active_ids:
            del self._known_waiting[job_id]
        self.last_pass_reads = self.last_pass_known_waiting = 0
        launched_seen = 0  # jobs read with a launch record, live or not
        launcher_faults: list[tuple[str, Exception, int]] = []  # judged after the loop
        for job_id in active:
            if self._stopping.is_set():
                return
            if self.faults.skips(job_id):
                continue  # set aside: tried again when due (service/control/reconcile_faults.py)
            known = self._known_waiting.pop(job_id, None)
            if known is not None and known.holds(job_id, stopped, changed, markers_listed_at):
                # Still waiting, as far as every marker says: no read (the module docstring).
                self._known_waiting[job_id] = known
                self.last_pass_known_waiting += 1
                seen.append(known.job)
                read.add(job_id)
                waiting.append(known.job)
                continue
            job: Job | None = None
            try:
                # Always read afresh (no max_age); what it reads serves describes a moment.
                job = self.store.get(
                    job_id, read_control=job_id in stopped, markers_listed_at=markers_listed_at
                )
                self.last_pass_reads += 1
                seen.append(job)
                launched_seen += int(job.status.launch is not None)
                with bind_job(job_id, job.spec.tenant, _attempt(job)):
                    waits = self.reconcile(job)
                read.add(job_id)
                if waits:
                    waiting.append(job)  # its run of faults ends if its launch goes well
                    if (
                        self.waiting_refresh_seconds > 0
                        and job.status.state == JobState.QUEUED
                        and job_id not in stopped
                    ):
                        # Known as of the marker listings (made before this read).
                        self._known_waiting[job_id] = _KnownWaiting(
                            job,
                            changed.get(job_id),
                            # Jittered, so jobs read together are read again apart.
                            markers_listed_at
                            + self.waiting_refresh_seconds * random.uniform(0.5, 1.0),
                        )
                    continue
                if _resumed(job):
                    # Queued again by this pass (or the next): it keeps the place in its
                    # tenant's queue that the resume took.
                    still_waiting.add(job_id)
                self.faults.succeeded(job_id)
            except JobNotFound:
                if _age_seconds_ms(job_id_created_ms(job_id)) > _ABANDONED_CREATE_SECONDS:
                    self.store.mark_inactive(job_id)
            except LauncherFailed as error:  # this job's, or the launcher's outage: below
                assert job is not None
                launcher_faults.append((job_id, error, _attempt(job)))
            except Exception as error:  # confined to this job: every other one goes on
                self._job_failed(job_id, error, attempt=_attempt(job) if job else None)
            # A launched job holds its slot (and its tenant's count) whatever happened to
            # it this pass: one whose reconcile failed may well be running.
            launch = job.status.launch if job is not None else None
            if (
                job is not None
                and launch is not None
                and not job.status.state.is_terminal()
                and (
                    job.status.state != JobState.PAUSED  # a paused job's trainer has left,
                    or job_id in self._paused_trainers_alive  # unless it is still leaving
                )
            ):
                occupied += 0 if launch.devices else 1
                unleased_gpu_jobs += int(self._holds_unknown_devices(job))
                tenant = job.spec.tenant
                running_by_tenant[tenant] = running_by_tenant.get(tenant, 0) + 1
        # Every launched job's launcher call failed: the launcher (its cluster's API) is
        # out, not these jobs; that does not count towards giving up on them.
        outage = len(launcher_faults) >= 2 and len(launcher_faults) == launched_seen
        for job_id, launcher_error, attempt in launcher_faults:
            self._job_failed(job_id, launcher_error, attempt=attempt, counted=not outage)
        # Queued jobs start in creation order as slots or devices free up; the rest learn
        # their place in the queue.
        free = max(0, self.slots - occupied)
        # Dead trainers whose relaunch waits for devices come first; forget those of
        # jobs no longer active or no longer this process's to relaunch.
        seen_attempts = {(job.spec.jobId, _attempt(job)) for job in seen}
        for key in set(self._ends_awaiting_devices) - seen_attempts:
            del self._ends_awaiting_devices[key]
        # The first GPU job in line that waits for devices holds the GPU line.
        gpu_line_held = bool(self._ends_awaiting_devices) or unleased_gpu_jobs > 0
        in_line: list[str] = []
        for job in waiting:
            tenant = job.spec.tenant
            limit = self.tenant_running_limit(tenant)
            tenant_has_room = limit <= 0 or running_by_tenant.get(tenant, 0) < limit
            needed = self._gpus_needed(job)
            lease: DeviceLease | None = None
            try:
                if self.gpus is not None and needed > len(self.gpus):
                    self._refuse_for_gpus(job, needed)  # the host's GPUs changed since create
                    continue
                if not tenant_has_room:
                    starts = False
                elif needed:
                    if not gpu_line_held and self.gpus is not None:
                        lease = self.gpus.acquire(needed)
                    starts = lease is not None
                    gpu_line_held = not starts
                else:
                    starts = free > 0
                    free -= 1 if starts else 0
                if starts:
                    # Launched or not, read again next pass (its marker changes anyway).
                    self._known_waiting.pop(job.spec.jobId, None)
                    running_by_tenant[tenant] = running_by_tenant.get(tenant, 0) + 1
                    with bind_job(job.spec.jobId, job.spec.tenant, 1):
                        try:
                            self._launch(job, devices=lease)
                        except Exception:
                            # Not launched: its slot and its tenant's count go to the next.
                            running_by_tenant[tenant] -= 1
                            free += 0 if needed else 1
                            raise
                else:
                    still_waiting.add(job.spec.jobId)
                    in_line.append(job.spec.jobId)
                self.faults.succeeded(job.spec.jobId)
            except OSError as error:  # the GPU lock files (service/control/launch/gpus.py)
                still_waiting.add(job.spec.jobId)
                in_line.append(job.spec.jobId)
                self._pass_step_failed(f"leasing GPUs for job {job.spec.jobId}", error)
            except Exception as error:  # confined to this job, as above
                still_waiting.add(job.spec.jobId)
                self._job_failed(job.spec.jobId, error, attempt=0)
            finally:
                if lease is not None:
                    lease.release()  # the trainer holds its own copies
        self._queue_length = len(in_line)
        try:  # one document for the whole queue, written only when the order changed
            self.store.queue_order.publish(in_line)
        except Exception as error:  # tried again next pass; launches do not depend on it
            self._pass_step_failed("publishing the queue order", error)
        try:  # jobs that left the queue give their place back (jobstore/queue_ledger.py)
            self.store.queue_ledger.settle(
                read, still_waiting, abandoned_seconds=_ABANDONED_CREATE_SECONDS
            )
        except Exception as error:  # as above
            self._pass_step_failed("settling the queue ledgers", error)
        if self.metrics is not None:
            free_gpus = len(self.gpus.free_devices()) if self.gpus is not None else 0
            self.metrics.observe_jobs(
                [job.status.state for job in seen],
                self._queue_length,
                [
                    RunningJob(job.spec.jobId, job.spec.tenant, job.status.progress)
                    for job in seen
                    if is_running(job.status.state)
                ],
                gpus=(free_gpus, len(self.gpus) - free_gpus) if self.gpus is not None else None,
                set_aside=len(self.faults.set_aside_jobs()),
            )

    # -- faults ----------------------------------------------------------------

    def _job_failed(
        self, job_id: str, error: Exception, *, attempt: int | None, counted: bool = True
    ) -> None:
        """Reading or acting on the job raised: count it, log it with the job id, and give
        up on the job once it has failed long enough (service/control/reconcile_faults.py).
        `attempt`: the attempt the job was at (None: its status did not read)."""
        self._store_down = self._store_down or isinstance(error, StoreUnavailable)
        fault = self.faults.failed(job_id, error, attempt=attempt, counted=counted)
        if self.metrics is not None:
            self.metrics.reconcile_errors.labels(fault.reason).inc()
        log.error(
            "reconciling job %s failed (%s, %d pass(es) in a row): %s",
            job_id,
            fault.reason,
            fault.failures,
            fault.description,
            exc_info=error if fault.reason == "internal" else None,  # a bug: its traceback
        )
        if self.faults.should_give_up(job_id):
            self._give_up(job_id, fault)

    def _pass_step_failed(self, step: str, error: Exception) -> None:
        """A step of the pass that belongs to no one job failed: counted and logged."""
        self._store_down = self._store_down or isinstance(error, StoreUnavailable)
        reason, _ = classify(error)
        if self.metrics is not None:
            self.metrics.reconcile_errors.labels(reason).inc()
        log.error("%s failed (%s): %s", step, reason, error, exc_info=reason == "internal")

    def _give_up(self, job_id: str, fault: JobFault) -> None:
        """Fail a job the loop could not act on for too long, saying why, kill its
        trainer if one may live, and retire it. Set it aside instead (tried again only
        every `set_aside_seconds`, reported meanwhile: log, the
        tuneforge_reconcile_jobs_set_aside gauge) when its record is JSON this release
        does not read (perhaps a newer release's), or when failing it fails too. Never
        raises: giving up on one job must not stop the pass either."""
        seconds = self.faults.seconds_failing(job_id)
        message = (
            f"the service could not act on this job for {fault.failures} reconcile passes in "
            f"a row ({seconds:.0f} s), so it failed it: {fault.description}"
        )
        if not fault.may_be_destroyed:
            self._set_aside(job_id, fault, "its record is JSON this release does not read")
            return
        try:
            if fault.unreadable_status:
                written = fail_unreadable_status(self.store, job_id, message)
                launches: list[LaunchRecord] = []  # unknown: its trainer fences itself
                if written is None:
                    return  # JSON now, or changed meanwhile: the next pass looks again
            else:
                written, launches = fail_given_up(self.store, job_id, message, fault.attempt)
                if written is None:
                    return  # it ended, or moved on to another attempt: the next pass sees
            assert written.failure is not None
            self.store.append_event(
                job_id, "STATE_CHANGED", written.failure.message, JobState.FAILED
            )
            log.error("job %s is FAILED: %s", job_id, written.failure.message)
        except Exception as error:
            self._set_aside(job_id, fault, f"failing it failed too ({_in_one_line(error)})")
            return
        for launch in launches:
            try:  # the job is failed either way; its trainer must not train on
                self.launcher.signal(launch, signal.SIGKILL)
            except Exception as error:
                self._pass_step_failed(f"killing the trainer of given-up job {job_id}", error)
        try:
            self._retire(job_id)
        except Exception as error:  # e.g. its spec does not read: no webhook to settle
            log.error("job %s retired without settling its webhook: %s", job_id, error)
            try:
                self.store.mark_inactive(job_id)
            except Exception as second:  # the next pass sees it FAILED and retires it
                self._pass_step_failed(f"retiring given-up job {job_id}", second)

    def _set_aside(self, job_id: str, fault: JobFault, why: str) -> None:
        self.faults.set_aside(job_id)
        log.error(
            "job %s is set aside: %s; %s. It is tried again every %.0f s until its records "
            "or the launcher are repaired",
            job_id,
            fault.description,
            why,
            self.faults.set_aside_seconds,
        )

    def _gpus_needed(self, job: Job) -> int:
        """Devices the job's attempts lease: its resources.gpus on a host with GPUs; 0
        (a slot instead) for a CPU job, or on a host without any."""
        return job.spec.resources.gpus if self.gpus is not None else 0

    def _holds_unknown_devices(self, job: Job) -> bool:
        launch = job.status.launch
        return (
            self.gpus is not None
            and launch is not None
            and launch.launcher == self.launcher.name
            and not launch.devices
            and job.spec.resources.gpus > 0
            and not job.status.state.is_terminal()
        )

    def _refuse_for_gpus(self, job: Job, needed: int, attempt: int | None = None) -> None:
        """A queued job asking for more GPUs than the host has (it had more when the
        job was created, or TUNEFORGE_GPUS was narrowed): it would wait forever and hold
        the GPU line, so it fails, saying why."""
        assert self.gpus is not None
        message = (
            f"the job asks for {needed} GPU(s) (resources.gpus), but this host now has "
            f"{len(self.gpus)} for trainers ({', '.join(self.gpus.devices)}); create it "
            "again with fewer, or on a host with more"
        )
        self._finish(job, attempt, JobState.FAILED, FailureReason.RESOURCES_UNAVAILABLE, message)

    # -- one job ---------------------------------------------------------------

    def reconcile(self, job: Job) -> bool:
        """Act on one job; return True when it is queued and waits for a slot."""
        status = job.status
        if status.state.is_terminal():
            self._retire(job.spec.jobId)
            return False
        if status.state == JobState.PAUSED:
            self._reconcile_paused(job)
            return False
        if status.launch is None:
            if job.control.stopRequested:
                self._finish(job, None, JobState.STOPPED, None, "stopped before it was launched")
                return False
            if job.control.pauseRequested:
                self._pause(job, None, "paused before it was launched")
                return False
            return True

        awaited = self._ends_awaiting_devices.pop((job.spec.jobId, status.launch.attempt), None)
        launch = status.launch
        observed = awaited or self._ask_launcher("observe", lambda: self.launcher.observe(launch))
        alive = observed.alive
        if alive is None:  # a trainer this replica cannot see: judge it by the store
            alive = not self._presumed_lost(status)
        elif alive and (silence := self._heartbeat_silence(status)) is not None:
            # Its process lives but its heartbeat thread has not written for longer
            # than the timeout: frozen (SIGSTOP, a paused VM) or hung. Left alone it
            # would hold its slot forever; killed, it resumes from its last checkpoint.
            self._signal(status.launch, signal.SIGKILL)
            observed = Observed(
                alive=False,
                exit_code=-signal.SIGKILL,
                reason=(
                    f"its process was alive but sent no heartbeat for {silence:.0f} s "
                    "(hung or frozen), so the service killed it"
                ),
            )
            alive = False
        if alive:
            if job.control.stopRequested:
                self._escalate_stop(job)
            return False
        self._handle_dead_trainer(job, observed)
        return False

    def _reconcile_paused(self, job: Job) -> None:
        """A PAUSED job: its trainer, if one is still on its way out, gone first; then
        STOPPED if a stop came, queued again once resumed, otherwise left as it is."""
        launch = job.status.launch
        attempt = launch.attempt if launch is not None else None
        job_id = job.spec.jobId
        if launch is not None and (job_id, launch.attempt) not in self._paused_trainers_gone:
            observed = self._ask_launcher("observe", lambda: self.launcher.observe(launch))
            if observed.alive:
                # Still on its way out after writing PAUSED: it holds its slot, and one
                # that hangs there is hurried like a stopped trainer (SIGTERM after
                # stop_grace_seconds, SIGKILL after kill_grace_seconds more).
                self._paused_trainers_alive.add(job_id)
                waited = _age_seconds(job.status.stateTimes.get(JobState.PAUSED.value))
                if waited > self.stop_grace_seconds + self.kill_grace_seconds:
                    self._signal(launch, signal.SIGKILL)
                elif waited > self.stop_grace_seconds:
                    self._signal(launch, signal.SIGTERM)
                return
            self._paused_trainers_alive.discard(job_id)
            self._paused_trainers_gone.add((job_id, launch.attempt))
            self._upload_log(job_id, launch.attempt)
        if job.control.stopRequested:
            self._finish(job, attempt, JobState.STOPPED, None, "stopped while paused")
            return
        if job.control.pauseRequested:
            return
        # The resume took a place in the tenant's queue, unless it came while the trainer
        # was still pausing (the job not yet PAUSED): then it takes one now. The resume
        # admitted it already, so the tenant's limit is not applied again.
        self.store.queue_ledger.reserve(job.spec.tenant, job_id, limit=sys.maxsize)

        def requeue(status: JobStatus) -> JobStatus | None:
            if status.state != JobState.PAUSED:
                return None
            current = status.launch.attempt if status.launch else None
            if current != attempt:
                return None  # changed meanwhile: the next pass looks again
            queued = status.moved_to(JobState.QUEUED)
            if status.launch is not None:
                queued.previousAttempts = status.launch.attempt
            queued.launch = None  # the next launch is a fresh claim, numbered after them
            return queued

        if self.store.update_status(job.spec.jobId, requeue) is not None:
            self.store.append_event(
                job.spec.jobId,
                "STATE_CHANGED",
                "resumed: queued for its next attempt, which goes on from the newest checkpoint",
                JobState.QUEUED,
            )
            log.info("job %s is QUEUED again after a resume", job.spec.jobId)
            self.kick()

    def _pause(self, job: Job, attempt: int | None, message: str) -> None:
        """PAUSED, for a job with no live trainer: not launched yet (`attempt` None), or
        the trainer of `attempt` gone. Left alone if another attempt was launched
        meanwhile (its trainer sees the pause request itself)."""

        def pause(status: JobStatus) -> JobStatus | None:
            if status.state.is_terminal() or status.state == JobState.PAUSED:
                return None
            if (status.launch.attempt if status.launch else None) != attempt:
                return None
            return status.moved_to(JobState.PAUSED)

        if self.store.update_status(job.spec.jobId, pause) is not None:
            self.store.append_event(job.spec.jobId, "STATE_CHANGED", message, JobState.PAUSED)
            log.info("job %s is PAUSED: %s", job.spec.jobId, message)

    def _presumed_lost(self, status: JobStatus) -> bool:
        """Whether a trainer this replica cannot observe (another host's, or one whose
        replica died before recording its process) is lost, judged by its signs of life.

        Once it has sent a heartbeat, silence past the heartbeat timeout means lost. Until
        then it has the start timeout: a cold start on a busy host can take longer than
        the heartbeat timeout, and relaunching it then would leave two trainers on one
        job."""
        assert status.launch is not None
        if _heard_since_launch(status):
            silence = _age_seconds(status.heartbeatAt)
            return self._since_store_back(silence) >= self.heartbeat_timeout_seconds
        since_launch = _age_seconds(status.launch.launchedAt)
        return self._since_store_back(since_launch) >= self.start_timeout_seconds

    def _heartbeat_silence(self, status: JobStatus) -> float | None:
        """Seconds since this attempt's last heartbeat when past the timeout, else None.

        Only once the attempt has sent one: starting (imports, a rendezvous of ranks)
        can take longer than the timeout, and the launcher already says whether the
        process lives. A heartbeat older than the launch is an earlier attempt's."""
        assert status.launch is not None
        if status.heartbeatAt is None:
            return None
        silence = _age_seconds(status.heartbeatAt)
        if silence > _age_seconds(status.launch.launchedAt):
            return None
        counted = self._since_store_back(silence)
        return silence if counted > self.heartbeat_timeout_seconds else None

    def _since_store_back(self, silence: float) -> float:
        """`silence` seconds without a heartbeat, less any part of them before the store
        came back from an outage this replica saw: the trainer had no store to write to.
        None at all while this pass found the store down (it may be back for this job, and
        not yet for its trainer)."""
        if self._store_down:
            return 0.0
        if self._store_back_at is None:
            return silence
        return min(silence, time.monotonic() - self._store_back_at)

    def _launch(
        self,
        job: Job,
        *,
        after: LaunchRecord | None = None,
        cause: str = "",
        devices: DeviceLease | None = None,
    ) -> None:
        """Claim and start the next attempt: 1 for a queued job, or the one after `after`,
        on the GPUs of `devices` when it has a lease (the caller releases it after).

        The claim is a compare-and-swap of `status.launch`: of all replicas reconciling
        this job, exactly one wins it and starts a trainer.
        """
        # A resumed job's attempts go on from those it had before its pause.
        attempt = (job.status.previousAttempts if after is None else after.attempt) + 1
        claim = LaunchRecord(
            attempt=attempt,
            launcher=self.launcher.name,
            host="",
            launchedAt=utc_now(),
            launchedBy=self.replica_id,
            devices=list(devices.devices) if devices is not None else [],
        )

        def claim_launch(status: JobStatus) -> JobStatus | None:
            if status.state.is_terminal():
                return None
            current = status.launch.attempt if status.launch else None
            if current != (after.attempt if after else None):
                return None  # another replica won
            if after is None and status.state != JobState.QUEUED:
                return None
            claimed = status.model_copy(deep=True)
            claimed.launch = claim
            claimed.queuePosition = None
            if cause:
                claimed.retries[cause] = claimed.retries.get(cause, 0) + 1
            return claimed

        # A first launch tries the status this pass read (no GET); a relaunch follows a
        # fresh read of its own (`_handle_dead_trainer`), so it reads again here.
        known = (job.status, job.status_etag) if after is None else None
        if self.store.update_status(job.spec.jobId, claim_launch, known=known) is None:
            return
        # The event goes in before the trainer starts: a replica killed after starting a
        # trainer but before recording the event would leave an attempt that ran with no
        # LAUNCHED event, and no later pass can tell it is missing without listing events.
        # Killed between the claim and this event, the claim has no trainer behind it and
        # is relaunched after the start timeout, with its own event.
        why = f" after a {cause}" if cause else ""
        where = f" on GPU(s) {devices.visible_devices}" if devices is not None else ""
        if devices is None and self.gpus is not None:  # say so: it may not be what was meant
            where = (
                f" on the CPU (resources.gpus is 0; this host has {len(self.gpus)} GPU(s), "
                "ask for them with resources.gpus)"
            )
        self.store.append_event(
            job.spec.jobId,
            "LAUNCHED",
            f"trainer attempt {attempt} launched ({self.launcher.name}){where}{why}",
        )
        try:
            environment = {
                **self.trainer_environment,
                **self.tenant_environment(job.spec.tenant),
            }
            if devices is not None:
                started = self.launcher.start(job.spec, attempt, environment, devices)
            else:
                started = self.launcher.start(job.spec, attempt, environment)
        except Exception as error:
            log.exception("could not start the trainer for job %s", job.spec.jobId)
            if self.metrics is not None:
                self.metrics.reconcile_errors.labels("launcher").inc()
            self._finish(
                job,
                attempt,
                JobState.FAILED,
                FailureReason.INTERNAL,
                f"the trainer could not be started: {error}",
            )
            return

        def record_process(status: JobStatus) -> JobStatus | None:
            if status.launch is None or status.launch.attempt != attempt:
                return None
            recorded = status.model_copy(deep=True)
            assert recorded.launch is not None
            recorded.launch.host = started.host
            recorded.launch.pid = started.pid
            recorded.launch.processStartTicks = started.process_start_ticks
            return recorded

        self.store.update_status(job.spec.jobId, record_process)

    def _ask_launcher(self, call: str, ask: Callable[[], Answer]) -> Answer:
        """A launcher call; whatever it raises (a cluster API's error) becomes
        `LauncherFailed`, naming the launcher and the call, for this job's fault count."""
        try:
            return ask()
        except Exception as error:
            raise LauncherFailed(
                f"the {self.launcher.name} launcher's {call} failed: {_in_one_line(error)}"
            ) from error

    def _signal(self, launch: LaunchRecord, which: signal.Signals) -> None:
        self._ask_launcher(f"signal {which.name}", lambda: self.launcher.signal(launch, which))

    def _escalate_stop(self, job: Job) -> None:
        assert job.status.launch is not None
        waited = _age_seconds(job.control.stopRequestedAt)
        if waited > self.stop_grace_seconds + self.kill_grace_seconds:
            self._signal(job.status.launch, signal.SIGKILL)
        elif waited > self.stop_grace_seconds:
            self._signal(job.status.launch, signal.SIGTERM)

    def _handle_dead_trainer(self, job: Job, observed: Observed) -> None:
        launch = job.status.launch
        assert launch is not None
        # The trainer may have written a terminal state just before exiting; re-read.
        status, _ = self.store.get_status(job.spec.jobId)
        if status.state.is_terminal():
            self._upload_log(job.spec.jobId, launch.attempt)
            self._retire(job.spec.jobId)
            return
        if status.launch is None or status.launch.attempt != launch.attempt:
            return  # another replica relaunched it (or it was resumed) since this pass read it
        if observed.alive is None and not self._presumed_lost(status):
            return  # its first heartbeat came since this pass read the job: it lives
        if status.state == JobState.PAUSED:
            return  # its trainer paused it on the way out: the next pass sees PAUSED
        self._upload_log(job.spec.jobId, launch.attempt)
        if job.control.stopRequested:
            self._finish(job, launch.attempt, JobState.STOPPED, None, "stopped")
            return
        if job.control.pauseRequested:
            # Gone before it could pause (a crash, a lost node): paused all the same; the
            # resumed attempt goes on from the newest committed checkpoint.
            self._pause(
                job, launch.attempt, f"paused (the trainer of attempt {launch.attempt} had ended)"
            )
            return
        exit_code = observed.exit_code
        if exit_code is None and observed.alive is False:
            how = "is gone (an earlier server process started it; its exit code is unknown)"
            cause = "preemption"
        elif exit_code is None and not _heard_since_launch(status):
            how = f"sent no heartbeat in the {self.start_timeout_seconds:.0f} s since its launch"
            if not observed.reason:
                how += " (it never started, or its replica died while starting it)"
            cause = "preemption"
        elif exit_code is None:
            how = f"stopped sending heartbeats (last at {status.heartbeatAt})"
            cause = "preemption"  # lost with its node, as far as anyone can tell
        elif exit_code == TrainerExit.PREEMPTED or exit_code == -signal.SIGTERM:
            how = "was terminated (SIGTERM: preempted, or the service shut down)"
            cause = "preemption"
        elif exit_code < 0:
            how = f"was killed by signal {signal.Signals(-exit_code).name}"
            cause = "crash"
        else:
            how = f"exited with code {exit_code}"
            cause = "crash"
        if observed.reason:
            how += f": {observed.reason}"
        log_uri = self.store.log_location(job.spec.jobId, launch.attempt).uri
        if observed.reason and observed.reason.startswith("out of memory"):
            # The same job would run out again: never retried.
            message = (
                f"the trainer process {how}{self._memory_details(job, status, observed)};"
                " lower batchSize or maxSequenceLength, use method LORA, or ask the "
                f"operator for more trainer memory. Its log is at {log_uri}"
            )
            self._finish(job, launch.attempt, JobState.FAILED, FailureReason.OUT_OF_MEMORY, message)
            return
        crashes = status.retries.get("crash", 0)
        if exit_code == TrainerExit.BAD_INPUT:
            pass  # bad data or config: never retried
        elif launch.attempt - status.previousAttempts >= self.max_attempts:
            # Attempts ended by a pause are not failures: only those since the last
            # resume count against the budget.
            since = launch.attempt - status.previousAttempts
            how += f"; it was attempt {since} of at most {self.max_attempts}"
            if status.previousAttempts:
                how += f" since the job was resumed (attempt {launch.attempt} in all)"
        elif cause == "crash" and crashes >= self.crash_retry_budget:
            how += f"; it had already crashed {crashes} time(s), the retry budget"
        else:
            lease = None
            if needed := self._gpus_needed(job):
                assert self.gpus is not None
                if needed > len(self.gpus):
                    self._refuse_for_gpus(job, needed, launch.attempt)
                    return
                try:
                    lease = self.gpus.acquire(needed)
                except OSError as error:  # the lock files: logged, tried again next pass
                    log.error("leasing GPUs for job %s failed: %s", job.spec.jobId, error)
                if lease is None:  # taken meanwhile by another worker's launch: next pass
                    log.info("job %s waits for %d free GPU(s) to relaunch", job.spec.jobId, needed)
                    self._ends_awaiting_devices[(job.spec.jobId, launch.attempt)] = observed
                    return
            try:
                self.store.append_event(
                    job.spec.jobId,
                    "RETRY",
                    f"the trainer of attempt {launch.attempt} {how} ({cause}); relaunching",
                )
                self._launch(job, after=launch, cause=cause, devices=lease)
            finally:
                if lease is not None:
                    lease.release()  # the relaunched trainer holds its own copies
            return
        message = f"the trainer process {how} before the job finished; its log is at {log_uri}"
        self._finish(job, launch.attempt, JobState.FAILED, FailureReason.TRAINER_CRASHED, message)

    def _memory_details(self, job: Job, status: JobStatus, observed: Observed) -> str:
        """What a user needs to size the job again: the peak memory the launcher saw,
        the size of the data (read now; left out if the store cannot say)."""
        data_bytes: int | None = 0
        uris = [job.spec.trainingDataConfig.s3Uri]
        if job.spec.validationDataConfig is not None:
            uris.append(job.spec.validationDataConfig.s3Uri)
        for uri in uris:
            try:
                head = self.store.storage.head(parse_s3_uri(uri, field="s3Uri"))
            except Exception as error:  # only the message loses a detail
                log.warning("could not read the size of %s: %s", uri, error)
                head = None
            if head is None or data_bytes is None:
                data_bytes = None
            else:
                data_bytes += int(head.get("ContentLength", 0))
        records = status.dataSummary.trainingRecords if status.dataSummary else None
        return memory_failure_details(observed.peak_memory_bytes, data_bytes, records)

    def _finish(
        self,
        job: Job,
        attempt: int | None,
        state: JobState,
        reason: FailureReason | None,
        message: str,
    ) -> None:
        def finish(status: JobStatus) -> JobStatus | None:
            if status.state.is_terminal():
                return None
            current_attempt = status.launch.attempt if status.launch else None
            if current_attempt != attempt:
                return None  # launched meanwhile, or a newer attempt owns the job
            finished = status
            if state == JobState.STOPPED and status.state not in (
                JobState.STOPPING,
                JobState.PAUSED,  # no trainer to stop: straight to STOPPED
            ):
                finished = finished.moved_to(JobState.STOPPING)
            finished = finished.moved_to(state)
            if reason is not None:
                finished.failure = Failure(reason=reason, message=message)
            return finished

        if self.store.update_status(job.spec.jobId, finish) is not None:
            self.store.append_event(job.spec.jobId, "STATE_CHANGED", message, state)
            log.info("job %s is %s: %s", job.spec.jobId, state.value, message)
        elif not self.store.get_status(job.spec.jobId)[0].state.is_terminal():
            # Refused because the job moved on meanwhile (another replica launched or
            # requeued it): it has not ended, so it stays in `active/` for a later pass.
            return
        self._retire(job.spec.jobId)

    def _retire(self, job_id: str) -> None:
        """Drop a finished job from `active/`, once its webhook delivery is settled, and
        have the launcher remove what its attempts left on a cluster."""
        if self.notifier is not None and not self.notifier.settled(self.store.get(job_id)):
            return  # a later pass asks again
        try:
            self.launcher.release(job_id)
        except Exception as error:  # the cluster's own TTL removes them in the end
            if self.metrics is not None:
                self.metrics.reconcile_errors.labels("launcher").inc()
            log.warning(
                "job %s: the %s launcher could not remove its attempts: %s",
                job_id,
                self.launcher.name,
                error,
            )
        self.store.mark_inactive(job_id)

    def _upload_log(self, job_id: str, attempt: int) -> None:
        path = self._ask_launcher("local_log", lambda: self.launcher.local_log(job_id, attempt))
        if path is not None:
            self.store.upload_log(job_id, attempt, path)


@dataclass(frozen=True)
class _KnownWaiting:
    """A job read waiting (QUEUED, not launched, no control marker), the etag its
    `changed/` marker had in the listing made before that read (None: no marker), and
    when (monotonic) it is read again anyway."""

    job: Job
    changed_etag: str | None
    read_again_at: float

    def holds(
        self, job_id: str, stopped: set[str], changed: dict[str, str], listed_at: float
    ) -> bool:
        """Whether the job is still waiting as read, as of the listings made at
        `listed_at`: no control marker since, and no new version of its changed marker."""
        return (
            job_id not in stopped
            and changed.get(job_id) == self.changed_etag
            and listed_at < self.read_again_at
        )


def _heard_since_launch(status: JobStatus) -> bool:
    """Whether this attempt has sent a heartbeat: one older than its launch is an earlier
    attempt's (before a crash, or a pause) and says nothing of this one."""
    assert status.launch is not None
    return _age_seconds(status.heartbeatAt) < _age_seconds(status.launch.launchedAt)


def _resumed(job: Job) -> bool:
    """PAUSED, and resumed since: on its way back to the queue."""
    control = job.control
    return (
        job.status.state == JobState.PAUSED
        and not control.pauseRequested
        and not control.stopRequested
    )


def _in_one_line(error: Exception) -> str:
    """An exception in one line for a job's failure message: a cluster API's answer as
    its HTTP status, reason and message (a Kubernetes ApiException's text spans lines,
    with response headers); anything else, its first line."""
    status, reason = getattr(error, "status", None), getattr(error, "reason", None)
    if isinstance(status, int) and isinstance(reason, str):
        said = f"{type(error).__name__}: HTTP {status} {reason}"
        try:
            message = json.loads(getattr(error, "body", None) or "{}").get("message")
        except (ValueError, AttributeError):
            message = None
        return f"{said}: {message}" if message else said
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _attempt(job: Job) -> int:
    return job.status.launch.attempt if job.status.launch else 0


def _age_seconds_ms(created_ms: int) -> float:
    return time.time() - created_ms / 1000
