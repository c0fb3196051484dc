"""Real API servers for the Bedrock face, driven by the real boto3 `bedrock` client."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer

ACCESS_KEY = "AKIATUNEFORGETEST01"
SECRET_KEY = "bedrock-test-secret-0123456789"
REGION = "eu-west-1"
ACCOUNT = "123456789012"
BEARER_TOKEN = "bedrock-bearer-token-for-tests"
ROLE_ARN = "arn:aws:iam::123456789012:role/tuneforge-test"

BedrockClient = Any  # botocore generates the client class at run time


def _server(
    s3: EmbeddedS3, factory: pytest.TempPathFactory, name: str, extra: dict[str, str]
) -> ApiServer:
    env = {
        "TUNEFORGE_BEDROCK_REGION": REGION,
        "TUNEFORGE_BEDROCK_ACCOUNT_ID": ACCOUNT,
        "TUNEFORGE_BEDROCK_ACCESS_KEYS": json.dumps({ACCESS_KEY: SECRET_KEY}),
        "TUNEFORGE_BEDROCK_BEARER_TOKENS": json.dumps([BEARER_TOKEN]),
    }
    env.update(extra)
    server = ApiServer(
        s3,
        factory.mktemp(name),
        state_bucket=f"bedrock-{name}-{uuid.uuid4().hex[:8]}",
        extra_env=env,
    )
    return server.start()


@pytest.fixture(scope="session")
def trainer_server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """Keys enforced; real trainers."""
    server = _server(s3_server, tmp_path_factory, "trainer", {})
    yield server
    server.stop()
    server.kill_trainers()


@pytest.fixture(scope="session")
def cheap_server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """Development mode (any signature); the 'trainer' is /bin/false, so jobs are cheap:
    each launch dies at once and the job ends FAILED after its retry budget."""
    server = _server(
        s3_server,
        tmp_path_factory,
        "cheap",
        {
            "TUNEFORGE_BEDROCK_DEV_MODE_ANY_SIGNATURE": "true",
            "TUNEFORGE_TRAINER_PYTHON": "/bin/false",
            # Bedrock's API has no field for GPUs: the operator's setting gives them.
            "TUNEFORGE_BEDROCK_JOB_GPUS": "1",
        },
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def strict_server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """Keys enforced and a low rate limit; no job is created on it."""
    server = _server(
        s3_server,
        tmp_path_factory,
        "strict",
        {"TUNEFORGE_BEDROCK_REQUESTS_PER_SECOND": "1", "TUNEFORGE_BEDROCK_BURST": "4"},
    )
    yield server
    server.stop()


def make_client(
    server: ApiServer,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    **config: Any,
) -> BedrockClient:
    """The real boto3 Bedrock client, unmodified, pointed at the server."""
    return boto3.client(
        "bedrock",
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(retries={"max_attempts": 1}, **config),
    )


def create_body(name: str, *, model: str | None = None, **hyper: str) -> dict[str, Any]:
    """CreateModelCustomizationJob parameters on the demo assets, cheap to train."""
    parameters = {"epochCount": "1", "batchSize": "8", "learningRate": "0.003", "seed": "7"}
    parameters.update(hyper)
    return {
        "jobName": name,
        "customModelName": model or f"{name}-model",
        "roleArn": ROLE_ARN,
        "baseModelIdentifier": "s3://demo/models/tiny-llama/",
        "customizationType": "FINE_TUNING",
        "trainingDataConfig": {"s3Uri": "s3://demo/datasets/sample-train.jsonl"},
        "validationDataConfig": {
            "validators": [{"s3Uri": "s3://demo/datasets/sample-validation.jsonl"}]
        },
        "outputDataConfig": {"s3Uri": "s3://demo/output/"},
        "hyperParameters": parameters,
    }


def wait_status(
    client: BedrockClient,
    identifier: str,
    statuses: set[str],
    timeout: float = 240.0,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get_model_customization_job(jobIdentifier=identifier)
        if check is not None:
            check(job)
        if job["status"] in statuses:
            return job
        if job["status"] in {"Completed", "Failed", "Stopped"}:
            raise AssertionError(f"job ended {job['status']}, wanted {statuses}: {job}")
        time.sleep(0.5)
    raise AssertionError(f"{identifier} not in {statuses} after {timeout}s: {job}")
