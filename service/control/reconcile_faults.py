"""What the reconcile loop does when acting on one job raises.

Invariant: no job's fault stops the loop. An exception raised while reading one job's
records or acting on them (its launcher's calls included) is classified here, counted
(`tuneforge_reconcile_errors_total{reason}`), logged with the job id by the reconciler,
and the job is tried again on the next pass while every other job goes on.

A job whose reconcile failed `give_up_after_failures` passes in a row, over at least
`give_up_after_seconds` since the first of them, is given up on: the reconciler fails it
(INTERNAL, with a message naming the document or the call at fault) when it can still
write its status, and otherwise sets it aside. A job set aside is tried only every
`set_aside_seconds` and is reported meanwhile (an ERROR log on each try, the
`tuneforge_reconcile_jobs_set_aside` gauge) until someone repairs what is wrong.

What never counts towards giving up on a job, because the job is not what is broken:
- a store outage (`StoreUnavailable`): every job sees it;
- a launcher outage: when every launched job's launcher call failed in the same pass
  (two or more), the reconciler records them as `launcher_unavailable`.
A record that is JSON but not the shape this release expects (`invalid_document`: maybe
written by a newer or older release during a rolling upgrade) is never replaced nor its
job failed by this release: past the limit it is set aside and reported.

The writes that give up on a job are here too (`fail_given_up`, `fail_unreadable_status`);
the reconciler kills the trainer and retires the job.

The counts live in the memory of one reconciler: each replica (and each API worker) counts
its own, and a restart starts them again. That only delays giving up; it never skips it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from jobstore.documents import Failure, FailureReason, JobState, JobStatus, LaunchRecord, utc_now
from jobstore.store import JobStore
from service.errors import (
    CorruptDocument,
    LauncherFailed,
    StatusContention,
    StoreUnavailable,
    TuneforgeError,
)

# The `reason` label of tuneforge_reconcile_errors_total, one per kind of fault.
REASONS = (
    "corrupt_document",  # a record that is not JSON (CorruptDocument)
    "invalid_document",  # JSON, but not what this release reads: never destroyed
    "launcher",  # the launcher's call about this job raised (LauncherFailed)
    "launcher_unavailable",  # every launched job's launcher call failed: not counted
    "contention",  # a compare-and-swap of the status lost every try (StatusContention)
    "store_unavailable",  # the store is down: not counted
    "store",  # another error of the store (access denied, a bad answer)
    "internal",  # anything else: a bug
)
_NOT_COUNTED = frozenset({"store_unavailable", "launcher_unavailable"})


def classify(error: BaseException) -> tuple[str, str]:
    """The fault's reason label and a one-line description a user can be shown."""
    if isinstance(error, CorruptDocument):
        return ("invalid_document" if error.is_json else "corrupt_document"), error.message
    if isinstance(error, LauncherFailed):
        return "launcher", error.message
    if isinstance(error, StatusContention):
        return "contention", error.message
    if isinstance(error, StoreUnavailable):
        return "store_unavailable", error.message
    if isinstance(error, TuneforgeError):
        return "store", error.message
    return "internal", f"{type(error).__name__}: {error}"


@dataclass
class JobFault:
    """One job's run of failed passes."""

    reason: str
    description: str  # the latest failure's, in words
    failures: int = 0  # passes in a row that failed (outages not counted)
    first_failed_at: float | None = None  # the first counted failure (the tracker's clock)
    set_aside_until: float | None = None  # given up on without a status write: next try
    unreadable_status: bool = False  # the latest failure: its status.json is not JSON
    attempt: int | None = None  # the attempt the job was at when it failed, when read

    @property
    def may_be_destroyed(self) -> bool:
        """Whether giving up may fail the job (else it is only set aside)."""
        return self.reason != "invalid_document"


