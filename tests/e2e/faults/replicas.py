"""Helpers for the fault tests: servers over one store, a tiny dataset, counts.

`serving(*servers)` starts API servers and, whatever the test did, stops them and kills
their trainers; `two_replicas` makes two replicas over one new state bucket,
`one_server` one server on its own.

Launches are counted two ways, both independent of the replica that did them: the
job's LAUNCHED events in the store, and the trainer attempt work directories
(`<home>/work/<job-id>/attempt-<n>/`) under every replica's home.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from jobstore.storage import ObjectStore, S3Location
from service.server.demo import DEMO_BUCKET, TRAIN_KEY
from service.server.embedded_s3 import EmbeddedS3
from tests.servers import TERMINAL, ApiServer, demo_job


def new_state_bucket() -> str:
    return f"state-{uuid.uuid4().hex[:12]}"


def one_server(s3: EmbeddedS3, home: Path, extra_env: dict[str, str] | None = None) -> ApiServer:
    return ApiServer(s3, home, state_bucket=new_state_bucket(), extra_env=extra_env)


def two_replicas(
    s3: EmbeddedS3, root: Path, extra_env: dict[str, str] | None = None
) -> tuple[ApiServer, ApiServer]:
    """Replicas `a` and `b` (homes under `root`) sharing one new state bucket."""
    bucket = new_state_bucket()
    first = ApiServer(s3, root / "a", state_bucket=bucket, extra_env=extra_env)
    second = ApiServer(s3, root / "b", state_bucket=bucket, extra_env=extra_env)
    return first, second


@contextmanager
def serving(*servers: ApiServer) -> Iterator[None]:
    """Start `servers`; on the way out stop each and kill its trainers, so a test that
    fails half-way leaves no trainer running into the next one."""
    try:
        for server in servers:
            server.start()
        yield
    finally:
        for server in servers:
            server.stop()
            server.kill_trainers()


def tiny_dataset(object_store: ObjectStore, records: int = 16) -> str:
    """The first `records` demo training records under a new key; its s3:// URI."""
    found = object_store.get_bytes(S3Location(DEMO_BUCKET, TRAIN_KEY))
    assert found is not None, "seed the demo bucket first"
    lines = found[0].decode().splitlines()[:records]
    key = f"datasets/faults-{uuid.uuid4().hex[:8]}.jsonl"
    object_store.put_bytes(S3Location(DEMO_BUCKET, key), ("\n".join(lines) + "\n").encode())
    return f"s3://{DEMO_BUCKET}/{key}"


def tiny_job(name: str, dataset_uri: str, **hyper_parameters: Any) -> dict[str, Any]:
    """One epoch over the tiny dataset, no validation set: a few optimizer steps."""
    hyper = {"epochCount": 1, "batchSize": 8}
    hyper.update(hyper_parameters)
    body = demo_job(name, **hyper)
    body["trainingDataConfig"] = {"s3Uri": dataset_uri}
    body.pop("validationDataConfig")
    return body


def events(server: ApiServer, job_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    token: str | None = None
    with server.client() as client:
        while True:
            params = {"pageToken": token} if token else {}
            response = client.get(f"/v1/jobs/{job_id}/events", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            found.extend(page["events"])
            token = page.get("nextPageToken")
            if not token:
                return found


def launch_count(server: ApiServer, job_id: str) -> int:
    return sum(1 for event in events(server, job_id) if event["type"] == "LAUNCHED")


def attempt_directories(homes: list[Path], job_id: str) -> list[Path]:
    return sorted(
        directory
        for home in homes
        for directory in (home / "work" / job_id).glob("attempt-*")
        if directory.is_dir()
    )


def wait_all_terminal(
    server: ApiServer, job_ids: list[str], timeout: float
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    finished: dict[str, dict[str, Any]] = {}
    with server.client() as client:
        while time.monotonic() < deadline and len(finished) < len(job_ids):
            for job_id in job_ids:
                if job_id in finished:
                    continue
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["state"] in TERMINAL:
                    finished[job_id] = job
            time.sleep(1)
    pending = sorted(set(job_ids) - set(finished))
    assert not pending, f"{len(pending)} job(s) not finished after {timeout}s: {pending[:5]}"
    return finished


def create(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code in (200, 201), response.text
    job_id: str = response.json()["jobId"]
    return job_id
