"""When the reconcile loop gives up on a job that keeps failing (pure logic, a fake clock):
only after enough failed passes *and* enough time, never for a store outage, and a job
set aside is skipped until its next try is due."""

from __future__ import annotations

from jobstore.storage import StorageError
from service.control.reconcile_faults import FaultTracker, classify
from service.errors import (
    CorruptDocument,
    LauncherFailed,
    StatusContention,
    StoreUnavailable,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_fault_has_its_reason_and_says_what_failed() -> None:
    corrupt = CorruptDocument("s3://state/jobs/j/spec.json", "not JSON (...)", is_json=False)
    assert classify(corrupt) == (
        "corrupt_document",
        "s3://state/jobs/j/spec.json could not be read: not JSON (...)",
    )
    other_shape = CorruptDocument("s3://s/jobs/j/spec.json", "jobName: required", is_json=True)
    assert classify(other_shape)[0] == "invalid_document"
    assert classify(LauncherFailed("the ray launcher's observe failed"))[0] == "launcher"
    assert classify(StatusContention("kept changing"))[0] == "contention"
    assert classify(StoreUnavailable("no answer"))[0] == "store_unavailable"
    assert classify(StorageError("AccessDenied"))[0] == "store"
    assert classify(KeyError("launch")) == ("internal", "KeyError: 'launch'")


def test_gives_up_only_after_enough_failures_over_enough_time() -> None:
    clock = Clock()
    faults = FaultTracker(give_up_after_failures=3, give_up_after_seconds=60, clock=clock)
    for _ in range(3):
        faults.failed("j", KeyError("x"))
    assert not faults.should_give_up("j")  # three failures, but within a second
    clock.now += 59
    assert not faults.should_give_up("j")
    clock.now += 1
    assert faults.should_give_up("j")
    faults.succeeded("j")  # one good pass ends the run
    assert not faults.should_give_up("j") and faults.fault("j") is None


def test_a_store_outage_never_brings_a_job_closer_to_being_given_up_on() -> None:
    clock = Clock()
    faults = FaultTracker(give_up_after_failures=2, give_up_after_seconds=0, clock=clock)
    for _ in range(10):
        fault = faults.failed("j", StoreUnavailable("connection refused"))
    assert fault.failures == 0 and not faults.should_give_up("j")
    unreadable = CorruptDocument("s3://state/jobs/j/status.json", "not JSON", is_json=False)
    faults.failed("j", unreadable)
    faults.failed("j", unreadable)
    assert faults.should_give_up("j")
    fault = faults.fault("j")
    assert fault is not None and fault.unreadable_status and fault.may_be_destroyed


def test_the_clock_starts_at_the_first_failure_that_counts() -> None:
    """A long store outage before a job's real faults does not shorten the wait."""
    clock = Clock()
    faults = FaultTracker(give_up_after_failures=2, give_up_after_seconds=60, clock=clock)
    faults.failed("j", StoreUnavailable("down"))
    clock.now += 3600
    faults.failed("j", KeyError("x"))
    faults.failed("j", KeyError("x"))
    assert not faults.should_give_up("j")
    clock.now += 60
    assert faults.should_give_up("j")


def test_an_outage_of_the_launcher_does_not_count_and_other_shapes_are_never_destroyed() -> None:
    faults = FaultTracker(give_up_after_failures=1, give_up_after_seconds=0, clock=Clock())
    fault = faults.failed("j", LauncherFailed("the ray launcher's observe failed"), counted=False)
    assert (fault.reason, fault.failures) == ("launcher_unavailable", 0)
    assert not faults.should_give_up("j")
    newer = CorruptDocument("s3://s/jobs/k/status.json", "state: unknown", is_json=True)
    fault = faults.failed("k", newer, attempt=3)
    assert faults.should_give_up("k") and not fault.may_be_destroyed
    assert not fault.unreadable_status and fault.attempt == 3


def test_a_job_set_aside_is_skipped_until_its_next_try_is_due() -> None:
    clock = Clock()
    faults = FaultTracker(
        give_up_after_failures=1, give_up_after_seconds=0, set_aside_seconds=600, clock=clock
    )
    faults.failed("j", StorageError("AccessDenied"))
    faults.set_aside("j")
    assert faults.set_aside_jobs() == ["j"]
    assert not faults.should_give_up("j")  # given up on already
    clock.now += 599
    assert faults.skips("j")
    clock.now += 1
    assert not faults.skips("j")  # due: tried once more
    faults.failed("j", StorageError("AccessDenied"))
    assert faults.should_give_up("j")  # and given up on again when that fails
    faults.forget_all_but(["other"])  # no longer active: forgotten
    assert faults.set_aside_jobs() == [] and faults.fault("j") is None
