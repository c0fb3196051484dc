"""A real API server with authentication on: an admin key, API keys made through it,
Bedrock SigV4 keys mapped to tenants, per-tenant limits.

Job data, models and outputs may live in bucket "demo" (tenant "elsewhere": only in
"other-bucket") and in each tenant's own folder `s3://tenant-homes/<tenant>/`. Its
'trainer' is a shell script that sleeps: a launched job stays
alive (and QUEUED, since nothing reports progress) until it is stopped, so tests can
hold slots and queues as they need without the cost of training. Tests use their own tenant names so
that they do not see each other's jobs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer

ADMIN_KEY = "admin-key-for-the-auth-tests-0123456789"
REGION = "us-east-1"
# SigV4 key pairs of the Bedrock face, one per tenant.
BEDROCK_KEYS = {
    "AKIATENANTALPHA": ("alpha-secret-0123456789", "alpha"),
    "AKIATENANTBRAVO": ("bravo-secret-0123456789", "bravo"),
}
TENANT_LIMITS = {
    # 1 trainer at a time, 2 jobs waiting at most.
    "queue": {"max_running_jobs": 1, "max_queued_jobs": 2},
    # 1 request per second, bursts of 3.
    "slow": {"requests_per_second": 1, "burst": 3},
}
OPERATOR_WEBHOOK_SECRET = "operator-webhook-secret-0123456789"
# Stands in for `python -m trainer ...`: stays alive until killed.
SLEEPER = "#!/bin/sh\nexec sleep 600\n"


@pytest.fixture(scope="session")
def auth_server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("auth")
    sleeper = home / "sleeper.sh"
    sleeper.write_text(SLEEPER)
    sleeper.chmod(0o755)
    server = ApiServer(
        s3_server,
        home / "home",
        state_bucket=f"auth-{uuid.uuid4().hex[:12]}",
        admin_key=ADMIN_KEY,
        extra_env={
            "TUNEFORGE_TRAINER_PYTHON": str(sleeper),
            "TUNEFORGE_BEDROCK_REGION": REGION,
            "TUNEFORGE_BEDROCK_ACCESS_KEYS": json.dumps(
                {
                    key: {"secret": secret, "tenant": tenant}
                    for key, (secret, tenant) in BEDROCK_KEYS.items()
                }
            ),
            "TUNEFORGE_TENANT_LIMITS": json.dumps(TENANT_LIMITS),
            "TUNEFORGE_ALLOWED_BUCKETS": json.dumps(["demo"]),
            "TUNEFORGE_TENANT_ALLOWED_BUCKETS": json.dumps({"elsewhere": ["other-bucket"]}),
            "TUNEFORGE_TENANT_HOME_BUCKET": "tenant-homes",
            # The trainers are sleepers: they share the service's store pair on purpose.
            "TUNEFORGE_TRAINER_SHARED_CREDENTIALS": "true",
            # Webhooks to a receiver on loopback, each tenant's signed with its own secret
            # (derived from this one, which signs nothing itself).
            "TUNEFORGE_WEBHOOK_ALLOWED_HOSTS": json.dumps(["127.0.0.1"]),
            "TUNEFORGE_WEBHOOK_SECRET": OPERATOR_WEBHOOK_SECRET,
            "TUNEFORGE_WEBHOOK_RETRY_SECONDS": "0.2",
            "TUNEFORGE_STOP_GRACE_SECONDS": "1",
            "TUNEFORGE_KILL_GRACE_SECONDS": "1",
        },
    )
    server.start()
    yield server
    server.stop()
    server.kill_trainers()


def bedrock_client(server: ApiServer, access_key: str, secret_key: str | None = None) -> Any:
    """The real boto3 `bedrock` client, signing with one of BEDROCK_KEYS."""
    return boto3.client(
        "bedrock",
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key or BEDROCK_KEYS[access_key][0],
        config=Config(retries={"max_attempts": 1}),
    )


def unsigned_bedrock_client(server: ApiServer) -> Any:
    """The boto3 `bedrock` client sending no signature at all."""
    return boto3.client(
        "bedrock",
        endpoint_url=server.url,
        region_name=REGION,
        config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}),
    )


def bedrock_body(name: str) -> dict[str, Any]:
    return {
        "jobName": name,
        "customModelName": f"{name}-model",
        "roleArn": "arn:aws:iam::000000000000:role/tuneforge-test",
        "baseModelIdentifier": "s3://demo/models/tiny-llama/",
        "customizationType": "FINE_TUNING",
        "trainingDataConfig": {"s3Uri": "s3://demo/datasets/sample-train.jsonl"},
        "outputDataConfig": {"s3Uri": "s3://demo/output/"},
        "hyperParameters": {"epochCount": "1"},
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
