"""On the embedded store with authentication on, each tenant's trainers hold a store
identity of the tenant's own, made by the service and limited by the store itself to the
tenant's grants (service/server/store_identities.py).

A server with its own embedded SeaweedFS (as `make run` starts it), tenants granted the
demo bucket and their own folder `s3://tenants/<tenant>/`. acme's job trains with acme's
identity to COMPLETED; that identity is refused by the store outside acme's grants; and a
globex job handed acme's data (written straight to the store, as a bug in the grants
would let through) fails on the store's AccessDenied, not on any check of the service.
"""

from __future__ import annotations

import time
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from jobstore.documents import (
    DataLocation,
    FailureReason,
    HyperParameters,
    JobSpec,
    JobState,
    new_job_id,
    utc_now,
)
from jobstore.storage import ObjectStore, S3Location
from jobstore.store import JobStore
from service.server.demo import DEMO_BUCKET, TRAIN_KEY
from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job

ADMIN_KEY = "admin-key-for-the-identities-test-0123456789"
STATE = "tuneforge"


def _service_pair(home: Path) -> dict[str, str]:
    """The embedded store's endpoint and the service's own pair (`<home>/env`)."""
    pairs = dict(line.split("=", 1) for line in (home / "env").read_text().splitlines() if line)
    return pairs


@pytest.mark.timeout(400)
def test_each_tenants_trainers_hold_an_identity_the_store_limits(
    s3_server: EmbeddedS3, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    server = ApiServer(
        s3_server,
        home,
        state_bucket=STATE,
        admin_key=ADMIN_KEY,
        embedded_store=True,
        extra_env={
            "TUNEFORGE_ALLOWED_BUCKETS": f'["{DEMO_BUCKET}"]',
            "TUNEFORGE_TENANT_HOME_BUCKET": "tenants",
        },
    )
    server.start()
    try:
        env = _service_pair(home)
        service = ObjectStore(
            endpoint_url=env["AWS_ENDPOINT_URL"],
            access_key_id=env["AWS_ACCESS_KEY_ID"],
            secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region="us-east-1",
        )
        service.ensure_bucket("tenants")
        acme_key = server.create_api_key("acme")
        body = demo_job("acme-own", epochCount=1)
        body["outputDataConfig"] = {"s3Uri": "s3://tenants/acme/out/"}
        with server.client(acme_key) as rest:
            created = rest.post("/v1/jobs", json=body)
        assert created.status_code == 201, created.text
        done = server.wait_for(created.json()["jobId"], {"COMPLETED"}, 240, api_key=acme_key)
        assert done["state"] == "COMPLETED"

        # acme's trainers had an identity of acme's own; the store refuses it elsewhere.
        found = service.get_json(S3Location(STATE, "identities/acme.json"))
        assert found is not None
        identity = found[0]
        assert identity["accessKeyId"] != env["AWS_ACCESS_KEY_ID"]
        acme = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=identity["accessKeyId"],
            aws_secret_access_key=identity["secretAccessKey"],
            region_name="us-east-1",
        )
        acme.put_object(Bucket="tenants", Key="acme/note.txt", Body=b"mine")
        for refused in (
            lambda: acme.put_object(Bucket="tenants", Key="globex/x", Body=b"x"),
            lambda: acme.get_object(Bucket=STATE, Key="identities/acme.json"),
            lambda: acme.list_objects_v2(Bucket=STATE, Prefix="keys/"),
        ):
            with pytest.raises(ClientError) as denied:
                refused()
            assert denied.value.response["Error"]["Code"] == "AccessDenied"

        # A bug hands globex's trainer acme's data: the store refuses globex's identity.
        train = service.get_bytes(S3Location(DEMO_BUCKET, TRAIN_KEY))
        assert train is not None
        service.put_bytes(S3Location("tenants", "acme/private.jsonl"), train[0])
        server.create_api_key("globex")  # a tenant the service knows
        spec = JobSpec(
            jobId=new_job_id(),
            jobName="globex-handed-acme-data",
            tenant="globex",
            createdAt=utc_now(),
            baseModelIdentifier=body["baseModelIdentifier"],
            trainingDataConfig=DataLocation(s3Uri="s3://tenants/acme/private.jsonl"),
            outputDataConfig=DataLocation(s3Uri="s3://tenants/globex/out/"),
            hyperParameters=HyperParameters(epochCount=1),
        )
        store = JobStore(service, STATE)
        store.create(spec)
        deadline = time.monotonic() + 240
        status, _ = store.get_status(spec.jobId)
        while not status.state.is_terminal():
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
            status, _ = store.get_status(spec.jobId)
        assert status.state == JobState.FAILED and status.failure is not None
        message = status.failure.message
        assert status.failure.reason == FailureReason.STORAGE, message
        assert "s3://tenants/acme/private.jsonl" in message, message
        assert "refused reading s3://tenants/acme/private.jsonl: 403" in message, message
        assert service.get_json(S3Location(STATE, "identities/globex.json")) is not None
    finally:
        server.stop()
        server.kill_trainers()
