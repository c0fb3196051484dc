"""The per-tenant queued-jobs limit is exact under concurrent creates through two
replicas over one store (jobstore/queue_ledger.py), and places are given back when
jobs leave the queue.

Tenant "crowd" may run 1 trainer and have 4 jobs waiting. Its 'trainer' sleeps until
stopped, so the first launched job holds the running slot and the rest stay QUEUED.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job
from tests.service.auth.conftest import ADMIN_KEY, SLEEPER

LIMIT = 4
CREATES = 24


@pytest.fixture
def two_replicas(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> Iterator[tuple[ApiServer, ApiServer]]:
    sleeper = tmp_path / "sleeper.sh"
    sleeper.write_text(SLEEPER)
    sleeper.chmod(0o755)
    bucket = f"queue-{uuid.uuid4().hex[:12]}"
    environment = {
        "TUNEFORGE_TRAINER_PYTHON": str(sleeper),
        # The trainers are sleepers: they share the service's store pair on purpose.
        "TUNEFORGE_TRAINER_SHARED_CREDENTIALS": "true",
        "TUNEFORGE_ALLOWED_BUCKETS": '["demo"]',  # the demo job's data, model and output
        "TUNEFORGE_TENANT_LIMITS": json.dumps(
            {"crowd": {"max_running_jobs": 1, "max_queued_jobs": LIMIT}}
        ),
        "TUNEFORGE_STOP_GRACE_SECONDS": "1",
        "TUNEFORGE_KILL_GRACE_SECONDS": "1",
    }
    replicas = [
        ApiServer(
            s3_server,
            tmp_path / name,
            state_bucket=bucket,
            admin_key=ADMIN_KEY,
            extra_env=environment,
        )
        for name in ("a", "b")
    ]
    try:
        for replica in replicas:
            replica.start()
        yield replicas[0], replicas[1]
    finally:
        for replica in replicas:
            replica.stop()
            replica.kill_trainers()


def _waiting(client: httpx.Client) -> list[dict[str, Any]]:
    jobs = client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
    return [job for job in jobs if job["state"] == "QUEUED" and job["attempt"] == 0]


def test_concurrent_creates_on_two_replicas_never_exceed_the_queue_limit(
    two_replicas: tuple[ApiServer, ApiServer],
) -> None:
    first, second = two_replicas
    key = first.create_api_key("crowd")
    clients = [first.client(key), second.client(key)]
    try:

        def create(number: int) -> int:
            body = demo_job(f"crowd-{number}")
            return clients[number % 2].post("/v1/jobs", json=body).status_code

        with ThreadPoolExecutor(max_workers=CREATES) as pool:
            statuses = list(pool.map(create, range(CREATES)))
        created = statuses.count(201)
        assert set(statuses) <= {201, 429}, statuses
        # LIMIT places, plus at most one job that launched (and gave its place back)
        # while the burst was still going.
        assert LIMIT <= created <= LIMIT + 1, statuses

        time.sleep(2)  # a few reconcile passes on both replicas
        rest = clients[0]
        assert len(_waiting(rest)) <= LIMIT
        # The one launched job gave its place back: the queue fills up to the limit again,
        # and not past it.
        refills = [
            clients[1].post("/v1/jobs", json=demo_job(f"crowd-refill-{n}")).status_code
            for n in range(2)
        ]
        assert refills in ([201, 429], [429, 429]), refills
        assert created + refills.count(201) == LIMIT + 1
        waiting = _waiting(rest)
        assert len(waiting) == LIMIT, [job["jobId"] for job in waiting]
        assert len(rest.get("/v1/jobs", params={"limit": 100}).json()["jobs"]) == LIMIT + 1

        # Stopping a waiting job gives its place back once a reconciler saw it end.
        assert rest.post(f"/v1/jobs/{waiting[0]['jobId']}/stop").status_code == 202
        deadline = time.monotonic() + 30
        while True:
            answer = clients[1].post("/v1/jobs", json=demo_job("crowd-after-stop"))
            if answer.status_code == 201:
                break
            assert answer.status_code == 429, answer.text
            assert time.monotonic() < deadline, "the stopped job's place was not given back"
            time.sleep(0.5)
        assert len(_waiting(rest)) == LIMIT
    finally:
        for client in clients:
            client.close()
