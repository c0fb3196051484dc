"""What the reconcile loop does when acting on one job raises.

Invariant: no job's fault stops the loop. An exception raised while reading one job's
records or acting on them (its launcher's calls included) is classified here, counted
(`tuneforge_reconcile_errors_total{reason}`), logged with the job id by the reconciler,
and the job is tried again on the next pass while every other job goes on.

A job whose reconcile failed `give_up_after_failures` passes in a row, over at least
`give_up_after_seconds`, is given up on: the reconciler fails it (INTERNAL, with a message
naming the document or the call at fault) when it can still write its status, and
otherwise sets it aside. A job set aside is tried only every `set_aside_seconds` and is
reported meanwhile (an ERROR log on each try, the `tuneforge_reconcile_jobs_set_aside`
gauge) until someone repairs what is wrong.

The writes that give up on a job are here too (`fail_given_up`, `fail_unreadable_status`);
the reconciler kills the trainer and retires the job.

A store outage (`StoreUnavailable`) is counted but never brings a job closer to being
given up on: every job sees it, and none of them is what is broken.

The counts live in the memory of one reconciler: each replica (and each API worker) counts
its own, and a restart starts them again. That only delays giving up; it never skips it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from service.documents import Failure, FailureReason, JobState, JobStatus, LaunchRecord, utc_now
from service.errors import (
    CorruptDocument,
    LauncherFailed,
    StatusContention,
    StoreUnavailable,
    TuneforgeError,
)
from service.store import JobStore

# The `reason` label of tuneforge_reconcile_errors_total, one per kind of fault.
REASONS = (
    "corrupt_document",  # a record that is not JSON or not valid (CorruptDocument)
    "launcher",  # the launcher's call raised: a cluster API error (LauncherFailed)
    "contention",  # a compare-and-swap of the status lost every try (StatusContention)
    "store_unavailable",  # the store is down: never counts towards giving up
    "store",  # another error of the store (access denied, a bad answer)
    "internal",  # anything else: a bug
)


def classify(error: BaseException) -> tuple[str, str]:
    """The fault's reason label and a one-line description a user can be shown."""
    if isinstance(error, CorruptDocument):
        return "corrupt_document", error.message
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
    failures: int  # passes in a row that failed (store outages not counted)
    first_failed_at: float  # when the first of them failed (the tracker's clock)
    set_aside_until: float | None = None  # given up on without a status write: next try
    unreadable_status: bool = False  # the latest failure: its status.json does not parse


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

    def failed(self, job_id: str, error: BaseException) -> JobFault:
        """Record that acting on the job raised `error`; return its run of failures."""
        reason, description = classify(error)
        fault = self._faults.get(job_id)
        if fault is None:
            fault = JobFault(reason, description, 0, self._clock())
            self._faults[job_id] = fault
        fault.reason, fault.description = reason, description
        fault.unreadable_status = isinstance(error, CorruptDocument) and error.uri.endswith(
            "/status.json"
        )
        if reason != "store_unavailable":
            fault.failures += 1
        return fault

    def succeeded(self, job_id: str) -> None:
        """A pass read and acted on the job without an error: its run ends."""
        self._faults.pop(job_id, None)

    def should_give_up(self, job_id: str) -> bool:
        fault = self._faults.get(job_id)
        if fault is None or fault.set_aside_until is not None:
            return False
        return (
            fault.failures >= self.give_up_after_failures
            and self._clock() - fault.first_failed_at >= self.give_up_after_seconds
        )

    def set_aside(self, job_id: str) -> None:
        """Given up on but its status could not be written: try again only later."""
        fault = self._faults[job_id]
        fault.set_aside_until = self._clock() + self.set_aside_seconds

    def skips(self, job_id: str) -> bool:
        """True while the job is set aside and its next try is not due. When it is due,
        the job is tried once more (and given up on again if that fails)."""
        fault = self._faults.get(job_id)
        if fault is None or fault.set_aside_until is None:
            return False
        if self._clock() < fault.set_aside_until:
            return True
        fault.set_aside_until = None
        return False

    def fault(self, job_id: str) -> JobFault | None:
        return self._faults.get(job_id)

    def seconds_failing(self, job_id: str) -> float:
        fault = self._faults[job_id]
        return self._clock() - fault.first_failed_at

    def forget_all_but(self, active: Iterable[str]) -> None:
        """Drop the runs of jobs that are no longer active (finished, or retired)."""
        keep = set(active)
        for job_id in [job_id for job_id in self._faults if job_id not in keep]:
            del self._faults[job_id]

    def set_aside_jobs(self) -> list[str]:
        return sorted(job for job, fault in self._faults.items() if fault.set_aside_until)


# -- giving up: the status writes ---------------------------------------------------


def fail_given_up(
    store: JobStore, job_id: str, message: str
) -> tuple[JobStatus | None, list[LaunchRecord]]:
    """Write FAILED / INTERNAL with `message` through the job's status (which reads; its
    spec may not). Return the status written (None: it had ended meanwhile) and the
    launch record of a trainer that may still live, for the caller to kill."""
    launches: list[LaunchRecord] = []

    def fail(status: JobStatus) -> JobStatus | None:
        if status.state.is_terminal():
            return None
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