class FaultTracker:
    def __init__(
        self,
        *,
        give_up_after_failures: int = 10,
        give_up_after_seconds: float = 300.0,
        set_aside_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.give_up_after_failures = give_up_after_failures
        self.give_up_after_seconds = give_up_after_seconds
        self.set_aside_seconds = set_aside_seconds
        self._clock = clock
        self._faults: dict[str, JobFault] = {}
        self._lock = threading.Lock()  # /metrics and tests read while the loop writes

    def failed(
        self,
        job_id: str,
        error: BaseException,
        *,
        attempt: int | None = None,
        counted: bool = True,
    ) -> JobFault:
        """Record that acting on the job raised `error` (at `attempt`, when the job was
        read); return its run of failures. `counted=False`: an outage, not the job's."""
        reason, description = classify(error)
        if not counted and reason == "launcher":
            reason = "launcher_unavailable"
        with self._lock:
            fault = self._faults.setdefault(job_id, JobFault(reason, description))
            fault.reason, fault.description = reason, description
            fault.attempt = attempt if attempt is not None else fault.attempt
            fault.unreadable_status = (
                reason == "corrupt_document"
                and isinstance(error, CorruptDocument)
                and error.uri.endswith("/status.json")
            )
            if reason not in _NOT_COUNTED:
                fault.failures += 1
                if fault.first_failed_at is None:
                    fault.first_failed_at = self._clock()
            return fault

    def succeeded(self, job_id: str) -> None:
        """A pass read and acted on the job without an error: its run ends."""
        with self._lock:
            self._faults.pop(job_id, None)

    def should_give_up(self, job_id: str) -> bool:
        with self._lock:
            fault = self._faults.get(job_id)
            if fault is None or fault.set_aside_until is not None or fault.first_failed_at is None:
                return False
            return (
                fault.failures >= self.give_up_after_failures
                and self._clock() - fault.first_failed_at >= self.give_up_after_seconds
            )

    def set_aside(self, job_id: str) -> None:
        """Given up on but not failed: try again only later."""
        with self._lock:
            self._faults[job_id].set_aside_until = self._clock() + self.set_aside_seconds

    def skips(self, job_id: str) -> bool:
        """True while the job is set aside and its next try is not due. When it is due,
        the job is tried once more (and set aside again if that fails)."""
        with self._lock:
            fault = self._faults.get(job_id)
            if fault is None or fault.set_aside_until is None:
                return False
            if self._clock() < fault.set_aside_until:
                return True
            fault.set_aside_until = None
            return False

    def fault(self, job_id: str) -> JobFault | None:
        with self._lock:
            return self._faults.get(job_id)

    def seconds_failing(self, job_id: str) -> float:
        with self._lock:
            first = self._faults[job_id].first_failed_at
        return 0.0 if first is None else self._clock() - first

    def forget_all_but(self, active: Iterable[str]) -> None:
        """Drop the runs of jobs that are no longer active (finished, or retired)."""
        keep = set(active)
        with self._lock:
            for job_id in [job_id for job_id in self._faults if job_id not in keep]:
                del self._faults[job_id]

    def set_aside_jobs(self) -> list[str]:
        with self._lock:
            return sorted(job for job, fault in self._faults.items() if fault.set_aside_until)


# -- giving up: the status writes ---------------------------------------------------


def fail_given_up(
    store: JobStore, job_id: str, message: str, attempt: int | None
) -> tuple[JobStatus | None, list[LaunchRecord]]:
    """Write FAILED / INTERNAL with `message` through the job's status (which reads; its
    spec may not), unless the job moved on from `attempt` (the one that kept failing,
    when known: another replica relaunched it meanwhile). Return the status written
    (None: not written) and the launch record of a trainer that may still live, for the
    caller to kill."""
    launches: list[LaunchRecord] = []

    def fail(status: JobStatus) -> JobStatus | None:
        if status.state.is_terminal():
            return None
        current = status.launch.attempt if status.launch is not None else 0
        if attempt is not None and current != attempt:
            return None  # not the attempt that failed: leave it be
        launches[:] = [status.launch] if status.launch is not None else []
        failed = status.moved_to(JobState.FAILED)
        failed.failure = Failure(reason=FailureReason.INTERNAL, message=message)
        return failed

    return store.update_status(job_id, fail), launches


def fail_unreadable_status(store: JobStore, job_id: str, message: str) -> JobStatus | None:
    """Replace a status.json that does not parse with a FAILED one, the unreadable bytes
    kept beside it (the message says where). Its trainer, if any, finds no launch of its
    own in the new status and stops at its next heartbeat. None: the status reads now,
    or changed meanwhile."""
    now = utc_now()

    def replacement(kept_uri: str) -> JobStatus:
        failed = JobStatus(updatedAt=now, stateTimes={"QUEUED": now}).moved_to(JobState.FAILED)
        failed.failure = Failure(
            reason=FailureReason.INTERNAL,
            message=f"{message}. The unreadable status is kept at {kept_uri}",
        )
        return failed

    return store.set_aside_corrupt_status(job_id, replacement)
