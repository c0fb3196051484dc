"""Fixtures for the trainer tests: the demo assets in the test store and a way to start
the real trainer as a subprocess (helpers in tests/trainer/jobs.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.server.demo import build_demo_model, seed_demo
from tests.trainer.jobs import (
    DATA_BUCKET,
    DEMO_BUCKET,
    OUTPUT_BUCKET,
    STATE_BUCKET,
    Demo,
    TrainerRun,
    start_trainer_process,
)


@pytest.fixture(scope="session")
def demo(object_store: ObjectStore) -> Demo:
    """The demo assets, seeded into the test store exactly as the API server does."""
    for bucket in (STATE_BUCKET, DATA_BUCKET, OUTPUT_BUCKET):
        object_store.ensure_bucket(bucket)
    seed_demo(object_store, DEMO_BUCKET)
    return Demo(DEMO_BUCKET)


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo-model")
    build_demo_model(directory)
    return directory


@pytest.fixture
def job_store(object_store: ObjectStore, demo: Demo) -> JobStore:
    return JobStore(object_store, STATE_BUCKET)


@pytest.fixture
def start_trainer(
    s3_environment: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., TrainerRun]]:
    """start_trainer(job_id, attempt=1) -> TrainerRun; any still running is killed after."""
    runs: list[TrainerRun] = []

    def start(job_id: str, *, attempt: int = 1, processes: int = 1) -> TrainerRun:
        run = start_trainer_process(
            job_id,
            attempt=attempt,
            s3_environment=s3_environment,
            directory=tmp_path,
            processes=processes,
        )
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()
