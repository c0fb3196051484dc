"""Per-tenant trainer credentials, enforced by a real SeaweedFS.

A store of its own, started with an identities file (`weed mini -s3.config`): the
service's pair may do anything; tenant `acme`'s pair may read, write and list its bucket
`acme-data`, read and list `demo` (base models), and read and write the state bucket's
`jobs/` and `cache/` (the trainer's documents and the tokenized-data cache); `globex`
likewise with `globex-data`. The service gives each tenant's trainers that tenant's pair
(TUNEFORGE_TRAINER_CREDENTIALS_FILE), so:

- acme's job, on data and output in `acme-data`, completes with acme's pair;
- acme's pair cannot read globex's bucket, nor API keys in the state bucket
  (AccessDenied, straight from boto3);
- an acme job pointed at globex's data fails on the store's refusal: its trainer really
  holds acme's pair, not the service's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from jobstore.storage import ObjectStore, S3Location
from service.control.trainer_credentials import TrainerCredentials
from service.errors import InvalidArgument
from service.server.demo import DEMO_BUCKET, TRAIN_KEY, seed_demo
from service.server.embedded_s3 import EmbeddedS3, free_port
from tests.servers import ApiServer, demo_job

STATE_BUCKET = "state"
ADMIN_API_KEY = "admin-key-for-the-trainer-credentials-test-0123"
SERVICE_PAIR = ("service-key", "service-secret-0123456789")
TENANTS = {
    "acme": ("acme-key", "acme-secret-0123456789", "acme-data"),
    "globex": ("globex-key", "globex-secret-0123456789", "globex-data"),
}


def _identities() -> dict[str, Any]:
    identities: list[dict[str, Any]] = [
        {
            "name": "service",
            "credentials": [{"accessKey": SERVICE_PAIR[0], "secretKey": SERVICE_PAIR[1]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
    ]
    for tenant, (key, secret, bucket) in TENANTS.items():
        identities.append(
            {
                "name": tenant,
                "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": [
                    f"Read:{bucket}",
                    f"Write:{bucket}",
                    f"List:{bucket}",
                    f"Read:{DEMO_BUCKET}",
                    f"List:{DEMO_BUCKET}",
                    # Job ids do not name their tenant: `jobs/*` is as narrow as it gets.
                    f"Read:{STATE_BUCKET}/jobs/*",
                    f"Write:{STATE_BUCKET}/jobs/*",
                    f"Read:{STATE_BUCKET}/cache/*",
                    f"Write:{STATE_BUCKET}/cache/*",
                    f"List:{STATE_BUCKET}",
                ],
            }
        )
    return {"identities": identities}


def _s3_client(store: EmbeddedS3, key: str, secret: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=store.endpoint_url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )


@pytest.fixture(scope="module")
def identity_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    root = tmp_path_factory.mktemp("identity-store")
    config = root / "s3.json"
    config.write_text(json.dumps(_identities()))
    store = EmbeddedS3(
        root / "data",
        port=free_port(),
        access_key_id=SERVICE_PAIR[0],
        secret_access_key=SERVICE_PAIR[1],
        log_path=root / "weed.log",
        s3_config=config,
    )
    store.start()
    service = ObjectStore(
        endpoint_url=store.endpoint_url,
        access_key_id=SERVICE_PAIR[0],
        secret_access_key=SERVICE_PAIR[1],
        region="us-east-1",
    )
    seed_demo(service)
    found = service.get_bytes(S3Location(DEMO_BUCKET, TRAIN_KEY))
    assert found is not None
    records = ("\n".join(found[0].decode().splitlines()[:16]) + "\n").encode()
    for _, _, bucket in TENANTS.values():
        service.ensure_bucket(bucket)
        service.put_bytes(S3Location(bucket, "train.jsonl"), records)
    yield store
    store.stop()


@pytest.fixture(scope="module")
def credentials_server(
    identity_store: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("credentials-server")
    credentials = home / "trainer-credentials.json"
    # Only acme has a pair: globex's trainers would fall back to the service's.
    key, secret, _ = TENANTS["acme"]
    credentials.write_text(
        json.dumps({"acme": {"access_key_id": key, "secret_access_key": secret}})
    )
    server = ApiServer(
        identity_store,
        home,
        state_bucket=STATE_BUCKET,
        admin_key=ADMIN_API_KEY,
        extra_env={
            "TUNEFORGE_TRAINER_CREDENTIALS_FILE": str(credentials),
            # Every bucket granted to every tenant on purpose: the API lets an acme job
            # name globex's data (as a bug in the grants would), so that what stops its
            # trainer is the store itself, refusing acme's credentials.
            "TUNEFORGE_ALLOWED_BUCKETS": '["*"]',
        },
    )
    server.start()
    yield server
    server.stop()
    server.kill_trainers()


def _job(name: str, data_bucket: str, output_bucket: str) -> dict[str, Any]:
    body = demo_job(name, epochCount=1, batchSize=8)
    body["trainingDataConfig"] = {"s3Uri": f"s3://{data_bucket}/train.jsonl"}
    body["outputDataConfig"] = {"s3Uri": f"s3://{output_bucket}/output/"}
    body.pop("validationDataConfig")
    return body


@pytest.mark.timeout(400)
def test_a_tenants_trainer_works_with_its_own_pair_and_cannot_reach_another_tenants_data(
    identity_store: EmbeddedS3, credentials_server: ApiServer
) -> None:
    acme_key, acme_secret, acme_bucket = TENANTS["acme"]
    globex_bucket = TENANTS["globex"][2]
    api_key = credentials_server.create_api_key("acme")
    with credentials_server.client(api_key) as client:
        allowed = client.post("/v1/jobs", json=_job("own-data", acme_bucket, acme_bucket))
        assert allowed.status_code == 201, allowed.text
        trespassing = client.post("/v1/jobs", json=_job("other-data", globex_bucket, acme_bucket))
        assert trespassing.status_code == 201, trespassing.text

    completed = credentials_server.wait_for(
        allowed.json()["jobId"], {"COMPLETED"}, timeout=300, api_key=api_key
    )
    assert completed["state"] == "COMPLETED"
    acme = _s3_client(identity_store, acme_key, acme_secret)
    written = acme.list_objects_v2(Bucket=acme_bucket, Prefix="output/")
    assert any(item["Key"].endswith("model.safetensors") for item in written["Contents"])

    # Straight from boto3 with acme's pair: globex's data and the API keys are out of reach.
    with pytest.raises(ClientError) as refused:
        acme.get_object(Bucket=globex_bucket, Key="train.jsonl")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as refused:
        acme.list_objects_v2(Bucket=globex_bucket)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as refused:
        acme.put_object(Bucket=STATE_BUCKET, Key="keys/forged.json", Body=b"{}")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    # The trainer of the job on globex's data held acme's pair: the store refused it.
    failed = credentials_server.wait_for(
        trespassing.json()["jobId"], {"FAILED"}, timeout=300, api_key=api_key
    )
    assert failed["failure"]["reason"] == "STORAGE", failed
    message = failed["failure"]["message"]
    assert f"s3://{globex_bucket}/train.jsonl" in message and "403" in message, failed


def test_the_credentials_file_is_read_per_tenant(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps({"acme": {"access_key_id": "k", "secret_access_key": "s"}}))
    credentials = TrainerCredentials.load(path)
    assert credentials.environment_for("acme") == {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
    }
    assert credentials.environment_for("globex") == {}  # the store's own pair stays
    assert TrainerCredentials.load(None).environment_for("acme") == {}


@pytest.mark.parametrize(
    "content",
    ["not json", '{"acme": {"access_key_id": "k"}}', '{"acme": {"access_key_id": "", "x": 1}}'],
)
def test_a_bad_credentials_file_refuses_to_start(tmp_path: Path, content: str) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(content)
    with pytest.raises(InvalidArgument, match="TUNEFORGE_TRAINER_CREDENTIALS_FILE"):
        TrainerCredentials.load(path)
    with pytest.raises(InvalidArgument, match="TUNEFORGE_TRAINER_CREDENTIALS_FILE"):
        TrainerCredentials.load(tmp_path / "missing.json")
