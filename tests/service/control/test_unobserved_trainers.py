"""A trainer the reconciler cannot observe (another host's, or one whose replica died
before recording its process) is judged by its signs of life in the store, on a real
store: never heard from, it has the start timeout from its launch; once it has sent a
heartbeat, silence past the heartbeat timeout means it is lost and the job relaunched.

Ages are made by writing the launch time and the heartbeat into the past.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from jobstore.documents import JobStatus
from jobstore.store import JobStore
from service.control.reconciler import Reconciler
from tests.service.control.test_pause import TrainersOnAnotherHost, _create

HEARTBEAT_TIMEOUT = 30.0
START_TIMEOUT = 120.0


def _seconds_ago(seconds: float) -> str:
    moment = datetime.now(UTC) - timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _aged(store: JobStore, job_id: str, launched: float, heartbeat: float | None) -> None:
    """Move the launch `launched` seconds into the past, the heartbeat `heartbeat` (None:
    never sent)."""

    def age(status: JobStatus) -> JobStatus:
        assert status.launch is not None
        aged = status.model_copy(deep=True)
        assert aged.launch is not None
        aged.launch.launchedAt = _seconds_ago(launched)
        aged.heartbeatAt = None if heartbeat is None else _seconds_ago(heartbeat)
        return aged

    store.update_status(job_id, age)


def _launched_once(store: JobStore, reconciler: Reconciler, name: str) -> str:
    job_id = _create(store, name, int(time.time() * 1000))
    reconciler.run_once()
    status, _ = store.get_status(job_id)
    assert status.launch is not None and status.launch.attempt == 1, status
    return job_id


def _attempt(store: JobStore, job_id: str) -> int:
    status, _ = store.get_status(job_id)
    assert status.launch is not None
    return status.launch.attempt


def _retries(store: JobStore, job_id: str) -> list[str]:
    return [event.message for event in store.list_events(job_id) if event.type == "RETRY"]


def _reconciler(store: JobStore, trainers: TrainersOnAnotherHost) -> Reconciler:
    return Reconciler(
        store,
        trainers,
        {},
        slots=4,
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT,
        start_timeout_seconds=START_TIMEOUT,
    )


@pytest.fixture
def trainers() -> Iterator[TrainersOnAnotherHost]:
    started = TrainersOnAnotherHost()
    yield started
    started.shutdown(0)  # every attempt's process, the relaunched ones' too


@pytest.fixture
def reconciler(store: JobStore, trainers: TrainersOnAnotherHost) -> Reconciler:
    return _reconciler(store, trainers)


def test_a_trainer_never_heard_from_is_not_relaunched_within_the_start_timeout(
    store: JobStore, reconciler: Reconciler
) -> None:
    """Past the heartbeat timeout but within the start timeout: still starting (a cold
    import on a busy host). Relaunching it would put two trainers on one job."""
    job_id = _launched_once(store, reconciler, "slow-start")
    _aged(store, job_id, launched=HEARTBEAT_TIMEOUT * 2, heartbeat=None)
    reconciler.run_once()
    assert _attempt(store, job_id) == 1
    assert store.get_status(job_id)[0].retries == {}


def test_a_trainer_never_heard_from_past_the_start_timeout_is_relaunched_saying_why(
    store: JobStore, reconciler: Reconciler
) -> None:
    job_id = _launched_once(store, reconciler, "never-started")
    _aged(store, job_id, launched=START_TIMEOUT + 5, heartbeat=None)
    reconciler.run_once()
    assert _attempt(store, job_id) == 2
    retries = _retries(store, job_id)
    assert len(retries) == 1, retries
    assert f"sent no heartbeat in the {START_TIMEOUT:.0f} s since its launch" in retries[0]


def test_a_heartbeat_older_than_the_launch_does_not_count_as_this_attempts(
    store: JobStore, reconciler: Reconciler
) -> None:
    """An earlier attempt's heartbeat (before a crash or a pause) is not a sign of life
    of this one, and does not end its start timeout either."""
    job_id = _launched_once(store, reconciler, "old-heartbeat")
    _aged(store, job_id, launched=HEARTBEAT_TIMEOUT * 2, heartbeat=HEARTBEAT_TIMEOUT * 3)
    reconciler.run_once()
    assert _attempt(store, job_id) == 1


def test_a_trainer_silent_past_the_heartbeat_timeout_after_its_first_is_relaunched(
    store: JobStore, reconciler: Reconciler
) -> None:
    job_id = _launched_once(store, reconciler, "went-silent")
    _aged(store, job_id, launched=HEARTBEAT_TIMEOUT * 2, heartbeat=HEARTBEAT_TIMEOUT + 5)
    reconciler.run_once()
    assert _attempt(store, job_id) == 2
    retries = _retries(store, job_id)
    assert len(retries) == 1 and "stopped sending heartbeats" in retries[0], retries


def test_a_trainer_heard_from_within_the_heartbeat_timeout_is_left_alone(
    store: JobStore, reconciler: Reconciler
) -> None:
    job_id = _launched_once(store, reconciler, "beating")
    _aged(store, job_id, launched=START_TIMEOUT * 2, heartbeat=HEARTBEAT_TIMEOUT / 2)
    reconciler.run_once()
    assert _attempt(store, job_id) == 1


def test_a_replica_that_read_the_job_before_another_relaunched_it_does_nothing(
    store: JobStore, trainers: TrainersOnAnotherHost
) -> None:
    """Two replicas find the same attempt lost in passes a moment apart; the one whose
    read came before the other's relaunch writes no second RETRY and starts nothing."""
    first, second = _reconciler(store, trainers), _reconciler(store, trainers)
    job_id = _launched_once(store, first, "two-replicas")
    _aged(store, job_id, launched=START_TIMEOUT + 5, heartbeat=None)
    stale = store.get(job_id)  # the second replica's pass reads the job ...
    first.run_once()  # ... the first relaunches it ...
    second.reconcile(stale)  # ... and the second acts on what it read
    assert _attempt(store, job_id) == 2
    retries = _retries(store, job_id)
    assert len(retries) == 1, retries
    assert len(trainers.started) == 2


def test_a_first_heartbeat_written_after_the_pass_read_the_job_saves_it(
    store: JobStore, reconciler: Reconciler
) -> None:
    """A trainer that starts just past the start timeout: the pass read no heartbeat, but
    the status read again before relaunching has one, so it is left to run."""
    job_id = _launched_once(store, reconciler, "just-in-time")
    _aged(store, job_id, launched=START_TIMEOUT + 5, heartbeat=None)
    read_by_the_pass = store.get(job_id)
    _aged(store, job_id, launched=START_TIMEOUT + 5, heartbeat=0)
    reconciler.reconcile(read_by_the_pass)
    assert _attempt(store, job_id) == 1
    assert _retries(store, job_id) == []
